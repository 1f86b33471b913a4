"""saeforge.steer: steer a causal LM along SAE decoder directions, clamp latents, export directions."""

from saeforge.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "SteerConfig": "saeforge.steer.config",
        "decoder_direction": "saeforge.steer.directions",
        "export_direction": "saeforge.steer.directions",
        "Generation": "saeforge.steer.steering",
        "clamping": "saeforge.steer.steering",
        "generate": "saeforge.steer.steering",
        "steering": "saeforge.steer.steering",
        "sweep": "saeforge.steer.steering",
    },
)
