"""`saeforge capture`: activations of a local model at one or more hooks -> one store per hook."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from saeforge.cli import app


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


def _init_distributed(device: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo" if device == "cpu" else "nccl")


@app.command()
def capture(
    model: str = typer.Option(
        ..., "--model", help="Local model directory (config.json, weights, tokenizer)."
    ),
    hook: list[str] = typer.Option(
        ..., "--hook", help="Hook name, e.g. layers.3.resid_post or a module path; repeat for several stores."
    ),
    data: list[str] = typer.Option(
        ...,
        "--data",
        help="Text SOURCE: .txt, .jsonl, .parquet, a datasets directory or builtin; repeatable.",
    ),
    tokens: int = typer.Option(
        ..., "--tokens", help="Non-special corpus tokens to capture (rows per store)."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory; each hook's store goes to OUT/<hook>."),
    context_size: int = typer.Option(128, "--context-size", help="Tokens per packed context."),
    dtype: str = typer.Option("float32", "--dtype", help="Stored dtype: float32, float16 or bfloat16."),
    shard_tokens: int = typer.Option(65536, "--shard-tokens", help="Rows per shard file."),
    mix: str = typer.Option(
        None, "--mix", help="Comma-separated weights of the --data sources, e.g. 0.8,0.2 (default: equal)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Contexts per forward pass."),
    drop_outliers: float = typer.Option(
        None,
        "--drop-outliers",
        help="Drop rows whose norm exceeds this multiple of their context's median norm.",
    ),
    include_special: bool = typer.Option(
        False, "--include-special", help="Also capture BOS/EOS/PAD/CLS/SEP positions (excluded by default)."
    ),
    prepend_bos: bool = typer.Option(
        True, "--prepend-bos/--no-prepend-bos", help="Start every context with BOS."
    ),
    device: str = typer.Option(
        "cpu", "--device", help="Device of the forward pass (cpu, cuda, cuda:1, ...)."
    ),
    model_dtype: str = typer.Option("float32", "--model-dtype", help="dtype the model runs in."),
    seed: int = typer.Option(0, "--seed", help="Seed of the corpus mixture draw."),
) -> None:
    """Capture activations into checksummed shards; rerun the same command to resume after a crash.

    Under `torchrun --nproc_per_node N -m saeforge capture ...` the processes split the forward passes; one manifest per hook results.
    """
    from pydantic import ValidationError
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from saeforge.activations.capture import CaptureConfig, CaptureError, capture, store_status
    from saeforge.lock import FolderInUse

    sources = [{"source": s, "weight": w} for s, w in zip(data, _weights(mix, len(data)), strict=True)]
    try:
        cfg = CaptureConfig(
            model=model,
            hooks=hook,
            data=sources,
            tokens=tokens,
            out=out,
            context_size=context_size,
            dtype=dtype,
            shard_tokens=shard_tokens,
            batch_size=batch_size,
            drop_outliers=drop_outliers,
            exclude_special=not include_special,
            prepend_bos=prepend_bos,
            device=device,
            model_dtype=model_dtype,
            seed=seed,
        )
    except ValidationError as e:
        for err in e.errors():
            typer.echo(f"error: --{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}", err=True)
        raise typer.Exit(2) from None
    _init_distributed(device)
    rank = int(os.environ.get("RANK", "0"))
    try:
        status = store_status(cfg)
        if all(s == "complete" for s in status.values()):
            if rank == 0:
                typer.echo(f"already complete: {', '.join(str(out / h) for h in cfg.hooks)}; nothing to do.")
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
    except (CaptureError, FolderInUse, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
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
