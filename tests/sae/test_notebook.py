"""Notebook ergonomics of inference SAEs: any leading shape, `.to(device, dtype)` by name with cfg in step."""

from __future__ import annotations

import pytest
import torch

from saeforge.sae import load_sae, save_sae
from tests.sae.test_export_io import D_IN, _trained_like


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated", "batchtopk"])
def test_encode_decode_take_any_leading_shape(arch):
    sae = _trained_like(arch).export(1.3)
    x = torch.randn(2, 3, 5, D_IN, generator=torch.Generator().manual_seed(1))
    flat = x.reshape(-1, D_IN)
    z = sae.encode(x)
    assert z.shape == (2, 3, 5, sae.d_sae)
    torch.testing.assert_close(z.reshape(-1, sae.d_sae), sae.encode(flat), rtol=0, atol=0)
    torch.testing.assert_close(sae.decode(z).reshape(-1, D_IN), sae.decode(sae.encode(flat)))
    assert sae.encode(flat[0]).shape == (sae.d_sae,)


def test_to_takes_dtype_names_and_keeps_cfg_in_step(tmp_path):
    sae = _trained_like("topk").export()
    x = torch.randn(4, D_IN)
    ref = sae.encode(x)
    moved = sae.to("cpu", "float64")
    assert moved is sae and sae.W_enc.dtype == torch.float64
    assert (sae.cfg.dtype, sae.cfg.device) == ("float64", "cpu")
    torch.testing.assert_close(sae.encode(x.double()).float(), ref, rtol=1e-5, atol=1e-5)
    save_sae(sae.to(dtype="bfloat16"), tmp_path)
    assert load_sae(tmp_path).W_dec.dtype == torch.bfloat16
    assert load_sae(tmp_path).to(torch.float32).cfg.dtype == "float32"
    with pytest.raises(ValueError, match="dtype='bf16' is not one of"):
        sae.to(dtype="bf16")
