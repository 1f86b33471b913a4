"""Steering a causal LM with an SAE latent during `generate()`.

- `steering(loaded, hook, direction, coefficient)`: adds coefficient * direction [d] to the hook's activation at
  every position of every forward pass (the prompt and each generated token). coefficient 0 adds exact zeros, so
  the generation equals the plain one token for token.
- `clamping(loaded, hook, sae, latent, value)`: sets latent `latent` to `value` through the SAE while keeping
  the SAE's error term: x' = x - x_hat + decode(z_clamped) = x + (value - z_i) * W_dec[i], since decode is
  affine. Positions where the latent is already `value` are left unchanged.

Both splice the hook through `saeforge.models.splice`: ahead of any other hook on the module, removed on exit
even when the body raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from saeforge.models import HookPoint, LoadedModel, splice
from saeforge.sae.base import SAE


def _check_direction(direction: Tensor) -> None:
    if direction.ndim != 1:
        raise ValueError(f"direction must be a vector [d], got shape {tuple(direction.shape)}")
    if not torch.isfinite(direction).all():
        raise ValueError("direction has non-finite values")


@contextmanager
def steering(loaded: LoadedModel, hook: str, direction: Tensor, coefficient: float) -> Iterator[HookPoint]:
    """Inside the block, the hook's activation x [B, T, d] becomes x + coefficient * direction [d]."""
    _check_direction(direction)

    def add(x: Tensor) -> Tensor:
        if x.shape[-1] != direction.shape[0]:
            raise ValueError(
                f"direction has d={direction.shape[0]} but the activation at {hook!r} has d={x.shape[-1]}: "
                "steer at the hook the SAE was trained on"
            )
        return x + coefficient * direction.to(device=x.device, dtype=x.dtype)

    with splice(loaded, hook, add) as point:
        yield point


@contextmanager
def clamping(loaded: LoadedModel, hook: str, sae: SAE, latent: int, value: float) -> Iterator[HookPoint]:
    """Inside the block, latent `latent` reads `value` at every position; the SAE's error term is kept."""
    if not 0 <= latent < sae.d_sae:
        raise ValueError(f"--latent {latent} out of range: the SAE has d_sae={sae.d_sae}")

    def clamp(x: Tensor) -> Tensor:
        with torch.no_grad():
            w = sae.W_enc
            z_i = sae.encode(x.to(device=w.device, dtype=w.dtype))[..., latent]
            delta = (value - z_i).unsqueeze(-1) * sae.W_dec[latent]
        return x + delta.to(device=x.device, dtype=x.dtype)

    with splice(loaded, hook, clamp) as point:
        yield point


@dataclass
class Generation:
    """One generation: the setting it ran under, the new token ids and the decoded continuation."""

    coefficient: float | None
    token_ids: list[int]
    text: str


def encode_prompt(loaded: LoadedModel, prompt: str) -> dict[str, Tensor]:
    if loaded.kind != "causal":
        raise ValueError(
            f"{loaded.path} is an {loaded.kind} model (not a causal LM): steering generates text with a causal LM"
        )
    enc = loaded.tokenizer(prompt, return_tensors="pt")
    return {k: v.to(loaded.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


@torch.no_grad()
def generate(loaded: LoadedModel, prompt: str, max_new_tokens: int = 32, **kwargs) -> tuple[list[int], str]:
    """Greedy continuation of `prompt` -> (new token ids, decoded text). kwargs go to `model.generate`."""
    enc = encode_prompt(loaded, prompt)
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = loaded.model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, **kwargs
    )
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    return new, tok.decode(new, skip_special_tokens=True)


def sweep(
    loaded: LoadedModel,
    hook: str,
    direction: Tensor,
    coefficients: Sequence[float],
    prompt: str,
    max_new_tokens: int = 32,
) -> list[Generation]:
    """One greedy generation per coefficient, each steered by coefficient * direction at `hook`."""
    results = []
    for c in coefficients:
        with steering(loaded, hook, direction, c):
            ids, text = generate(loaded, prompt, max_new_tokens)
        results.append(Generation(c, ids, text))
    return results
