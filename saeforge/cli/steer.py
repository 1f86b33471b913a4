"""`saeforge steer`: generate from a local causal LM steered along an SAE latent, or export its direction."""

from __future__ import annotations

from pathlib import Path

import typer

from saeforge.cli import app


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def parse_coefficients(coefficient: list[float] | None, sweep: str | None) -> list[float]:
    values = list(coefficient or [])
    if sweep:
        try:
            values += [float(v) for v in sweep.split(",") if v.strip()]
        except ValueError:
            raise typer.BadParameter(f"--sweep takes comma-separated numbers, got {sweep!r}") from None
    return values


@app.command()
def steer(
    sae: Path = typer.Option(..., "--sae", help="SAE directory (cfg.json + sae_weights.safetensors)."),
    latent: int = typer.Option(..., "--latent", help="Latent whose decoder direction W_dec[latent] steers."),
    model: Path = typer.Option(None, "--model", help="Local causal LM directory (needed to generate)."),
    prompt: str = typer.Option(None, "--prompt", help="Prompt to continue (needed to generate)."),
    coefficient: list[float] = typer.Option(
        None,
        "--coefficient",
        "-c",
        help="Add C * direction at the SAE's hook; repeat for several generations.",
    ),
    sweep: str = typer.Option(None, "--sweep", help="Comma-separated coefficients, e.g. -20,0,20,50."),
    clamp: float = typer.Option(
        None,
        "--clamp",
        help="Instead of adding, set the latent to this value through the SAE (keeps its error).",
    ),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Tokens generated (greedy) per setting."),
    normalize: bool = typer.Option(False, "--normalize", help="Use the unit-norm decoder direction."),
    hook: str = typer.Option(None, "--hook", help="Hook to steer at (default: the SAE's hook_name)."),
    export: Path = typer.Option(
        None, "--export", help="Write the direction to DIR/latent_<i>.npy and .safetensors."
    ),
    device: str = typer.Option("cpu", "--device", help="Device for the model and SAE (cpu, cuda, ...)."),
) -> None:
    """Generate from a causal LM steered along an SAE latent (sweeps, clamping), or export its direction.

    One greedy generation per coefficient adds C x W_dec[latent] at the SAE's hook (plus the plain one for
    comparison); --clamp sets the latent through the SAE instead, keeping the SAE's error term; --export
    writes the direction as .npy and .safetensors.
    """
    from saeforge.sae import load_sae
    from saeforge.steer import clamping, decoder_direction, export_direction, generate
    from saeforge.steer import sweep as run_sweep

    coefs = parse_coefficients(coefficient, sweep)
    generating = model is not None or prompt is not None
    if generating and (model is None or prompt is None):
        _fail("generating needs both --model and --prompt")
    if not generating and export is None:
        _fail("nothing to do: give --model and --prompt to generate, or --export DIR")
    if generating and not coefs and clamp is None:
        _fail("give --coefficient C (repeatable), --sweep a,b,c or --clamp VALUE")
    if clamp is not None and coefs:
        _fail("--clamp sets the latent through the SAE; do not combine it with --coefficient/--sweep")
    if max_new_tokens <= 0:
        _fail(f"--max-new-tokens must be positive, got {max_new_tokens}")
    try:
        sae_obj = load_sae(sae, device=device)
        direction = decoder_direction(sae_obj, latent, normalize)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    if export is not None:
        npy, st = export_direction(sae_obj, latent, export, normalize)
        typer.echo(f"wrote {npy} and {st}")
    if not generating:
        return
    hook = hook or sae_obj.cfg.metadata.get("hook_name")
    if not hook:
        _fail("the SAE's cfg.json names no hook_name: pass --hook")
    from saeforge.models import HookError, load_model

    try:
        loaded = load_model(model, device=device)
        plain_ids, plain = generate(loaded, prompt, max_new_tokens)
        if clamp is not None:
            with clamping(loaded, hook, sae_obj, latent, clamp):
                _, text = generate(loaded, prompt, max_new_tokens)
            rows = [(f"clamp {clamp:g}", text)]
        else:
            rows = [
                (f"{g.coefficient:+g}", g.text)
                for g in run_sweep(loaded, hook, direction, coefs, prompt, max_new_tokens)
            ]
    except (HookError, ValueError) as e:
        _fail(str(e))
    from rich.console import Console
    from rich.table import Table

    table = Table("setting", "continuation", title=f"latent {latent} at {hook}: {prompt!r}")
    table.add_row("plain", plain)
    for setting, text in rows:
        table.add_row(setting, text)
    Console(width=140).print(table)
