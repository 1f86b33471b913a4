"""The `saeforge` typer app; every command module registers itself on it (`from saeforge.cli.app import app`).

`-h` is `--help` everywhere (click passes the setting down to every command), and `--version` prints the version
on the app and on every command (`add_version_options` gives each registered command the option).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import typer

from saeforge.version import __version__

app = typer.Typer(
    name="saeforge",
    help="Train, judge, read and use sparse autoencoders on your own language models, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"saeforge {__version__}")
        raise typer.Exit()


def _version_option() -> Any:
    return typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the saeforge version and exit.",
    )


def _group(version: bool = _version_option()) -> None:
    """The app's (and each command group's) own options: --version."""


app.callback()(_group)


def _with_version(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with one more option, --version (handled by its callback before the command runs)."""
    signature = inspect.signature(fn)
    if "saeforge_version" in signature.parameters:
        return fn
    hints = typing.get_type_hints(
        fn, include_extras=True
    )  # the command module's string annotations, resolved

    @functools.wraps(fn)
    def command(*args: Any, saeforge_version: bool = False, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    option = inspect.Parameter(
        "saeforge_version", inspect.Parameter.KEYWORD_ONLY, default=_version_option(), annotation=bool
    )
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()]
    params = [*own, option]
    command.__signature__ = signature.replace(parameters=params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__
    return command


def add_version_options(typer_app: typer.Typer = app) -> None:
    """Gives every command registered on `typer_app` (and its sub-apps) a --version option."""
    for info in typer_app.registered_commands:
        info.callback = _with_version(info.callback)
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        if sub.registered_callback is None:
            sub.callback()(_group)
        add_version_options(sub)
