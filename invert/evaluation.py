"""How close edited images come to the true edits, with TOP-Bench's metrics: PSNR, SSIM, CLIP image similarity
and CLIP directional similarity.

LPIPS is not offered: its network weights (and the torchvision backbones it builds on) cannot be had offline.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from .clip import Clip
from .instruction import Instruction
from .metrics import as_tensor, psnr

METRICS = ("psnr", "ssim", "clip_image", "clip_direction")


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size)


def ssim(results: torch.Tensor, truths: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1),
    averaged over the valid window positions and the colour channels. Images smaller than the window use a
    window of their own smaller size."""
    size = min(11, results.shape[-1], results.shape[-2])
    window = _gaussian_window(size, 1.5 * size / 11)
    results, truths = results.double(), truths.double()  # E[x^2] - E[x]^2 cancels badly in float32

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=3)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_x, mu_y = blur(results), blur(truths)
    var_x = blur(results * results) - mu_x ** 2
    var_y = blur(truths * truths) - mu_y ** 2
    cov = blur(results * truths) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()


def score(befores: list[Image.Image], results: list[Image.Image], truths: list[Image.Image],
          clip: Clip | None = None, train_direction: torch.Tensor | None = None) -> dict:
    """Per-image rows, the mean of each column, and (with ``clip``) TOP-Bench's set score.

    ``clip_image``: cosine of the CLIP image features of result and truth. ``clip_direction`` per image: the
    cosine between that image's input -> result direction and ``train_direction`` (that of the training pairs;
    default: the test pairs' own before -> truth direction); ``mean`` holds its mean like every column's.
    ``clip_direction_of_means`` is TOP-Bench's directional similarity: the same cosine for the direction between
    the mean input and mean result features, which is not the mean of the column (averaging the features first
    cancels what differs between images, so it is usually higher)."""
    r, t = as_tensor(results), as_tensor(truths)
    columns = {"psnr": psnr(r, t), "ssim": ssim(r, t)}
    of_means = None
    if clip is not None:
        f_before, f_result, f_truth = (F.normalize(clip.image_features(x).float().cpu(), dim=-1)
                                       for x in (befores, results, truths))
        if train_direction is None:
            train_direction = f_truth.mean(0) - f_before.mean(0)
        train_direction = F.normalize(train_direction.float().cpu(), dim=-1)
        columns["clip_image"] = (f_result * f_truth).sum(-1)
        columns["clip_direction"] = F.normalize(f_result - f_before, dim=-1) @ train_direction
        of_means = float(F.normalize(f_result.mean(0) - f_before.mean(0), dim=-1) @ train_direction)
    images = [{k: float(v[i]) for k, v in columns.items()} for i in range(len(results))]
    scores = {"mean": {k: float(v.mean()) for k, v in columns.items()}, "images": images}
    if of_means is not None:
        scores["clip_direction_of_means"] = of_means
    return scores


def stored_direction(instruction: Instruction, clip: Clip) -> torch.Tensor | None:
    """The training pairs' CLIP direction the fit stored, if it was measured with this same CLIP model."""
    if "clip.direction" in instruction.tensors and instruction.meta.clip_model == clip.name:
        return instruction.tensors["clip.direction"]
    return None


def score_instruction(instruction: Instruction, befores: list[Image.Image], results: list[Image.Image],
                      truths: list[Image.Image], *, clip: Clip | None = None,
                      train_direction: torch.Tensor | None = None) -> dict:
    """:func:`score` for results of ``instruction``. The training direction for ``clip_direction`` is, in order:
    ``train_direction``, the one stored in the file (same CLIP model), the test pairs' own; ``direction_source``
    says which."""
    source = None if clip is None else "given"
    if clip is not None and train_direction is None:
        train_direction = stored_direction(instruction, clip)
        source = "test pairs" if train_direction is None else "instruction"
    return {**score(befores, results, truths, clip, train_direction), "direction_source": source}


__all__ = ["METRICS", "as_tensor", "psnr", "score", "score_instruction", "ssim", "stored_direction"]
