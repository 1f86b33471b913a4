"""SAELens and TransformerLens, run for real, read saeforge's files: same latents, same attachment, same FVU.

SAELens lives in its own virtual environment (its pins differ from saeforge's): `.ci/saelens-venv` builds it and
`.ci/run` exports SAEFORGE_SAELENS_PYTHON, so CI runs these tests. Without that variable they run when sae_lens
is importable here, and skip otherwise. When the variable is set, a broken environment fails instead of skipping.
`saelens_side.py` is the part that runs under that Python; it does not import saeforge.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saeforge.sae import save_sae
from tests.sae.test_export_io import D_IN, _trained_like

SIDE = Path(__file__).with_name("saelens_side.py")


@pytest.fixture(scope="module")
def saelens_python() -> str:
    env = os.environ.get("SAEFORGE_SAELENS_PYTHON")
    if env:
        return env
    if importlib.util.find_spec("sae_lens") is not None:
        return sys.executable
    pytest.skip(
        "sae-lens is not installed: run .ci/saelens-venv and set SAEFORGE_SAELENS_PYTHON (docs/interop.md)"
    )


def _run_side(python: str, case_dir: Path, case: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    (case_dir / "case.json").write_text(json.dumps(case))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [python, str(SIDE), str(case_dir)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, f"saelens_side.py failed under {python}:\n{proc.stderr[-4000:]}"
    return json.loads((case_dir / "saelens.json").read_text()), load_file(case_dir / "saelens.safetensors")


def test_saelens_loads_saeforge_sae_and_encodes_identically(saelens_python, tmp_path):
    x = torch.randn(32, D_IN)
    inputs, ours, dirs = {"x": x}, {}, []
    for arch in ("standard", "topk", "jumprelu", "gated", "batchtopk"):
        exported = _trained_like(arch).export(2.5)
        d = str(save_sae(exported, tmp_path / arch, metadata={"hook_name": "blocks.0.hook_resid_post"}))
        with torch.no_grad():
            inputs[f"{d}/z_saeforge"] = exported.encode(x)
            ours[d] = (exported, exported.decode(exported.encode(x)))
        dirs.append(d)
    save_file(inputs, tmp_path / "x.safetensors")
    report, theirs = _run_side(saelens_python, tmp_path, {"saes": dirs, "x": "x.safetensors"})
    for d in dirs:
        exported, x_hat = ours[d]
        assert report["saes"][d]["architecture"] == exported.cfg.architecture
        assert report["saes"][d]["hook_name"] == "blocks.0.hook_resid_post"
        torch.testing.assert_close(theirs[f"{d}/z"], inputs[f"{d}/z_saeforge"], rtol=0, atol=1e-6)
        torch.testing.assert_close(theirs[f"{d}/x_hat"], x_hat)


def _fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Naive float64 FVU over rows of [n, d]: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    x, x_hat = x.double(), x_hat.double()
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_saeforge_sae_attaches_in_hooked_sae_transformer_with_saeforge_fvu(
    saelens_python, tiny_model, tmp_path
):
    from saeforge.activations import CaptureConfig, capture
    from saeforge.eval import evaluate
    from saeforge.models import load_model, run_hooks
    from saeforge.sae import load_sae
    from saeforge.train import SAESpec, TrainConfig, train

    torch.set_num_threads(1)
    model_dir = tiny_model("gpt2")
    cfg = CaptureConfig(
        model=str(model_dir),
        hooks=["blocks.1.hook_resid_post"],
        data="builtin",
        tokens=2048,
        out=tmp_path / "acts",
        context_size=32,
        batch_size=16,
    )
    assert cfg.hooks == ["layers.1.resid_post"]
    store = capture(cfg)["layers.1.resid_post"]
    trained = train(
        TrainConfig(
            activations=store,
            tokens=4096,
            batch_size=256,
            out=tmp_path / "sae",
            saes=[SAESpec(name="topk", architecture="topk", k=8, d_sae=256)],
            plots=False,
        )
    )
    on_disk = json.loads((trained[0].path / "cfg.json").read_text())["metadata"]
    assert on_disk["hook_name"] == "blocks.1.hook_resid_post"
    assert on_disk["saeforge_hook_name"] == "layers.1.resid_post"
    assert on_disk["model_from_pretrained_kwargs"]["center_writing_weights"] is False
    sae = load_sae(trained[0].path)
    assert sae.cfg.metadata["hook_name"] == "layers.1.resid_post"

    loaded = load_model(model_dir)
    tokens = torch.randint(
        3, loaded.model.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(0)
    )
    x = run_hooks(loaded, tokens, hooks=["layers.1.resid_post"])["layers.1.resid_post"].flatten(0, 1)
    ours = evaluate(sae, [x])["fvu"]
    save_file(
        {"x": x[:1], f"{trained[0].path}/z_saeforge": sae.encode(x[:1]), "tokens": tokens}, tmp_path / "x.st"
    )
    case = {
        "saes": [str(trained[0].path)],
        "attach": [str(trained[0].path)],
        "x": "x.st",
        "model": str(model_dir),
    }
    report, theirs = _run_side(saelens_python, tmp_path, case)
    assert report["saes"][str(trained[0].path)]["attached"] == ["blocks.1.hook_resid_post"]
    sae_in = theirs[f"{trained[0].path}/hook_sae_input"].reshape(-1, x.shape[1])
    recons = theirs[f"{trained[0].path}/hook_sae_recons"].reshape(-1, x.shape[1])
    torch.testing.assert_close(sae_in, x, rtol=1e-5, atol=1e-5)
    assert ours < 0.9
    assert _fvu(sae_in, recons) == pytest.approx(ours, rel=1e-4)
    with torch.no_grad():
        assert _fvu(x, sae(x)) == pytest.approx(ours, rel=1e-4)
