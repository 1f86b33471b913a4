"""Crosscoders. Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing"
(transformer-circuits.pub/2024/crosscoders).

One latent space reads and writes N sites (layers of one model, or the same site of N models) of width d_in:

    pre     = sum_s x_s @ W_enc[s] + b_enc                  W_enc [n_sites, d_in, d_sae], x [..., n_sites, d_in]
    z       = sigma(pre)                                    (any architecture's rule: BatchTopK, ReLU, ...)
    x_hat_s = z @ W_dec[:, s] + b_dec[s]                    W_dec [d_sae, n_sites, d_in], b_dec [n_sites, d_in]
    loss    = sum_s mean_b ||x_s - x_hat_s||^2 + the architecture's sparsity terms

The encoder's sum over sites is one matmul of the concatenated sites [..., n_sites * d_in] with W_enc viewed as
[n_sites * d_in, d_sae], and the per-site decoders are slices of one [d_sae, n_sites * d_in] decoder. Training
therefore runs the architecture's own code (its sparse kernels, AuxK, thresholds) on the concatenated sites; this
module adds only what differs:

- the L1 penalty (standard) weights latent i by the sum of its per-site decoder norms, sum_s ||W_dec[i, s]||, as
  in the paper (so a latent pays for every site it writes to); unit-norm decoders (the TopK family) normalise the
  concatenated row, so sum_s ||W_dec[i, s]||^2 = 1 and the per-site norms stay free to differ;
- each site has its own activation scale (E||x_s|| = sqrt(d_in) in training), folded away per site at export;
- the inference class holds the weights in the paper's shapes above, and names the sites (`cfg.sites`).

BatchTopK crosscoders (Bussmann et al. 2024's rule over the batch; the variant model-diffing work prefers because
it avoids the L1 variant's artefacts in decoder-norm ratios, Minder et al. 2025, arXiv 2504.02922) export, as
BatchTopK SAEs do, to a threshold rule: `jumprelu_crosscoder`, with `threshold [d_sae]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from saeforge.sae import registry
from saeforge.sae.base import SAE
from saeforge.sae.jumprelu import JumpReLUSAE
from saeforge.sae.topk import TopKSAE
from saeforge.sae.training import Scales, TrainingSAE

if TYPE_CHECKING:
    from saeforge.sae.config import TrainingSAEConfig


class CrossCoder(SAE):
    """Inference crosscoder with the ReLU rule (`crosscoder`); the other rules subclass it.

    encode: x [..., n_sites, d_in] -> z [..., d_sae]; decode: z -> [..., n_sites, d_in]. `cfg.sites` names the
    sites in order (site i is x[..., i, :]).
    """

    architecture = "crosscoder"
    cfg_keys: ClassVar[tuple[str, ...]] = ("n_sites", "sites")

    def __init__(self, cfg):
        super().__init__(cfg)
        n, d, m = cfg.n_sites, cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(n, d, m))
        self.W_dec = nn.Parameter(torch.zeros(m, n, d))
        self.b_dec = nn.Parameter(torch.zeros(n, d))

    @property
    def n_sites(self) -> int:
        return self.cfg.n_sites

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n_sites, self.d_in)

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[-2:]) != (self.n_sites, self.d_in):
            raise ValueError(
                f"a crosscoder over {self.n_sites} sites of width {self.d_in} reads [..., {self.n_sites}, "
                f"{self.d_in}], got {list(x.shape)}; stack the sites in the order {self.cfg.sites}"
            )

    def pre_acts(self, x: Tensor) -> Tensor:
        """[..., n_sites, d_in] -> [..., d_sae]: sum_s x_s @ W_enc[s] + b_enc."""
        self._check(x)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        flat = x.reshape(*x.shape[:-2], self.n_sites * self.d_in)
        return flat @ self.W_enc.reshape(-1, self.d_sae) + self.b_enc

    def decode(self, z: Tensor) -> Tensor:
        """[..., d_sae] -> [..., n_sites, d_in]."""
        flat = z @ self.W_dec.reshape(self.d_sae, -1)
        return flat.view(*z.shape[:-1], self.n_sites, self.d_in) + self.b_dec

    def decoder_norms(self) -> Tensor:
        """[d_sae, n_sites] ||W_dec[i, s]||: how much latent i writes to each site."""
        return self.W_dec.norm(dim=-1)

    def saved_cfg(self) -> dict[str, Any]:
        return {**super().saved_cfg(), "n_sites": self.cfg.n_sites, "sites": list(self.cfg.sites)}


class JumpReLUCrossCoder(CrossCoder, JumpReLUSAE):
    """Crosscoder with a per-latent threshold (`jumprelu_crosscoder`; what BatchTopK and JumpReLU export)."""

    architecture = "jumprelu_crosscoder"


class TopKCrossCoder(CrossCoder, TopKSAE):
    """Crosscoder keeping the k largest latents per token (`topk_crosscoder`)."""

    architecture = "topk_crosscoder"
    cfg_keys = ("k", "n_sites", "sites")


class CrossCoderFields(BaseModel):
    n_sites: int | None = Field(
        default=None, ge=1, description="crosscoder: number of sites read and written"
    )
    sites: list[str] | None = Field(
        default=None, description="crosscoder: site names in order (default site0...)"
    )


# The inference rule an architecture exports -> the crosscoder class with that rule.
EXPORTS = {"standard": "crosscoder", "jumprelu": "jumprelu_crosscoder", "topk": "topk_crosscoder"}


def _exports(architecture: str) -> str:
    return registry.TRAINING_ARCHITECTURES[architecture].inference_architecture


class CrossCoderTraining(TrainingSAE):
    """Makes an architecture's training class a crosscoder (composed by `registry.training_class(arch,
    "crosscoder")`): it trains on the concatenated sites [B, n_sites * d_in]."""

    kind = "crosscoder"
    config_fields = CrossCoderFields

    @classmethod
    def check_config(cls, cfg: TrainingSAEConfig) -> None:
        super().check_config(cfg)
        if cfg.n_sites is None:
            raise ValueError("a crosscoder needs n_sites (the number of sites it reads and writes)")
        if cls.inference_architecture not in EXPORTS:
            usable = [a for a in registry.training_names() if _exports(a) in EXPORTS]
            raise ValueError(f"architecture {cfg.architecture!r} has no crosscoder form; use one of {usable}")
        if cfg.sites is None:
            cfg.sites = [f"site{i}" for i in range(cfg.n_sites)]
        if len(cfg.sites) != cfg.n_sites or len(set(cfg.sites)) != cfg.n_sites:
            raise ValueError(f"sites={cfg.sites} must name each of the n_sites={cfg.n_sites} sites once")

    @property
    def d_x(self) -> int:
        return self.cfg.n_sites * self.cfg.d_in

    @property
    def d_y(self) -> int:
        return self.cfg.n_sites * self.cfg.d_in

    def decoder_norms(self) -> Tensor:
        """[d_sae] sum_s ||W_dec[i, s]|| (the paper's L1 weight)."""
        return self.W_dec.view(self.d_sae, self.cfg.n_sites, self.cfg.d_in).norm(dim=2).sum(1)

    @property
    def exported_architecture(self) -> str:
        return EXPORTS[self.inference_architecture]

    def _inference_config(self) -> dict[str, Any]:
        return {**super()._inference_config(), "n_sites": self.cfg.n_sites, "sites": list(self.cfg.sites)}

    def _inference_state(self, s: Scales) -> dict[str, Tensor]:
        n, d, m = self.cfg.n_sites, self.cfg.d_in, self.d_sae
        state = super()._inference_state(s)
        state["W_enc"] = state["W_enc"].reshape(n, d, m)
        state["W_dec"] = state["W_dec"].reshape(m, n, d)
        state["b_dec"] = state["b_dec"].reshape(n, d)
        return state


registry.register_kind(CrossCoderTraining, inference=(CrossCoder, JumpReLUCrossCoder, TopKCrossCoder))
