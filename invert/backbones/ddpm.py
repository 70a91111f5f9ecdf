"""DDPM training as diffusers' training scripts define it: what the denoiser predicts per ``prediction_type`` and
the one-step clean estimate (UNet backbones: IP2P, SDXL-IP2P)."""
from __future__ import annotations

import torch

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


__all__ = ["PREDICTION_TYPES", "check_prediction_type", "clean_estimate", "objective"]
