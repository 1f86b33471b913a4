"""`saeforge capture`: activations of a local model at one or more hooks -> one store per hook.

`--model BASE --model FINETUNED` captures both models over the same contexts (paired capture, for `saeforge
diff`): OUT/base/<hook> and OUT/finetuned/<hook>. The two `--model`s fill CaptureConfig's `model` and
`finetuned_model`.
"""

from __future__ import annotations

import os

import typer

from saeforge.activations.config import CaptureConfig
from saeforge.cli import checks
from saeforge.cli.app import app
from saeforge.cli.options import Settings, config_options, exit_codes, fail
from saeforge.errors import EXIT_FAILED, EXIT_USAGE


def _weights(mix: str | None, n: int) -> list[float]:
    if mix is None:
        return [1.0] * n
    try:
        weights = [float(w) for w in mix.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--mix must be comma-separated numbers, got {mix!r}") from None
    if len(weights) != n:
        raise typer.BadParameter(
            f"--mix gives {len(weights)} weights for {n} --data sources; give one per source"
        )
    return weights


@app.command()
@config_options(
    CaptureConfig,
    exclude={"data", "exclude_special", "model", "finetuned_model"},
    flags={"hooks": "--hook", "batch_size": ("--forward-batch-size", "--batch-size")},
)
def capture(
    settings: Settings,
    model: list[str] = typer.Option(
        ...,
        "--model",
        help="Local model directory (config.json, weights, tokenizer), or builtin for the demo MiniLM. Give it "
        "twice, --model BASE --model FINETUNED, to capture both over the same contexts into OUT/base/<hook> and "
        "OUT/finetuned/<hook>.",
    ),
    data: list[str] = typer.Option(
        ...,
        "--data",
        help="Text SOURCE: .txt, .jsonl, .parquet, a datasets directory or builtin; repeatable.",
    ),
    mix: str = typer.Option(
        None, "--mix", help="Comma-separated weights of the --data sources, e.g. 0.8,0.2 (default: equal)."
    ),
    include_special: bool = typer.Option(
        False, "--include-special", help="Also capture BOS/EOS/PAD/CLS/SEP positions (excluded by default)."
    ),
) -> None:
    """Capture activations into checksummed shards; rerun the same command to resume after a crash.

    Under `torchrun --nproc_per_node N -m saeforge capture ...` the processes split the forward passes; one manifest per hook results.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    sources = [{"source": s, "weight": w} for s, w in zip(data, _weights(mix, len(data)), strict=True)]
    if len(model) > 2:
        fail(f"--model is given {len(model)} times; give one model, or two (--model BASE --model FINETUNED)")
    with exit_codes():
        model = [_model_dir(m) for m in model]
        cfg = settings.build(
            model=model[0],
            finetuned_model=model[1] if len(model) == 2 else None,
            data=sources,
            exclude_special=not include_special,
        )
        for m in model:
            checks.model_dir(m)
        checks.corpora(data)
    from saeforge.activations.capture import CaptureError, capture, store_status
    from saeforge.lock import FolderInUse
    from saeforge.models import HookError, ModelLoadError

    out, tokens = cfg.out, cfg.tokens
    rank = int(os.environ.get("RANK", "0"))
    try:
        status = store_status(cfg)
        if all(s == "complete" for s in status.values()):
            if rank == 0:
                typer.echo(
                    f"already complete: {', '.join(map(str, cfg.store_dirs().values()))}; nothing to do."
                )
            return
        if rank == 0 and any(s == "partial" for s in status.values()):
            typer.echo(f"resuming the partial capture in {out}")
        with Progress(
            TextColumn("capture"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} tokens"),
            TimeRemainingColumn(),
            disable=rank != 0,
        ) as bar:
            task = bar.add_task("capture", total=tokens)
            dirs = capture(cfg, progress=lambda done, total: bar.update(task, completed=done))
    except (HookError, ModelLoadError) as e:  # the input must change (saeforge.errors)
        fail(str(e), EXIT_USAGE)
    except (CaptureError, FolderInUse, ValueError) as e:
        fail(str(e), EXIT_FAILED)
    if rank == 0:
        from saeforge.activations.store import ActivationStore

        for h, d in dirs.items():
            store = ActivationStore.open(d)
            counts = store.manifest.tokens
            typer.echo(
                f"{h}: {store.num_rows:,} rows x d_in {store.d_in} ({store.manifest.dtype}) in {store.num_shards} "
                f"shards at {d}; {counts.special_excluded:,} special tokens excluded, "
                f"{counts.outliers_dropped:,} outliers dropped"
            )


def _model_dir(model: str) -> str:
    """'builtin' -> the demo MiniLM's directory (sha256-checked), as `model: builtin` in a run config."""
    from saeforge.run_config import BUILTIN_MODEL

    if model != BUILTIN_MODEL:
        return model  # checked below, before torch is imported
    from saeforge.models import builtin_example_model

    return str(builtin_example_model())
