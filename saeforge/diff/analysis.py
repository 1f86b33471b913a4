"""The per-latent diff table: decoder geometry, frequencies, Latent Scaling, category (one row per latent)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import Tensor

from saeforge.diff.categories import CATEGORIES, Thresholds, categorize
from saeforge.diff.coder import PairCoder
from saeforge.diff.stats import activation_stats, decoder_stats

LATENT_FIELDS = (
    "latent",
    "category",
    "artefacts",
    "relative_norm",
    "decoder_cosine",
    "norm_base",
    "norm_finetuned",
    "freq",
    "freq_base",
    "freq_finetuned",
    "nu_eps",
    "nu_r",
    "beta_eps_base",
    "beta_eps_finetuned",
    "beta_r_base",
    "beta_r_finetuned",
)


def _num(v: float) -> float | None:
    return None if math.isnan(v) else v


def diff_latents(
    coder: PairCoder,
    batches: Iterable[tuple[Tensor, Tensor]],
    thresholds: Thresholds | None = None,
    max_rows: int | None = None,
) -> tuple[list[dict], int]:
    """(one dict per latent with LATENT_FIELDS, rows read) from aligned (x_base, x_finetuned) batches."""
    th = thresholds or Thresholds()
    dec = decoder_stats(coder.W_dec)
    act = activation_stats(coder, batches, max_rows=max_rows)
    columns = {
        "relative_norm": dec.relative_norm,
        "decoder_cosine": dec.decoder_cosine,
        "norm_base": dec.norm_base,
        "norm_finetuned": dec.norm_finetuned,
        "freq": act.freq,
        "freq_base": act.freq_base,
        "freq_finetuned": act.freq_finetuned,
        "nu_eps": act.nu_eps,
        "nu_r": act.nu_r,
        "beta_eps_base": act.beta_eps_base,
        "beta_eps_finetuned": act.beta_eps_finetuned,
        "beta_r_base": act.beta_r_base,
        "beta_r_finetuned": act.beta_r_finetuned,
    }
    lists = {k: v.tolist() for k, v in columns.items()}
    rows = []
    for j in range(dec.relative_norm.shape[0]):
        row = {"latent": j, **{k: _num(v[j]) for k, v in lists.items()}}
        row["category"], row["artefacts"] = categorize(
            row["relative_norm"], row["decoder_cosine"], row["nu_eps"], row["nu_r"], row["freq"], th
        )
        rows.append({k: row[k] for k in LATENT_FIELDS})
    return rows, act.n_rows


def category_counts(rows: list[dict]) -> dict[str, int]:
    """Latents per category, every category present (0 when empty)."""
    counts = dict.fromkeys(CATEGORIES, 0)
    for r in rows:
        counts[r["category"]] += 1
    return counts


def top_latents(rows: list[dict], category: str, n: int) -> list[int]:
    """Up to n latents of `category`, the most frequent first (what a reader looks at first)."""
    chosen = sorted((r for r in rows if r["category"] == category), key=lambda r: -(r["freq"] or 0.0))
    return [r["latent"] for r in chosen[:n]]
