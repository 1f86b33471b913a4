"""The `saeforge` command: a thin skin over the Python API. One module per command.

Command options come from the stages' typed configs (`saeforge.cli.options`); errors and exit codes follow
`saeforge.errors`.
"""

from __future__ import annotations

from saeforge.cli.app import add_version_options, app

__all__ = ["app", "main"]


def _register() -> None:
    # Each command module adds itself to `app`; importing them is all registration takes.
    from saeforge.cli import commands  # noqa: F401

    add_version_options()


def main() -> None:
    _register()
    app()
