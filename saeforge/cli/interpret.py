"""`saeforge interpret` (top contexts, dashboard, judge, feature index) and `saeforge attribute`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from saeforge.cli import checks
from saeforge.cli.app import app
from saeforge.cli.options import Settings, config_options, exit_codes, fail, writing
from saeforge.errors import EXIT_FAILED, ConfigError
from saeforge.hook_names import canonical_hook_name
from saeforge.interpret.config import AttributeConfig, InterpretConfig


def parse_ids(text: str | None, option: str) -> list[int] | None:
    """'1,2,5' (or with spaces) -> [1, 2, 5]; None stays None."""
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated integers, got {text!r}") from None


def _model_dir(explicit: Path | None, manifest) -> Path | None:
    if explicit is not None:
        return explicit
    card = getattr(manifest, "model", None)
    if card is not None and Path(card.path).is_dir():
        return Path(card.path)
    return None


@app.command()
@config_options(InterpretConfig, exclude={"latent_ids"})
def interpret(
    settings: Settings,
    latent_ids: str = typer.Option(None, "--latent-ids", help="Describe these latents: comma-separated ids."),
) -> None:
    """Describe latents: top contexts, quantile samples, logits; dashboard, feature index, LLM judge.

    One streaming pass collects per latent the top activating contexts, samples across activation quantiles,
    density and the activation histogram; writes latents.json, a static dashboard (index.html) and a
    searchable feature index (features.sqlite). With --judge-url, an LLM judge explains each latent and is
    scored by detection (balanced accuracy, F1); the key comes from OPENAI_API_KEY.
    """
    with exit_codes():
        cfg = settings.build(latent_ids=parse_ids(latent_ids, "--latent-ids"))
    with writing(cfg.out, "interpret"):
        _interpret(cfg)


def _interpret(cfg: InterpretConfig) -> None:
    """Describes (and, with a judge, explains) the latents of `cfg` into cfg.out, which this process holds."""
    with exit_codes():
        checks.sae_fits_store(cfg.sae, cfg.activations)  # before torch loads
        if cfg.model is not None:
            checks.model_dir(cfg.model)
        sae, store, chosen, judge = _open_inputs(cfg)
    result = _describe(cfg, sae, store, chosen)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    index, db = _write(result, out)
    if judge is not None:
        from rich.progress import Progress

        from saeforge.interpret.judge import JudgeError
        from saeforge.interpret.pipeline import add_judgements

        with Progress(transient=True) as bar:
            task = bar.add_task("judge requests", total=None)
            try:
                add_judgements(
                    result,
                    judge,
                    cfg.judge_examples,
                    cfg.bands * cfg.per_band,
                    lambda n: bar.advance(task, n),
                )
            except JudgeError as e:
                fail(
                    f"{e}\n(statistics and contexts were written to {out}; explanations are missing)",
                    EXIT_FAILED,
                )
        index, db = _write(result, out)
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


def _open_inputs(cfg: InterpretConfig):
    """The SAE, the store and the chosen latents, checked against each other; the judge client if asked for."""
    from saeforge.activations.store import ActivationStore
    from saeforge.interpret.judge import JudgeClient
    from saeforge.interpret.pipeline import choose_latents
    from saeforge.sae import load_sae

    sae = load_sae(cfg.sae, device=cfg.device)
    store = ActivationStore.open(cfg.activations, verify="lazy" if cfg.verify else "off")
    store.check_shards()
    chosen = choose_latents(sae.d_sae, cfg.latents, cfg.latent_ids, cfg.seed)
    judge = None
    if cfg.judge_url:
        judge = JudgeClient(
            cfg.judge_url,
            cfg.judge_model,
            api_key=os.environ.get("OPENAI_API_KEY"),
            timeout=cfg.judge_timeout,
            retries=cfg.judge_retries,
            concurrency=cfg.judge_concurrency,
        )
    if store.d_in != sae.d_in:
        raise ConfigError(
            f"the store has d_in={store.d_in} but the SAE has d_in={sae.d_in}: use the store of its hook"
        )
    sae_hook = sae.cfg.metadata.get("hook_name")
    if sae_hook and store.hook and canonical_hook_name(sae_hook) != canonical_hook_name(store.hook):
        raise ConfigError(f"the SAE was trained at hook {sae_hook!r} but the store holds {store.hook!r}")
    return sae, store, chosen, judge


def _describe(cfg: InterpretConfig, sae, store, chosen):
    """The one streaming pass over the store (with the model's tokenizer and unembedding when there is one)."""
    from saeforge.interpret.contexts import tokenizer_decode
    from saeforge.interpret.pipeline import interpret as run_interpret
    from saeforge.interpret.source import store_batches

    model_dir = _model_dir(cfg.model, store.manifest)
    lm, decode, vocab = None, None, None
    if model_dir is not None:
        from saeforge.models import load_model

        loaded = load_model(model_dir, device=cfg.device)
        decode = tokenizer_decode(loaded.tokenizer)
        vocab = len(loaded.tokenizer)
        if loaded.kind == "causal" and not cfg.no_logits:
            lm = loaded.model
    typer.echo(
        f"interpreting {len(chosen)} latents of {cfg.sae} over {store.num_rows:,} rows of {cfg.activations}"
    )
    result = run_interpret(
        sae,
        store_batches(store, cfg.batch_rows),
        chosen,
        k=cfg.top_k,
        before=cfg.before,
        after=cfg.after,
        n_bands=cfg.bands,
        per_band=cfg.per_band,
        n_negatives=cfg.negatives,
        tokens_of=store.context,
        decode=decode,
        model=lm,
        through_norm=cfg.through_norm,
        vocab_size=vocab,
        seed=cfg.seed,
    )
    result.meta.update(
        sae=str(cfg.sae),
        activations=str(cfg.activations),
        activations_verified=cfg.verify,
        model=str(model_dir) if model_dir else None,
    )
    return result


def _write(result, out: Path) -> tuple[Path, Path]:
    from saeforge.interpret.index import build_index
    from saeforge.interpret.records import save_interpretation
    from saeforge.report.dashboard import write_dashboard

    save_interpretation(result, out / "latents.json")
    return write_dashboard(result, out), build_index(result.latents, out)


@app.command()
@config_options(AttributeConfig)
def attribute(settings: Settings) -> None:
    """Latents that most raise or lower a target token's logit after a prompt.

    Direct effect: activation x decoder direction x unembedding, through the final norm with its scale frozen
    at the prompt's last position. Ablation effect: the prompt re-run with the latent's contribution removed.
    """
    with exit_codes():
        cfg = settings.build()
        checks.single_token(checks.model_dir(cfg.model), cfg.target)
        checks.sae_cfg(cfg.sae)
    from rich.console import Console
    from rich.table import Table

    from saeforge.interpret.attribution import attribute as run_attribute
    from saeforge.models import HookError, load_model
    from saeforge.sae import load_sae

    with exit_codes():
        try:
            sae_obj = load_sae(cfg.sae, device=cfg.device)
            loaded = load_model(cfg.model, device=cfg.device)
            res = run_attribute(
                loaded, sae_obj, cfg.prompt, cfg.target, hook=cfg.hook, top=cfg.top, ablate=cfg.ablate
            )
        except HookError as e:
            raise ConfigError(str(e)) from None
    table = Table(
        "latent",
        "activation",
        "direct Δ logit",
        "ablation Δ logit",
        title=f"{cfg.prompt!r} → {cfg.target!r} (logit {res.target_logit:.4g}, hook {res.hook})",
    )
    for r in res.rows:
        table.add_row(
            str(r.latent),
            f"{r.activation:.4g}",
            f"{r.direct:+.4g}",
            "–" if r.ablation is None else f"{r.ablation:+.4g}",
        )
    Console(width=120).print(table)
    out = cfg.out
    if out is None:
        return
    with writing(out, "attribute"):
        _add_attribution(res, out)


def _add_attribution(res, out: Path) -> None:
    """Adds `res` to the interpretation in `out` (latents.json + dashboard), else writes attribution.json."""
    import json

    from saeforge.atomic import write_text
    from saeforge.interpret.records import load_interpretation, save_interpretation
    from saeforge.report.dashboard import write_dashboard

    if (out / "latents.json").exists():
        interp = load_interpretation(out)
        interp.attributions.append(res.to_dict())
        save_interpretation(interp, out / "latents.json")
        write_dashboard(interp, out)
        typer.echo(f"added to {out / 'latents.json'} and {out / 'attribution.html'}")
    else:
        write_text(out / "attribution.json", json.dumps(res.to_dict(), indent=1))
        typer.echo(f"wrote {out / 'attribution.json'}")
