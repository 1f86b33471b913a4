"""`saeforge serve` option handling (in-process, failing before any model loads) and RUN_DIR resolution."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from saeforge.cli import _register, app
from saeforge.serve.server import from_run_dir


def invoke(*args):
    _register()
    return CliRunner().invoke(app, ["serve", *map(str, args)])


def test_refuses_public_bind_without_keys_and_bad_options(serve_assets, tmp_path):
    r = invoke("--model", serve_assets["model"], "--host", "0.0.0.0", "--audit-log", tmp_path / "a")
    assert r.exit_code == 2 and "--insecure-no-auth" in r.output
    r = invoke("--model", serve_assets["model"], "--audit-text", "partial")
    assert r.exit_code == 2 and "--audit-text" in r.output
    r = invoke()
    assert r.exit_code == 2 and "nothing to serve" in r.output
    r = invoke("--model", serve_assets["model"], "--api-keys", tmp_path / "missing.txt")
    assert r.exit_code == 2 and "no such file" in r.output


def test_run_dir_gives_model_saes_and_index(serve_assets, tmp_path):
    run = tmp_path / "run"
    sae_dir = run / "saes" / "layers.1.resid_post" / "relu32"
    shutil.copytree(serve_assets["sae"], sae_dir)
    shutil.copy(serve_assets["index"] / "features.sqlite", sae_dir / "features.sqlite")
    (run / "config.yaml").write_text(f"model: {serve_assets['model']}\n")
    found = from_run_dir(run)
    assert found["model"] == serve_assets["model"] and found["sae"] == [sae_dir]
    assert found["index"] == [f"relu32={sae_dir}"]
    r = invoke(tmp_path / "nothing-here")
    assert r.exit_code == 2 and "config.yaml" in r.output
