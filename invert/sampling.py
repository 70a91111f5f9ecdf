"""Sampling with the frozen IP2P: diffusers' own InstructPix2Pix pipeline, given a method's conditioning.

Using the pipeline itself keeps the three-way guidance batch, the image conditioning and the noise draws
exactly IP2P's; a method only supplies the text rows' embeddings and, for attention methods, processors."""
from __future__ import annotations

from PIL import Image

import torch

from .defaults import SCHEDULERS
from .editor import Editor
from .errors import InvertError
from .methods.base import Method


def make_scheduler(editor: Editor, name: str | None):
    """The model's own scheduler (``None``), or one of ``SCHEDULERS`` built from the model's config."""
    if name is None:
        return editor.scheduler
    if name not in SCHEDULERS:
        raise InvertError(f"unknown scheduler '{name}' (choose from {', '.join(SCHEDULERS)})")
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_config(editor.scheduler.config)


def sample(editor: Editor, method: Method, images: list[Image.Image], *, steps: int = 20, guidance: float = 7.5,
           image_guidance: float = 1.5, seed: int = 0, scheduler: str | None = None) -> list[Image.Image]:
    """Edit ``images`` (same size) with ``method``'s instruction.

    Each image gets its own CPU generator seeded with ``seed``, so an image's result does not depend on the
    batch it is in, and equals diffusers' pipeline called with ``generator=torch.Generator().manual_seed(seed)``.
    """
    pipe = editor.pipe
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(editor, scheduler)
    try:
        embeds = method.text_embeds(torch.zeros(1, dtype=torch.long)).detach()
        with torch.inference_mode(), method.sampling_context(editor):
            out = pipe(image=images, prompt_embeds=embeds.expand(len(images), -1, -1), num_inference_steps=steps,
                       guidance_scale=guidance, image_guidance_scale=image_guidance,
                       generator=[torch.Generator("cpu").manual_seed(seed) for _ in images])
    finally:
        pipe.scheduler = original
    return out.images
