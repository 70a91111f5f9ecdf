"""What a fit minimizes: the UNet's training objective per prediction type, the one-step clean estimate the
cycle term uses, and the exemplars' CLIP direction (the target of VISII's CLIP term and libraries' key)."""
from __future__ import annotations

import torch
from PIL import Image

from ..clip import Clip
from ..errors import InvertError

PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise InvertError(f"unsupported scheduler prediction_type {prediction_type!r}")


def objective(prediction_type: str, noise: torch.Tensor, latents: torch.Tensor, alpha_bar: torch.Tensor
              ) -> torch.Tensor:
    """What the UNet predicts, as diffusers' training scripts define it per ``prediction_type``."""
    if prediction_type == "epsilon":
        return noise
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents


def clean_estimate(prediction_type: str, prediction: torch.Tensor, noisy: torch.Tensor, alpha_bar: torch.Tensor
                   ) -> torch.Tensor:
    """The one-step estimate of the clean latents from a prediction of ``objective``'s kind."""
    if prediction_type == "epsilon":
        return (noisy - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()
    return alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * prediction


def row_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each batch row: (rows,)."""
    return torch.nn.functional.mse_loss(prediction, target, reduction="none").flatten(1).mean(1)


def clip_direction(clip: Clip, befores: list[Image.Image], afters: list[Image.Image]) -> torch.Tensor:
    """Normalized (mean after - mean before) projected CLIP image embedding."""
    direction = clip.image_features(afters).mean(0) - clip.image_features(befores).mean(0)
    return torch.nn.functional.normalize(direction, dim=-1)


__all__ = ["PREDICTION_TYPES", "check_prediction_type", "clean_estimate", "clip_direction", "objective", "row_mse"]
