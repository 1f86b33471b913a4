"""`saeforge diff`: what did fine-tuning change? A crosscoder over the base and fine-tuned stores, read latent
by latent -> diff.json, latents.csv, diff_report.html. Options are DiffConfig's and Thresholds' fields."""

from __future__ import annotations

import os

import typer

from saeforge.cli.app import app
from saeforge.cli.options import Settings, config_options, exit_codes
from saeforge.diff.categories import Thresholds
from saeforge.diff.config import DiffConfig


@app.command()
@config_options(DiffConfig, exclude={"thresholds", "judge_api_key"})
@config_options(Thresholds, into="thresholds")
def diff(settings: Settings, thresholds: Settings) -> None:
    """Diff a fine-tuned model against its base: train (or load) a BatchTopK crosscoder on both models'
    activations of the same tokens, then per latent decoder norms, Latent Scaling ratios and a category
    (shared, changed, base_only, finetuned_only). With --base-model/--finetuned-model, a causal check. The
    judge key comes from OPENAI_API_KEY. Method: docs/diffing.md."""
    from rich.console import Console

    from saeforge.activations import StoreError

    with exit_codes():
        cfg = settings.build(thresholds=thresholds.build(), judge_api_key=os.environ.get("OPENAI_API_KEY"))
    from saeforge.diff.outputs import write_diff_outputs
    from saeforge.diff.run import run_diff

    err_console = Console(stderr=True)
    with exit_codes(failed=(StoreError,)), err_console.status("diffing") as status:
        result = run_diff(cfg, progress=lambda msg: status.update(msg))
    paths = write_diff_outputs(result, cfg.out)
    counts = ", ".join(f"{n} {c}" for c, n in result.counts.items())
    typer.echo(f"{len(result.latents)} latents over {result.n_rows:,} rows: {counts}")
    if result.causal is not None and "skipped" in result.causal:
        typer.echo(f"causal check skipped: {result.causal['skipped']}")
    elif result.causal is not None:
        c = result.causal
        ctrl = c["control"]["fraction_closed_mean"]
        typer.echo(
            f"causal check: removing {len(c['latents'])} fine-tune-only latents closes "
            f"{c['fraction_closed']:.1%} of KL(base || fine-tuned); as many random latents close "
            + ("n/a" if ctrl is None else f"{ctrl:.1%}")
        )
    typer.echo("wrote " + ", ".join(str(p) for p in paths))
