"""saeforge: train, judge, read and use sparse autoencoders on your own language models."""

from __future__ import annotations

import os

# Back large CPU tensors with transparent huge pages: fewer page faults on the [batch, d_sae] pre-activations
# (12-14% of a TopK step on the project's CPU machine, docs/benchmarks.md). torch reads this once, at its first
# allocation, so it reaches API users who import saeforge before torch allocates; otherwise set
# THP_MEM_ALLOC_ENABLE=1 in the environment (docs/benchmarks.md, "Python API"). A value already set is kept.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from saeforge.version import __version__

__all__ = ["CrossCoder", "__version__", "load_model", "load_sae", "save_sae", "text_activations"]


def __getattr__(name: str):
    # Imported lazily so that `saeforge --help` does not pay for torch.
    if name in ("CrossCoder", "load_sae", "save_sae"):
        from saeforge import sae

        return getattr(sae, name)
    if name in ("load_model", "text_activations"):
        from saeforge import models

        return getattr(models, name)
    raise AttributeError(f"module 'saeforge' has no attribute {name!r}")
