"""`saeforge eval`: judge SAEs on held-out activations (and the model's loss) -> metrics.json, table, plots."""

from __future__ import annotations

from pathlib import Path

import typer

from saeforge.cli import checks
from saeforge.cli.app import app
from saeforge.cli.options import Settings, config_options, exit_codes
from saeforge.eval.config import EvalConfig


@app.command("eval")
@config_options(
    EvalConfig,
    exclude={"out"},
    flags={
        "saes": "--sae",
        "batch_size": ("--batch-rows", "--batch-size"),
        "downstream_batch_size": ("--forward-batch-size", "--downstream-batch-size"),
    },
)
def eval_command(
    settings: Settings,
    out: Path = typer.Option(
        ..., "--out", help="Output directory: OUT/<sae name>/metrics.json, comparison.csv/.json, plots."
    ),
) -> None:
    """Evaluate SAEs: reconstruction (FVU), sparsity (L0, dead, dense), downstream loss, dictionary health.

    Each SAE gets a verdict (good, deceptively-good, dead, duplicated, noisy) with its evidence; rules and every
    metric are defined in docs/evaluation.md. SAEs of one config trained with different seeds are also compared
    for stability. With --compare-activations (SAE transfer, e.g. a base SAE on a fine-tuned model's
    activations), each SAE is also evaluated on that store and its latents' frequency drift is listed. A
    transcoder is judged on its target site (--target-activations; with --model, spliced in place of the MLP's
    output), a crosscoder on every site (one --activations store per site, in its order).
    """
    with exit_codes():
        cfg = settings.build(out=out)
        _check_files(cfg)
    from rich.console import Console

    from saeforge.cli.output import make_console, print_table
    from saeforge.eval import run_eval, write_eval_outputs
    from saeforge.eval.drift import drift_line
    from saeforge.report.evaluation import comparison_keys, comparison_rows
    from saeforge.report.format import fmt

    err_console = Console(stderr=True)
    with exit_codes(failed=(ValueError, FileNotFoundError)), err_console.status("evaluating") as status:
        results = run_eval(cfg, progress=lambda msg: status.update(msg))
    paths = write_eval_outputs(results, cfg.out)

    rows = comparison_rows(results)
    keys = [
        k for k in comparison_keys(results) if any(row[k] is not None for row in rows)
    ]  # measured columns only
    cells = [[fmt(row[k]) for k in keys] for row in rows]
    console = make_console()
    print_table(
        console,
        keys,
        cells,
        title="SAE evaluation",
        left=[i for i, k in enumerate(keys) if k in ("name", "verdict")],
    )
    for r in results:
        console.print(f"[bold]{r['name']}[/bold]: {r['verdict_evidence']}")
        if r.get("drift") is not None:
            console.print(drift_line(r))
    console.print(f"metrics and plots in {cfg.out} ({len(paths)} files)")


def _check_files(cfg: EvalConfig) -> None:
    """The SAEs, stores, models and corpora exist and fit each other (before torch loads)."""
    for m in (cfg.model, cfg.compare_model):
        if m is not None:
            checks.model_dir(m, "--model" if m is cfg.model else "--compare-model")
    stores = [*cfg.activations, *[s for s in (cfg.target_activations, cfg.compare_activations) if s]]
    for store in stores:
        checks.store_manifest(store)
    for sae in cfg.saes:
        if len(cfg.activations) == 1:
            checks.sae_fits_store(sae, cfg.activations[0])
        else:
            checks.sae_cfg(sae)
    checks.corpora([s for s in (cfg.data, *cfg.extra_data) if s], "--data")
