"""Transcoders and skip transcoders: a dictionary that reads one site and writes another.

Dunefsky, Chlenski & Nanda 2024, "Transcoders Find Interpretable LLM Feature Circuits" (arXiv 2406.11944): read the
MLP's input, reconstruct its output, so that a latent is a piece of the MLP's computation. Paulo, Shabalin & Belrose
2025, "Transcoders Beat Sparse Autoencoders for Interpretability" (arXiv 2501.18823) add a linear skip connection:

    z     = sigma(x @ W_enc + b_enc)                    x [..., d_in]: the input site (e.g. layers.N.mlp_in)
    y_hat = z @ W_dec + b_dec (+ x @ W_skip.T)          y [..., d_out]: the target site (layers.N.mlp_out)
    loss  = mean_b ||y - y_hat||^2 + the architecture's sparsity terms

sigma is any architecture's rule (TopK, BatchTopK, JumpReLU, ReLU with L1): training runs the architecture's own
code with the target in place of x (`TrainStepInput.target`). The skip is handled without touching it: with
y' = y - x @ W_skip.T the loss is ||y' - (z @ W_dec + b_dec)||^2, so the architecture reconstructs y' and the skip
is added back to the step's output. Two things differ from an SAE: input and output are different spaces, so the
pre-encoder bias is its own parameter b_in (initialised at the inputs' geometric median, folded into b_enc at
export: b_enc' = b_enc - b_in @ W_enc) rather than b_dec; and W_enc is initialised independently of W_dec.

Saved in the SAELens layout (`transcoder`, `skip_transcoder`, `jumprelu_transcoder`, `jumprelu_skip_transcoder`:
W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_out], b_dec [d_out], W_skip [d_out, d_in], threshold; cfg `d_out`),
which SAELens loads. TopK transcoders are saved as `topk_transcoder` / `topk_skip_transcoder` (the same tensors
and `k`), which only saeforge reads: SAELens has no TopK transcoder class. BatchTopK exports its threshold rule.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from saeforge.sae import registry
from saeforge.sae.base import SAE, TrainStepInput, TrainStepOutput
from saeforge.sae.jumprelu import JumpReLUSAE
from saeforge.sae.topk import TopKSAE
from saeforge.sae.training import Scales, TrainingSAE

if TYPE_CHECKING:
    from saeforge.sae.config import TrainingSAEConfig


class Transcoder(SAE):
    """Inference transcoder with the ReLU rule (SAELens `transcoder`): x [..., d_in] -> y_hat [..., d_out]."""

    architecture = "transcoder"
    cfg_keys: ClassVar[tuple[str, ...]] = ("d_out",)

    @property
    def d_y(self) -> int:
        return self.cfg.d_out

    def pre_acts(self, x: Tensor) -> Tensor:
        """[..., d_in] -> [..., d_sae] (b_dec lives in the output space: never subtracted from x)."""
        return x @ self.W_enc + self.b_enc

    def saved_cfg(self) -> dict[str, Any]:
        return {**super().saved_cfg(), "d_out": self.cfg.d_out}


class SkipTranscoder(Transcoder):
    """Transcoder with a linear skip (SAELens `skip_transcoder`): forward adds x @ W_skip.T, W_skip [d_out, d_in]."""

    architecture = "skip_transcoder"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)) + x @ self.W_skip.T


class JumpReLUTranscoder(Transcoder, JumpReLUSAE):
    architecture = "jumprelu_transcoder"


class JumpReLUSkipTranscoder(SkipTranscoder, JumpReLUSAE):
    architecture = "jumprelu_skip_transcoder"


class TopKTranscoder(Transcoder, TopKSAE):
    architecture = "topk_transcoder"
    cfg_keys = ("k", "d_out")


class TopKSkipTranscoder(SkipTranscoder, TopKSAE):
    architecture = "topk_skip_transcoder"
    cfg_keys = ("k", "d_out")


# (the rule an architecture exports, skip connection) -> the transcoder class saved.
EXPORTS = {
    ("standard", False): "transcoder",
    ("standard", True): "skip_transcoder",
    ("jumprelu", False): "jumprelu_transcoder",
    ("jumprelu", True): "jumprelu_skip_transcoder",
    ("topk", False): "topk_transcoder",
    ("topk", True): "topk_skip_transcoder",
}


class TranscoderFields(BaseModel):
    d_out: int | None = Field(default=None, gt=0, description="transcoder: width of the target site")
    skip_connection: bool | None = Field(
        default=None, description="transcoder: learn a linear skip W_skip from input to output"
    )


class TranscoderTraining(TrainingSAE):
    """Makes an architecture's training class a transcoder (composed by `registry.training_class(arch,
    "transcoder")`): it reads x [B, d_in] and reconstructs `TrainStepInput.target` [B, d_out]."""

    kind = "transcoder"
    config_fields = TranscoderFields

    @classmethod
    def check_config(cls, cfg: TrainingSAEConfig) -> None:
        super().check_config(cfg)
        if cfg.d_out is None:
            raise ValueError("a transcoder needs d_out (the width of the site it writes)")
        if (cls.inference_architecture, False) not in EXPORTS:
            usable = [
                a
                for a in registry.training_names()
                if (registry.TRAINING_ARCHITECTURES[a].inference_architecture, False) in EXPORTS
            ]
            raise ValueError(f"architecture {cfg.architecture!r} has no transcoder form; use one of {usable}")

    def __init__(self, cfg: TrainingSAEConfig):
        super().__init__(cfg)
        self.b_in = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in))

    @property
    def d_y(self) -> int:
        return self.cfg.d_out

    @property
    def b_pre(self) -> Tensor:
        return self.b_in

    @torch.no_grad()
    def init_from_data(self, x_sample: Tensor, target_sample: Tensor | None = None) -> None:
        """b_in from the inputs x_sample [N, d_in], b_dec from the targets target_sample [N, d_out]."""
        if target_sample is None:
            raise ValueError(
                "a transcoder initialises b_dec from a sample of its targets: pass target_sample"
            )
        if x_sample.ndim != 2 or x_sample.shape[1] != self.d_in:
            raise ValueError(f"x_sample must be [N, d_in={self.d_in}], got {list(x_sample.shape)}")
        self.b_in.copy_(self._centre(x_sample))  # first: the penalty SAEs' firing-rate init reads b_pre
        super().init_from_data(x_sample, target_sample)

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:
        if not self.cfg.skip_connection:
            return super().training_forward(inp)
        skip = inp.x @ self.W_skip.T
        out = super().training_forward(dataclasses.replace(inp, target=inp.y - skip))
        out.x_hat = out.x_hat + skip
        return out

    @property
    def exported_architecture(self) -> str:
        return EXPORTS[(self.inference_architecture, bool(self.cfg.skip_connection))]

    def _inference_config(self) -> dict[str, Any]:
        return {**super()._inference_config(), "d_out": self.cfg.d_out}

    def _inference_state(self, s: Scales) -> dict[str, Tensor]:
        state = super()._inference_state(s)
        if self.cfg.skip_connection:
            state["W_skip"] = self.W_skip.detach().double() * s.x[None, :] / s.y[:, None]
        return state


registry.register_kind(
    TranscoderTraining,
    inference=(
        Transcoder,
        SkipTranscoder,
        JumpReLUTranscoder,
        JumpReLUSkipTranscoder,
        TopKTranscoder,
        TopKSkipTranscoder,
    ),
)
