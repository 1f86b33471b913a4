"""saeforge.sae: SAE architectures (training and inference), their registry, and the SAELens-layout files.

Importing the package imports every architecture module; each registers itself (`registry.register_architecture`)
and `TrainingSAEConfig` is then composed of their config fragments. A new architecture is one module here plus
its name in the import line below.
"""

# isort: off
# Registration order is the order architectures are listed in messages and --help.
from saeforge.sae import standard, topk, batchtopk, jumprelu, gated, matryoshka  # noqa: F401
from saeforge.sae import crosscoder, transcoder  # noqa: F401  (dictionary kinds)

# isort: on
from saeforge.sae.base import SAE, Collectives, SAEConfig, TrainStepInput, TrainStepOutput
from saeforge.sae.config import TrainingSAEConfig, create_training_sae
from saeforge.sae.crosscoder import CrossCoder
from saeforge.sae.io import load_sae, save_sae
from saeforge.sae.registry import (
    INFERENCE_ARCHITECTURES,
    TRAINING_ARCHITECTURES,
    register_architecture,
)
from saeforge.sae.training import TrainingSAE
from saeforge.sae.transcoder import SkipTranscoder, Transcoder

__all__ = [
    "INFERENCE_ARCHITECTURES",
    "SAE",
    "TRAINING_ARCHITECTURES",
    "Collectives",
    "CrossCoder",
    "SAEConfig",
    "SkipTranscoder",
    "TrainStepInput",
    "TrainStepOutput",
    "TrainingSAE",
    "TrainingSAEConfig",
    "Transcoder",
    "create_training_sae",
    "load_sae",
    "register_architecture",
    "save_sae",
]
