"""Hook names both ways: saeforge's canonical names and their TransformerLens spellings.

For block i, the four canonical sites (see `saeforge.models.hooks`) have a TransformerLens hook of the same
meaning, which SAELens writes as `metadata.hook_name` and `HookedSAETransformer.add_sae` attaches at:

    layers.{i}.resid_pre   <->  blocks.{i}.hook_resid_pre
    layers.{i}.resid_post  <->  blocks.{i}.hook_resid_post
    layers.{i}.attn_out    <->  blocks.{i}.hook_attn_out
    layers.{i}.mlp_out     <->  blocks.{i}.hook_mlp_out

Any other name (a module path, another TransformerLens hook) has no counterpart and maps to itself; so does
`layers.{i}.mlp_in` (the MLP's normalised input), which is not TransformerLens's `hook_mlp_in` (taken before ln2). The values
agree when TransformerLens loads the model without weight processing (`TRANSFORMERLENS_LOADING`): folding
LayerNorm weights leaves these four tensors alone, but centring the writing weights shifts every one of them.
This module is plain string work (no torch), so the SAE files (`saeforge.sae.io`) and hook resolution
(`saeforge.models.hooks`) share it without either importing the other.
"""

from __future__ import annotations

import re

TL_SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out")
_CANONICAL = re.compile(r"layers\.(\d+)\.(resid_pre|resid_post|attn_out|mlp_out)")
_TRANSFORMERLENS = re.compile(r"blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)")

# `HookedTransformer.from_pretrained` settings under which its hooks hold the Hugging Face model's values.
TRANSFORMERLENS_LOADING = {
    "fold_ln": False,
    "center_writing_weights": False,
    "center_unembed": False,
    "fold_value_biases": False,
    "refactor_factored_attn_matrices": False,
}


def canonical_hook_name(name: str) -> str:
    """`blocks.3.hook_resid_post` -> `layers.3.resid_post`; every other name is returned unchanged."""
    match = _TRANSFORMERLENS.fullmatch(name)
    return f"layers.{match.group(1)}.{match.group(2)}" if match else name


def transformerlens_hook_name(name: str) -> str | None:
    """`layers.3.resid_post` (or its TransformerLens spelling) -> `blocks.3.hook_resid_post`; None otherwise."""
    match = _CANONICAL.fullmatch(canonical_hook_name(name))
    return f"blocks.{match.group(1)}.hook_{match.group(2)}" if match else None
