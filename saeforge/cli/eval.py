"""`saeforge eval`: judge SAEs on held-out activations (and the model's loss) -> metrics.json, table, plots."""

from __future__ import annotations

from pathlib import Path

import typer

from saeforge.cli import app


@app.command("eval")
def eval_command(
    sae: list[Path] = typer.Option(
        ..., "--sae", help="SAE directory (cfg.json + sae_weights.safetensors); repeat to compare several."
    ),
    activations: Path = typer.Option(
        ..., "--activations", help="Held-out activation store captured at the SAEs' hook (saeforge capture)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output directory: OUT/<sae name>/metrics.json, comparison.csv/.json, plots."
    ),
    verify: bool = typer.Option(
        True,
        "--verify/--no-verify",
        help="Check each shard's sha256 as it is first read; --no-verify loads a store without checksums.",
    ),
    model: Path = typer.Option(
        None,
        "--model",
        help="Local model directory; enables CE/KL scores (causal) or pooled cosine (encoder).",
    ),
    data: str = typer.Option(
        None,
        "--data",
        help="Text SOURCE for downstream contexts (.txt, .jsonl, .parquet, datasets dir, builtin:heldout); "
        "default: the contexts kept in the store, else its corpus.",
    ),
    extra_data: list[str] = typer.Option(
        [],
        "--extra-data",
        help="Out-of-sample text SOURCE, evaluated through the model (keys extra.<name>.*); repeatable.",
    ),
    tokens: int = typer.Option(
        None, "--tokens", help="Activation rows to read from the store (default: all of them)."
    ),
    batch_size: int = typer.Option(4096, "--batch-size", help="Activation rows per batch."),
    contexts: int = typer.Option(64, "--contexts", help="Token contexts per corpus for downstream metrics."),
    context_size: int = typer.Option(
        None, "--context-size", help="Tokens per context packed from --data (default: the store's, else 128)."
    ),
    downstream_batch_size: int = typer.Option(
        8, "--downstream-batch-size", help="Contexts per model forward pass."
    ),
    device: str = typer.Option("cpu", "--device", help="Device for the SAEs and the model (cpu, cuda, ...)."),
    hungarian_max_latents: int = typer.Option(
        8192,
        "--hungarian-max-latents",
        help="Largest d_sae for which the Hungarian stability match across seeds is computed.",
    ),
) -> None:
    """Evaluate SAEs: reconstruction (FVU), sparsity (L0, dead, dense), downstream loss, dictionary health.

    Each SAE gets a verdict (good, deceptively-good, dead, duplicated, noisy) with its evidence; rules and every
    metric are defined in docs/evaluation.md. SAEs of one config trained with different seeds are also compared
    for stability.
    """
    from pydantic import ValidationError
    from rich.console import Console
    from rich.table import Table

    from saeforge.eval import EvalConfig, comparison_rows, run_eval, write_eval_outputs
    from saeforge.eval.outputs import COMPARISON_KEYS

    try:
        cfg = EvalConfig(
            saes=sae,
            activations=activations,
            verify=verify,
            out=out,
            model=model,
            data=data,
            extra_data=extra_data,
            tokens=tokens,
            batch_size=batch_size,
            contexts=contexts,
            context_size=context_size,
            downstream_batch_size=downstream_batch_size,
            device=device,
            hungarian_max_latents=hungarian_max_latents,
        )
    except ValidationError as e:
        for err in e.errors():
            where = "-".join(map(str, err["loc"])).replace("_", "-")
            typer.echo(f"error: {'--' + where if where else 'options'}: {err['msg']}", err=True)
        raise typer.Exit(2) from None

    err_console = Console(stderr=True)
    try:
        with err_console.status("evaluating") as status:
            results = run_eval(cfg, progress=lambda msg: status.update(msg))
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    paths = write_eval_outputs(results, cfg.out)

    rows = comparison_rows(results)
    keys = [k for k in COMPARISON_KEYS if any(row[k] is not None for row in rows)]  # measured columns only
    table = Table(title="SAE evaluation")
    for key in keys:
        text = key in ("name", "verdict")
        table.add_column(
            key, justify="left" if text else "right", no_wrap=text, min_width=len(key) if text else None
        )
    for row in rows:
        table.add_row(
            *(
                "–" if row[k] is None else f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k])
                for k in keys
            )
        )
    console = Console()
    console.print(table)
    for r in results:
        console.print(f"[bold]{r['name']}[/bold]: {r['verdict_evidence']}")
    console.print(f"metrics and plots in {cfg.out} ({len(paths)} files)")
