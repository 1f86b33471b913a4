"""Per-latent statistics of a two-site crosscoder: decoder geometry and one streaming pass over aligned data.

Decoder geometry (weights only), for latent j with decoder vectors d_j^base = W_dec[j, 0], d_j^ft = W_dec[j, 1]:

    relative_norm_j  = ||d_j^ft|| / (||d_j^base|| + ||d_j^ft||)        (0: base only, 1: fine-tuned only)
    decoder_cosine_j = cos(d_j^base, d_j^ft)

Activation frequencies: `freq` is the fraction of rows with z_j > 0 (the crosscoder reads both models at once, so
a latent has one activation per token). `freq_base` / `freq_finetuned` count the rows where, besides z_j > 0,
model m's activation holds at least half the latent's contribution along its direction u_j (below):
presence^m_j = <x^m - b_dec^m, u_j> / ||u_j||^2 >= z_j / 2 (`coder.presence`). A fine-tuned-only latent has
freq_finetuned close to freq and freq_base close to 0; a shared one has both close to freq.

Latent Scaling (Minder, Dumas et al. 2025, "Overcoming sparsity artifacts in crosscoders to interpret
chat-tuning", arXiv 2504.02922). Each latent gets a direction u_j: its fine-tuned decoder when
relative_norm_j >= 0.5, else its base decoder; call that model its *own* model and the other one the *other*.
For each model m and each of two targets y^m, the scalar

    beta_j = argmin_beta sum_rows ||beta z_j u_j - y^m||^2 = sum_rows z_j <u_j, y^m> / (||u_j||^2 sum_rows z_j^2)

measures how much of u_j, scaled by the latent's activation, the target holds. The targets, with x_hat the
crosscoder's reconstruction:

    reconstruction  y^{r,m}   = x_hat^m - b_dec^m                       (what the dictionary writes in model m)
    error           y^{eps,m} = x^m - x_hat^m + z_j d_j^m               (what it misses, latent j's share put back)

and the ratios nu^r_j = beta^{r,other}_j / beta^{r,own}_j, nu^eps_j = beta^{eps,other}_j / beta^{eps,own}_j.
For a latent with no decoder in the other model, a high nu^eps says the other model's error still holds the
direction (complete shrinkage: the sparsity loss zeroed a decoder the data needed), a high nu^r says other latents
write it there (latent decoupling: one concept split into model-specific latents). For a genuinely specific latent
both ratios are near 0 while the own-model betas are near 1. A ratio is None where its denominator is not
positive (the latent never fired, or the fit is degenerate).

The pass is exact in float64 accumulation; memory is one chunk of [rows, d_sae].
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from saeforge.diff.coder import BASE, FINETUNED, PairCoder, as_pair, check_pair_coder, latent_directions


@dataclass
class DecoderStats:
    """[d_sae] float64 each."""

    norm_base: Tensor
    norm_finetuned: Tensor
    relative_norm: Tensor
    decoder_cosine: Tensor


def decoder_stats(W_dec: Tensor) -> DecoderStats:
    """W_dec [d_sae, 2, d_in] -> per-latent norms, relative norm and cosine (float64)."""
    w = W_dec.detach().double().cpu()
    nb, nf = w[:, BASE].norm(dim=1), w[:, FINETUNED].norm(dim=1)
    total = nb + nf
    rel = torch.where(total > 0, nf / total.clamp_min(1e-300), torch.full_like(total, 0.5))
    cos = (w[:, BASE] * w[:, FINETUNED]).sum(1) / (nb * nf).clamp_min(1e-300)
    return DecoderStats(nb, nf, rel, torch.where((nb > 0) & (nf > 0), cos, torch.zeros_like(cos)))


@dataclass
class ActivationStats:
    """What the pass over the data found, [d_sae] float64 each (NaN where undefined), and the row count."""

    n_rows: int
    freq: Tensor
    freq_base: Tensor
    freq_finetuned: Tensor
    own: Tensor  # [d_sae] long: the model (0 base, 1 fine-tuned) whose decoder gives u_j
    beta_r_base: Tensor
    beta_r_finetuned: Tensor
    beta_eps_base: Tensor
    beta_eps_finetuned: Tensor

    def _ratio(self, base: Tensor, ft: Tensor) -> Tensor:
        own_is_ft = self.own == FINETUNED
        num = torch.where(own_is_ft, base, ft)
        den = torch.where(own_is_ft, ft, base)
        return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, math.nan))

    @property
    def nu_r(self) -> Tensor:
        return self._ratio(self.beta_r_base, self.beta_r_finetuned)

    @property
    def nu_eps(self) -> Tensor:
        return self._ratio(self.beta_eps_base, self.beta_eps_finetuned)


@torch.no_grad()
def activation_stats(
    coder: PairCoder,
    batches: Iterable[tuple[Tensor, Tensor]],
    max_rows: int | None = None,
    chunk_rows: int = 2048,
) -> ActivationStats:
    """One pass over aligned (x_base [B, d_in], x_finetuned [B, d_in]) batches -> ActivationStats.

    max_rows: stop after this many rows (None: all). chunk_rows: rows encoded at once.
    """
    d_in, d_sae = check_pair_coder(coder)
    W_dec = coder.W_dec.detach()
    b_dec = coder.b_dec.detach()
    own, U = latent_directions(coder, decoder_stats(W_dec).relative_norm)  # [d_sae], [d_sae, d_in]
    u_sq = U.double().pow(2).sum(1).cpu()
    u_sq_dev = U.pow(2).sum(1).clamp_min(1e-30)
    ud = [(U * W_dec[:, m]).sum(1).double().cpu() for m in (BASE, FINETUNED)]
    acc = {
        k: torch.zeros(d_sae, dtype=torch.float64) for k in ("n", "nb", "nf", "zz", "r0", "r1", "e0", "e1")
    }
    n_rows = 0
    for xb, xf in batches:
        if xb.shape != xf.shape or xb.ndim != 2 or xb.shape[1] != d_in:
            raise ValueError(
                f"aligned batches must both be [rows, {d_in}], got {list(xb.shape)} and {list(xf.shape)}"
            )
        for s in range(0, xb.shape[0], chunk_rows):
            if max_rows is not None and n_rows >= max_rows:
                break
            take = chunk_rows if max_rows is None else min(chunk_rows, max_rows - n_rows)
            x = as_pair(xb[s : s + take], xf[s : s + take], W_dec)
            n_rows += x.shape[0]
            z = coder.encode(x)
            x_hat = coder.decode(z)
            active = z > 0
            acc["n"] += active.sum(0).double().cpu()
            zd = z.double()
            acc["zz"] += zd.pow(2).sum(0).cpu()
            for m in (BASE, FINETUNED):
                recon = (x_hat[:, m] - b_dec[m]) @ U.T  # [B, d_sae]: <u_j, y^{r,m}>
                err = (x[:, m] - x_hat[:, m]) @ U.T
                present = active & (
                    (recon + err) >= 0.5 * z * u_sq_dev
                )  # <x^m - b_dec^m, u_j> >= z_j ||u_j||^2 / 2
                acc["nf" if m == FINETUNED else "nb"] += present.sum(0).double().cpu()
                acc[f"r{m}"] += (zd * recon.double()).sum(0).cpu()
                acc[f"e{m}"] += (zd * err.double()).sum(0).cpu()
        if max_rows is not None and n_rows >= max_rows:
            break
    if n_rows == 0:
        raise ValueError("the aligned activations yielded no rows")
    den = u_sq * acc["zz"]

    def beta(num: Tensor) -> Tensor:
        return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, math.nan))

    return ActivationStats(
        n_rows=n_rows,
        freq=acc["n"] / n_rows,
        freq_base=acc["nb"] / n_rows,
        freq_finetuned=acc["nf"] / n_rows,
        own=own,
        beta_r_base=beta(acc["r0"]),
        beta_r_finetuned=beta(acc["r1"]),
        beta_eps_base=beta(acc["e0"] + ud[BASE] * acc["zz"]),
        beta_eps_finetuned=beta(acc["e1"] + ud[FINETUNED] * acc["zz"]),
    )
