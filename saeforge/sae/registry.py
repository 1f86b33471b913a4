"""Architectures by name: training classes (what the trainer builds) and inference classes (what is saved)."""

from __future__ import annotations

from saeforge.sae.base import SAE
from saeforge.sae.batchtopk import BatchTopKTrainingSAE
from saeforge.sae.config import ARCHITECTURE_ALIASES, TrainingSAEConfig, canonical_architecture
from saeforge.sae.gated import GatedSAE, GatedTrainingSAE
from saeforge.sae.jumprelu import JumpReLUSAE, JumpReLUTrainingSAE
from saeforge.sae.matryoshka import MatryoshkaTrainingSAE
from saeforge.sae.standard import StandardSAE, StandardTrainingSAE
from saeforge.sae.topk import TopKSAE, TopKTrainingSAE
from saeforge.sae.training import TrainingSAE

TRAINING_ARCHITECTURES: dict[str, type[TrainingSAE]] = {
    "standard": StandardTrainingSAE,
    "topk": TopKTrainingSAE,
    "batchtopk": BatchTopKTrainingSAE,
    "jumprelu": JumpReLUTrainingSAE,
    "gated": GatedTrainingSAE,
    "matryoshka": MatryoshkaTrainingSAE,
}
TRAINING_ARCHITECTURES.update({alias: TRAINING_ARCHITECTURES[t] for alias, t in ARCHITECTURE_ALIASES.items()})

INFERENCE_ARCHITECTURES: dict[str, type[SAE]] = {
    "standard": StandardSAE,
    "topk": TopKSAE,
    "jumprelu": JumpReLUSAE,
    "gated": GatedSAE,
}
INFERENCE_ARCHITECTURES.update(
    {
        alias: INFERENCE_ARCHITECTURES[t]
        for alias, t in ARCHITECTURE_ALIASES.items()
        if t in INFERENCE_ARCHITECTURES
    }
)


def create_training_sae(cfg: TrainingSAEConfig | dict) -> TrainingSAE:
    """Builds the training SAE `cfg.architecture` names (a dict is validated as a TrainingSAEConfig first)."""
    if not isinstance(cfg, TrainingSAEConfig):
        cfg = TrainingSAEConfig.model_validate(cfg)
    return TRAINING_ARCHITECTURES[cfg.architecture](cfg)


def inference_class(architecture: str) -> type[SAE]:
    """The inference class for a saved SAE's architecture; an unknown name raises ValueError listing valid ones."""
    return INFERENCE_ARCHITECTURES[
        canonical_architecture(architecture, ("standard", "topk", "jumprelu", "gated"))
    ]
