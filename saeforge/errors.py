"""The one error type for bad settings, and the exit-code policy every `saeforge` command follows.

`ConfigError` is raised for anything the user must change before work can start: a flag, a YAML key, a file
that does not exist or does not fit the others (a store of another width, a latent id past d_sae). Its
message names the field (or flag) and the fix. This module imports neither torch nor any stage, so settings can
be checked before torch loads.

Exit codes (documented in docs/design.md, applied by `saeforge.cli.options.exit_codes`):

    0        success
    1        the work started and failed (bad data found while reading it, NaN/inf, a failed judge, no result)
    2        a usage or configuration error, found before any work starts (ConfigError, a bad flag)
    128 + N  stopped by signal N after saving a checkpoint (train: rerun with --resume)
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class ConfigError(ValueError):
    """A setting that cannot work, found before work starts; the message names the field and the fix."""


def closest(name: str, choices: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The (up to `n`) choices closest to a misspelt `name`, best first; [] when none is close enough."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=cutoff)


def did_you_mean(name: str, choices: Iterable[str], n: int = 1, cutoff: float = 0.6) -> str:
    """' Did you mean X?' (or 'X or Y') for a misspelt `name` among `choices`; '' when none is close. The one
    suggestion rule of every message: hook names, config keys, enum values, cfg.json keys."""
    close = closest(name, choices, n, cutoff)
    return f" Did you mean {' or '.join(close)}?" if close else ""


def _fields_at(model: type | None, loc: list) -> list[str]:
    """The field names of the (nested) pydantic model at location `loc` of `model` ([] when unknown)."""
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        model = _model_in(field.annotation) if field is not None else None
    return list(getattr(model, "model_fields", {}) or [])


def _model_in(annotation) -> type | None:
    """The pydantic model a field holds, also inside Optional[...] and list[...]; None otherwise."""
    if hasattr(annotation, "model_fields"):
        return annotation
    return next((m for a in typing.get_args(annotation) if (m := _model_in(a)) is not None), None)


def error_message(err: dict, model: type | None) -> str:
    """One pydantic error in words: "did you mean" for an unknown key of `model` and for an enum value."""
    value = err.get("input")
    if err["type"] == "extra_forbidden" and err["loc"]:
        fields = _fields_at(model, list(err["loc"][:-1]))
        if fields:
            hint = did_you_mean(str(err["loc"][-1]), fields)
            return f"unknown key.{hint or ' Valid keys: ' + ', '.join(fields) + '.'}"
    if err["type"] == "literal_error" and isinstance(value, str):
        choices = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        return f"{value!r} is not one of {', '.join(choices)}.{did_you_mean(value, choices)}"
    return err["msg"].removeprefix("Value error, ")


def format_validation_error(
    e, source: str, prefix: str = "", name_of: Callable[[str], str] | None = None, model: type | None = None
) -> str:
    """One line per error of a pydantic ValidationError `e`, each naming its field as `prefix.loc`
    (e.g. `saes.0.k`); `name_of` renames the first part of a location (a field -> its CLI flag). With the
    validated `model`, an unknown key gets the closest valid one ("did you mean"), as an unknown enum value does."""
    lines = [f"invalid {source}:"]
    for err in e.errors():
        loc = [str(p) for p in err["loc"]]
        if name_of is not None and loc:
            loc[0] = name_of(loc[0])
        where = ".".join([prefix, *loc] if prefix else loc)
        msg = error_message(err, model)
        lines.append(f"  {where}: {msg}" if where else f"  {msg}")
    return "\n".join(lines)


def read_yaml_mapping(path: str | Path, keys: str) -> dict[str, Any]:
    """The mapping YAML file `path` holds; ConfigError naming the file when it is missing, not valid YAML
    (`path:line:column: the parser's message`) or not a mapping (`keys` says which keys it should hold)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not a readable UTF-8 text file ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = " ".join(p for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p)
        raise ConfigError(
            f"{where}: not valid YAML: {problem or e}\n{mark.get_snippet() if mark is not None else ''}".rstrip()
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys ({keys}), not a {type(data).__name__}")
    return data
