"""Evaluating dictionaries across sites: a transcoder against its target site, a crosscoder site by site, and a
transcoder spliced into the model in place of the MLP's output.

    fvu   = sum_b ||y_b - y_hat_b||^2 / sum_b ||y_b - mean(y)||^2       (float64 sums over the stream)

A transcoder's y is its target site (`target_metrics`, batches of (x, y)); a crosscoder's y is each site, and
`site_metrics` reports the FVU of every site (`fvu.<site>`, in `cfg.sites` order) and of all sites together.
`transcoder_downstream` scores the transcoder as the MLP's replacement: the forward pass records the MLP's input
(`layers.{i}.mlp_in`) and replaces the MLP's output (`layers.{i}.mlp_out`) by the transcoder's output computed from
it; CE and KL (and their scores against zero and mean ablation of the MLP's output) are those of
`downstream.downstream_scores`, so they are defined exactly as for SAEs.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor

from saeforge.activations.stats import centred_sum_sq
from saeforge.eval.downstream import Forward, Replace, ablations, downstream_scores
from saeforge.sae.base import SAE


class _FVU:
    """Streaming float64 sums for the FVU of y [B, d] against y_hat."""

    def __init__(self) -> None:
        self.n, self.err, self.sq, self.sum = 0, 0.0, 0.0, None

    def add(self, y: Tensor, y_hat: Tensor) -> None:
        y64 = y.double()
        self.n += y.shape[0]
        self.err += float((y64 - y_hat.double()).pow(2).sum())
        self.sq += float(y64.pow(2).sum())
        col = y64.sum(0)
        self.sum = col if self.sum is None else self.sum + col

    def fvu(self) -> float | None:
        if self.n == 0:
            return None
        total = centred_sum_sq(self.sq, float(self.sum.pow(2).sum()), self.n)
        return None if total is None else self.err / total


def _l0(z: Tensor) -> Tensor:
    return (z != 0).sum(-1).double()


@torch.no_grad()
def target_metrics(transcoder: SAE, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, Any]:
    """Target FVU, MSE and L0 of a transcoder over (x [B, d_in], y [B, d_out]) batches of aligned rows."""
    p = transcoder.W_dec
    acc, l0, tokens = _FVU(), 0.0, 0
    for x, y in batches:
        x, y = x.to(p.device, p.dtype), y.to(p.device, p.dtype)
        z = transcoder.encode(x)
        y_hat = transcoder.decode(z)
        if getattr(transcoder, "W_skip", None) is not None:
            y_hat = y_hat + x @ transcoder.W_skip.T
        acc.add(y, y_hat)
        l0 += float(_l0(z).sum())
        tokens += x.shape[0]
    return {
        "tokens": tokens,
        "fvu": acc.fvu(),
        "mse": acc.err / max(tokens, 1),
        "l0": l0 / max(tokens, 1),
    }


@torch.no_grad()
def site_metrics(crosscoder: SAE, batches: Iterable[Tensor | tuple[Tensor, ...]]) -> dict[str, Any]:
    """FVU of every site (`fvu.<site>`) and of all sites (`fvu`), and L0, of a crosscoder over batches
    [B, n_sites, d_in] or tuples of n_sites [B, d_in] aligned tensors."""
    p, sites = crosscoder.W_dec, crosscoder.cfg.sites
    per_site = [_FVU() for _ in sites]
    whole, l0, tokens = _FVU(), 0.0, 0
    for batch in batches:
        x = torch.stack(tuple(batch), dim=1) if isinstance(batch, (tuple, list)) else batch
        x = x.to(p.device, p.dtype)
        z = crosscoder.encode(x)
        x_hat = crosscoder.decode(z)
        for s, acc in enumerate(per_site):
            acc.add(x[:, s], x_hat[:, s])
        whole.add(x.flatten(1), x_hat.flatten(1))
        l0 += float(_l0(z).sum())
        tokens += x.shape[0]
    return {
        "tokens": tokens,
        "fvu": whole.fvu(),
        **{f"fvu.{site}": acc.fvu() for site, acc in zip(sites, per_site, strict=True)},
        "l0": l0 / max(tokens, 1),
    }


def _spliced_forward(loaded: Any, layer: int) -> tuple[Forward, dict[str, Tensor]]:
    """A `Forward` whose replacement acts on `layers.{layer}.mlp_out`, with the same pass's `mlp_in` recorded in
    the returned dict (key "mlp_in") before the replacement runs."""
    from saeforge.models import splice

    model = loaded.model
    device = next(model.parameters()).device
    seen: dict[str, Tensor] = {}

    def keep(act: Tensor) -> Tensor:
        seen["mlp_in"] = act
        return act

    def forward(tokens: Tensor, replace: Replace | None) -> Tensor:
        tokens = tokens.to(device)
        with ExitStack() as stack:
            if replace is not None:
                stack.enter_context(splice(loaded, f"layers.{layer}.mlp_in", keep))
                stack.enter_context(splice(loaded, f"layers.{layer}.mlp_out", replace))
            out = model(input_ids=tokens, attention_mask=torch.ones_like(tokens))
        return out.logits

    return forward, seen


@torch.no_grad()
def transcoder_downstream(
    transcoder: SAE,
    loaded: Any,
    tokens: Tensor,
    special: Tensor,
    layer: int,
    mean_output: Tensor,
    batch_size: int = 8,
) -> dict[str, Any]:
    """CE/KL of a causal model with the MLP of `layer` replaced by the transcoder (reading `mlp_in`), against the
    clean model and zero / mean (`mean_output` [d_model], the MLP output's mean) ablation of the MLP's output.

    tokens, special: contexts [n, T] and their special-token mask (special positions keep the MLP's output)."""
    if loaded.kind != "causal":
        raise ValueError("transcoder_downstream scores next-token CE and KL: it needs a causal model")
    forward, seen = _spliced_forward(loaded, layer)
    p = transcoder.W_dec

    def replace(act: Tensor) -> Tensor:
        return transcoder(seen["mlp_in"].to(p.device, p.dtype)).to(act.device, act.dtype)

    replacements = {"sae": replace, **ablations(mean_output)}
    scores = downstream_scores(forward, "causal", tokens, special, replacements, batch_size)
    return {k.replace("with_sae", "with_transcoder"): v for k, v in scores.items()}
