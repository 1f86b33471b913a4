"""Command options generated from a stage's typed config, and the exit-code policy of every command.

A setting is declared once, as a field of the stage's pydantic config: its type, default, constraint and
description. `config_options` turns fields into typer options, so `--help` shows the field's description and
default and cannot drift from the YAML:

    @app.command()
    @config_options(CaptureConfig, exclude={"data"}, flags={"hooks": "--hook"})
    def capture(settings: Settings, data: list[str] = typer.Option(..., "--data", help="...")) -> None:
        with exit_codes():
            cfg = settings.build(data=[{"source": s} for s in data])   # ConfigError naming --flags
            ...

The flag of field `foo_bar` is `--foo-bar` unless `flags` names another (a tuple adds old spellings). With
`unset=True` every option defaults to None (`--help` still shows the field's default), for commands that
also read a YAML file and must tell given flags from defaults (`saeforge train`). Fields whose type is no
single CLI value (dicts, tuples, nested models) must be excluded or given by the command itself.

Exit codes follow `saeforge.errors`: `exit_codes()` maps ConfigError (and any error while preparing) to 2 and
a failure of the work to 1, printing `error: <message>` on stderr.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from saeforge.errors import EXIT_FAILED, EXIT_USAGE, ConfigError, format_validation_error

_SCALARS = (int, float, str, bool, Path)


class Settings:
    """The values of a command's generated options; `build` validates them into the config."""

    def __init__(
        self, model: type[BaseModel], values: dict[str, Any], flags: dict[str, str], defaults: dict[str, Any]
    ) -> None:
        self.model = model
        self.values = values
        self.flags = flags
        self.defaults = defaults

    def given(self) -> dict[str, Any]:
        """The options that are not None (with `unset=True`: the ones given on the command line)."""
        return {k: v for k, v in self.values.items() if v is not None}

    def flag(self, field: str) -> str:
        return self.flags.get(field, "--" + field.replace("_", "-"))

    def build(self, model: type[BaseModel] | None = None, /, **extra: Any) -> Any:
        """`model` (default: the command's config) from the options plus `extra`; ConfigError names flags."""
        model = model or self.model
        given = {k: v for k, v in {**self.values, **extra}.items() if v is not None}
        data = {**self.defaults, **given}
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, "options", name_of=self.flag, model=model)) from None


def _cli_type(annotation: Any) -> Any:
    """The annotation typer understands for a field's type (Optional and Annotated unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{annotation} has no single CLI type")
        return _cli_type(args[0])
    if origin is typing.Annotated:
        return _cli_type(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return str  # the config checks the choice, suggesting the closest one ("did you mean")
    if origin is list:
        (item,) = typing.get_args(annotation)
        return list[_cli_type(item)]
    if annotation in _SCALARS:
        return annotation
    raise TypeError(f"{annotation} has no CLI type; exclude the field and give it from the command")


def _choices(annotation: Any) -> tuple[str, ...]:
    """The values of a Literal field type (also inside Optional, Annotated and list); () for other types."""
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(map(str, typing.get_args(annotation)))
    return next((c for a in typing.get_args(annotation) if (c := _choices(a))), ())


def _help(description: str | None, default: Any, shown: bool, choices: tuple[str, ...] = ()) -> str:
    text = (description or "").strip()
    first = text.split(" ", 1)[0]
    if first.isalpha() and first.islower():  # not a symbol such as d_sae or W_dec
        text = text[:1].upper() + text[1:]
    if text and not text.endswith("."):
        text += "."
    if choices:
        text += f" One of: {', '.join(choices)}."
    if shown and default not in (None, PydanticUndefined, ..., [], False) and "default" not in text:
        text += f" Default: {default}."
    return text


def _option(name: str, info, flag: str | tuple[str, ...], unset: bool, default: Any) -> inspect.Parameter:
    annotation = _cli_type(info.annotation)
    if default is PydanticUndefined:
        default = ... if info.is_required() else info.get_default(call_default_factory=True)
    decls = (flag,) if isinstance(flag, str) else tuple(flag)
    if annotation is bool:
        primary = decls[0].removeprefix("--")
        decls = (f"--{primary}/--no-{primary}", *decls[1:]) if default is True else decls
    option = typer.Option(
        None if unset else default,
        *decls,
        help=_help(info.description, default, shown=unset, choices=_choices(info.annotation)),
        show_default=not unset,
    )
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=option,
        annotation=annotation | None if unset else annotation,
    )


def config_options(
    model: type[BaseModel],
    *,
    exclude: set[str] | frozenset[str] = frozenset(),
    fields: list[str] | None = None,
    flags: dict[str, str | tuple[str, ...]] | None = None,
    unset: bool = False,
    defaults: dict[str, Any] | None = None,
    into: str = "settings",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: one option per field of `model` (all, or `fields`, minus `exclude`), handed to the command
    as its `settings: Settings` parameter (named `into`; decorators for two configs stack); the command's own
    parameters stay as they are. `defaults` gives the CLI's default of a field the config requires."""
    flags = dict(flags or {})
    defaults = dict(defaults or {})
    names = [n for n in (fields or list(model.model_fields)) if n not in exclude]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != into]
        generated = [
            _option(
                n,
                model.model_fields[n],
                flags.get(n, "--" + n.replace("_", "-")),
                unset,
                defaults.get(n, PydanticUndefined),
            )
            for n in names
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names}
            main = {n: (f if isinstance(f, str) else f[0]) for n, f in flags.items()}
            return fn(**{into: Settings(model, values, main, defaults)}, **kwargs)

        params = [*own, *generated]
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__
        return command

    return decorate


def duration(seconds: float) -> str:
    """A wall time as people say it: '45 s', '2 min 23 s', '1 h 48 min'."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def fail(message: str, code: int = EXIT_USAGE) -> typing.NoReturn:
    """Prints `error: message` on stderr and exits (2: the input must change; 1: the work failed)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def exit_codes(failed: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """ConfigError, ValueError and FileNotFoundError exit 2 (fix the input); the `failed` types exit 1."""
    try:
        yield
    except ConfigError as e:
        fail(str(e), EXIT_USAGE)
    except failed as e:
        fail(str(e), EXIT_FAILED)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e), EXIT_USAGE)


@contextmanager
def writing(out: Path, command: str) -> Iterator[None]:
    """Holds the single-writer lock of `out` (saeforge.lock) for the block; exits with code 1, naming the other
    writer, when another process holds it."""
    from saeforge.lock import FolderInUse, one_writer

    lock = one_writer(out, command)
    try:
        lock.__enter__()
    except FolderInUse as e:
        fail(str(e), EXIT_FAILED)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)
