"""Neuronpedia's export tables: one SAE ("source") of one model as the rows Neuronpedia's database import reads,
in the layout of the converters in Neuronpedia's repository (`utils/neuronpedia-utils`: one JSON object per
line, gzipped batches, camelCase field names of its database models).

    OUT/release.jsonl, model.jsonl, sourceset.jsonl, source.jsonl   one row each: the release, the model, the
                                          source set (`<set>` of the source id `<layer>-<set>`) and the source
    OUT/features/batch-<b>.jsonl.gz       one row per latent: modelId, layer (the source id), index (the latent
                                          as a string), maxActApprox, frac_nonzero, hookName,
                                          freq_hist_data_bar_heights/values (a histogram of its nonzero values in
                                          its contexts), and the database's other columns empty
    OUT/activations/batch-<b>.jsonl.gz    one row per (latent, context): id, modelId, layer, index, tokens [T]
                                          strings, values [T] floats, maxValue, maxValueTokenIndex, minValue
    OUT/explanations/batch-<b>.jsonl.gz   one row per explained latent: id, modelId, layer, index, description,
                                          typeName, explanationModelName, authorId

Batches hold `batch_size` consecutive latents. A latent's contexts are the stored sequences holding its top
activations (one context per sequence, highest first); a context's values are the latent's activation at each
of its tokens (0 where saeforge captured no row, e.g. special tokens). Explanations come from a saeforge
interpretation (`saeforge interpret` with a judge), when one is given. Ids are deterministic (source id,
latent, context), so a re-export writes the same rows.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
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
SOURCE_ID = re.compile(r"^(\d+)-([A-Za-z0-9][A-Za-z0-9_-]*)$")
_EMPTY_FEATURE = {  # the feature table's columns saeforge does not compute
    "hasVector": False, "vector": [], "vectorLabel": None, "topkCosSimIndices": [], "topkCosSimValues": [],
    "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
    "correlated_neurons_indices": [], "correlated_neurons_pearson": [], "correlated_neurons_l1": [],
    "correlated_features_indices": [], "correlated_features_pearson": [], "correlated_features_l1": [],
    "neg_str": [], "neg_values": [], "pos_str": [], "pos_values": [], "logits_hist_data_bar_heights": [],
    "logits_hist_data_bar_values": [], "decoder_weights_dist": [],
}  # fmt: skip
_EMPTY_ACTIVATION = {
    "dfaValues": [], "dfaTargetIndex": None, "dfaMaxValue": None, "lossValues": [], "logitContributions": None,
    "binMin": None, "binMax": None, "binContains": None, "qualifyingTokenIndex": None, "dataIndex": None,
    "dataSource": None,
}  # fmt: skip


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


def _metadata(model_id: str, source_id: str, hook: str, creator: str, created: str) -> dict[str, dict]:
    """The one-row tables that name the release, the model, the source set and the source."""
    layer, set_name = SOURCE_ID.match(source_id).groups()
    who = {"creatorId": creator, "createdAt": created}
    return {
        "release": {"name": set_name, "description": f"{set_name} (saeforge)", "descriptionShort": set_name,
                    "urls": [], "creatorNameShort": creator, "creatorName": creator, **who},
        "model": {"id": model_id, "instruct": model_id.endswith("-it"), "displayNameShort": model_id,
                  "displayName": model_id, **who, "updatedAt": created},
        "sourceset": {"modelId": model_id, "name": set_name, "creatorName": creator, "releaseName": set_name,
                      "description": f"{hook}, layer {layer}", "visibility": "PUBLIC", **who},
        "source": {"modelId": model_id, "setName": set_name, "visibility": "PUBLIC", "dataset": "",
                   "id": source_id, "num_prompts": None, "num_tokens_in_prompt": None, "hfRepoId": None,
                   "hfFolderId": None, "creatorId": creator},
    }  # fmt: skip


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
    creator: str = "saeforge",
) -> Path:
    """Writes OUT/{features,activations,explanations}/batch-*.jsonl.gz and the four one-row tables; returns OUT.

    model_id / source_id: Neuronpedia's names for the model and for this SAE (source ids are `<layer>-<set>`,
        e.g. "gpt2-small" and "6-res-team").
    decode: token ids -> token strings (e.g. `saeforge.interpret.contexts.tokenizer_decode(tokenizer)`).
    creator: the creator name and id written into every row.
    """
    if not SOURCE_ID.match(source_id):
        raise ValueError(
            f"Neuronpedia source id {source_id!r} is not `<layer>-<set name>`: use e.g. 6-res-team "
            "(the layer number, a dash, then letters, digits, - or _)"
        )
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
    created = datetime.now(timezone.utc).isoformat()
    base = {"modelId": model_id, "layer": source_id}
    who = {"creatorId": creator, "createdAt": created}
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
                    **who,
                    "hookName": hook,
                    "maxActApprox": float(max_act[j]),
                    "frac_nonzero": float(fires[j]) / max(store.num_rows, 1),
                    "freq_hist_data_bar_heights": heights.tolist() if nonzero else [],
                    "freq_hist_data_bar_values": ((edges[:-1] + edges[1:]) / 2).tolist() if nonzero else [],
                    **_EMPTY_FEATURE,
                }
            )
            for n, r in enumerate(tops[j]):
                v = values[(j, r)]
                acts.append(
                    {
                        "id": f"{source_id}-{j}-{n}",
                        **base,
                        "index": str(j),
                        "tokens": decode(seqs.tokens[r].tolist()),
                        "values": v.tolist(),
                        "maxValue": float(v.max()),
                        "maxValueTokenIndex": int(v.argmax()),
                        "minValue": float(v.min()),
                        **who,
                        **_EMPTY_ACTIVATION,
                    }
                )
            rec = explained.get(j)
            if rec is not None and rec.explanation:
                explanations.append(
                    {
                        "id": f"{source_id}-{j}-explanation",
                        **base,
                        "index": str(j),
                        "description": rec.explanation,
                        "typeName": "saeforge-judge",
                        "explanationModelName": str(interpretation.meta.get("judge_model", "")),
                        "authorId": creator,
                        "createdAt": created,
                    }
                )
        for table, data in (("features", features), ("activations", acts), ("explanations", explanations)):
            _write_jsonl(root / table / f"batch-{b}.jsonl.gz", data)
    for name, row in _metadata(model_id, source_id, hook, creator, created).items():
        write_text(root / f"{name}.jsonl", json.dumps(row) + "\n")
    return root
