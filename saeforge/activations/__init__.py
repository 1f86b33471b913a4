"""saeforge.activations: capture activations into checksummed shards, read them back, shuffle them for training.

capture(CaptureConfig) -> one store per hook; ActivationStore.open(dir) reads one; ActivationLoader serves
globally shuffled, exactly resumable training batches from it; AlignedLoader serves tuples of the same rows of
stores captured together (check_aligned proves they were); StreamingSource serves the same batches computed
live from the model. Formats: docs/formats.md.
"""

from saeforge.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "PlanConfig": "saeforge.activations.config",
        "AlignedLoader": "saeforge.activations.aligned",
        "check_aligned": "saeforge.activations.aligned",
        "CaptureError": "saeforge.activations.capture",
        "CorpusExhausted": "saeforge.activations.capture",
        "NonFiniteActivations": "saeforge.activations.capture",
        "capture": "saeforge.activations.capture",
        "store_status": "saeforge.activations.capture",
        "CaptureConfig": "saeforge.activations.config",
        "CorpusSource": "saeforge.activations.config",
        "ActivationLoader": "saeforge.activations.loader",
        "Manifest": "saeforge.activations.manifest",
        "ShardEntry": "saeforge.activations.manifest",
        "Stats": "saeforge.activations.manifest",
        "ShardError": "saeforge.activations.shards",
        "ActivationStore": "saeforge.activations.store",
        "StoreError": "saeforge.activations.store",
        "find_stores": "saeforge.activations.store",
        "verify_shards": "saeforge.activations.store",
        "StreamingSource": "saeforge.activations.streaming",
        "write_store": "saeforge.activations.writer",
    },
)
