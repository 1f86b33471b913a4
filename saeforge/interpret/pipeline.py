"""`interpret`: statistics, contexts, logit effects and (optionally) judge explanations for chosen latents."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict

import torch
from torch import nn

from saeforge.interpret.collect import Batch
from saeforge.interpret.contexts import Decode, TokensOf, default_decode, top_contexts
from saeforge.interpret.judge import JudgeClient, judge_latents
from saeforge.interpret.records import Interpretation, SiteWeight
from saeforge.interpret.unembed import direction_logits, top_token_scores
from saeforge.sae.base import SAE
from saeforge.sae.crosscoder import CrossCoder
from saeforge.sae.transcoder import Transcoder


def choose_latents(
    d_sae: int, n: int | None = None, ids: list[int] | None = None, seed: int = 0
) -> list[int]:
    """Explicit `ids` (checked against d_sae), else n latents drawn uniformly without replacement, sorted."""
    if ids:
        bad = [i for i in ids if not 0 <= i < d_sae]
        if bad:
            raise ValueError(
                f"--latent-ids {bad[:5]} out of range: the SAE has d_sae={d_sae} (ids 0..{d_sae - 1})"
            )
        return sorted(dict.fromkeys(ids))
    if n is None or n <= 0:
        raise ValueError("choose the latents: --latents N (a random sample) or --latent-ids I,J,...")
    if n >= d_sae:
        return list(range(d_sae))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(d_sae, generator=g)[:n].tolist())


def output_directions(sae: SAE, ids: list[int]) -> torch.Tensor:
    """[L, d] the directions latents `ids` write, read through the unembedding: the decoder rows (a
    transcoder's are in its output site), a crosscoder's at its last site."""
    W = sae.W_dec.detach()[torch.tensor(ids)]
    return W[:, -1] if isinstance(sae, CrossCoder) else W


@torch.no_grad()
def site_weights(sae: SAE, ids: list[int]) -> list[list[SiteWeight]]:
    """Per latent of `ids`, the norms with which it reads and writes each site; [] each for an SAE."""
    idx = torch.tensor(ids)
    if isinstance(sae, CrossCoder):
        reads = sae.W_enc[:, :, idx].norm(dim=1).T  # [L, n_sites]
        writes = sae.W_dec[idx].norm(dim=-1)  # [L, n_sites]
        return [
            [SiteWeight(site, float(r), float(w)) for site, r, w in zip(sae.cfg.sites, rr, ww, strict=True)]
            for rr, ww in zip(reads.tolist(), writes.tolist(), strict=True)
        ]
    if isinstance(sae, Transcoder):
        meta = sae.cfg.metadata
        hook_in, hook_out = meta.get("hook_name") or "input", meta.get("hook_name_out") or "output"
        reads = sae.W_enc[:, idx].norm(dim=0).tolist()
        writes = sae.W_dec[idx].norm(dim=1).tolist()
        return [
            [SiteWeight(hook_in, r, None), SiteWeight(hook_out, None, w)]
            for r, w in zip(reads, writes, strict=True)
        ]
    return [[] for _ in ids]


def _sites_meta(sae: SAE) -> dict:
    meta = sae.cfg.metadata
    if isinstance(sae, CrossCoder):
        return {"kind": "crosscoder", "hook": None, "sites": list(sae.cfg.sites)}
    if isinstance(sae, Transcoder):
        return {"kind": "transcoder", "hook": meta.get("hook_name"), "hook_out": meta.get("hook_name_out")}
    return {"kind": "sae", "hook": meta.get("hook_name")}


def interpret(
    sae: SAE,
    batches: Iterable[Batch],
    latent_ids: list[int],
    *,
    k: int = 20,
    before: int = 12,
    after: int = 4,
    n_bands: int = 5,
    per_band: int = 4,
    n_negatives: int = 10,
    tokens_of: TokensOf | None = None,
    decode: Decode | None = None,
    model: nn.Module | None = None,
    n_logit_tokens: int = 10,
    through_norm: bool = True,
    vocab_size: int | None = None,
    judge: JudgeClient | None = None,
    judge_examples: int = 10,
    progress: Callable[[int], None] | None = None,
    seed: int = 0,
) -> Interpretation:
    """Describes `latent_ids` of `sae` from a re-iterable activation source (see `top_contexts`).

    batches: `Batch`es of what the SAE reads (a crosscoder: [rows, n_sites, d_in], `store_batches(stores)`).
    model: a causal LM (HF) for promoted/suppressed tokens through its unembedding (skipped when None), of the
    directions `output_directions` gives;
    vocab_size: only the first vocab_size ids are ranked (the tokenizer's; models pad their embeddings).
    judge: an OpenAI-compatible client; when given, latents get an explanation and detection scores.
    """
    decode = decode or default_decode
    records = top_contexts(
        sae,
        batches,
        latent_ids,
        k,
        before=before,
        after=after,
        n_bands=n_bands,
        per_band=per_band,
        n_negatives=n_negatives,
        tokens_of=tokens_of,
        decode=decode,
        seed=seed,
    )
    for rec, sites in zip(records, site_weights(sae, latent_ids), strict=True):
        rec.sites = sites
    if model is not None:
        logits = direction_logits(model, output_directions(sae, latent_ids), through_norm=through_norm)
        if vocab_size is not None:
            logits = logits[:, :vocab_size]
        for rec, row in zip(records, logits, strict=True):
            rec.promoted, rec.suppressed = top_token_scores(row, decode, n_logit_tokens)
    meta = {
        "n_rows": records[0].n_rows if records else 0,
        "k": k,
        "window": [before, after],
        **_sites_meta(sae),
        "logits_through_norm": through_norm if model is not None else None,
    }
    interp = Interpretation(latents=records, meta=meta)
    if judge is not None:
        add_judgements(interp, judge, judge_examples, per_band * n_bands, progress)
    return interp


def add_judgements(
    interp: Interpretation,
    judge: JudgeClient,
    n_examples: int = 10,
    n_detect: int = 20,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Explains and detection-scores every latent of `interp` in place; the summary goes to meta["judge"]."""
    summary = judge_latents(
        judge, interp.latents, n_examples=n_examples, n_detect=n_detect, progress=progress
    )
    interp.meta["judge"] = {**asdict(summary), "unclear_share": summary.unclear_share, "model": judge.model}
