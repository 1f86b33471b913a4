"""Writes the SAELens-file fixtures of this folder with the real SAELens. Not imported by the tests.

    python -m venv V5 && V5/bin/pip install torch==2.13.0 && V5/bin/pip install sae-lens==5.11.0 "pyarrow<18"  # its numpy 1.x needs an older pyarrow
    V5/bin/python tests/sae/saelens_files/generate.py          # -> v5/<layout>/
    V6=$(.ci/saelens-venv) && $V6 tests/sae/saelens_files/generate.py   # sae-lens 6.54.12 -> v6/<layout>/

Each <layout>/ holds what that SAELens version's `save_model` writes (cfg.json, sae_weights.safetensors) and
expected.safetensors: inputs x [6, d_in] and SAELens's own z = encode(x) and x_hat = decode(z) (for the
`expected_average_only_in` layout: after folding the release's norm_scaling_factor, as `SAE.from_pretrained`
does, with the factor itself as the scalar tensor `norm_scaling_factor`). The weights are random but moved away
from every initial value (thresholds positive, scaling factors not 1), so that a dropped term shows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import sae_lens
import torch
from safetensors.torch import save_file

D_IN, D_SAE, K, NORM_SCALE = 8, 16, 3, 1.7
HERE = Path(__file__).resolve().parent
MAJOR = int(sae_lens.__version__.split(".")[0])


def _v5_cfg(**kw) -> dict:
    cfg = dict(
        architecture="standard", d_in=D_IN, d_sae=D_SAE, activation_fn_str="relu", apply_b_dec_to_input=True,
        finetuning_scaling_factor=False, context_size=128, model_name="gpt2", hook_name="blocks.2.hook_resid_pre",
        hook_layer=2, hook_head_index=None, prepend_bos=True, dataset_path="Skylion007/openwebtext",
        dataset_trust_remote_code=False, normalize_activations="none", dtype="float32", device="cpu",
        sae_lens_training_version=sae_lens.__version__,
    )  # fmt: skip
    cfg.update(kw)
    return cfg


def _v6_cfg(**kw) -> dict:
    cfg = dict(
        architecture="standard", d_in=D_IN, d_sae=D_SAE, dtype="float32", device="cpu",
        apply_b_dec_to_input=True, normalize_activations="none",
        metadata={"model_name": "gpt2", "hook_name": "blocks.2.hook_resid_pre", "sae_lens_version": sae_lens.__version__},
    )  # fmt: skip
    cfg.update(kw)
    return cfg


LAYOUTS = {
    5: {
        "standard": _v5_cfg(),
        "topk": _v5_cfg(architecture="topk", activation_fn_str="topk", activation_fn_kwargs={"k": K}),
        "finetuning_scaling_factor": _v5_cfg(finetuning_scaling_factor=True),
        "jumprelu": _v5_cfg(architecture="jumprelu"),
        "gated": _v5_cfg(architecture="gated"),
        "expected_average_only_in": _v5_cfg(normalize_activations="expected_average_only_in"),
    },
    6: {
        "standard": _v6_cfg(),
        "topk": _v6_cfg(architecture="topk", k=K),
        "topk_rescaled": _v6_cfg(architecture="topk", k=K, rescale_acts_by_decoder_norm=True),
        "jumprelu": _v6_cfg(architecture="jumprelu"),
        "gated": _v6_cfg(architecture="gated"),
        "expected_average_only_in": _v6_cfg(normalize_activations="expected_average_only_in"),
    },
}


@torch.no_grad()
def _randomise(sae, g: torch.Generator) -> None:
    for name, p in sae.named_parameters():
        if "threshold" in name:
            p.copy_(0.05 + 0.2 * torch.rand(p.shape, generator=g))
            if name.startswith("log_"):
                p.log_()
        elif "scaling_factor" in name:
            p.copy_(0.5 + torch.rand(p.shape, generator=g))
        else:
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def write(layout: str, cfg: dict, seed: int) -> None:
    out = HERE / f"v{MAJOR}" / layout
    shutil.rmtree(out, ignore_errors=True)
    sae = sae_lens.SAE.from_dict(cfg)
    g = torch.Generator().manual_seed(seed)
    _randomise(sae, g)
    sae.save_model(out)
    x = torch.randn(6, D_IN, generator=g)
    expected = {"x": x}
    if cfg["normalize_activations"] == "expected_average_only_in":
        sae.fold_activation_norm_scaling_factor(NORM_SCALE)
        expected["norm_scaling_factor"] = torch.tensor(NORM_SCALE)
    with torch.no_grad():
        expected["z"] = sae.encode(x)
        expected["x_hat"] = sae.decode(expected["z"])
    save_file({k: v.contiguous() for k, v in expected.items()}, out / "expected.safetensors")


if __name__ == "__main__":
    for i, (layout, cfg) in enumerate(LAYOUTS[MAJOR].items()):
        write(layout, cfg, seed=i)
        print(f"v{MAJOR}/{layout}")
