"""What a fit minimizes besides the backbone's own training objective: the per-row noise MSE, and the exemplars' CLIP
direction (the target of VISII's CLIP term and libraries' key)."""
from __future__ import annotations

import torch
from PIL import Image

from ..clip import Clip


def row_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each batch row: (rows,)."""
    return torch.nn.functional.mse_loss(prediction, target, reduction="none").flatten(1).mean(1)


def clip_direction(clip: Clip, befores: list[Image.Image], afters: list[Image.Image]) -> torch.Tensor:
    """Normalized (mean after - mean before) projected CLIP image embedding."""
    return direction_of(clip.image_features(befores), clip.image_features(afters))


def direction_of(before_features: torch.Tensor, after_features: torch.Tensor) -> torch.Tensor:
    """:func:`clip_direction` of pairs whose CLIP image features are already at hand."""
    return torch.nn.functional.normalize(after_features.mean(0) - before_features.mean(0), dim=-1)


__all__ = ["clip_direction", "direction_of", "row_mse"]
