"""saeforge.sae: SAE architectures (training and inference), their registry, and the SAELens-layout files."""

from saeforge.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "Collectives": "saeforge.sae.base",
        "SAE": "saeforge.sae.base",
        "SAEConfig": "saeforge.sae.base",
        "TrainStepInput": "saeforge.sae.base",
        "TrainStepOutput": "saeforge.sae.base",
        "TrainingSAEConfig": "saeforge.sae.config",
        "load_sae": "saeforge.sae.io",
        "save_sae": "saeforge.sae.io",
        "INFERENCE_ARCHITECTURES": "saeforge.sae.registry",
        "TRAINING_ARCHITECTURES": "saeforge.sae.registry",
        "create_training_sae": "saeforge.sae.registry",
        "TrainingSAE": "saeforge.sae.training",
    },
)
