"""The `saeforge` command: a thin skin over the Python API. One module per command.

Command options come from the stages' typed configs (`saeforge.cli.options`); errors and exit codes follow
`saeforge.errors`.
"""

from __future__ import annotations

import os

from saeforge.cli.app import add_version_options, app

__all__ = ["app", "main"]


def _register() -> None:
    # Each command module adds itself to `app`; importing them is all registration takes.
    from saeforge.cli import commands  # noqa: F401

    add_version_options()


def main() -> None:
    # Before torch starts: back large CPU tensors with transparent huge pages (fewer page faults on the
    # [batch, d_sae] pre-activations; 12-14% of a TopK step on the project's CPU machine, docs/benchmarks.md).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    _register()
    app()
