"""Sampling with the frozen IP2P: the InstructPix2Pix pipeline's own loop, written out so that the layout of
every UNet batch is said explicitly (:class:`~invert.guidance.Rows`) and a method changes only the conditioning
it is given. With an untrained instruction it gives diffusers' ``StableDiffusionInstructPix2PixPipeline``
result bit for bit (a test checks it): same image latents, noise draws, guidance batch and scheduler steps."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image

from .defaults import SCHEDULERS
from .editor import Editor
from .errors import InvertError
from .guidance import Rows, guided, is_guided
from .methods.base import Method


def make_scheduler(editor: Editor, name: str | None):
    """A fresh scheduler for one sampling run: the model's own kind (``None``) or one of ``SCHEDULERS``, built
    from the model's scheduler config."""
    import diffusers

    if name is not None and name not in SCHEDULERS:
        raise InvertError(f"unknown scheduler '{name}' (choose from {', '.join(SCHEDULERS)})")
    cls = type(editor.scheduler) if name is None else getattr(diffusers, SCHEDULERS[name])
    return cls.from_config(editor.scheduler.config)


@torch.inference_mode()
def sample(editor: Editor, method: Method, images: list[Image.Image], *, steps: int = 20, guidance: float = 7.5,
           image_guidance: float = 1.5, seed: int = 0, scheduler: str | None = None,
           on_step: Callable[[int], None] | None = None) -> list[Image.Image]:
    """Edit ``images`` (all of one size) with ``method``'s instruction.

    Each image gets its own CPU generator seeded with ``seed``, so an image's result does not depend on the
    batch it is in, and equals diffusers' pipeline called with ``generator=torch.Generator().manual_seed(seed)``.
    ``on_step(i)`` is called after each of the ``steps`` sampling steps."""
    pipe, device, dtype = editor.pipe, editor.device, editor.dtype
    sched = make_scheduler(editor, scheduler)
    sched.set_timesteps(steps, device=device)
    generators = [torch.Generator("cpu").manual_seed(seed) for _ in images]
    with_guidance = is_guided(guidance, image_guidance)
    image_latents = editor.condition_latents(images)
    if with_guidance:
        image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
    n = len(images)
    shape = (n, editor.vae.config.latent_channels, *image_latents.shape[-2:])
    from diffusers.utils.torch_utils import randn_tensor

    latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype) * sched.init_noise_sigma
    extra = {"generator": generators} if "generator" in _step_parameters(sched) else {}
    with method.installed():
        for i, t in enumerate(sched.timesteps):
            x = torch.cat([latents] * 3) if with_guidance else latents
            x = torch.cat([sched.scale_model_input(x, t), image_latents], dim=1)
            rows = Rows.ip2p(n, t, with_guidance, device)
            c = method.conditioning(rows, editor.uncond)
            pred = editor.unet(x, t, encoder_hidden_states=c.embeds, cross_attention_kwargs=c.attention).sample
            if with_guidance:
                pred = guided(*pred.chunk(3), guidance, image_guidance)
            latents = sched.step(pred, t, latents, **extra, return_dict=False)[0]
            if on_step is not None:
                on_step(i + 1)
    return editor.decode(latents)


def _step_parameters(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)


__all__ = ["make_scheduler", "sample"]
