"""Reading a YAML config file into a mapping, with the parser's own message (file, line, column) on error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from saeforge.errors import ConfigError


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
