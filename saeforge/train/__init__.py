"""saeforge.train: train one SAE or a sweep of them on a stream of activation batches.

from saeforge.train import TrainConfig, train
results = train(TrainConfig.from_yaml("sweep.yaml"))       # list of TrainedSAE
"""

from saeforge.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "ConfigError": "saeforge.errors",
        "SAESpec": "saeforge.train.config",
        "TrainConfig": "saeforge.train.config",
        "NonFiniteError": "saeforge.train.results",
        "ProgressEvent": "saeforge.train.trainer",
        "StepEvent": "saeforge.train.trainer",
        "TrainedSAE": "saeforge.train.results",
        "TrainingInterrupted": "saeforge.train.trainer",
        "train": "saeforge.train.trainer",
        "train_hooks": "saeforge.train.sweep",
    },
)
