"""saeforge: train, judge, read and use sparse autoencoders on your own language models."""

from __future__ import annotations

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
