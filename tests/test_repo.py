"""The project's own promises: README commands, CI, and a complete --help for every command."""

from __future__ import annotations

import re

import click
import typer.main

from tests.conftest import REPO

EXPECTED_COMMANDS = {
    "run",
    "capture",
    "train",
    "eval",
    "verify",
    "plan",
    "interpret",
    "attribute",
    "steer",
    "features",
    "serve",
    "audit",
}


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README must begin with a bash block of commands"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_begins_with_install_and_run_then_install_and_test():
    first, second = _readme_commands()[:2]
    assert first.startswith("pip install torch==2.13.0") and first.endswith("saeforge run")
    assert second.startswith("pip install torch==2.13.0") and "pytest" in second
    head = (REPO / "README.md").read_text().splitlines()[:6]
    assert any(first in line for line in head)


def test_ci_runs_exactly_the_readme_test_command():
    second = _readme_commands()[1]
    ci_lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    assert second in ci_lines


def _app() -> click.Group:
    from saeforge.cli import _register, app

    _register()
    return typer.main.get_command(app)


def _walk(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        yield f"{prefix}{name}", cmd
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, f"{prefix}{name} ")


def _is_option(p) -> bool:
    # typer vendors its own click: its options are no `click.Option`.
    return p.param_type_name == "option"


def test_every_command_and_option_is_documented():
    commands = dict(_walk(_app()))
    assert EXPECTED_COMMANDS <= set(commands), sorted(commands)
    undocumented = []
    for name, cmd in commands.items():
        if not (cmd.help or "").strip():
            undocumented.append(f"{name}: no command help")
        for p in cmd.params:
            if _is_option(p) and not (p.help or "").strip() and p.name != "help":
                undocumented.append(f"{name} {p.opts[0]}")
    assert not undocumented, undocumented


def test_python_m_saeforge_lists_the_commands(cli):
    out = cli("--help").stdout
    for name in EXPECTED_COMMANDS:
        assert name in out
