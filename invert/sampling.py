"""Sampling with the frozen IP2P: the InstructPix2Pix pipeline's own loop, written out so that the layout of
every UNet batch is said explicitly (:class:`~invert.backbones.guidance.Rows`) and a method changes only the conditioning
it is given. With an untrained instruction it gives diffusers' ``StableDiffusionInstructPix2PixPipeline``
result bit for bit (a test checks it): same image latents, noise draws, guidance batch and scheduler steps."""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from PIL import Image

from .backbones.editor import Editor
from .backbones.guidance import Rows, guided, is_guided
from .defaults import KARRAS, NOISE_MODES, SCHEDULERS
from .errors import InvertError
from .methods.base import Method
from .schedules import draw_noises


def make_scheduler(editor: Editor, name: str | None):
    """A fresh scheduler for one sampling run: the model's own kind (``None``) or one of ``SCHEDULERS``, built
    from the model's scheduler config."""
    import diffusers

    if name is not None and name not in SCHEDULERS:
        raise InvertError(f"unknown scheduler '{name}' (choose from {', '.join(SCHEDULERS)})")
    cls = type(editor.scheduler) if name is None else getattr(diffusers, SCHEDULERS[name])
    return cls.from_config(editor.scheduler.config)


def set_timesteps(editor: Editor, scheduler, name: str | None, steps: int) -> None:
    """``steps`` sampling steps; for a Karras variant, the sigmas of Karras et al. (as diffusers' Euler computes
    them) on the ancestral scheduler, whose own ``set_timesteps`` has no such option."""
    scheduler.set_timesteps(steps, device=editor.device)
    if name in KARRAS:
        import diffusers

        karras = diffusers.EulerDiscreteScheduler.from_config(editor.scheduler.config, use_karras_sigmas=True)
        karras.set_timesteps(steps, device=editor.device)
        scheduler.sigmas, scheduler.timesteps = karras.sigmas.to(scheduler.sigmas.device), karras.timesteps


class FitNoise:
    """The noise the fit drew for each training timestep (one per timestep, from its seed; at another image size,
    drawn the same way at that size), reused while sampling as the VISII paper describes (Fig. 8): the initial
    latent is the noise of the first sampling timestep, and each ancestral step's noise that of the timestep it
    steps to (the noise level it adds to)."""

    def __init__(self, seed: int, shape: tuple[int, ...], editor: Editor):
        count = editor.scheduler.config.num_train_timesteps
        self.noises = draw_noises(seed, (1, *shape[1:]), count, editor.device, editor.dtype)
        self.rows = shape[0]

    def at(self, timestep: torch.Tensor) -> torch.Tensor:
        index = int(torch.as_tensor(timestep).round().clamp(0, len(self.noises) - 1))
        return self.noises[index:index + 1].expand(self.rows, -1, -1, -1)


def _sigma_up(scheduler, i: int) -> float | None:
    """The scale of step i's ancestral noise for Euler ancestral (as diffusers computes it); None for the
    deterministic schedulers, which add none."""
    import diffusers

    if not isinstance(scheduler, diffusers.EulerAncestralDiscreteScheduler):
        return None
    sigma_from, sigma_to = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])
    return (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5


@torch.inference_mode()
def sample(editor: Editor, method: Method, images: list[Image.Image], *, steps: int = 20, guidance: float = 7.5,
           image_guidance: float = 1.5, seed: int = 0, noise: str = "stream", scheduler: str | None = None,
           on_step: Callable[[int], None] | None = None, install: bool = True) -> list[Image.Image]:
    """Edit ``images`` (all of one size) with ``method``'s instruction.

    ``noise`` "stream" and "fresh": each image gets its own CPU generator seeded with ``seed``, so an image's
    result does not depend on the batch it is in, and equals diffusers' pipeline called with
    ``generator=torch.Generator().manual_seed(seed)``. "fit": the fit's own noises (see :class:`FitNoise`),
    ``seed`` being the fit's. ``on_step(i)`` is called after each of the ``steps`` sampling steps. ``install=False``:
    the method is already on the UNet (a validation inside a fit, whose method stays installed for the whole fit;
    a LoRA adapter cannot be added twice)."""
    from diffusers.utils.torch_utils import randn_tensor

    if noise not in NOISE_MODES:
        raise InvertError(f"unknown noise '{noise}' (choose from {', '.join(NOISE_MODES)})")
    device, dtype = editor.device, editor.dtype
    sched = make_scheduler(editor, scheduler)
    set_timesteps(editor, sched, scheduler, steps)
    generators = [torch.Generator("cpu").manual_seed(seed) for _ in images]
    with_guidance = is_guided(guidance, image_guidance)
    image_latents = editor.condition_latents(images)
    if with_guidance:
        image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
    n = len(images)
    shape = (n, editor.vae.config.latent_channels, *image_latents.shape[-2:])
    fit_noise = FitNoise(seed, shape, editor) if noise == "fit" else None
    first = fit_noise.at(sched.timesteps[0]) if fit_noise else randn_tensor(shape, generator=generators,
                                                                             device=device, dtype=dtype)
    latents = first * sched.init_noise_sigma
    takes_generator = "generator" in _step_parameters(sched)
    with method.installed() if install else contextlib.nullcontext():
        for i, t in enumerate(sched.timesteps):
            x = torch.cat([latents] * 3) if with_guidance else latents
            x = torch.cat([sched.scale_model_input(x, t), image_latents], dim=1)
            rows = Rows.ip2p(n, t, with_guidance, device)
            c = method.conditioning(rows, editor.uncond)
            pred = editor.unet(x, t, encoder_hidden_states=c.embeds, cross_attention_kwargs=c.attention).sample
            if with_guidance:
                pred = guided(*pred.chunk(3), guidance, image_guidance)
            sigma_up = _sigma_up(sched, i) if fit_noise else None
            states = [g.get_state() for g in generators] if sigma_up else None
            latents = sched.step(pred, t, latents, **({"generator": generators} if takes_generator else {}),
                                 return_dict=False)[0]
            if sigma_up:  # the step added sigma_up times the generators' draw: make it the fit's noise instead
                drawn = randn_tensor(shape, generator=[torch.Generator("cpu").set_state(st) for st in states],
                                     device=device, dtype=dtype)
                landing = sched.timesteps[i + 1] if i + 1 < len(sched.timesteps) else t
                latents = latents + sigma_up * (fit_noise.at(landing) - drawn)
            if on_step is not None:
                on_step(i + 1)
    pixels = editor.decode(latents)
    check_finite(pixels, method, guidance, image_guidance)
    return editor.to_images(pixels)


class NonFiniteResult(InvertError):
    """Sampling gave NaN or inf: an image made of it would be all black (or white), so it is an error instead."""


# Guidance scales beyond this are far outside any useful range (IP2P uses about 1 to 20) and can overflow.
HUGE_GUIDANCE = 1e4


def check_finite(pixels: torch.Tensor, method: Method, guidance: float, image_guidance: float) -> None:
    """Refuse decoded ``pixels`` of which any entry is NaN or inf (one check per batch), saying how many images
    and which setting is the likely cause."""
    bad = ~torch.isfinite(pixels.flatten(1)).all(1)
    if not bad.any():
        return
    count = f" ({int(bad.sum())} of the batch's {len(pixels)} images)" if len(pixels) > 1 else ""
    raise NonFiniteResult(f"sampling gave NaN or inf{count}, not an image: "
                          f"{_likely_cause(method, guidance, image_guidance)}")


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


def _step_parameters(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)


__all__ = ["FitNoise", "NonFiniteResult", "check_finite", "make_scheduler", "sample", "set_timesteps"]
