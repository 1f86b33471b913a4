"""The contract every SAE architecture shares.

An SAE maps activations x [..., d_in] to latents z [..., d_sae] and back:

    pre   = (x - b_dec) @ W_enc + b_enc          (b_dec subtracted when apply_b_dec_to_input)
    z     = sigma(pre)                            (the architecture's activation function)
    x_hat = z @ W_dec + b_dec

Weights follow SAELens' names and shapes: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
b_dec [d_in]. An *inference* SAE (what `load_sae` returns and what is saved) takes raw activations: any
scaling used in training is folded into the weights at export (see `TrainingSAE.export` in sae/training.py).

A *training* SAE adds `training_forward`, which returns the loss as named terms, plus hooks the trainer
calls around the optimiser step. Training-only state (thresholds being estimated, dead-latent masks) lives
in buffers so that checkpoints capture it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from saeforge.distributed import Collectives
from saeforge.dtypes import FLOAT_DTYPES, torch_dtype


class SAEConfig(BaseModel):
    """What `cfg.json` holds (SAELens layout). Unknown keys in a file are kept in `metadata` on load."""

    model_config = ConfigDict(extra="forbid")

    architecture: str
    d_in: int = Field(gt=0)
    d_sae: int = Field(gt=0)
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    k: int | None = Field(default=None, gt=0, description="active latents per token (topk)")
    d_out: int | None = Field(default=None, gt=0, description="output width (transcoders; default d_in)")
    n_sites: int | None = Field(default=None, gt=0, description="sites read and written (crosscoders)")
    sites: list[str] | None = Field(default=None, description="site names in order (crosscoders)")
    metadata: dict[str, Any] = Field(default_factory=dict)


class SAE(nn.Module):
    """Inference SAE. Subclasses implement `encode`; decode is shared. Training classes extend these.

    Class attributes an architecture sets: `architecture` (its registered name) and `cfg_keys` (cfg.json keys
    beyond the shared ones that it reads and writes, each required on load). Its saved weight names and shapes
    are those of its parameters (`weights_for_saving`).
    """

    architecture: ClassVar[str]
    cfg_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        d_x, d_y, d_sae = self.d_x, self.d_y, cfg.d_sae
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_y))
        self.W_enc = nn.Parameter(torch.zeros(d_x, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_y))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_x(self) -> int:
        """Width of what the encoder reads (W_enc's rows): d_in, or every site's d_in for a crosscoder."""
        return self.cfg.d_in

    @property
    def d_y(self) -> int:
        """Width of what the decoder writes (W_dec's columns): d_in for an SAE, d_out for a transcoder."""
        return self.cfg.d_in

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one row the encoder reads: (d_in,), or (n_sites, d_in) for a crosscoder."""
        return (self.cfg.d_in,)

    def activation(self, pre: Tensor) -> Tensor:
        """The sparsity rule: [..., d_sae] pre-activations -> latents (ReLU here; architectures override it)."""
        return pre.relu()

    def pre_acts(self, x: Tensor) -> Tensor:
        """[..., d_in] -> [..., d_sae] encoder pre-activations."""
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """[..., d_in] -> [..., d_sae] latent activations."""
        return self.activation(self.pre_acts(x))

    def decode(self, z: Tensor) -> Tensor:
        """[..., d_sae] -> [..., d_in]."""
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def to(self, *args, **kwargs):
        """`nn.Module.to`, also taking a dtype by name (`sae.to("cuda", "bfloat16")`); cfg.dtype/device follow."""
        args = tuple(torch_dtype(a) if isinstance(a, str) and a in FLOAT_DTYPES else a for a in args)
        if isinstance(kwargs.get("dtype"), str):
            if kwargs["dtype"] not in FLOAT_DTYPES:
                raise ValueError(f"dtype={kwargs['dtype']!r} is not one of {', '.join(FLOAT_DTYPES)}")
            kwargs["dtype"] = torch_dtype(kwargs["dtype"])
        out = super().to(*args, **kwargs)
        if isinstance(self.cfg, SAEConfig):
            names = {torch_dtype(n): n for n in FLOAT_DTYPES}
            self.cfg.dtype = names.get(self.W_dec.dtype, self.cfg.dtype)
            self.cfg.device = str(self.W_dec.device)
        return out

    def weights_for_saving(self) -> dict[str, Tensor]:
        """Tensors written to `sae_weights.safetensors` (SAELens names)."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def saved_cfg(self) -> dict[str, Any]:
        """The architecture's cfg.json entries beyond the shared ones (its `cfg_keys`, in that order)."""
        return {key: getattr(self.cfg, key) for key in self.cfg_keys}


@dataclass
class TrainStepInput:
    """What the trainer hands a training SAE each step.

    x: [B, d_in] activations (this rank's slice of the global batch), already scaled by the trainer's
        normalisation factor.
    target: [B, d_out] what the dictionary reconstructs when it is not x (a transcoder's output site), scaled
        like x; None for an SAE (see `y`).
    step: optimiser steps taken so far.
    dead_mask: [d_sae] bool, latents that have not fired in the last `dead_tokens` tokens, or (the TopK family)
        fired there on under `rare_fraction` of the design rate (train/dead.py), for AuxK; or None.
    sparsity_warmup: fraction in [0, 1] of the final sparsity-penalty weight to apply (linear warm-up, set by the
        trainer); architectures without a penalty ignore it.
    collectives: batch-wide reductions across data-parallel ranks (BatchTopK's top k*B over the global batch).
    """

    x: Tensor
    target: Tensor | None = None
    step: int = 0
    dead_mask: Tensor | None = None
    sparsity_warmup: float = 1.0
    collectives: Collectives = field(default_factory=Collectives)

    @property
    def y(self) -> Tensor:
        """What the loss compares the reconstruction with: `target`, or x itself."""
        return self.x if self.target is None else self.target


@dataclass
class TrainStepOutput:
    """What a training SAE returns: the loss as named terms and what the trainer needs for metrics.

    x_hat: [B, d_out] reconstruction of the step input's `y` (in the scaled space).
    loss: scalar, the sum of `losses`.
    losses: named scalar terms, e.g. {"mse": ..., "auxk": ...}.
    fired: [d_sae] number of tokens of the batch on which each latent was active (no grad); the dead clock
        (train/dead.py) counts it, so it counts firing as the exported SAE would (BatchTopK: above its threshold).
    l0: scalar, mean active latents per token (no grad).
    """

    x_hat: Tensor
    loss: Tensor
    losses: dict[str, Tensor]
    fired: Tensor
    l0: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
