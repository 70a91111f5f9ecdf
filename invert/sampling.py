"""Sampling: edit images with an instruction through its backbone's own sampler (IP2P's loop written out, or a
flow-matching editor's), the method changing only the conditioning of each denoiser call. With an untrained
instruction each backbone gives its diffusers pipeline's result bit for bit (tests check it)."""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from PIL import Image

from .backbones import Editor
from .defaults import IP2P_GUIDANCE, IP2P_IMAGE_GUIDANCE, NOISE_MODES
from .errors import InvertError, NonFiniteResult
from .methods.base import Method


def sample(editor: Editor, method: Method, images: list[Image.Image], *, steps: int,
           guidance: float = IP2P_GUIDANCE, image_guidance: float = IP2P_IMAGE_GUIDANCE, seed: int = 0,
           noise: str = "stream", scheduler: str | None = None, on_step: Callable[[int], None] | None = None,
           install: bool = True, first_step: dict | None = None) -> list[Image.Image]:
    """Edit ``images`` (all of one size) with ``method``'s instruction.

    ``noise`` "stream" and "fresh": each image gets its own CPU generator seeded with ``seed``, so an image's
    result does not depend on the batch it is in, and equals the diffusers pipeline called with
    ``generator=torch.Generator().manual_seed(seed)``. "fit": the fit's own noises, ``seed`` being the fit's.
    ``on_step(i)`` is called after each of the ``steps`` sampling steps. ``install=False``: the method is already
    on the denoiser (a validation inside a fit, whose method stays installed for the whole fit; a LoRA adapter
    cannot be added twice). ``first_step``: see :meth:`~invert.backbones.Editor.sample`; ignored for a state that
    changes the text-free rows (``Method.changes_text_free_rows``)."""
    if noise not in NOISE_MODES:
        raise InvertError(f"unknown noise '{noise}' (choose from {', '.join(NOISE_MODES)})")
    with method.installed() if install else contextlib.nullcontext():
        try:
            return editor.sample(method, images, steps=steps, guidance=guidance, image_guidance=image_guidance,
                                 seed=seed, noise=noise, scheduler=scheduler, on_step=on_step,
                                 first_step=None if method.changes_text_free_rows() else first_step)
        except NonFiniteResult as exc:  # the editor cannot know which setting is to blame
            raise NonFiniteResult(f"{exc}: {_likely_cause(method, guidance, image_guidance)}") from None


# Guidance scales beyond this are far outside any useful range (IP2P uses about 1 to 20) and can overflow.
HUGE_GUIDANCE = 1e4


def _likely_cause(method: Method, guidance: float, image_guidance: float) -> str:
    scales = {"--guidance": guidance, "--image-guidance": image_guidance}
    for flag, value in scales.items():
        if not math.isfinite(value):
            return f"{flag} is {value}, not a finite number"
    if not all(bool(torch.isfinite(t).all()) for t in method.tensors().values()):
        return ("the instruction holds NaN or inf: likely a --strength or --mix weight that is not a finite number, "
                "or a huge one")
    for flag, value in scales.items():
        if abs(value) > HUGE_GUIDANCE:
            return f"{flag} {value:g} is far outside the useful range (about 1 to 20)"
    return ("likely too large a --strength, --mix weight or guidance scale for this instruction, or a half-precision "
            "overflow (try --dtype fp32)")


__all__ = ["NonFiniteResult", "sample"]
