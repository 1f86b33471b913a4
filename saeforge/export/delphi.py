"""Delphi's latent cache: what its explainers and scorers read (EleutherAI/delphi: `latents/cache.py` writes it,
`latents/loader.py`'s `LatentDataset` reads it).

    OUT/<hookpoint>/<start>_<end>.safetensors    one file per latent range [start, end] (end inclusive)
        locations    uint16 [N, 3] (uint32 when a value does not fit): (sequence row in `tokens`, position,
                     latent - start) of every non-zero latent, as Delphi narrows them
        activations  float16 [N]: its value
        tokens       int64 [n_seq, ctx_len]: the token ids of every sequence (the same table in every file)
    OUT/<hookpoint>/config.json                  the cache config: Delphi's CacheConfig keys (dataset_repo,
                     dataset_split, dataset_name, dataset_column, batch_size, cache_ctx_len and its older name
                     ctx_len, n_tokens, n_splits) plus model_name (the tokenizer Delphi loads when given none)

The ranges are Delphi's: boundaries linspace(0, d_sae, n_splits + 1) rounded down. The hookpoint is the SAE's
canonical hook name. Rows that saeforge did not capture (special tokens) have no locations; their tokens are in
`tokens` when the store kept its contexts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from saeforge.activations.store import ActivationStore
from saeforge.atomic import write_text, write_with
from saeforge.export.rows import StoreSequences
from saeforge.sae.base import SAE


def export_delphi(
    sae: SAE,
    store: ActivationStore | str | Path,
    out: str | Path,
    n_splits: int = 5,
    model_name: str | None = None,
    rows: int = 8192,
) -> Path:
    """Writes the Delphi cache of `sae` over every row of `store` under OUT/<hookpoint>/; returns that folder."""
    store = store if isinstance(store, ActivationStore) else ActivationStore.open(store)
    if store.d_in != sae.d_in:
        raise ValueError(
            f"the store has d_in={store.d_in} but the SAE d_in={sae.d_in}: use the store of its hook"
        )
    if not 1 <= n_splits <= sae.d_sae:
        raise ValueError(f"n_splits={n_splits} must be between 1 and d_sae={sae.d_sae}")
    hookpoint = sae.cfg.metadata.get("hook_name") or store.hook
    seqs = StoreSequences(store, rows)
    locs, vals = [], []
    for seq, pos, z in seqs.latents(sae):
        r, latent = z.nonzero(as_tuple=True)
        locs.append(torch.stack([seq[r], pos[r], latent], 1))
        vals.append(z[r, latent])
    locations = torch.cat(locs) if locs else torch.zeros(0, 3, dtype=torch.long)
    activations = torch.cat(vals) if vals else torch.zeros(0)
    folder = Path(out) / hookpoint
    folder.mkdir(parents=True, exist_ok=True)
    bounds = torch.linspace(0, sae.d_sae, n_splits + 1).long().tolist()
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        keep = (locations[:, 2] >= start) & (locations[:, 2] < stop)
        part = locations[keep].clone()
        part[:, 2] -= start
        narrow = part.numel() == 0 or int(part.max()) < 2**16
        tensors = {
            "locations": part.to(torch.uint16 if narrow else torch.uint32).contiguous(),
            "activations": activations[keep].half().contiguous(),
            "tokens": seqs.tokens.contiguous(),
        }
        write_with(folder / f"{start}_{stop - 1}.safetensors", lambda p, t=tensors: save_file(t, p))
    manifest = store.manifest
    ctx_len = int(seqs.tokens.shape[1])
    config = {
        "dataset_repo": ", ".join(c.source for c in manifest.corpus) or "saeforge-store",
        "dataset_split": "all",
        "dataset_name": "",
        "dataset_column": "text",
        "batch_size": rows,
        "cache_ctx_len": ctx_len,
        "ctx_len": ctx_len,
        "n_tokens": int(store.num_rows),
        "n_splits": n_splits,
        "model_name": model_name or (manifest.model.path if manifest.model else None),
        "hookpoint": hookpoint,
        "d_sae": sae.d_sae,
        "saeforge_store": str(store.path),
    }
    write_text(folder / "config.json", json.dumps(config, indent=1) + "\n")
    return folder
