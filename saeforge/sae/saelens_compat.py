"""What SAELens files mean beyond their tensors: hook names, model-loading settings, older layouts.

Writing (`metadata_for_saelens`): SAELens attaches an SAE at `metadata.hook_name`, a TransformerLens hook. A
canonical saeforge hook with a TransformerLens counterpart is written in that spelling, the canonical name goes
to `metadata.saeforge_hook_name`, and `metadata.model_from_pretrained_kwargs` records the loading settings under
which TransformerLens's hooks hold the values saeforge captured (no weight folding or centring). Reading
(`metadata_from_saelens`) restores the canonical name for saeforge's own files and keeps other files' names.
"""

from __future__ import annotations

from typing import Any

from saeforge.hook_names import TRANSFORMERLENS_LOADING, canonical_hook_name, transformerlens_hook_name

SAEFORGE_HOOK_KEY = "saeforge_hook_name"


def metadata_for_saelens(meta: dict[str, Any]) -> dict[str, Any]:
    """In-memory metadata (hook_name canonical) -> the `metadata` object of cfg.json."""
    hook = meta.get("hook_name")
    tl = transformerlens_hook_name(hook) if isinstance(hook, str) else None
    if tl is None:
        return dict(meta)
    out = {**meta, "hook_name": tl, SAEFORGE_HOOK_KEY: canonical_hook_name(hook)}
    out.setdefault("model_from_pretrained_kwargs", dict(TRANSFORMERLENS_LOADING))
    return out


def metadata_from_saelens(meta: dict[str, Any]) -> dict[str, Any]:
    """The `metadata` of a cfg.json -> in-memory metadata: saeforge's canonical hook_name where recorded."""
    out = dict(meta)
    canonical = out.pop(SAEFORGE_HOOK_KEY, None)
    if canonical is not None:
        out["hook_name"] = canonical
    return out
