"""Pixel metrics that need no model: images as tensors and PSNR. Used by evaluation and, inside a fit, by its
validation (which sits below evaluation in the layers, hence this module of their own)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def as_tensor(images: list[Image.Image]) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1]."""
    return torch.stack([torch.from_numpy(np.asarray(img.convert("RGB"), np.float32) / 255).permute(2, 0, 1)
                        for img in images])


def psnr(results: torch.Tensor, truths: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]."""
    mse = (results - truths).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


__all__ = ["as_tensor", "psnr"]
