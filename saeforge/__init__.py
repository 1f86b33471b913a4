"""saeforge: train, judge, read and use sparse autoencoders on your own language models."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["CrossCoder", "__version__", "load_sae", "save_sae"]


def __getattr__(name: str):
    # Imported lazily so that `saeforge --help` does not pay for torch.
    if name in ("CrossCoder", "load_sae", "save_sae"):
        from saeforge import sae

        return getattr(sae, name)
    raise AttributeError(f"module 'saeforge' has no attribute {name!r}")
