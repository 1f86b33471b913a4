"""Neuronpedia's export tables: one SAE ("source") of one model as the features, activations and explanations
that Neuronpedia's database import reads (the layout its `convert-saedashboard-to-neuronpedia-export` utility
writes).

    OUT/features/batch-<b>.jsonl.gz       one JSON object per latent: modelId, layer (the source id), index (a
                                          string), maxActApprox, frac_nonzero, hookName, freq_hist_data_bar_* (a histogram of its values in those contexts)
    OUT/activations/batch-<b>.jsonl.gz    one per (latent, context): modelId, layer, index, tokens [T] strings,
                                          values [T] floats, maxValue, maxValueTokenIndex, minValue
    OUT/explanations/batch-<b>.jsonl.gz   one per explained latent: modelId, layer, index, description,
                                          typeName, explanationModelName
    OUT/source.json                       modelId, layer, hookName, d_sae, the SAE's cfg

Batches hold `batch_size` consecutive latents. A latent's contexts are the stored sequences holding its top
activations (one context per sequence, highest first); a context's values are the latent's activation at each
of its tokens (0 where saeforge captured no row, e.g. special tokens). Explanations come from a saeforge
interpretation (`saeforge interpret` with a judge), when one is given.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from saeforge.activations.store import ActivationStore
from saeforge.atomic import write_text, write_with
from saeforge.export.rows import StoreSequences
from saeforge.interpret.contexts import default_decode
from saeforge.interpret.records import Interpretation
from saeforge.sae.base import SAE

HIST_BINS = 20


def _top_sequences(
    seqs: StoreSequences, sae: SAE, k: int
) -> tuple[torch.Tensor, list[list[int]], torch.Tensor]:
    """(fires [d_sae] count, per latent its top-k distinct sequences (table rows), max value [d_sae])."""
    d = sae.d_sae
    best = torch.full((len(seqs.index), d), 0.0)  # per sequence, per latent: its max activation
    fires = torch.zeros(d, dtype=torch.long)
    for seq, _pos, z in seqs.latents(sae):
        fires += (z != 0).sum(0)
        best.scatter_reduce_(0, seq[:, None].expand_as(z), z, "amax")
    tops = []
    for j in range(d):
        values, rows = best[:, j].topk(min(k, best.shape[0]))
        tops.append([int(r) for r, v in zip(rows, values, strict=True) if v > 0])
    return fires, tops, best.max(0).values


def _context_values(
    seqs: StoreSequences, sae: SAE, tops: list[list[int]]
) -> dict[tuple[int, int], torch.Tensor]:
    """{(latent, sequence row): values [ctx_len]} for every chosen context."""
    wanted: dict[int, list[int]] = {}
    for j, rows in enumerate(tops):
        for r in rows:
            wanted.setdefault(r, []).append(j)
    width = seqs.tokens.shape[1]
    out = {(j, r): torch.zeros(width) for r, js in wanted.items() for j in js}
    for seq, pos, z in seqs.latents(sae):
        for i in (torch.isin(seq, torch.tensor(list(wanted), dtype=torch.long))).nonzero()[:, 0].tolist():
            r = int(seq[i])
            for j in wanted[r]:
                out[(j, r)][int(pos[i])] = float(z[i, j])
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda p: Path(p).write_bytes(gzip.compress(data, mtime=0)))


def export_neuronpedia(
    sae: SAE,
    store: ActivationStore | str | Path,
    out: str | Path,
    model_id: str,
    source_id: str,
    decode: Callable[[list[int]], list[str]] | None = None,
    interpretation: Interpretation | None = None,
    contexts_per_latent: int = 10,
    batch_size: int = 128,
    rows: int = 8192,
) -> Path:
    """Writes OUT/{features,activations,explanations}/batch-*.jsonl.gz and OUT/source.json; returns OUT.

    model_id / source_id: Neuronpedia's names for the model and for this SAE (e.g. "gpt2-small", "6-res-team").
    decode: token ids -> token strings (e.g. `saeforge.interpret.contexts.tokenizer_decode(tokenizer)`).
    """
    store = store if isinstance(store, ActivationStore) else ActivationStore.open(store)
    if store.d_in != sae.d_in:
        raise ValueError(
            f"the store has d_in={store.d_in} but the SAE d_in={sae.d_in}: use the store of its hook"
        )
    decode = decode or default_decode
    hook = sae.cfg.metadata.get("hook_name") or store.hook
    seqs = StoreSequences(store, rows)
    fires, tops, max_act = _top_sequences(seqs, sae, contexts_per_latent)
    values = _context_values(seqs, sae, tops)
    explained = {r.latent: r for r in interpretation.latents} if interpretation is not None else {}
    base = {"modelId": model_id, "layer": source_id}
    root = Path(out)
    for b, start in enumerate(range(0, sae.d_sae, batch_size)):
        latents = range(start, min(start + batch_size, sae.d_sae))
        features, acts, explanations = [], [], []
        for j in latents:
            nonzero = [v for r in tops[j] for v in values[(j, r)].tolist() if v != 0]
            heights, edges = torch.histogram(torch.tensor(nonzero or [0.0]), HIST_BINS)
            features.append(
                {
                    **base,
                    "index": str(j),
                    "hookName": hook,
                    "maxActApprox": float(max_act[j]),
                    "frac_nonzero": float(fires[j]) / max(store.num_rows, 1),
                    "freq_hist_data_bar_heights": heights.tolist() if nonzero else [],
                    "freq_hist_data_bar_values": ((edges[:-1] + edges[1:]) / 2).tolist() if nonzero else [],
                }
            )
            for r in tops[j]:
                v = values[(j, r)]
                acts.append(
                    {
                        **base,
                        "index": str(j),
                        "tokens": decode(seqs.tokens[r].tolist()),
                        "values": v.tolist(),
                        "maxValue": float(v.max()),
                        "maxValueTokenIndex": int(v.argmax()),
                        "minValue": float(v.min()),
                    }
                )
            rec = explained.get(j)
            if rec is not None and rec.explanation:
                explanations.append(
                    {
                        **base,
                        "index": str(j),
                        "description": rec.explanation,
                        "typeName": "saeforge-judge",
                        "explanationModelName": str(interpretation.meta.get("judge_model", "")),
                    }
                )
        for table, data in (("features", features), ("activations", acts), ("explanations", explanations)):
            _write_jsonl(root / table / f"batch-{b}.jsonl.gz", data)
    source = {**base, "hookName": hook, "d_sae": sae.d_sae, "cfg": sae.cfg.model_dump(mode="json")}
    write_text(root / "source.json", json.dumps(source, indent=1) + "\n")
    return root
