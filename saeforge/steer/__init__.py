"""saeforge.steer: steer a causal LM along SAE decoder directions, clamp latents, export directions."""

from saeforge.steer.directions import decoder_direction, export_direction
from saeforge.steer.steering import Generation, clamping, generate, steering, sweep

__all__ = ["Generation", "clamping", "decoder_direction", "export_direction", "generate", "steering", "sweep"]
