"""Per-latent statistics in one streaming pass with bounded memory.

For each chosen latent the pass keeps, whatever the number of rows streamed:

- the top `2k` rows by activation (a tensor top-k merged batch by batch; overlapping windows are removed at the
  end, so up to `k` contexts remain),
- a uniform reservoir of active rows (each active row draws a random key, the smallest keys are kept); at the end
  it is sorted and cut into equal-count bands, which gives samples across activation quantiles,
- a uniform reservoir of inactive rows (non-activating contexts for detection scoring),
- the number of active rows (density) and the sum of active values,
- an exact histogram of active values over [0, hi) with equal-width bins, where `hi` is a power of two that
  doubles when a larger value arrives (adjacent bins are merged in pairs; since `hi` is a power of two the bin
  of a value is the same as if the final range had been known from the start).

Memory is O(L * (k + reservoir + bins)) plus one chunk of `rows x L` latent activations, where L is the number of
chosen latents. A second, cheap pass (`fill_windows`) reads back only the rows inside the chosen contexts' token
windows to give every token of a window its latent activation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from saeforge.sae.base import SAE


class Batch(NamedTuple):
    """Rows of an activation store.

    activations: [rows, d_in]; token_ids: [rows] int64; positions: [rows, 2] int64 (sequence, position).
    """

    activations: Tensor
    token_ids: Tensor
    positions: Tensor


@dataclass
class Histogram:
    """Counts of active values (z > 0) in `len(counts)` equal-width bins over [0, hi)."""

    hi: float
    counts: list[int]

    @property
    def edges(self) -> list[float]:
        n = len(self.counts)
        return [self.hi * j / n for j in range(n + 1)]


@dataclass
class RowHit:
    """One row of the stream for one latent: where it is and how strongly the latent fired there."""

    seq: int
    pos: int
    activation: float


@dataclass
class LatentStats:
    """What the streaming pass found for one latent.

    top: rows sorted by decreasing activation (up to 2k; `select_contexts` dedupes windows).
    active_sample: uniform sample of active rows, sorted by increasing activation.
    inactive_sample: uniform sample of rows where the latent is 0.
    """

    latent: int
    n_rows: int
    n_active: int
    sum_active: float
    max_activation: float
    histogram: Histogram
    top: list[RowHit]
    active_sample: list[RowHit]
    inactive_sample: list[RowHit]

    @property
    def density(self) -> float:
        """Fraction of rows on which the latent is active (z > 0)."""
        return self.n_active / self.n_rows if self.n_rows else 0.0

    @property
    def mean_active(self) -> float:
        return self.sum_active / self.n_active if self.n_active else 0.0


def _check_batch(batch: Batch, d_in: int) -> Batch:
    acts, tok, pos = batch
    if acts.ndim != 2 or acts.shape[1] != d_in:
        raise ValueError(
            f"activations have shape {tuple(acts.shape)}, expected [rows, {d_in}] (the SAE's d_in): "
            "use the activation store captured at the SAE's hook"
        )
    if tok.shape != (acts.shape[0],) or pos.shape != (acts.shape[0], 2):
        raise ValueError(
            f"token_ids {tuple(tok.shape)} / positions {tuple(pos.shape)} do not match {acts.shape[0]} rows: "
            "expected token_ids [rows] and positions [rows, 2] (sequence, position)"
        )
    return Batch(acts, tok.long(), pos.long())


def iter_chunks(batches: Iterable[Batch], d_in: int, max_rows: int) -> Iterator[Batch]:
    """Checks every batch and cuts it into chunks of at most `max_rows` rows."""
    for b in batches:
        b = _check_batch(Batch(*b), d_in)
        for s in range(0, b.activations.shape[0], max_rows):
            yield Batch(*(t[s : s + max_rows] for t in b))


@torch.no_grad()
def latent_acts(sae: SAE, x: Tensor, latent_ids: Tensor) -> Tensor:
    """x [rows, d_in] -> [rows, L] activations of the chosen latents (full encode: TopK needs all pre-acts)."""
    param = sae.W_enc
    z = sae.encode(x.to(device=param.device, dtype=param.dtype))
    return z[:, latent_ids.to(z.device)].float().cpu()


class _Reservoir:
    """Per-latent uniform sample of the rows where `mask` holds: keeps the `size` smallest random keys."""

    def __init__(self, n_latents: int, size: int):
        self.keys = torch.full((n_latents, size), math.inf)
        self.vals = torch.zeros(n_latents, size)
        self.rows = torch.full((n_latents, size, 2), -1, dtype=torch.long)

    def update(self, z: Tensor, rows: Tensor, mask: Tensor, gen: torch.Generator) -> None:
        """z [n, L], rows [n, 2], mask [n, L] bool."""
        n, n_lat = z.shape
        keys = torch.rand(n, n_lat, generator=gen).masked_fill_(~mask, math.inf)
        all_keys = torch.cat([self.keys, keys.T], dim=1)
        all_vals = torch.cat([self.vals, z.T], dim=1)
        all_rows = torch.cat([self.rows, rows.unsqueeze(0).expand(n_lat, n, 2)], dim=1)
        self.keys, idx = all_keys.topk(self.keys.shape[1], dim=1, largest=False)
        self.vals = all_vals.gather(1, idx)
        self.rows = all_rows.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))

    def hits(self, j: int) -> list[RowHit]:
        keep = torch.isfinite(self.keys[j])
        return [
            RowHit(int(r[0]), int(r[1]), float(v))
            for r, v in zip(self.rows[j][keep].tolist(), self.vals[j][keep].tolist(), strict=True)
        ]


class _Histograms:
    """Per-latent equal-width histograms over [0, hi) with hi a power of two that doubles as needed."""

    def __init__(self, n_latents: int, n_bins: int):
        if n_bins < 2 or n_bins & (n_bins - 1):
            raise ValueError(f"hist_bins={n_bins}: must be a power of two >= 2")
        self.n_bins = n_bins
        self.hi = torch.zeros(n_latents, dtype=torch.float64)
        self.counts = torch.zeros(n_latents, n_bins, dtype=torch.long)

    def _grow(self, j: int, zmax: float) -> None:
        hi = float(self.hi[j])
        if hi == 0.0:
            self.hi[j] = 2.0 ** (math.floor(math.log2(zmax)) + 1)
            return
        m = 0
        while hi * 2**m <= zmax:
            m += 1
        f = 2**m
        merged = torch.zeros(self.n_bins, dtype=torch.long)
        if f < self.n_bins:
            merged[: self.n_bins // f] = self.counts[j].view(-1, f).sum(1)
        else:
            merged[0] = self.counts[j].sum()
        self.counts[j] = merged
        self.hi[j] = hi * f

    def update(self, z: Tensor) -> None:
        """z [n, L] float32."""
        zmax = z.max(0).values
        for j in torch.nonzero((zmax > 0) & (zmax.double() >= self.hi)).flatten().tolist():
            self._grow(j, float(zmax[j]))
        active = z > 0
        if not active.any():
            return
        cols = active.nonzero()[:, 1]
        vals = z[active].double()
        bins = (vals / self.hi[cols] * self.n_bins).floor().long().clamp_(0, self.n_bins - 1)
        self.counts.view(-1).index_add_(0, cols * self.n_bins + bins, torch.ones_like(bins))


@torch.no_grad()
def collect_stats(
    sae: SAE,
    batches: Iterable[Batch],
    latent_ids: list[int],
    k: int = 20,
    *,
    sample_size: int = 100,
    inactive_size: int = 40,
    hist_bins: int = 64,
    seed: int = 0,
    max_chunk_elems: int = 1 << 24,
) -> list[LatentStats]:
    """One streaming pass over `batches` (Batch tuples) -> one `LatentStats` per id in `latent_ids`.

    k: top rows kept per latent is 2k (windows are deduplicated later). sample_size: active-row reservoir per
    latent. inactive_size: inactive-row reservoir per latent. Rows are processed in chunks of at most
    `max_chunk_elems / L` rows so that the [rows, L] activation block stays bounded.
    """
    if not latent_ids:
        raise ValueError("no latents chosen: pass --latents N or --latent-ids")
    bad = [i for i in latent_ids if not 0 <= i < sae.d_sae]
    if bad:
        raise ValueError(f"latent ids {bad[:5]} out of range: the SAE has d_sae={sae.d_sae} latents")
    ids = torch.tensor(latent_ids, dtype=torch.long)
    n_lat = len(latent_ids)
    gen = torch.Generator().manual_seed(seed)
    n_top = 2 * k
    top_vals = torch.full((n_lat, n_top), -math.inf)
    top_rows = torch.full((n_lat, n_top, 2), -1, dtype=torch.long)
    active_res = _Reservoir(n_lat, sample_size)
    inactive_res = _Reservoir(n_lat, inactive_size)
    hist = _Histograms(n_lat, hist_bins)
    n_active = torch.zeros(n_lat, dtype=torch.long)
    sum_active = torch.zeros(n_lat, dtype=torch.float64)
    n_rows = 0
    max_rows = max(1, max_chunk_elems // n_lat)
    for chunk in iter_chunks(batches, sae.d_in, max_rows):
        z = latent_acts(sae, chunk.activations, ids)
        rows = chunk.positions
        n = z.shape[0]
        n_rows += n
        active = z > 0
        n_active += active.sum(0)
        sum_active += (z * active).sum(0, dtype=torch.float64)
        all_vals = torch.cat([top_vals, z.T], dim=1)
        all_rows = torch.cat([top_rows, rows.unsqueeze(0).expand(n_lat, n, 2)], dim=1)
        top_vals, idx = all_vals.topk(min(n_top, all_vals.shape[1]), dim=1)
        top_rows = all_rows.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))
        active_res.update(z, rows, active, gen)
        inactive_res.update(z, rows, ~active, gen)
        hist.update(z)
    if n_rows == 0:
        raise ValueError("the activation source yielded no rows")
    out = []
    for j, latent in enumerate(latent_ids):
        keep = top_vals[j] > 0
        top = [
            RowHit(int(r[0]), int(r[1]), float(v))
            for r, v in zip(top_rows[j][keep].tolist(), top_vals[j][keep].tolist(), strict=True)
        ]
        sample = sorted(active_res.hits(j), key=lambda h: h.activation)
        out.append(
            LatentStats(
                latent=latent,
                n_rows=n_rows,
                n_active=int(n_active[j]),
                sum_active=float(sum_active[j]),
                max_activation=top[0].activation if top else 0.0,
                histogram=Histogram(float(hist.hi[j]), hist.counts[j].tolist()),
                top=top,
                active_sample=sample,
                inactive_sample=inactive_res.hits(j),
            )
        )
    return out
