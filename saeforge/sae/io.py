"""Saving and loading inference SAEs in the SAELens layout: `cfg.json` + `sae_weights.safetensors`.

`save_sae` writes the SAELens v6 layout (top-level architecture fields, `metadata` object). `load_sae` reads that
layout, SAELens v6 directories, and the flat pre-6 SAELens cfg (hook_point/hook_name at top level,
`activation_fn_str: "topk"` with `activation_fn_kwargs.k`, boolean normalize_activations). Keys saeforge does not
use are kept in `cfg.metadata`; a key that looks like a misspelling of a known key is an error, never ignored.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from saeforge.atomic import write_with
from saeforge.device import resolve_device
from saeforge.dtypes import FLOAT_DTYPES, torch_dtype
from saeforge.errors import closest
from saeforge.sae import registry
from saeforge.sae.base import SAE, SAEConfig
from saeforge.sae.saelens_compat import (
    SAEFORGE_HOOK_KEY,
    SAEFORGE_HOOK_OUT_KEY,
    fold_input_scale,
    input_scale,
    metadata_for_saelens,
    metadata_from_saelens,
    rename_legacy_tensors,
    topk_k,
)
from saeforge.version import __version__

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"

CORE_KEYS = {*SAEConfig.model_fields, "reshape_activations", "rescale_acts_by_decoder_norm"}
# Keys SAELens writes (v6 metadata fields and pre-6 flat training-config fields) that saeforge keeps as metadata.
SAELENS_METADATA_KEYS = {
    "model_name", "hook_name", "hook_layer", "hook_head_index", "model_class_name", "model_from_pretrained_kwargs",
    "prepend_bos", "exclude_special_tokens", "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path",
    "sae_lens_version", "sae_lens_training_version", "hook_name_out", "hook_head_index_out", "hf_hook_name",
    "hf_hook_name_out", "dataset_trust_remote_code", "activation_fn", "activation_fn_str", "activation_fn_kwargs",
    "finetuning_scaling_factor", "hook_point", "hook_point_layer", "hook_point_head_index", SAEFORGE_HOOK_KEY,
    SAEFORGE_HOOK_OUT_KEY,
    "norm_scaling_factor",
}  # fmt: skip
SUPPORTED_NORMALIZATION = ("none", "expected_average_only_in")


def save_sae(
    sae: SAE,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    write_weights: Callable[[str], Any] | None = None,
) -> Path:
    """Writes `sae` to directory `path` (created if needed) in the SAELens v6 layout; returns the directory.

    `metadata` (e.g. {"hook_name": "layers.3.resid_post", "model_name": ...}) is merged into cfg.metadata; a
    canonical hook_name is written in its TransformerLens spelling (sae/saelens_compat.py).
    Each file is written to a temporary name and renamed into place, weights first.
    write_weights: writes the weights file at the temporary path it is given (default: `sae`'s own weights); a
    latent-sharded run streams its shards into one file through it (saeforge/train/sharded.py).
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    meta = metadata_for_saelens({**cfg.metadata, **(metadata or {})})
    reshape = meta.pop("reshape_activations", "none")
    version = str(meta.get("sae_lens_version", ""))
    if not version[:1].isdigit() or int(version.split(".")[0]) < 6:
        # The layout version SAELens reads this file as (its pre-6 configs are converted on load).
        meta["sae_lens_version"] = "6.0.0"
    meta["saeforge_version"] = __version__
    cfg_dict: dict[str, Any] = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": reshape,
        "metadata": meta,
        **sae.saved_cfg(),
    }
    if write_weights is None:
        dtype = torch_dtype(cfg.dtype)
        weights = {n: t.detach().to("cpu", dtype).contiguous() for n, t in sae.weights_for_saving().items()}
        write_weights = functools.partial(save_file, weights)
    write_with(out / WEIGHTS_FILENAME, write_weights)
    text = json.dumps(cfg_dict, indent=2, sort_keys=False)
    write_with(out / CFG_FILENAME, lambda p: Path(p).write_text(text + "\n"))
    return out


def _architecture_keys() -> set[str]:
    """cfg.json keys that only some architectures read (each one's `cfg_keys`: k, d_out, n_sites, ...)."""
    classes = [*registry.INFERENCE_ARCHITECTURES.values(), *registry.KIND_INFERENCE.values()]
    return {key for c in classes for key in c.cfg_keys}


def _check_typos(keys, known: set[str], where: str) -> None:
    for key in keys:
        if key in known:
            continue
        close = closest(key, sorted(known), cutoff=0.85)
        if close:
            raise ValueError(
                f"{where}: unknown key {key!r} looks like a misspelling of {close[0]!r}; fix the key"
            )


def _normalise_cfg(raw: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """SAELens cfg.json (v6 or pre-6) -> (core fields for SAEConfig, extra fields for loading weights)."""
    raw = dict(raw)
    _check_typos(raw, CORE_KEYS | SAELENS_METADATA_KEYS, where)
    meta = dict(raw.pop("metadata", None) or {})
    _check_typos(meta, SAELENS_METADATA_KEYS, f"{where} metadata")
    for key in list(raw):
        if key not in CORE_KEYS:
            meta[key] = raw.pop(key)
    if "hook_point" in meta and "hook_name" not in meta:
        meta["hook_name"] = meta.pop("hook_point")
    meta = metadata_from_saelens(meta)
    act_fn = meta.get("activation_fn", meta.get("activation_fn_str"))
    architecture = raw.get("architecture", "standard")
    if act_fn == "topk" and architecture == "standard":
        architecture = "topk"
    if architecture == "topk":
        raw["k"] = topk_k(raw, meta)
    norm = raw.get("normalize_activations", "none")
    if isinstance(norm, bool) or norm is None:
        norm = "expected_average_only_in" if norm else "none"
    if norm not in SUPPORTED_NORMALIZATION:
        raise ValueError(
            f"{where}: normalize_activations={norm!r} is not supported (saeforge SAEs take raw activations; "
            f"supported: {', '.join(SUPPORTED_NORMALIZATION)}); fold the normalisation into the weights first"
        )
    reshape = raw.get("reshape_activations", "none")
    if reshape != "none":
        meta["reshape_activations"] = reshape
    for key in ("d_in", "d_sae"):
        if key not in raw:
            raise ValueError(f"{where}: missing required key {key!r}")
    dtype = raw.get("dtype", "float32")
    dtype = dtype.removeprefix("torch.")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"{where}: dtype={dtype!r} is not one of {', '.join(FLOAT_DTYPES)}")
    core = {
        "architecture": architecture,
        "d_in": raw["d_in"],
        "d_sae": raw["d_sae"],
        "dtype": dtype,
        "device": raw.get("device", "cpu"),
        "apply_b_dec_to_input": raw.get("apply_b_dec_to_input", True),
        "normalize_activations": norm,
        "metadata": meta,
    }
    extra = {
        "rescale_acts_by_decoder_norm": bool(raw.get("rescale_acts_by_decoder_norm", False)),
        "architecture_keys": {key: raw.get(key) for key in _architecture_keys()},
    }
    return core, extra


@torch.no_grad()
def _fold_weights(weights: dict[str, Tensor], cfg: SAEConfig, extra: dict[str, Any], where: str) -> None:
    """Folds SAELens options saeforge's SAEs do not have into the weights (exact up to rounding)."""
    if "log_threshold" in weights and "threshold" not in weights:
        weights["threshold"] = weights.pop("log_threshold").exp()
    if "scaling_factor" in weights:
        factor = weights.pop("scaling_factor")
        if not torch.allclose(factor, torch.ones_like(factor)):
            if not cfg.metadata.get("finetuning_scaling_factor"):
                raise ValueError(f"{where}: scaling_factor present but finetuning_scaling_factor is not set")
            weights["W_dec"] = weights["W_dec"] * factor[:, None]
    if extra["rescale_acts_by_decoder_norm"]:
        norm = weights["W_dec"].norm(dim=1)
        weights["W_enc"] = weights["W_enc"] * norm
        weights["b_enc"] = weights["b_enc"] * norm
        weights["W_dec"] = weights["W_dec"] / norm[:, None]


def load_sae(
    path: str | os.PathLike,
    device: str = "cpu",
    dtype: str | None = None,
    norm_scaling_factor: float | None = None,
) -> SAE:
    """Loads an inference SAE from a saeforge or SAELens directory (`cfg.json` + `sae_weights.safetensors`).

    dtype: override of cfg.json's dtype ("float32", "bfloat16", ...). Shapes are checked against d_in/d_sae.
    norm_scaling_factor: the input scale s of a release trained on x * s (SAELens's pretrained_saes.yaml lists
        it); folded into the weights so that the SAE reads raw activations. Default: cfg.json's, if any.
    """
    root = Path(path)
    cfg_path, weights_path = root / CFG_FILENAME, root / WEIGHTS_FILENAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found: an SAE directory holds {CFG_FILENAME} and {WEIGHTS_FILENAME}"
            )
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
    core, extra = _normalise_cfg(raw, str(cfg_path))
    scale = input_scale(core["metadata"], norm_scaling_factor, core["normalize_activations"], str(cfg_path))
    if scale is not None:
        core["normalize_activations"] = "none"
    if dtype is not None:
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {', '.join(FLOAT_DTYPES)}")
        core["dtype"] = dtype
    cls = registry.inference_class(core["architecture"])
    core["architecture"] = cls.architecture
    given = extra["architecture_keys"]
    core.update({key: given[key] if key in cls.cfg_keys else None for key in given})
    for key in cls.cfg_keys:
        if not core.get(key):
            raise ValueError(f"{cfg_path}: a {cls.architecture} SAE needs {key} in cfg.json")
    device = resolve_device(device)
    cfg = SAEConfig(**{**core, "device": str(device)})
    if cfg.k is not None and cfg.k > cfg.d_sae:
        raise ValueError(f"{cfg_path}: k={cfg.k} is larger than d_sae={cfg.d_sae}")

    with safe_open(weights_path, framework="pt", device="cpu") as f:
        weights = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    rename_legacy_tensors(weights)
    for name, t in weights.items():
        if not t.is_floating_point():
            raise ValueError(
                f"{weights_path}: tensor {name!r} has dtype {t.dtype}; SAE weights are floating point"
            )
    with torch.device("meta"):
        shapes = {n: tuple(t.shape) for n, t in cls(cfg).state_dict().items()}
    expected = {"scaling_factor": (cfg.d_sae,), "threshold": (cfg.d_sae,), **shapes}
    for name, t in weights.items():
        want = expected.get(name.replace("log_threshold", "threshold"))
        if want is not None and tuple(t.shape) != want:
            raise ValueError(
                f"{weights_path}: {name} has shape {list(t.shape)} but cfg.json (d_in={cfg.d_in}, "
                f"d_sae={cfg.d_sae}) implies {list(want)}"
            )
    _fold_weights(weights, cfg, extra, str(weights_path))
    if scale is not None:
        fold_input_scale(weights, scale)
    names = tuple(shapes)
    missing = [n for n in names if n not in weights]
    unexpected = [n for n in weights if n not in names]
    if missing or unexpected:
        raise ValueError(
            f"{weights_path}: a {cls.architecture} SAE needs tensors {', '.join(names)}"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unexpected: {', '.join(unexpected)}" if unexpected else "")
        )
    sae = cls(cfg)
    target = torch_dtype(cfg.dtype)
    sae.load_state_dict({n: weights[n].to(target) for n in names})
    return sae.to(device=device, dtype=target)
