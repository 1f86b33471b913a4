"""What SAELens files mean beyond their tensors: hook names, model-loading settings, older layouts.

Writing (`metadata_for_saelens`): SAELens attaches an SAE at `metadata.hook_name`, a TransformerLens hook. A
canonical saeforge hook with a TransformerLens counterpart is written in that spelling, the canonical name goes
to `metadata.saeforge_hook_name`, and `metadata.model_from_pretrained_kwargs` records the loading settings under
which TransformerLens's hooks hold the values saeforge captured (no weight folding or centring). Reading
(`metadata_from_saelens`) restores the canonical name for saeforge's own files and keeps other files' names.

Older layouts: SAELens 5 topk files give k only in `activation_fn_kwargs`, and name the per-latent decoder scale
tensor `finetuning_scaling_factor`; releases trained on normalised inputs carry an external `norm_scaling_factor`
that is folded into the weights when given. Fixtures written by the real SAELens 5.11 and 6.54 are in
tests/sae/saelens_files/.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from saeforge.hook_names import TRANSFORMERLENS_LOADING, canonical_hook_name, transformerlens_hook_name

SAEFORGE_HOOK_KEY = "saeforge_hook_name"
SAEFORGE_HOOK_OUT_KEY = "saeforge_hook_name_out"
_HOOK, _HOOK_OUT = "hook_name", "hook_name_out"


def metadata_for_saelens(meta: dict[str, Any]) -> dict[str, Any]:
    """In-memory metadata (hook names canonical) -> the `metadata` object of cfg.json: `hook_name` (and a
    transcoder's `hook_name_out`) in TransformerLens spelling where one exists, the canonical names beside."""
    out = dict(meta)
    for key, saved in ((_HOOK, SAEFORGE_HOOK_KEY), (_HOOK_OUT, SAEFORGE_HOOK_OUT_KEY)):
        hook = meta.get(key)
        tl = transformerlens_hook_name(hook) if isinstance(hook, str) else None
        if tl is not None:
            out[key], out[saved] = tl, canonical_hook_name(hook)
    if SAEFORGE_HOOK_KEY in out:
        out.setdefault("model_from_pretrained_kwargs", dict(TRANSFORMERLENS_LOADING))
    return out


def metadata_from_saelens(meta: dict[str, Any]) -> dict[str, Any]:
    """The `metadata` of a cfg.json -> in-memory metadata: saeforge's canonical hook names where recorded."""
    out = dict(meta)
    for key, saved in ((_HOOK, SAEFORGE_HOOK_KEY), (_HOOK_OUT, SAEFORGE_HOOK_OUT_KEY)):
        canonical = out.pop(saved, None)
        if canonical is not None:
            out[key] = canonical
    return out


def topk_k(raw: dict[str, Any], meta: dict[str, Any]) -> int | None:
    """k of a topk SAE: top-level (SAELens 6), else `activation_fn_kwargs.k` (SAELens 5 writes only that)."""
    if raw.get("k") is not None:
        return raw["k"]
    return (meta.get("activation_fn_kwargs") or {}).get("k")


def rename_legacy_tensors(weights: dict[str, Tensor]) -> None:
    """SAELens 5 names the per-latent decoder scale `finetuning_scaling_factor`; later files `scaling_factor`."""
    if "finetuning_scaling_factor" in weights and "scaling_factor" not in weights:
        weights["scaling_factor"] = weights.pop("finetuning_scaling_factor")


def input_scale(meta: dict[str, Any], given: float | None, normalize: str, where: str) -> float | None:
    """The external input scale to fold, from the caller or cfg.json's `norm_scaling_factor`; warns when missing.

    A release trained with `normalize_activations: expected_average_only_in` expects x * s (E||x s|| =
    sqrt(d_in)); SAELens keeps s in its release directory, not in the file, and folds it on `from_pretrained`.
    """
    from_file = meta.pop("norm_scaling_factor", None)
    scale = given if given is not None else from_file
    if scale is not None:
        if not float(scale) > 0:
            raise ValueError(f"{where}: norm_scaling_factor={scale!r} must be a positive number")
        return float(scale)
    if normalize == "expected_average_only_in":
        warnings.warn(
            f"{where}: normalize_activations is 'expected_average_only_in' but no norm_scaling_factor is given, "
            "so the SAE will read raw activations at the wrong scale; pass load_sae(..., norm_scaling_factor=S) "
            "with the S its release lists (SAELens pretrained_saes.yaml)",
            UserWarning,
            stacklevel=3,
        )
    return None


@torch.no_grad()
def fold_input_scale(weights: dict[str, Tensor], scale: float) -> None:
    """SAE(x * s) / s as an SAE of raw x: W_enc * s, W_dec / s, b_dec / s (pre-activations are unchanged)."""
    weights["W_enc"] = weights["W_enc"] * scale
    weights["W_dec"] = weights["W_dec"] / scale
    weights["b_dec"] = weights["b_dec"] / scale
