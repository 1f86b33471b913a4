"""CLI options come from the typed configs: defaults and help cannot drift, flag names keep one meaning."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from saeforge.cli.options import Settings, config_options
from saeforge.errors import ConfigError
from tests.conftest import REPO, cli_env
from tests.test_repo import _app, _is_option, _walk


def _options(cmd) -> dict:
    return {p.opts[0]: p for p in cmd.params if _is_option(p)}


def test_generated_options_carry_the_fields_default_and_description():
    from saeforge.activations.config import CaptureConfig
    from saeforge.eval.config import EvalConfig

    commands = dict(_walk(_app()))
    capture, ev = _options(commands["capture"]), _options(commands["eval"])
    for flag, field in [
        ("--context-size", "context_size"),
        ("--shard-tokens", "shard_tokens"),
        ("--seed", "seed"),
    ]:
        info = CaptureConfig.model_fields[field]
        assert capture[flag].default == info.default
        assert info.description[1:] in capture[flag].help
    assert ev["--batch-rows"].default == EvalConfig.model_fields["batch_size"].default
    assert "--batch-size" in ev["--batch-rows"].opts  # the old spelling still parses


def test_device_has_one_default_and_batch_size_one_meaning():
    commands = dict(_walk(_app()))
    defaults = {
        name: _options(cmd)["--device"].default
        for name, cmd in commands.items()
        if "--device" in _options(cmd)
    }
    assert len(defaults) >= 7 and set(defaults.values()) - {None} == {"auto"}, defaults
    primary = [name for name, cmd in commands.items() if "--batch-size" in _options(cmd)]
    assert primary == ["train"]


class _Toy(BaseModel):
    n: int = Field(default=3, gt=0, description="rows per step")
    mode: str = Field(default="a", description="a mode")


def test_settings_build_names_the_flag_in_errors():
    app = typer.Typer()
    seen = {}

    @app.command()
    @config_options(_Toy, flags={"n": ("--rows", "--n")})
    def toy(settings: Settings) -> None:
        seen["cfg"] = settings.build()

    runner = CliRunner()
    assert runner.invoke(app, ["--n", "5"]).exit_code == 0 and seen["cfg"].n == 5
    assert "Rows per step." in runner.invoke(app, ["--help"]).output
    with pytest.raises(ConfigError, match="--rows: Input should be greater than 0"):
        Settings(_Toy, {"n": 0, "mode": "a"}, {"n": "--rows"}, {}).build()
    assert typer.main.get_command(app).params[0].default == 3


def test_config_modules_and_help_import_no_torch():
    code = (
        "import sys\n"
        "import saeforge.activations.config, saeforge.train.config, saeforge.eval.config\n"
        "import saeforge.interpret.config, saeforge.steer.config, saeforge.errors, saeforge.dtypes\n"
        "from saeforge.cli import _register; _register()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=cli_env())
