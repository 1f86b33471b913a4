"""`saeforge steer` and `saeforge attribute` end to end on a tiny local GPT-2."""

from __future__ import annotations

import json

import pytest

from saeforge.interpret.records import Interpretation, load_interpretation, save_interpretation
from saeforge.sae import save_sae
from saeforge.sae.base import SAEConfig
from saeforge.sae.standard import StandardSAE
from tests.interpret.helpers import relu_sae

HOOK = "layers.2.resid_post"


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    src = relu_sae(64, 32, seed=5, hook=HOOK, b_enc=False)
    sae = StandardSAE(SAEConfig(architecture="standard", d_in=64, d_sae=32))
    sae.load_state_dict(src.state_dict())
    return save_sae(sae, tmp_path_factory.mktemp("sae") / "sae", metadata={"hook_name": HOOK})


def test_steer_cli_sweep_and_export(tiny_model, sae_dir, cli, tmp_path):
    model = tiny_model("gpt2")
    proc = cli(
        "steer",
        "--model",
        model,
        "--sae",
        sae_dir,
        "--latent",
        "3",
        "--prompt",
        "The module",
        "--sweep",
        "0,300",
        "--max-new-tokens",
        "8",
        "--export",
        tmp_path,
    )
    lines = {
        ln.split("│")[1].strip(): ln.split("│")[2].strip()
        for ln in proc.stdout.splitlines()
        if ln.count("│") == 3
    }
    assert set(lines) >= {"plain", "+0", "+300"}
    assert lines["+0"] == lines["plain"] and lines["+300"] != lines["plain"]
    assert (tmp_path / "latent_3.npy").exists() and (tmp_path / "latent_3.safetensors").exists()


def test_attribute_cli_adds_to_dashboard(tiny_model, sae_dir, cli, tmp_path):
    save_interpretation(Interpretation(latents=[], meta={}), tmp_path / "latents.json")
    proc = cli(
        "attribute",
        "--model",
        tiny_model("gpt2"),
        "--sae",
        sae_dir,
        "--prompt",
        "The functions of the module",
        "--target",
        " the",
        "--top",
        "3",
        "--ablate",
        "2",
        "--out",
        tmp_path,
    )
    assert "ablation" in proc.stdout and "attribution.html" in proc.stdout
    interp = load_interpretation(tmp_path)
    (att,) = interp.attributions
    assert att["target"] == " the" and len(att["rows"]) == 6
    assert sum(r["ablation"] is not None for r in att["rows"]) == 2
    html = (tmp_path / "attribution.html").read_text()
    assert json.dumps("The functions of the module") in html.replace("&quot;", '"')


def test_cli_errors_before_work(tiny_model, sae_dir, tmp_path):
    from tests.interpret.test_cli_interpret import run_inproc

    model = tiny_model("gpt2")
    bad = run_inproc("steer", "--model", model, "--sae", sae_dir, "--latent", "3", "--prompt", "x")
    assert bad.exit_code == 2 and "--coefficient" in bad.output
    bad = run_inproc(
        "steer", "--sae", sae_dir, "--latent", "3", "--prompt", "x", "-c", "-1", "--sweep", "-20,5"
    )
    assert bad.exit_code == 2 and "--model and --prompt" in bad.output
    bad = run_inproc("steer", "--sae", sae_dir, "--latent", "99", "--export", tmp_path)
    assert bad.exit_code == 2 and "d_sae=32" in bad.output
    bad = run_inproc(
        "steer", "--model", model, "--sae", sae_dir, "--latent", "1", "--prompt", "x", "--sweep", "1,a"
    )
    assert bad.exit_code == 2 and "--sweep" in bad.output
    bad = run_inproc(
        "attribute",
        "--model",
        model,
        "--sae",
        sae_dir,
        "--prompt",
        "a",
        "--target",
        " documentation of modules",
    )
    assert bad.exit_code == 2 and "single token" in bad.output
