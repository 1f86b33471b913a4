"""Reading a base store and a fine-tuned store captured together as the batches the diff consumes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from saeforge.activations import ActivationStore, check_aligned
from saeforge.interpret.collect import Batch
from saeforge.interpret.source import StoreBatches


def open_pair(base: ActivationStore | str | Path, finetuned: ActivationStore | str | Path):
    """(base, finetuned) opened stores; raises StoreError naming the first row that differs, or a width mismatch."""
    base_store, ft_store = check_aligned([base, finetuned])
    if base_store.d_in != ft_store.d_in:
        raise ValueError(
            f"the base store {base_store.path} has d_in={base_store.d_in} but the fine-tuned store "
            f"{ft_store.path} has d_in={ft_store.d_in}: diff the same hook of two models of one architecture"
        )
    return base_store, ft_store


def paired_rows(
    base: ActivationStore, finetuned: ActivationStore, batch_size: int = 4096
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x_base [B, d_in], x_finetuned [B, d_in]) float32, every row once in store order."""
    yield from zip(base.iter_batches(batch_size), finetuned.iter_batches(batch_size), strict=True)


class PairedBatches:
    """Re-iterable interpretation batches over both stores: activations [rows, 2 * d_in] (base then fine-tuned,
    row-aligned), token ids and positions from the base store."""

    def __init__(self, base: ActivationStore, finetuned: ActivationStore, rows: int = 8192):
        self.base = StoreBatches(base, rows)
        self.finetuned = StoreBatches(finetuned, rows)

    def __iter__(self) -> Iterator[Batch]:
        for b, f in zip(self.base, self.finetuned, strict=True):
            yield Batch(torch.cat([b.activations, f.activations], dim=1), b.token_ids, b.positions)
