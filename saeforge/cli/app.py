"""The `saeforge` typer app; every command module registers itself on it (`from saeforge.cli.app import app`)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="saeforge",
    help="Train, judge, read and use sparse autoencoders on your own language models, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
