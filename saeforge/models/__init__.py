"""saeforge.models: local Hugging Face models (never downloaded) and their hook points."""

import os

# Set before transformers is imported anywhere below: nothing in saeforge may reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from saeforge.models.hooks import (  # noqa: E402
    SITES,
    HookError,
    HookPoint,
    find_blocks,
    list_hooks,
    record,
    resolve_hook,
    run_hooks,
    splice,
)
from saeforge.models.loading import (  # noqa: E402
    EXAMPLE_MODEL_SHA256,
    LoadedModel,
    ModelLoadError,
    builtin_example_model,
    load_model,
)
from saeforge.models.texts import text_activations  # noqa: E402

__all__ = [
    "EXAMPLE_MODEL_SHA256",
    "SITES",
    "HookError",
    "HookPoint",
    "LoadedModel",
    "ModelLoadError",
    "builtin_example_model",
    "find_blocks",
    "list_hooks",
    "load_model",
    "record",
    "resolve_hook",
    "run_hooks",
    "splice",
    "text_activations",
]
