"""Activations of a list of strings at a hook, in one call: for notebooks and quick looks.

    acts = text_activations(model, ["The cat sat.", "Dogs bark."], "layers.3.resid_post")
    # -> [Tensor [T_0, d], Tensor [T_1, d]]: one row per token of each string

Each string is tokenised on its own with the tokenizer's defaults (its special tokens, e.g. BOS or [CLS]/[SEP],
included, as `tokenizer(text)` gives them) and truncated to `max_length`. Strings are run in batches padded on
the right with an attention mask, so a causal model's real positions are exactly those of the string alone;
padding rows are cut off. Activations come back float32 on the CPU. Capture corpora with `saeforge capture`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from saeforge.models.hooks import run_hooks
from saeforge.models.loading import LoadedModel, load_model


def text_activations(
    model: LoadedModel | str | Path,
    texts: str | Sequence[str],
    hook: str,
    batch_size: int = 16,
    max_length: int = 512,
) -> list[torch.Tensor]:
    """One float32 CPU Tensor [T_i, d] per string: its tokens' activations at `hook` (canonical, TL or module).

    model: a LoadedModel or a local model directory (loaded on the CPU).
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size ({batch_size}) and max_length ({max_length}) must be at least 1")
    ids = [loaded.tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    out: list[torch.Tensor] = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        width = max(len(i) for i in chunk)
        tokens = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, seq in enumerate(chunk):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        acts = run_hooks(loaded, tokens.to(loaded.device), mask.to(loaded.device), [hook])[hook]
        out += [acts[row, : len(seq)].float().cpu() for row, seq in enumerate(chunk)]
    return out
