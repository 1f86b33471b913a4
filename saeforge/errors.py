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

from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class ConfigError(ValueError):
    """A setting that cannot work, found before work starts; the message names the field and the fix."""


def format_validation_error(
    e, source: str, prefix: str = "", name_of: Callable[[str], str] | None = None
) -> str:
    """One line per error of a pydantic ValidationError `e`, each naming its field as `prefix.loc`
    (e.g. `saes.0.k`); `name_of` renames the first part of a location (a field -> its CLI flag)."""
    lines = [f"invalid {source}:"]
    for err in e.errors():
        loc = [str(p) for p in err["loc"]]
        if name_of is not None and loc:
            loc[0] = name_of(loc[0])
        where = ".".join([prefix, *loc] if prefix else loc)
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}" if where else f"  {msg}")
    return "\n".join(lines)
