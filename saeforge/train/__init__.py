"""saeforge.train: train one SAE or a sweep of them on a stream of activation batches.

from saeforge.train import TrainConfig, train
results = train(TrainConfig.from_yaml("sweep.yaml"))       # list of TrainedSAE
"""

from saeforge.train.config import ConfigError, SAESpec, TrainConfig
from saeforge.train.trainer import NonFiniteError, ProgressEvent, TrainedSAE, TrainingInterrupted, train

__all__ = [
    "ConfigError",
    "NonFiniteError",
    "ProgressEvent",
    "SAESpec",
    "TrainConfig",
    "TrainedSAE",
    "TrainingInterrupted",
    "train",
]
