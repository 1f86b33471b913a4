"""`saeforge diff`: what did fine-tuning change? A crosscoder over the base and fine-tuned stores, read latent
by latent -> diff.json, latents.csv, diff_report.html (the settings are DiffConfig's fields)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from saeforge.cli import app


@app.command()
def diff(
    base_activations: Path = typer.Option(
        ..., "--base-activations", help="Store of the base model at the hook."
    ),
    finetuned_activations: Path = typer.Option(
        ...,
        "--finetuned-activations",
        help="Store of the fine-tuned model at the same hook, captured together.",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output directory: diff.json, latents.csv, diff_report.html."
    ),
    crosscoder: Path = typer.Option(
        None, "--crosscoder", help="A trained two-site crosscoder: skip training."
    ),
    k: int = typer.Option(32, "--k", help="BatchTopK: active latents per token on average. Default 32."),
    expansion_factor: float = typer.Option(None, "--expansion-factor", help="d_sae = F * d_in (default 8)."),
    d_sae: int = typer.Option(None, "--d-sae", help="Number of latents (instead of --expansion-factor)."),
    tokens: int = typer.Option(None, "--tokens", help="Training tokens (default: 2 passes over the store)."),
    batch_size: int = typer.Option(4096, "--batch-size", help="Training batch size in rows. Default 4096."),
    seed: int = typer.Option(0, "--seed", help="Crosscoder initialisation, data order, causal controls."),
    rows: int = typer.Option(None, "--rows", help="Rows read for the per-latent table (default: all)."),
    specific_norm: float = typer.Option(
        0.9,
        "--specific-norm",
        help="Relative norm >= this: fine-tuned only by norm (<= 1 - this: base only). Default 0.9.",
    ),
    max_nu_eps: float = typer.Option(
        0.3, "--max-nu-eps", help="nu_eps >= this: complete shrinkage. Default 0.3."
    ),
    max_nu_r: float = typer.Option(0.5, "--max-nu-r", help="nu_r >= this: latent decoupling. Default 0.5."),
    changed_cosine: float = typer.Option(
        0.5, "--changed-cosine", help="Decoder cosine below which a shared latent is `changed`. Default 0.5."
    ),
    top: int = typer.Option(10, "--top", help="Fine-tune-only and base-only latents shown with contexts."),
    contexts: int = typer.Option(8, "--contexts", help="Top contexts per shown latent."),
    judge_url: str = typer.Option(None, "--judge-url", help="OpenAI-compatible endpoint for explanations."),
    judge_model: str = typer.Option(None, "--judge-model", help="Model name the judge endpoint serves."),
    base_model: Path = typer.Option(None, "--base-model", help="Base causal LM directory (causal check)."),
    finetuned_model: Path = typer.Option(
        None, "--finetuned-model", help="Fine-tuned causal LM directory (causal check)."
    ),
    data: str = typer.Option(None, "--data", help="Text SOURCE of the causal check (default: the store's)."),
    causal_contexts: int = typer.Option(32, "--causal-contexts", help="Contexts scored by the causal check."),
    context_size: int = typer.Option(
        None, "--context-size", help="Tokens per causal context (default: store's)."
    ),
    controls: int = typer.Option(
        3, "--controls", help="Random latent sets in the causal control. Default 3."
    ),
    device: str = typer.Option("cpu", "--device", help="Device for the crosscoder and the models."),
) -> None:
    """Diff a fine-tuned model against its base: train (or load) a BatchTopK crosscoder on both models'
    activations of the same tokens, then per latent decoder norms, Latent Scaling ratios and a category
    (shared, changed, base_only, finetuned_only). With --base-model/--finetuned-model, a causal check. The
    judge key comes from OPENAI_API_KEY. Method: docs/diffing.md."""
    from pydantic import ValidationError
    from rich.console import Console

    from saeforge.activations import StoreError
    from saeforge.diff.categories import Thresholds
    from saeforge.diff.outputs import write_diff_outputs
    from saeforge.diff.run import DiffConfig, run_diff

    try:
        cfg = DiffConfig(
            base_activations=base_activations, finetuned_activations=finetuned_activations, out=out,
            crosscoder=crosscoder, k=k, expansion_factor=expansion_factor, d_sae=d_sae, tokens=tokens,
            batch_size=batch_size, seed=seed, rows=rows,
            thresholds=Thresholds(specific_norm=specific_norm, max_nu_eps=max_nu_eps, max_nu_r=max_nu_r,
                                  changed_cosine=changed_cosine),
            top=top, contexts=contexts, judge_url=judge_url, judge_model=judge_model,
            judge_api_key=os.environ.get("OPENAI_API_KEY"), base_model=base_model, finetuned_model=finetuned_model,
            data=data, causal_contexts=causal_contexts, context_size=context_size, controls=controls, device=device,
        )  # fmt: skip
    except ValidationError as e:
        for err in e.errors():
            where = "-".join(map(str, err["loc"][-1:])).replace("_", "-")
            typer.echo(f"error: {'--' + where if where else 'options'}: {err['msg']}", err=True)
        raise typer.Exit(2) from None
    err_console = Console(stderr=True)
    try:
        with err_console.status("diffing") as status:
            result = run_diff(cfg, progress=lambda msg: status.update(msg))
    except (ValueError, FileNotFoundError, StoreError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    paths = write_diff_outputs(result, cfg.out)
    counts = ", ".join(f"{n} {c}" for c, n in result.counts.items())
    typer.echo(f"{len(result.latents)} latents over {result.n_rows:,} rows: {counts}")
    if result.causal is not None:
        c = result.causal
        ctrl = c["control"]["fraction_closed_mean"]
        typer.echo(
            f"causal check: removing {len(c['latents'])} fine-tune-only latents closes "
            f"{c['fraction_closed']:.1%} of KL(base || fine-tuned); as many random latents close "
            + ("n/a" if ctrl is None else f"{ctrl:.1%}")
        )
    typer.echo("wrote " + ", ".join(str(p) for p in paths))
