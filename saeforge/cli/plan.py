"""`saeforge plan`: disk, memory and time a capture + training run will take, before anything runs."""

from __future__ import annotations

import typer

from saeforge.activations.config import PlanConfig
from saeforge.cli import checks
from saeforge.cli.app import app
from saeforge.cli.options import Settings, config_options, duration, exit_codes


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@app.command()
@config_options(PlanConfig, flags={"batch_size": ("--forward-batch-size", "--batch-size")})
def plan(settings: Settings) -> None:
    """Print disk, memory and time estimates for capturing TOKENS at HOOK and training an SAE on them."""
    with exit_codes():
        cfg = settings.build()
        checks.model_dir(cfg.model)
    from saeforge.plan import plan as make_plan

    with exit_codes(failed=(ValueError,)):
        p = make_plan(
            cfg.model,
            cfg.hook,
            cfg.tokens,
            cfg.dtype,
            cfg.expansion_factor,
            cfg.context_size,
            cfg.batch_size,
            cfg.out,
            cfg.device,
        )
    tokens, hook, dtype, expansion_factor, device = (
        cfg.tokens,
        cfg.hook,
        cfg.dtype,
        cfg.expansion_factor,
        cfg.device,
    )
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
        f"  capture time       {duration(p.capture_seconds)} ({p.forward_tokens_per_s:,.0f} tokens/s forward on {device})"
    )
    typer.echo(
        f"  training time      {duration(p.train_seconds)} ({p.train_tokens_per_s:,.0f} tokens/s, dense SAE step on {device})"
    )
