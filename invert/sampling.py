"""Sampling: edit images with an instruction through its backbone's own sampler (IP2P's loop written out, or a
flow-matching editor's), the method changing only the conditioning of each denoiser call. With an untrained
instruction each backbone gives its diffusers pipeline's result bit for bit (tests check it)."""
from __future__ import annotations

import contextlib
from typing import Callable

from PIL import Image

from .backbones import Editor
from .defaults import IP2P_GUIDANCE, IP2P_IMAGE_GUIDANCE, NOISE_MODES
from .errors import InvertError
from .methods.base import Method


def sample(editor: Editor, method: Method, images: list[Image.Image], *, steps: int,
           guidance: float = IP2P_GUIDANCE, image_guidance: float = IP2P_IMAGE_GUIDANCE, seed: int = 0,
           noise: str = "stream", scheduler: str | None = None, on_step: Callable[[int], None] | None = None,
           install: bool = True) -> list[Image.Image]:
    """Edit ``images`` (all of one size) with ``method``'s instruction.

    ``noise`` "stream" and "fresh": each image gets its own CPU generator seeded with ``seed``, so an image's
    result does not depend on the batch it is in, and equals the diffusers pipeline called with
    ``generator=torch.Generator().manual_seed(seed)``. "fit": the fit's own noises, ``seed`` being the fit's.
    ``on_step(i)`` is called after each of the ``steps`` sampling steps. ``install=False``: the method is already
    on the denoiser (a validation inside a fit, whose method stays installed for the whole fit; a LoRA adapter
    cannot be added twice)."""
    if noise not in NOISE_MODES:
        raise InvertError(f"unknown noise '{noise}' (choose from {', '.join(NOISE_MODES)})")
    with method.installed() if install else contextlib.nullcontext():
        return editor.sample(method, images, steps=steps, guidance=guidance, image_guidance=image_guidance, seed=seed,
                             noise=noise, scheduler=scheduler, on_step=on_step)


__all__ = ["sample"]
