"""saeforge.sae: SAE architectures (training and inference), their registry, and the SAELens-layout files."""

from saeforge.sae.base import SAE, Collectives, SAEConfig, TrainStepInput, TrainStepOutput
from saeforge.sae.config import TrainingSAEConfig
from saeforge.sae.io import load_sae, save_sae
from saeforge.sae.registry import INFERENCE_ARCHITECTURES, TRAINING_ARCHITECTURES, create_training_sae
from saeforge.sae.training import TrainingSAE

__all__ = [
    "INFERENCE_ARCHITECTURES",
    "SAE",
    "TRAINING_ARCHITECTURES",
    "Collectives",
    "SAEConfig",
    "TrainStepInput",
    "TrainStepOutput",
    "TrainingSAE",
    "TrainingSAEConfig",
    "create_training_sae",
    "load_sae",
    "save_sae",
]
