"""Small SAEs and planted activation streams for the interpretation tests (no store, no model)."""

from __future__ import annotations

import torch

from saeforge.interpret.collect import Batch
from saeforge.sae.base import SAE, SAEConfig


class ReluSAE(SAE):
    architecture = "relu_test"

    def encode(self, x):
        return torch.relu(self.pre_acts(x))


def relu_sae(
    d_in: int, d_sae: int, seed: int = 0, hook: str = "layers.1.resid_post", b_enc: bool = True
) -> ReluSAE:
    """Random ReLU SAE; with b_enc=False the encoder has no bias, so about half the latents fire on any x."""
    g = torch.Generator().manual_seed(seed)
    sae = ReluSAE(SAEConfig(architecture="relu_test", d_in=d_in, d_sae=d_sae, metadata={"hook_name": hook}))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.b_enc.copy_(-0.3 * torch.rand(d_sae, generator=g) if b_enc else torch.zeros(d_sae))
        w = torch.randn(d_sae, d_in, generator=g)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
    return sae


def planted_stream(
    n_seq: int = 60, ctx: int = 24, d_in: int = 8, vocab: int = 40, batch_rows: int = 100, seed: int = 0
) -> tuple[list[Batch], torch.Tensor]:
    """Identity-encoder world: token t < d_in drives latent t with magnitude 1 + t/10 + noise; others are 0.

    Returns (batches in shuffled row order, tokens [n_seq, ctx]).
    """
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(d_in, vocab, (n_seq, ctx), generator=g)
    plant = torch.rand(n_seq, ctx, generator=g) < 0.1
    tokens[plant] = torch.randint(0, d_in, (int(plant.sum()),), generator=g)
    seq, pos = torch.meshgrid(torch.arange(n_seq), torch.arange(ctx), indexing="ij")
    tok = tokens.flatten()
    x = torch.zeros(tok.shape[0], d_in)
    on = tok < d_in
    x[on, tok[on]] = 1 + tok[on].float() / 10 + 0.5 * torch.rand(int(on.sum()), generator=g)
    positions = torch.stack([seq.flatten(), pos.flatten()], 1)
    perm = torch.randperm(tok.shape[0], generator=g)
    x, tok, positions = x[perm], tok[perm], positions[perm]
    batches = [
        Batch(x[s : s + batch_rows], tok[s : s + batch_rows], positions[s : s + batch_rows])
        for s in range(0, tok.shape[0], batch_rows)
    ]
    return batches, tokens


def identity_sae(d: int) -> ReluSAE:
    sae = ReluSAE(SAEConfig(architecture="relu_test", d_in=d, d_sae=d, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
    return sae
