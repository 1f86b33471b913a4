"""Top contexts of chosen latents with both models side by side.

The crosscoder reads both models at once, so a latent has one activation per token; what differs between the
models is whether their activations hold the latent's direction. For every window token we give the latent's
activation z_j and each model's presence <x^m - b_dec^m, u_j> / ||u_j||^2 (saeforge.diff.coder.presence): on a
genuinely fine-tune-only latent the fine-tuned model's presence tracks z_j and the base model's stays near 0.
Windows come from interpret's `top_contexts` (one encoder pass for the statistics, one for the windows), the
presences from its `fill_windows` over the same windows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from saeforge.diff.coder import BASE, FINETUNED, PairCoder, latent_directions, presence
from saeforge.diff.data import PairedBatches
from saeforge.diff.stats import decoder_stats
from saeforge.interpret.collect import RowHit
from saeforge.interpret.contexts import fill_windows, top_contexts
from saeforge.interpret.records import LatentRecord


class _FlatView:
    """The crosscoder seen as the SAE interpret expects: encode([rows, 2 * d_in]) -> [rows, d_sae]."""

    def __init__(self, coder: PairCoder, fn: Callable[[Tensor], Tensor]):
        self.W_enc = coder.W_enc
        self.d_in = 2 * coder.W_dec.shape[2]
        self.d_sae = coder.W_dec.shape[0]
        self.input_shape = (self.d_in,)
        self._fn = fn

    def encode(self, x: Tensor) -> Tensor:
        return self._fn(x.unflatten(-1, (2, self.d_in // 2)))


def joint_view(coder: PairCoder) -> _FlatView:
    return _FlatView(coder, coder.encode)


def presence_view(coder: PairCoder, site: int) -> _FlatView:
    _, U = latent_directions(coder, decoder_stats(coder.W_dec).relative_norm)
    return _FlatView(coder, lambda x: presence(coder, x, site, U))


@torch.no_grad()
def side_by_side(
    coder: PairCoder,
    batches: PairedBatches,
    latent_ids: list[int],
    k: int = 8,
    *,
    before: int = 12,
    after: int = 4,
    tokens_of=None,
    decode=None,
) -> tuple[list[LatentRecord], list[list[dict]]]:
    """(interpret records of `latent_ids`, per latent its top contexts as plain dicts with `tokens`, `center`,
    `activation`, `acts` (z_j), `presence_base`, `presence_finetuned`, one entry per window token)."""
    records = top_contexts(
        joint_view(coder), batches, latent_ids, k, before=before, after=after, n_bands=1, per_band=1,
        n_negatives=k, tokens_of=tokens_of, decode=decode,
    )  # fmt: skip
    requests = [(j, RowHit(c.seq, c.pos, c.activation)) for j, rec in enumerate(records) for c in rec.top]
    views = {}
    for site, name in ((BASE, "presence_base"), (FINETUNED, "presence_finetuned")):
        views[name] = fill_windows(
            presence_view(coder, site),
            batches,
            latent_ids,
            requests,
            before=before,
            after=after,
            tokens_of=tokens_of,
        )
    out: list[list[dict]] = [[] for _ in records]
    for r, (j, _) in enumerate(requests):
        c = records[j].top[len(out[j])]
        entry = {"tokens": c.tokens, "center": c.center, "activation": c.activation, "acts": c.acts}
        for name, filled in views.items():
            start, _, acts = filled[r]
            offset = c.start - start
            entry[name] = acts[offset : offset + len(c.tokens)]
        out[j].append(entry)
    return records, out
