"""SAEs with chosen weights for the evaluation tests (no trained SAE or model needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from saeforge.sae.base import SAE, SAEConfig


class ReluSAE(SAE):
    """z = relu((x - b_dec) @ W_enc + b_enc), the standard SAE's inference path."""

    architecture = "relu_test"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_acts(x))


def make_sae(
    W_enc, b_enc, W_dec, b_dec, *, apply_b_dec_to_input=False, hook="layers.0.resid_post"
) -> ReluSAE:
    d_in, d_sae = W_enc.shape
    cfg = SAEConfig(
        architecture="relu_test",
        d_in=d_in,
        d_sae=d_sae,
        apply_b_dec_to_input=apply_b_dec_to_input,
        metadata={"hook_name": hook},
    )
    sae = ReluSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
    return sae


def identity_sae(d_in: int) -> ReluSAE:
    """d_sae = 2 d_in: latents relu(x) and relu(-x), decoded as relu(x) - relu(-x) = x exactly."""
    eye = torch.eye(d_in)
    return make_sae(
        torch.cat([eye, -eye], 1), torch.zeros(2 * d_in), torch.cat([eye, -eye], 0), torch.zeros(d_in)
    )


def zero_sae(d_in: int, d_sae: int) -> ReluSAE:
    """Every latent is dead and the reconstruction is 0."""
    return make_sae(torch.zeros(d_in, d_sae), torch.zeros(d_sae), torch.zeros(d_sae, d_in), torch.zeros(d_in))


def random_sae(d_in: int, d_sae: int, seed: int = 0, **kw) -> ReluSAE:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return make_sae(
        W_dec.T.clone() * 0.8,
        -0.3 * torch.rand(d_sae, generator=g),
        W_dec,
        0.1 * torch.randn(d_in, generator=g),
        **kw,
    )


@pytest.fixture
def saes():
    """Factories: make_sae, identity_sae, zero_sae, random_sae."""
    return SimpleNamespace(make=make_sae, identity=identity_sae, zero=zero_sae, random=random_sae)


@pytest.fixture
def acts():
    """acts(n, d_in, seed) -> float32 [n, d_in] activations with a non-zero mean and uneven variances."""

    def make(n: int = 600, d_in: int = 16, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(n, d_in, generator=g) * torch.linspace(0.5, 2.0, d_in) + 0.7).float()

    return make


def write_store(
    path, x: torch.Tensor, hook: str = "layers.0.resid_post", rows_per_shard: int = 256, sha256: bool = True
):
    """A minimal activation store as another tool would write it: manifest + shards holding `activations` only,
    with each shard's sha256 listed (sha256=False: none, so it loads only unverified)."""
    import json

    from safetensors.torch import save_file

    from saeforge.activations.shards import sha256_file

    path.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, chunk in enumerate(x.split(rows_per_shard)):
        name = f"shard_{i:05d}.safetensors"
        save_file({"activations": chunk.contiguous().float()}, str(path / name))
        digest = sha256_file(path / name) if sha256 else None
        shards.append({"path": name, "rows": chunk.shape[0], "sha256": digest})
    manifest = {"d_in": x.shape[1], "dtype": "float32", "hook": hook, "shards": shards}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def save_as_standard(sae: ReluSAE, path, seed: int | None = None, hook: str | None = None):
    """Saves a ReluSAE as a SAELens-layout `standard` SAE (same encode: relu of the pre-activations)."""
    from saeforge.sae import save_sae
    from saeforge.sae.standard import StandardSAE

    cfg = sae.cfg.model_copy(update={"architecture": "standard"})
    std = StandardSAE(cfg)
    std.load_state_dict(sae.state_dict())
    meta = {} if seed is None else {"seed": seed}
    if hook is not None:
        meta["hook_name"] = hook
    return save_sae(std, path, metadata=meta)


@pytest.fixture
def store_tools():
    """write_store(path, x, hook) and save_as_standard(sae, path, seed, hook)."""
    return SimpleNamespace(write_store=write_store, save_sae=save_as_standard)
