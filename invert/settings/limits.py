"""The limits settings share, each stated once with its reason (the options' help repeats them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import InvertError
from .fields import INT_MAX

# Fit steps: the official VISII code's 1000 a hundred times over (a fit's timestep schedule is drawn up front).
MAX_FIT_STEPS = 100_000
# Sampling steps: diffusers' schedulers take at most the model's training timesteps (1000 for IP2P and the toy).
MAX_SAMPLING_STEPS = 1000
# Guidance scales: IP2P's defaults are 7.5 (text) and 1.5 (image) and A1111's CFG slider ends at 30; past that
# every pixel saturates, and at scales like 1e30 the guided prediction overflows into a black image.
MAX_GUIDANCE = 30.0
GUIDANCE_WHY = "at most 30, where A1111's CFG scale ends: past it results saturate, and a scale like 1e30 overflows " \
               "into a black image"
# Image size: 8 times IP2P's 512; memory grows with its square (a multiple of the model's VAE factor, too).
MIN_RESOLUTION, MAX_RESOLUTION = 8, 4096
# Learned token positions: CLIP's 77 less BOS and EOS (a model whose text encoder has fewer allows fewer).
MAX_TOKENS = 75
# A seed: what torch.Generator takes, less the small offsets derived seeds add.
MAX_SEED = INT_MAX
# Loss weights and strength-like scales: finite, and small enough that the loss stays within float32's range.
MAX_WEIGHT = 1000.0
MAX_STRENGTH = 10.0



@dataclass(frozen=True)
class ModelLimits:
    """What one base model allows, beyond the limits every model shares: its text encoder's positions, its VAE's
    downsampling factor and its scheduler's training timesteps."""

    positions: int  # the text encoder's token positions (77 for CLIP)
    vae_factor: int  # image pixels per latent pixel (8 for IP2P)
    timesteps: int  # training timesteps (1000): the most sampling steps a scheduler takes

    def check(self, values: Mapping[str, Any], where: Callable[[str], str],
              limited: Mapping[str, str] | None = None) -> None:
        """Refuse settings that this model cannot take: ``limited`` says which of its limits applies to a setting,
        by name (default: the fit's, :data:`MODEL_LIMITED`); ``where(name)`` names a setting's source."""
        rules = {
            "tokens": (lambda v: v <= self.positions - 2, f"at most {self.positions - 2} for this model (its text "
                                                          f"encoder's {self.positions} positions less BOS and EOS)"),
            "resolution": (lambda v: v % self.vae_factor == 0, f"a multiple of {self.vae_factor} for this model (its "
                                                               "VAE's downsampling factor)"),
            "sampling_steps": (lambda v: v <= self.timesteps, f"at most {self.timesteps} for this model (its "
                                                              "scheduler's training timesteps)"),
        }
        for name, value in values.items():
            rule = rules.get((MODEL_LIMITED if limited is None else limited).get(name, ""))
            if value is not None and rule is not None and not rule[0](value):
                raise InvertError(f"{where(name)}: must be {rule[1]}, not {value}")


# The fit's settings a model limits, by name: which of its limits applies.
MODEL_LIMITED = {"tokens": "tokens", "pez_tokens": "tokens", "resolution": "resolution", "val_steps": "sampling_steps",
                 "best_val_steps": "sampling_steps"}


__all__ = ["GUIDANCE_WHY", "MAX_FIT_STEPS", "MAX_GUIDANCE", "MAX_RESOLUTION", "MAX_SAMPLING_STEPS", "MAX_SEED",
           "MAX_STRENGTH", "MAX_TOKENS", "MAX_WEIGHT", "MIN_RESOLUTION", "MODEL_LIMITED", "ModelLimits"]
