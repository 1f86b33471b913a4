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

    activations: [rows, d_in] ([rows, n_sites, d_in] for a crosscoder: the aligned sites stacked); token_ids:
    [rows] int64; positions: [rows, 2] int64 (sequence, position).
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


def _check_batch(batch: Batch, row_shape: tuple[int, ...]) -> Batch:
    acts, tok, pos = batch
    if tuple(acts.shape[1:]) != row_shape:
        want = ", ".join(map(str, ("rows", *row_shape)))
        names = "d_in" if len(row_shape) == 1 else "n_sites, d_in"
        raise ValueError(
            f"activations have shape {tuple(acts.shape)}, expected [{want}] (the SAE's {names}): "
            "use the activation store captured at the SAE's hook (a crosscoder: one store per site, stacked)"
        )
    if tok.shape != (acts.shape[0],) or pos.shape != (acts.shape[0], 2):
        raise ValueError(
            f"token_ids {tuple(tok.shape)} / positions {tuple(pos.shape)} do not match {acts.shape[0]} rows: "
            "expected token_ids [rows] and positions [rows, 2] (sequence, position)"
        )
    return Batch(acts, tok.long(), pos.long())


def iter_chunks(batches: Iterable[Batch], row_shape: tuple[int, ...], max_rows: int) -> Iterator[Batch]:
    """Checks every batch (rows of `row_shape`) and cuts it into chunks of at most `max_rows` rows."""
    for b in batches:
        b = _check_batch(Batch(*b), row_shape)
        for s in range(0, b.activations.shape[0], max_rows):
            yield Batch(*(t[s : s + max_rows] for t in b))


@torch.no_grad()
def latent_acts(sae: SAE, x: Tensor, latent_ids: Tensor) -> Tensor:
    """x [rows, *sae.input_shape] -> [rows, L] activations of the chosen latents (full encode: TopK needs all pre-acts)."""
    param = sae.W_enc
    z = sae.encode(x.to(device=param.device, dtype=param.dtype))
    return z[:, latent_ids.to(z.device)].float().cpu()


POS_BITS = 24


def pack_rows(positions: Tensor) -> Tensor:
    """positions [n, 2] (sequence, position) -> [n] int64 keys seq << 24 | pos."""
    if positions.numel() and int(positions[:, 1].max()) >= 1 << POS_BITS:
        raise ValueError(f"positions >= 2^{POS_BITS} are not supported (context too long)")
    return (positions[:, 0] << POS_BITS) | positions[:, 1]


def unpack_row(key: int) -> tuple[int, int]:
    return key >> POS_BITS, key & ((1 << POS_BITS) - 1)


class _Keeper:
    """Per latent, the `size` rows of largest score seen so far (with their activation and row key).

    Each chunk is first reduced to its own top `size` per latent, so the merge touches 2 * size entries per
    latent whatever the chunk length. Entries with score -inf are empty slots.
    """

    def __init__(self, n_latents: int, size: int):
        self.scores = torch.full((n_latents, size), -math.inf)
        self.vals = torch.zeros(n_latents, size)
        self.rows = torch.full((n_latents, size), -1, dtype=torch.long)

    def update(self, scores: Tensor, vals: Tensor, rows: Tensor) -> None:
        """scores, vals [L, n]; rows [n] packed row keys."""
        size = self.scores.shape[1]
        cand, idx = scores.topk(min(size, scores.shape[1]), dim=1)
        all_scores = torch.cat([self.scores, cand], dim=1)
        all_vals = torch.cat([self.vals, vals.gather(1, idx)], dim=1)
        all_rows = torch.cat([self.rows, rows[idx]], dim=1)
        self.scores, keep = all_scores.topk(size, dim=1)
        self.vals = all_vals.gather(1, keep)
        self.rows = all_rows.gather(1, keep)

    def hits(self, j: int) -> list[RowHit]:
        """Filled slots of latent j, by decreasing score."""
        ok = self.scores[j] > -math.inf
        return [
            RowHit(*unpack_row(r), float(v))
            for r, v in zip(self.rows[j][ok].tolist(), self.vals[j][ok].tolist(), strict=True)
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

    def update(self, zT: Tensor) -> None:
        """zT [L, n] float32 (latent-major)."""
        zmax = zT.max(1).values
        for j in torch.nonzero((zmax > 0) & (zmax.double() >= self.hi)).flatten().tolist():
            self._grow(j, float(zmax[j]))
        n_lat, nb = self.counts.shape
        # hi and n_bins are powers of two, so z / hi * n_bins is exact in float32.
        scale = (nb / self.hi.clamp(min=1e-30)).float().unsqueeze(1)
        bins = (zT * scale).floor_().clamp_(0, nb - 1).long()
        bins += torch.arange(n_lat).unsqueeze(1) * nb
        bins.masked_fill_(zT <= 0, n_lat * nb)
        self.counts += torch.bincount(bins.flatten(), minlength=n_lat * nb + 1)[:-1].view(n_lat, nb)


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
    `max_chunk_elems / max(L, d_sae)` rows so that the encoder's [rows, d_sae] output stays bounded.
    Reservoirs: each (row, latent) draws a uniform key; the `size` largest keys among the rows where the latent
    is active (inactive) are kept, which is a uniform sample without replacement of those rows.
    """
    if not latent_ids:
        raise ValueError("no latents chosen: pass --latents N or --latent-ids")
    bad = [i for i in latent_ids if not 0 <= i < sae.d_sae]
    if bad:
        raise ValueError(f"latent ids {bad[:5]} out of range: the SAE has d_sae={sae.d_sae} latents")
    ids = torch.tensor(latent_ids, dtype=torch.long)
    n_lat = len(latent_ids)
    gen = torch.Generator().manual_seed(seed)
    top = _Keeper(n_lat, 2 * k)
    active_res = _Keeper(n_lat, sample_size)
    inactive_res = _Keeper(n_lat, inactive_size)
    hist = _Histograms(n_lat, hist_bins)
    n_active = torch.zeros(n_lat, dtype=torch.long)
    sum_active = torch.zeros(n_lat, dtype=torch.float64)
    n_rows = 0
    max_rows = max(1, max_chunk_elems // max(n_lat, sae.d_sae))
    for chunk in iter_chunks(batches, sae.input_shape, max_rows):
        zT = latent_acts(sae, chunk.activations, ids).T.contiguous()
        rows = pack_rows(chunk.positions)
        n_rows += zT.shape[1]
        active = zT > 0
        n_active += active.sum(1)
        sum_active += zT.clamp(min=0).sum(1, dtype=torch.float64)
        top.update(torch.where(active, zT, -math.inf), zT, rows)
        # One uniform key per (latent, row) serves both reservoirs: their masks are disjoint.
        keys = torch.rand(zT.shape, generator=gen)
        active_res.update(torch.where(active, keys, -math.inf), zT, rows)
        inactive_res.update(torch.where(active, -math.inf, keys), zT, rows)
        hist.update(zT)
    if n_rows == 0:
        raise ValueError("the activation source yielded no rows")
    out = []
    for j, latent in enumerate(latent_ids):
        top_hits = top.hits(j)
        out.append(
            LatentStats(
                latent=latent,
                n_rows=n_rows,
                n_active=int(n_active[j]),
                sum_active=float(sum_active[j]),
                max_activation=top_hits[0].activation if top_hits else 0.0,
                histogram=Histogram(float(hist.hi[j]), hist.counts[j].tolist()),
                top=top_hits,
                active_sample=sorted(active_res.hits(j), key=lambda h: h.activation),
                inactive_sample=inactive_res.hits(j),
            )
        )
    return out
