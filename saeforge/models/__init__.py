"""saeforge.models: local Hugging Face models (never downloaded) and their hook points.

Names are imported on first use (`saeforge.lazy`), so `saeforge.models.paths` checks a model directory
without importing torch.
"""

import os

# Set before transformers is imported anywhere below: nothing in saeforge may reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from saeforge.lazy import lazy_exports  # noqa: E402

lazy_exports(
    __name__,
    {
        "SITES": "saeforge.models.hooks",
        "HookError": "saeforge.models.hooks",
        "HookPoint": "saeforge.models.hooks",
        "find_blocks": "saeforge.models.hooks",
        "list_hooks": "saeforge.models.hooks",
        "record": "saeforge.models.hooks",
        "resolve_hook": "saeforge.models.hooks",
        "run_hooks": "saeforge.models.hooks",
        "splice": "saeforge.models.hooks",
        "EXAMPLE_MODEL_SHA256": "saeforge.models.loading",
        "LoadedModel": "saeforge.models.loading",
        "builtin_example_model": "saeforge.models.loading",
        "load_model": "saeforge.models.loading",
        "ModelLoadError": "saeforge.models.paths",
        "text_activations": "saeforge.models.texts",
    },
)
