"""A latent's decoder direction W_dec[i] [d_in], exported as `.npy` and safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.torch import save_file
from torch import Tensor

from saeforge.atomic import write_with
from saeforge.sae.base import SAE


def decoder_direction(sae: SAE, latent: int, normalize: bool = False) -> Tensor:
    """W_dec[latent] [d_in] (a float32 CPU copy); unit-norm when `normalize`."""
    if not 0 <= latent < sae.d_sae:
        raise ValueError(f"latent {latent} out of range: the SAE has d_sae={sae.d_sae} (0..{sae.d_sae - 1})")
    d = sae.W_dec.detach()[latent].float().cpu().clone()
    return d / d.norm() if normalize else d


def export_direction(sae: SAE, latent: int, out_dir: Path, normalize: bool = False) -> tuple[Path, Path]:
    """Writes OUT/latent_<i>.npy (float32 [d_in]) and OUT/latent_<i>.safetensors (tensor `direction`, with
    metadata latent, hook, d_in, norm, normalized). Returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    d = decoder_direction(sae, latent, normalize)
    raw_norm = float(sae.W_dec.detach()[latent].float().norm())
    npy = out_dir / f"latent_{latent}.npy"
    st = out_dir / f"latent_{latent}.safetensors"

    def write_npy(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, d.numpy())

    write_with(npy, write_npy)
    meta = {
        "latent": str(latent),
        "hook": str(sae.cfg.metadata.get("hook_name", "")),
        "d_in": str(sae.d_in),
        "norm": json.dumps(raw_norm),
        "normalized": json.dumps(normalize),
    }
    write_with(st, lambda tmp: save_file({"direction": d.contiguous()}, tmp, metadata=meta))
    return npy, st
