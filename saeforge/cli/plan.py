"""`saeforge plan`: disk, memory and time a capture + training run will take, before anything runs."""

from __future__ import annotations

from pathlib import Path

import typer

from saeforge.cli import app


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


@app.command()
def plan(
    model: str = typer.Option(..., "--model", help="Local model directory."),
    hook: str = typer.Option(..., "--hook", help="Hook name the SAE will read, e.g. layers.3.resid_post."),
    tokens: int = typer.Option(..., "--tokens", help="Tokens to capture and train on."),
    dtype: str = typer.Option("float32", "--dtype", help="Stored dtype: float32, float16 or bfloat16."),
    expansion_factor: float = typer.Option(
        16.0, "--expansion-factor", help="d_sae / d_in of the planned SAE."
    ),
    context_size: int = typer.Option(128, "--context-size", help="Tokens per context of the timed forward."),
    batch_size: int = typer.Option(8, "--batch-size", help="Contexts per timed forward pass."),
    out: Path = typer.Option(
        None, "--out", help="Where the store would go (to compare with free disk space)."
    ),
    device: str = typer.Option("cpu", "--device", help="Device to time the forward pass and SAE step on."),
) -> None:
    """Print disk, memory and time estimates for capturing TOKENS at HOOK and training an SAE on them."""
    from saeforge.activations.plan import plan as make_plan
    from saeforge.activations.store import TORCH_DTYPES

    if dtype not in TORCH_DTYPES:
        typer.echo(f"error: --dtype must be one of {', '.join(TORCH_DTYPES)}, got {dtype!r}", err=True)
        raise typer.Exit(2)
    if tokens <= 0 or expansion_factor <= 0:
        typer.echo("error: --tokens and --expansion-factor must be positive", err=True)
        raise typer.Exit(2)
    try:
        p = make_plan(model, hook, tokens, dtype, expansion_factor, context_size, batch_size, out, device)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"plan for {tokens:,} tokens at {hook} (d_in {p.d_in}), SAE d_sae {p.d_sae:,} ({expansion_factor:g}x)"
    )
    typer.echo(f"  store on disk      {_size(p.store_bytes)} ({dtype})")
    if p.free_bytes is not None:
        verdict = (
            "fits" if p.free_bytes >= p.store_bytes else f"MISSING {_size(p.store_bytes - p.free_bytes)}"
        )
        typer.echo(f"  free disk at out   {_size(p.free_bytes)} ({verdict})")
    typer.echo(
        f"  SAE + Adam memory  {_size(p.sae_adam_bytes)} ({p.sae_params:,} float32 parameters x 4: weights, grads, 2 moments)"
    )
    typer.echo(f"  working memory     {_size(p.batch_bytes)} per batch of 4096 rows")
    typer.echo(
        f"  capture time       {_duration(p.capture_seconds)} ({p.forward_tokens_per_s:,.0f} tokens/s forward on {device})"
    )
    typer.echo(
        f"  training time      {_duration(p.train_seconds)} ({p.train_tokens_per_s:,.0f} tokens/s, dense SAE step on {device})"
    )
