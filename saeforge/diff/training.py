"""The diff's crosscoder: the one given (`--crosscoder DIR`), or a BatchTopK crosscoder trained on the two stores.

A two-site crosscoder whose encoder sums per-site projections and whose decoder writes each site is, written out,
an SAE over the two activations side by side: with x = [x^base, x^ft] (width 2 d_in),

    pre = x^base W_enc[0] + x^ft W_enc[1] + b_enc = x @ [W_enc[0]; W_enc[1]] + b_enc
    x_hat^m = z W_dec[:, m] + b_dec[m]               (W_dec[:, m] = columns m*d_in .. (m+1)*d_in of the SAE's)
    loss = sum_m ||x^m - x_hat^m||^2 = ||x - x_hat||^2

So the diff trains saeforge's BatchTopK SAE (Bussmann et al. 2024; the sparsity Minder et al. 2025 recommend for
diffing) with the standard trainer on the aligned stores' rows concatenated (exact resume, checkpoints, run card),
and reads it through `ConcatCrossCoder`, which exposes the crosscoder layout. Its decoder rows have unit norm over
both sites together, so a latent can put all of its norm in one model (relative norm 0 or 1) or split it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from saeforge.activations import ActivationStore, AlignedLoader

SAE_NAME = "crosscoder"


class ConcatCrossCoder(nn.Module):
    """An inference SAE over [x_base, x_finetuned] seen as a two-site crosscoder: W_enc [2, d_in, d_sae],
    W_dec [d_sae, 2, d_in], b_dec [2, d_in]; encode(x [..., 2, d_in]), decode(z) -> [..., 2, d_in]."""

    def __init__(self, sae: nn.Module):
        super().__init__()
        if sae.cfg.d_in % 2:
            raise ValueError(f"an SAE of odd width {sae.cfg.d_in} cannot read two sites of equal width")
        self.sae = sae
        self.d_in = sae.cfg.d_in // 2
        self.d_sae = sae.cfg.d_sae

    @property
    def W_enc(self) -> Tensor:
        return self.sae.W_enc.view(2, self.d_in, self.d_sae)

    @property
    def W_dec(self) -> Tensor:
        return self.sae.W_dec.view(self.d_sae, 2, self.d_in)

    @property
    def b_dec(self) -> Tensor:
        return self.sae.b_dec.view(2, self.d_in)

    def encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(x.flatten(-2))

    def decode(self, z: Tensor) -> Tensor:
        return self.sae.decode(z).unflatten(-1, (2, self.d_in))


class ConcatenatedPairs:
    """Training batches [B, 2 d_in]: an AlignedLoader's (base, fine-tuned) rows side by side, exactly resumable."""

    def __init__(self, loader: AlignedLoader):
        self.loader = loader
        self.d_in = sum(s.d_in for s in loader.stores)
        self.manifest = loader.stores[0].manifest

    def __iter__(self) -> ConcatenatedPairs:
        return self

    def __next__(self) -> Tensor:
        return torch.cat(next(self.loader), dim=1)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def as_pair_coder(coder, d_in: int):
    """A loaded crosscoder as is, or a 2 * d_in wide SAE (what `train_crosscoder` saves) wrapped."""
    if coder.W_dec.ndim == 3:
        return coder
    if coder.cfg.d_in != 2 * d_in:
        raise ValueError(
            f"{coder.cfg.d_in} wide SAE: a diff's crosscoder reads 2 x d_in = {2 * d_in} (base then fine-tuned); "
            "pass the crosscoder directory that `saeforge diff` wrote (OUT/crosscoder/crosscoder)"
        )
    return ConcatCrossCoder(coder)


def train_crosscoder(cfg, base: ActivationStore, finetuned: ActivationStore, say: Callable[[str], None]):
    """Trains the BatchTopK crosscoder of `cfg` (a DiffConfig) under cfg.out/crosscoder; returns it wrapped."""
    from saeforge.train import SAESpec, TrainConfig, train

    d_in, rows = base.d_in, base.num_rows
    batch = min(cfg.train_batch_size, rows)
    tokens = cfg.tokens or 2 * (rows // batch) * batch
    d_sae = cfg.d_sae or max(1, round((cfg.expansion_factor or 8) * d_in))
    spec = SAESpec(name=SAE_NAME, architecture="batchtopk", d_sae=d_sae, k=cfg.k, seed=cfg.seed)
    out = Path(cfg.out) / "crosscoder"
    train_cfg = TrainConfig(tokens=tokens, batch_size=batch, out=out, saes=[spec], seed=cfg.seed,
                            device=cfg.device, dead_tokens=max(batch, min(10_000_000, tokens // 20)),
                            resume=(out / "checkpoints").is_dir())  # fmt: skip
    source = ConcatenatedPairs(AlignedLoader([base, finetuned], batch, seed=cfg.seed, check=False))
    say(f"training a BatchTopK crosscoder (k={cfg.k}, d_sae={d_sae}) on {tokens:,} tokens")
    (trained,) = train(train_cfg, source=source, progress=None)
    return ConcatCrossCoder(trained.sae)


def load_or_train(cfg, base: ActivationStore, finetuned: ActivationStore, say: Callable[[str], None]):
    """cfg: a saeforge.diff.config.DiffConfig. Returns an inference crosscoder over (base, finetuned)."""
    from saeforge.sae import load_sae

    if cfg.crosscoder is not None:
        say(f"loading {cfg.crosscoder}")
        return as_pair_coder(load_sae(cfg.crosscoder, device=cfg.device), base.d_in)
    return train_crosscoder(cfg, base, finetuned, say)
