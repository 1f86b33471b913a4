"""The `saeforge` command: a thin skin over the Python API. One module per command."""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    name="saeforge",
    help="Train, judge, read and use sparse autoencoders on your own language models, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def hold_out_folder(ctx: typer.Context, out, command: str) -> None:
    """Holds the single-writer lock of `out` until the command `ctx` returns (saeforge.lock); exits with code
    1, naming the other writer, when another process holds it."""
    from saeforge.lock import FolderInUse, one_writer

    try:
        ctx.with_resource(one_writer(out, command))
    except FolderInUse as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def _register() -> None:
    # Each command module adds itself to `app`; importing them is all registration takes.
    from saeforge.cli import commands  # noqa: F401


def main() -> None:
    # Before torch starts: back large CPU tensors with transparent huge pages (fewer page faults on the
    # [batch, d_sae] pre-activations; 12-14% of a TopK step on the project's CPU machine, docs/benchmarks.md).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    _register()
    app()
