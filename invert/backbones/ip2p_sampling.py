"""IP2P's sampler: the InstructPix2Pix pipeline's own loop, written out so that the layout of every UNet batch is
said explicitly (:class:`~invert.backbones.rows.Rows`) and a method changes only the conditioning it is given. With
an untrained instruction it gives diffusers' ``StableDiffusionInstructPix2PixPipeline`` result bit for bit (a test
checks it): same image latents, noise draws, guidance batch and scheduler steps. The noise modes and --scheduler
choices of ``apply`` are this sampler's."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from PIL import Image

from ..defaults import KARRAS, SCHEDULERS
from ..errors import InvertError
from ..schedules import draw_noises
from .base import Editor
from .rows import Rows

if TYPE_CHECKING:
    from diffusers import SchedulerMixin


def make_scheduler(editor: Editor, name: str | None) -> SchedulerMixin:
    """A fresh scheduler for one sampling run: the model's own kind (``None``) or one of ``SCHEDULERS``, built
    from the model's scheduler config."""
    import diffusers

    if name is not None and name not in SCHEDULERS:
        raise InvertError(f"unknown scheduler '{name}' (choose from {', '.join(SCHEDULERS)})")
    cls = type(editor.scheduler) if name is None else getattr(diffusers, SCHEDULERS[name])
    return cls.from_config(editor.scheduler.config)


def set_timesteps(editor: Editor, scheduler: SchedulerMixin, name: str | None, steps: int) -> None:
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
def sample_ip2p(editor: Editor, method: Any, images: list[Image.Image], *, steps: int, guidance: float,
                image_guidance: float, seed: int, noise: str, scheduler: str | None,
                on_step: Callable[[int], None] | None, first_step: dict | None = None) -> list[Image.Image]:
    """Edit ``images`` (all of one size) with ``method``'s instruction (installed on the UNet by the caller).

    ``noise`` "stream" and "fresh": each image gets its own CPU generator seeded with ``seed``, so an image's
    result does not depend on the batch it is in, and equals diffusers' pipeline called with
    ``generator=torch.Generator().manual_seed(seed)``. "fit": the fit's own noises (see :class:`FitNoise`),
    ``seed`` being the fit's. ``on_step(i)`` is called after each of the ``steps`` sampling steps. ``first_step``:
    see :meth:`Editor.sample`; the text rows of the first step then run in a call of their own."""
    from diffusers.utils.torch_utils import randn_tensor

    device, dtype = editor.device, editor.dtype
    sched = make_scheduler(editor, scheduler)
    set_timesteps(editor, sched, scheduler, steps)
    generators = [torch.Generator("cpu").manual_seed(seed) for _ in images]
    groups = editor.groups(guidance, image_guidance)
    image_latents = editor.condition(images)
    if len(groups) > 1:
        image_latents = torch.cat([image_latents if g.image else torch.zeros_like(image_latents) for g in groups])
    n = len(images)
    shape = (n, editor.vae.config.latent_channels, *image_latents.shape[-2:])
    fit_noise = FitNoise(seed, shape, editor) if noise == "fit" else None
    if fit_noise:
        first = fit_noise.at(editor.sampling_position(sched.timesteps[0]))
    else:
        first = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    latents = first * sched.init_noise_sigma
    takes_generator = "generator" in _step_parameters(sched)
    for i, t in enumerate(sched.timesteps):
        x = torch.cat([latents] * len(groups)) if len(groups) > 1 else latents
        x = torch.cat([sched.scale_model_input(x, t), image_latents], dim=1)
        position = editor.sampling_position(t).reshape(-1).expand(n)
        if i == 0 and first_step is not None and len(groups) > 1:
            preds = _first_step(editor, method, groups, x, t, position, first_step)
        else:
            preds = list(_predict(editor, method, groups, x, t, position).chunk(len(groups)))
        pred = editor.combine(preds, guidance, image_guidance)
        sigma_up = _sigma_up(sched, i) if fit_noise else None
        states = [g.get_state() for g in generators] if sigma_up else None
        latents = sched.step(pred, t, latents, **({"generator": generators} if takes_generator else {}),
                             return_dict=False)[0]
        if sigma_up:  # the step added sigma_up times the generators' draw: make it the fit's noise instead
            drawn = randn_tensor(shape, generator=[torch.Generator("cpu").set_state(st) for st in states],
                                 device=device, dtype=dtype)
            landing = sched.timesteps[i + 1] if i + 1 < len(sched.timesteps) else t
            latents = latents + sigma_up * (fit_noise.at(editor.sampling_position(landing)) - drawn)
        if on_step is not None:
            on_step(i + 1)
    return editor.decode(latents)


def _predict(editor: Editor, method: Any, groups: list, x: torch.Tensor, t: torch.Tensor, position: torch.Tensor
             ) -> torch.Tensor:
    """The UNet's prediction for the guidance ``groups`` stacked in ``x``, conditioned by ``method``."""
    c = method.conditioning(Rows.of(groups, position), editor.uncond)
    return editor.unet(x, t, encoder_hidden_states=c.embeds, cross_attention_kwargs=c.attention,
                       **editor.added_conditions(c, x)).sample


def _first_step(editor: Editor, method: Any, groups: list, x: torch.Tensor, t: torch.Tensor, position: torch.Tensor,
                kept: dict) -> list[torch.Tensor]:
    """The first step's prediction per group: the text rows in a call of their own, the text-free rows from
    ``kept`` (computed in one call and kept there the first time)."""
    chunks = x.chunk(len(groups))
    text = [i for i, g in enumerate(groups) if g.text]
    free = [i for i, g in enumerate(groups) if not g.text]
    if "text_free" not in kept:
        kept["text_free"] = _predict(editor, method, [groups[i] for i in free],
                                     torch.cat([chunks[i] for i in free]), t, position).chunk(len(free))
    own = _predict(editor, method, [groups[i] for i in text], torch.cat([chunks[i] for i in text]), t,
                   position).chunk(len(text))
    preds = {**dict(zip(text, own)), **dict(zip(free, kept["text_free"]))}
    return [preds[i] for i in range(len(groups))]


def _step_parameters(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)


__all__ = ["FitNoise", "make_scheduler", "sample_ip2p", "set_timesteps"]
