"""`saeforge interpret` (top contexts, dashboard, judge, feature index) and `saeforge attribute`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from saeforge.cli import app, hold_out_folder


def parse_ids(text: str | None, option: str) -> list[int] | None:
    """'1,2,5' (or with spaces) -> [1, 2, 5]; None stays None."""
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated integers, got {text!r}") from None


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _model_dir(explicit: Path | None, manifest) -> Path | None:
    if explicit is not None:
        return explicit
    card = getattr(manifest, "model", None)
    if card is not None and Path(card.path).is_dir():
        return Path(card.path)
    return None


@app.command()
def interpret(
    ctx: typer.Context,
    sae: Path = typer.Option(..., "--sae", help="SAE directory (cfg.json + sae_weights.safetensors)."),
    activations: Path = typer.Option(
        ...,
        "--activations",
        help="Activation store captured at the SAE's hook (with token ids and positions).",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output directory: latents.json, index.html + latents/*.html, features.sqlite."
    ),
    verify: bool = typer.Option(
        True,
        "--verify/--no-verify",
        help="Check each shard's sha256 as it is first read; --no-verify loads a store without checksums.",
    ),
    latents: int = typer.Option(None, "--latents", help="Describe N latents drawn at random (see --seed)."),
    latent_ids: str = typer.Option(None, "--latent-ids", help="Describe these latents: comma-separated ids."),
    top_k: int = typer.Option(20, "--top-k", help="Top activating contexts kept per latent."),
    before: int = typer.Option(12, "--before", help="Context tokens shown before the activating token."),
    after: int = typer.Option(4, "--after", help="Context tokens shown after the activating token."),
    bands: int = typer.Option(5, "--bands", help="Activation-quantile bands sampled per latent."),
    per_band: int = typer.Option(4, "--per-band", help="Contexts sampled per quantile band."),
    negatives: int = typer.Option(10, "--negatives", help="Non-activating contexts kept per latent."),
    batch_rows: int = typer.Option(8192, "--batch-rows", help="Rows read from the store per step."),
    model: Path = typer.Option(
        None,
        "--model",
        help="Local causal LM for promoted/suppressed tokens and token strings (default: the store's model).",
    ),
    no_logits: bool = typer.Option(False, "--no-logits", help="Skip the promoted/suppressed tokens."),
    through_norm: bool = typer.Option(
        True,
        "--through-norm/--no-through-norm",
        help="Read decoder directions through the final norm before the unembedding (docs/interpretation.md).",
    ),
    judge_url: str = typer.Option(
        None, "--judge-url", help="OpenAI-compatible endpoint for explanations (e.g. http://host:8000/v1)."
    ),
    judge_model: str = typer.Option(None, "--judge-model", help="Model name the judge endpoint serves."),
    judge_concurrency: int = typer.Option(8, "--judge-concurrency", help="Parallel judge requests."),
    judge_timeout: float = typer.Option(60.0, "--judge-timeout", help="Seconds per judge request."),
    judge_retries: int = typer.Option(
        4, "--judge-retries", help="Retries per judge request (backoff doubles)."
    ),
    judge_examples: int = typer.Option(10, "--judge-examples", help="Top contexts shown to the explainer."),
    device: str = typer.Option("cpu", "--device", help="Device for the SAE and the model (cpu, cuda, ...)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the latent sample and the reservoirs."),
) -> None:
    """Describe latents: top contexts, quantile samples, logits; dashboard, feature index, LLM judge.

    One streaming pass collects per latent the top activating contexts, samples across activation quantiles,
    density and the activation histogram; writes latents.json, a static dashboard (index.html) and a
    searchable feature index (features.sqlite). With --judge-url, an LLM judge explains each latent and is
    scored by detection (balanced accuracy, F1); the key comes from OPENAI_API_KEY.
    """
    from saeforge.activations.store import ActivationStore
    from saeforge.interpret.contexts import tokenizer_decode
    from saeforge.interpret.dashboard import write_dashboard
    from saeforge.interpret.index import build_index
    from saeforge.interpret.judge import JudgeClient, JudgeError
    from saeforge.interpret.pipeline import add_judgements, choose_latents
    from saeforge.interpret.pipeline import interpret as run_interpret
    from saeforge.interpret.records import save_interpretation
    from saeforge.interpret.source import store_batches
    from saeforge.sae import load_sae

    ids = parse_ids(latent_ids, "--latent-ids")
    if (latents is None) == (ids is None):
        _fail("give exactly one of --latents N or --latent-ids I,J,...")
    if (judge_url is None) != (judge_model is None):
        _fail("--judge-url and --judge-model go together")
    for name, v in [
        ("--top-k", top_k),
        ("--bands", bands),
        ("--per-band", per_band),
        ("--batch-rows", batch_rows),
    ]:
        if v <= 0:
            _fail(f"{name} must be positive, got {v}")
    hold_out_folder(ctx, out, "interpret")
    try:
        sae_obj = load_sae(sae, device=device)
        store = ActivationStore.open(activations, verify="lazy" if verify else "off")
        store.check_shards()
        batches = store_batches(store, batch_rows)
        chosen = choose_latents(sae_obj.d_sae, latents, ids, seed)
        judge = None
        if judge_url:
            judge = JudgeClient(
                judge_url,
                judge_model,
                api_key=os.environ.get("OPENAI_API_KEY"),
                timeout=judge_timeout,
                retries=judge_retries,
                concurrency=judge_concurrency,
            )
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if store.d_in != sae_obj.d_in:
        _fail(
            f"the store has d_in={store.d_in} but the SAE has d_in={sae_obj.d_in}: use the store of its hook"
        )
    sae_hook = sae_obj.cfg.metadata.get("hook_name")
    if sae_hook and store.hook and sae_hook != store.hook:
        _fail(f"the SAE was trained at hook {sae_hook!r} but the store holds {store.hook!r}")
    model_dir = _model_dir(model, store.manifest)
    lm, decode, vocab = None, None, None
    if model_dir is not None:
        from saeforge.models import load_model

        loaded = load_model(model_dir, device=device)
        decode = tokenizer_decode(loaded.tokenizer)
        vocab = len(loaded.tokenizer)
        if loaded.kind == "causal" and not no_logits:
            lm = loaded.model
    typer.echo(f"interpreting {len(chosen)} latents of {sae} over {store.num_rows:,} rows of {activations}")
    result = run_interpret(
        sae_obj,
        batches,
        chosen,
        k=top_k,
        before=before,
        after=after,
        n_bands=bands,
        per_band=per_band,
        n_negatives=negatives,
        tokens_of=store.context,
        decode=decode,
        model=lm,
        through_norm=through_norm,
        vocab_size=vocab,
        seed=seed,
    )
    result.meta.update(
        sae=str(sae),
        activations=str(activations),
        activations_verified=verify,
        model=str(model_dir) if model_dir else None,
    )
    out.mkdir(parents=True, exist_ok=True)

    def write() -> tuple[Path, Path]:
        save_interpretation(result, out / "latents.json")
        return write_dashboard(result, out), build_index(result.latents, out)

    index, db = write()
    if judge is not None:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("judge requests", total=None)
            try:
                add_judgements(
                    result, judge, judge_examples, bands * per_band, lambda n: bar.advance(task, n)
                )
            except JudgeError as e:
                _fail(f"{e}\n(statistics and contexts were written to {out}; explanations are missing)")
        index, db = write()
    alive = sum(r.n_active > 0 for r in result.latents)
    typer.echo(f"{alive}/{len(result.latents)} chosen latents fire on these rows")
    j = result.meta.get("judge")
    if j:

        def fmt(v):
            return "n/a" if v is None else f"{v:.3f}"

        typer.echo(
            f"judge: unclear {j['unclear_share']:.0%}, mean detection balanced accuracy "
            f"{fmt(j['mean_balanced_accuracy'])}, F1 {fmt(j['mean_f1'])}, "
            f"unparseable answers {j['n_unparseable']}/{j['n_answers']}"
        )
    typer.echo(f"wrote {out / 'latents.json'}, {index}, {db}")


@app.command()
def attribute(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", help="Local causal LM directory."),
    sae: Path = typer.Option(..., "--sae", help="SAE directory (cfg.json + sae_weights.safetensors)."),
    prompt: str = typer.Option(..., "--prompt", help="Prompt whose next-token logit is explained."),
    target: str = typer.Option(
        ..., "--target", help="Target token (a single token; mind the leading space)."
    ),
    top: int = typer.Option(
        10, "--top", help="Latents shown that raise the logit most, and as many lowering it."
    ),
    ablate: int = typer.Option(
        5, "--ablate", help="Re-run the prompt without each of the N largest |direct|."
    ),
    hook: str = typer.Option(None, "--hook", help="Hook of the SAE (default: its hook_name)."),
    out: Path = typer.Option(
        None,
        "--out",
        help="An interpret --out directory: adds this attribution to latents.json and its dashboard "
        "(any other directory gets attribution.json).",
    ),
    device: str = typer.Option("cpu", "--device", help="Device for the model and SAE (cpu, cuda, ...)."),
) -> None:
    """Latents that most raise or lower a target token's logit after a prompt.

    Direct effect: activation x decoder direction x unembedding, through the final norm with its scale frozen
    at the prompt's last position. Ablation effect: the prompt re-run with the latent's contribution removed.
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from saeforge.atomic import write_text
    from saeforge.interpret.attribution import attribute as run_attribute
    from saeforge.interpret.dashboard import write_dashboard
    from saeforge.interpret.records import load_interpretation, save_interpretation
    from saeforge.models import HookError, load_model
    from saeforge.sae import load_sae

    if top <= 0 or ablate < 0:
        _fail("--top must be positive and --ablate >= 0")
    try:
        sae_obj = load_sae(sae, device=device)
        loaded = load_model(model, device=device)
        res = run_attribute(loaded, sae_obj, prompt, target, hook=hook, top=top, ablate=ablate)
    except (FileNotFoundError, HookError, ValueError) as e:
        _fail(str(e))
    table = Table(
        "latent",
        "activation",
        "direct Δ logit",
        "ablation Δ logit",
        title=f"{prompt!r} → {target!r} (logit {res.target_logit:.4g}, hook {res.hook})",
    )
    for r in res.rows:
        table.add_row(
            str(r.latent),
            f"{r.activation:.4g}",
            f"{r.direct:+.4g}",
            "–" if r.ablation is None else f"{r.ablation:+.4g}",
        )
    Console(width=120).print(table)
    if out is None:
        return
    hold_out_folder(ctx, out, "attribute")
    if (out / "latents.json").exists():
        interp = load_interpretation(out)
        interp.attributions.append(res.to_dict())
        save_interpretation(interp, out / "latents.json")
        write_dashboard(interp, out)
        typer.echo(f"added to {out / 'latents.json'} and {out / 'attribution.html'}")
    else:
        write_text(out / "attribution.json", json.dumps(res.to_dict(), indent=1))
        typer.echo(f"wrote {out / 'attribution.json'}")
