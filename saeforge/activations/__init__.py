"""saeforge.activations: capture activations into checksummed shards, read them back, shuffle them for training.

capture(CaptureConfig) -> one store per hook; ActivationStore.open(dir) reads one; ActivationLoader serves
globally shuffled, exactly resumable training batches from it; AlignedLoader serves tuples of the same rows of
stores captured together (check_aligned proves they were); StreamingSource serves the same batches computed
live from the model. Formats: docs/formats.md.
"""

from saeforge.activations.aligned import AlignedLoader, check_aligned
from saeforge.activations.capture import (
    CaptureConfig,
    CaptureError,
    CorpusExhausted,
    CorpusSource,
    NonFiniteActivations,
    capture,
    store_status,
)
from saeforge.activations.loader import ActivationLoader
from saeforge.activations.manifest import Manifest, ShardEntry, Stats
from saeforge.activations.shards import ShardError
from saeforge.activations.store import ActivationStore, StoreError, find_stores, verify_shards
from saeforge.activations.streaming import StreamingSource
from saeforge.activations.writer import write_store

__all__ = [
    "ActivationLoader",
    "AlignedLoader",
    "ActivationStore",
    "CaptureConfig",
    "CaptureError",
    "CorpusExhausted",
    "CorpusSource",
    "Manifest",
    "NonFiniteActivations",
    "ShardEntry",
    "ShardError",
    "Stats",
    "StoreError",
    "StreamingSource",
    "capture",
    "check_aligned",
    "find_stores",
    "store_status",
    "verify_shards",
    "write_store",
]
