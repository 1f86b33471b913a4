"""`saeforge plan`: disk, memory and time a capture + training run will take, before anything runs."""

from __future__ import annotations

import typer

from saeforge.activations.config import PlanConfig
from saeforge.cli import checks
from saeforge.cli.app import app
from saeforge.cli.options import Settings, config_options, duration, exit_codes
from saeforge.errors import ConfigError
from saeforge.plan.layouts import LayoutConfig


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@app.command()
@config_options(PlanConfig, flags={"batch_size": ("--forward-batch-size", "--batch-size")})
@config_options(LayoutConfig, flags={"layouts": "--layout"}, into="layout")
def plan(settings: Settings, layout: Settings) -> None:
    """Print disk, memory and time estimates for capturing TOKENS at HOOK and training an SAE on them (with
    --model), and with --device-spec the per-rank memory, step time, wall time and cost of T x D layouts."""
    with exit_codes():
        cfg = settings.build()
        lay = layout.build()
        if cfg.model is not None:
            checks.model_dir(cfg.model)  # before torch loads
        if cfg.model is None and lay.d_in is None:
            raise ConfigError("give --model and --hook (estimates timed here) or --d-in (layouts only)")
        if cfg.model is None and lay.device_spec is None:
            raise ConfigError(
                "without --model, give --device-spec (h100-80gb, h200-141gb, b200, cpu or a file)"
            )
    d_in = lay.d_in
    if cfg.model is not None:
        d_in = _machine(cfg).d_in
    if lay.device_spec is not None:
        _layouts(cfg, lay, d_in)


def _machine(cfg):
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
    return p


def _layouts(cfg, lay, d_in: int) -> None:
    from saeforge.plan import device_spec, parse_layout, plan_layouts

    d_sae = lay.d_sae or int(round(cfg.expansion_factor * d_in))
    with exit_codes():
        device = device_spec(lay.device_spec, lay.efficiency)
        chosen = [parse_layout(t) for t in lay.layouts] or None
        try:
            plans = plan_layouts(
                d_in,
                d_sae,
                lay.k,
                lay.train_batch_size,
                cfg.tokens,
                device,
                chosen,
                lay.max_devices,
                lay.price_per_device_hour,
            )
        except ValueError as e:
            raise ConfigError(f"--layout: {e}") from None
    rates = (
        f"{device.gemm_flops / 1e12:.3g} TFLOP/s GEMM, {device.memory_bytes_per_s / 1e9:.3g} GB/s memory, "
    )
    rates += f"{device.link_bytes_per_s / 1e9:.3g} GB/s link"
    source = "measured here" if device.measured else f"datasheet x {lay.efficiency:g}, not measured here"
    typer.echo(
        f"layouts for d_in {d_in}, d_sae {d_sae:,}, k {lay.k}, batch {lay.train_batch_size} tokens, "
        f"{cfg.tokens:,} tokens on {device.name} ({_size(device.memory_bytes)}; {rates}; {source})"
    )
    cost = lay.price_per_device_hour is not None
    head = f"  {'TxD':>5} {'weights':>10} {'Adam':>10} {'grads':>10} {'acts':>10} {'total':>10} {'fits':>4}"
    head += f" {'step':>9} {'comm':>9} {'tokens/s':>11} {'wall':>8}" + (f" {'cost':>10}" if cost else "")
    typer.echo(head)
    for p in plans:
        row = f"  {str(p.layout):>5}" + "".join(
            f" {_size(b):>10}" for b in (p.weight_bytes, p.adam_bytes, p.grad_bytes, p.activation_bytes)
        )
        row += f" {_size(p.memory_bytes):>10} {'yes' if p.fits else 'NO':>4} {p.step_s * 1e3:>7.2f}ms"
        row += f" {(p.tp_comm_s + p.dp_comm_s) * 1e3:>7.2f}ms {lay.train_batch_size / p.step_s:>11,.0f}"
        row += f" {duration(p.wall_s):>8}" + (f" {p.cost:>10,.2f}" if cost else "")
        typer.echo(row)
    fitting = [p for p in plans if p.fits]
    if fitting:
        best = min(fitting, key=lambda p: (p.wall_s, p.layout.devices))
        cheapest = min(fitting, key=lambda p: (p.device_hours, p.wall_s))
        typer.echo(
            f"  fastest that fits: {best.layout} ({duration(best.wall_s)}); "
            f"fewest device-hours: {cheapest.layout} ({cheapest.device_hours:,.1f})"
        )
    else:
        typer.echo("  no layout fits: add devices (--max-devices) or shrink d_sae or the batch")
    typer.echo(
        "  memory per rank (fp32 weights, Adam moments, gradients, one batch); times without overlap "
        "(docs/training.md, Planning layouts)"
    )
