"""`saeforge steer`: generate from a local causal LM steered along an SAE latent, or export its direction."""

from __future__ import annotations

import typer

from saeforge.cli import checks
from saeforge.cli.app import app
from saeforge.cli.options import Settings, config_options, exit_codes, fail
from saeforge.steer.config import SteerConfig


def parse_coefficients(coefficient: list[float] | None, sweep: str | None) -> list[float]:
    values = list(coefficient or [])
    if sweep:
        try:
            values += [float(v) for v in sweep.split(",") if v.strip()]
        except ValueError:
            raise typer.BadParameter(f"--sweep takes comma-separated numbers, got {sweep!r}") from None
    return values


@app.command()
@config_options(SteerConfig, exclude={"coefficients"})
def steer(
    settings: Settings,
    coefficient: list[float] = typer.Option(
        None,
        "--coefficient",
        "-c",
        help="Add C * direction at the SAE's hook; repeat for several generations.",
    ),
    sweep: str = typer.Option(None, "--sweep", help="Comma-separated coefficients, e.g. -20,0,20,50."),
) -> None:
    """Generate from a causal LM steered along an SAE latent (sweeps, clamping), or export its direction.

    One greedy generation per coefficient adds C x W_dec[latent] at the SAE's hook (plus the plain one for
    comparison); --clamp sets the latent through the SAE instead, keeping the SAE's error term; --export
    writes the direction as .npy and .safetensors.
    """
    with exit_codes():
        cfg = settings.build(coefficients=parse_coefficients(coefficient, sweep))
        checks.sae_cfg(cfg.sae)
        if cfg.generating:
            checks.model_dir(cfg.model)
    from saeforge.sae import load_sae
    from saeforge.steer import clamping, decoder_direction, export_direction, generate
    from saeforge.steer import sweep as run_sweep

    with exit_codes():
        sae_obj = load_sae(cfg.sae, device=cfg.device)
        direction = decoder_direction(sae_obj, cfg.latent, cfg.normalize)
    latent, prompt, n_new, clamp = cfg.latent, cfg.prompt, cfg.max_new_tokens, cfg.clamp
    if cfg.export is not None:
        npy, st = export_direction(sae_obj, latent, cfg.export, cfg.normalize)
        typer.echo(f"wrote {npy} and {st}")
    if not cfg.generating:
        return
    hook = cfg.hook or sae_obj.cfg.metadata.get("hook_name")
    if not hook:
        fail("the SAE's cfg.json names no hook_name: pass --hook")
    from saeforge.models import HookError, load_model

    try:
        loaded = load_model(cfg.model, device=cfg.device, device_map=cfg.device_map)
        plain_ids, plain = generate(loaded, prompt, n_new)
        if clamp is not None:
            with clamping(loaded, hook, sae_obj, latent, clamp):
                _, text = generate(loaded, prompt, n_new)
            rows = [(f"clamp {clamp:g}", text)]
        else:
            rows = [
                (f"{g.coefficient:+g}", g.text)
                for g in run_sweep(loaded, hook, direction, cfg.coefficients, prompt, n_new)
            ]
    except (HookError, ValueError) as e:
        fail(str(e))
    from rich.console import Console
    from rich.table import Table

    table = Table("setting", "continuation", title=f"latent {latent} at {hook}: {prompt!r}")
    table.add_row("plain", plain)
    for setting, text in rows:
        table.add_row(setting, text)
    Console(width=140).print(table)
