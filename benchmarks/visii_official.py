"""VISII's official training step as a reference loop: independent code, written from a reading of
thaoshibe/visii (``visii.py``, ``StableDiffusionVisii.train``, lines 783-960 at commit 83e678f) and using
diffusers 0.42 APIs. It takes plain tensors and modules, not invert's Fitter, so that it can check invert's
loop (tests/test_visii_official.py) and serve as the reference of ``python -m benchmarks speed``.

What one official step does (line numbers of ``visii.py``):

- The parameter is the whole guidance batch of prompt embeddings, (3, 77, d): the init prompt's encoding and
  twice the empty prompt's (848-855, from ``_encode_prompt`` 607). AdamW8bit updates all of it (858-861);
  after the step BOS, the positions from EOS on and both unconditional rows are written back (941-944), so
  only the positions between BOS and EOS are learned.
- Timestep ``t`` is the step's entry of a shuffled 0..999 (893-897); its noise is ``noises[t]`` (886, 903);
  its pair is ``t % n`` (904-905). Noising is Euler's: ``x0 + sigma_t * noise`` then ``/ sqrt(sigma_t^2 + 1)``
  (908, 911; diffusers 0.17.1 looked sigma up per call). Here sigma comes from ``alphas_cumprod`` directly:
  diffusers 0.42's ``EulerAncestralDiscreteScheduler.scale_model_input`` caches the first call's step index.
- One UNet call on [text+image, image-only, unconditional] (910-915); the MSE of the guided combination
  against the noise (917-925), times 4; minus 0.1 x the CLIP cosine between the text projection of the mean
  over all 77 positions of the prompt row and the normalized image direction, clamped to [-1, 0.5] (927-934).
- ``accelerator.backward`` (936) under ``Accelerator(mixed_precision="fp16")`` (814-817) on CUDA multiplies the
  loss by its GradScaler's scale; the optimizer never went through ``accelerator.prepare``, so nothing unscales
  the gradients or updates the scale. ``clip_grad_value_`` then clamps them at ``prompt_embeds_orig.max()``
  (937): the signed maximum of the whole (3, 77, d) initial tensor. ``grad_clip="official"`` reproduces both.
- The "best" embedding (946-952) is the one after the step whose MSE (computed before that step's update)
  is the lowest so far, ties going to the later step, starting from a threshold of 100.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDPMScheduler

from invert.errors import InvertError

# The loss scale of the official run: Accelerator(mixed_precision="fp16") on a GPU builds a
# torch.cuda.amp.GradScaler with accelerate's GradScalerKwargs default init_scale=65536.0 (accelerate at the
# commit their requirements pin, 565152183, and still in accelerate 1.15). Only scaler.update(), called from a
# prepared optimizer's step, would ever change it; their optimizer is not prepared, so every step's gradients
# are 2**16 times the true ones. Multiplying by a power of two is exact in fp32 (barring overflow, far off at
# these magnitudes), so scaling the loss here gives exactly 2**16 times the unscaled gradients, as there.
OFFICIAL_LOSS_SCALE = 2.0**16
# A step's embedding becomes the official "best" when its MSE is at most the lowest so far, which starts here
# (universal_mse = 100, visii.py:891).
OFFICIAL_BEST_START = 100.0
GRAD_CLIPS = ("official", "abs", "none")
OPTIMIZERS = ("adamw", "adamw8bit")


@dataclass
class OfficialOptions:
    """The official hyper-parameters (configs/config_ip2p.yaml; guidance from ``train``'s defaults)."""

    lr: float = 1e-3
    guidance: float = 7.5
    image_guidance: float = 1.5
    mse_weight: float = 4.0
    clip_weight: float = 0.1
    clip_clamp: float = 0.5
    # "official": their rule on loss-scaled gradients (above). "abs": invert's current rule, unscaled gradients
    # clipped at the largest |entry| of the initial learned tokens. "none": no clipping, no loss scale.
    grad_clip: str = "official"
    # "adamw8bit": bitsandbytes' AdamW8bit with its defaults, as the official code (it passes only lr).
    # "adamw": torch.optim.AdamW with the same betas, eps and weight decay (both libraries' defaults).
    optimizer: str = "adamw8bit"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2


@dataclass
class StepRecord:
    step: int
    timestep: int
    loss: float  # the total loss, unscaled
    mse: float  # the MSE of the guided prediction, before the step's update
    clipped: float  # fraction of the learned entries' gradient that the clip changed
    clipped_all: float  # the same over the whole (3, 77, d) gradient the clip acts on
    grad_max: float  # largest |gradient| over the learned entries, unscaled, before clipping


@dataclass
class OfficialResult:
    records: list[StepRecord]
    final: torch.Tensor  # (1, 77, d) the prompt row after the last step
    best: torch.Tensor | None  # (1, 77, d) by the official rule; None if no step's MSE fell below 100
    best_step: int | None  # 0-based step after which ``best`` was taken
    eos: int  # the init text's EOS position: the learned positions are 1..eos-1

    @property
    def losses(self) -> list[float]:
        return [r.loss for r in self.records]

    @property
    def clipped(self) -> list[float]:
        return [r.clipped for r in self.records]

    def learned(self, which: str = "final") -> torch.Tensor:
        """The learned positions (1, eos - 1, d) of ``final`` or ``best``."""
        embeds = self.final if which == "final" else self.best
        if embeds is None:
            raise InvertError("no best embedding: no step's MSE fell below the official threshold of 100")
        return embeds[:, 1:self.eos]


def euler_sigmas(scheduler_config: dict) -> torch.Tensor:
    """sigma_t = sqrt((1 - alphabar_t) / alphabar_t) for t = 0..T-1, fp32, as diffusers 0.17.1's Euler schedulers
    computed them; ``alphas_cumprod`` from a DDPMScheduler built from the same config (same betas)."""
    alphas = DDPMScheduler.from_config(scheduler_config).alphas_cumprod
    return ((1 - alphas) / alphas) ** 0.5


def clip_value(rule: str, orig: torch.Tensor, eos: int) -> float | None:
    """The clip-by-value threshold of ``rule`` for the initial (3, 77, d) embedding batch ``orig``: official, its
    signed maximum (``prompt_embeds_orig.max()``); abs, the largest |entry| of the learned positions; none."""
    if rule == "official":
        return float(orig.max())
    if rule == "abs":
        return float(orig[0, 1:eos].abs().max())
    if rule == "none":
        return None
    raise InvertError(f"unknown grad_clip '{rule}' (choose from {', '.join(GRAD_CLIPS)})")


def clip_gradient(grad: torch.Tensor, value: float | None, learned: torch.Tensor) -> tuple[float, float]:
    """Clamp ``grad`` in place to [-value, value] as ``torch.nn.utils.clip_grad_value_`` does (nothing for None);
    the fractions of its entries that changed, over the ``learned`` mask and over all."""
    if value is None:
        return 0.0, 0.0
    over = grad.abs() > value
    grad.clamp_(-value, value)
    return float(over[learned].float().mean()), float(over.float().mean())


def _make_optimizer(params: list[torch.Tensor], o: OfficialOptions) -> torch.optim.Optimizer:
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    if o.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise InvertError("optimizer 'adamw8bit' needs bitsandbytes, which is not installed "
                              "(pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    raise InvertError(f"unknown optimizer '{o.optimizer}' (choose from {', '.join(OPTIMIZERS)})")


class OfficialVisii:
    """One official VISII fit, a step per :meth:`step` call.

    ``prompt_embeds`` (1, 77, d) is the init text's encoding with its EOS at ``eos``; ``uncond`` (1, 77, d) the
    empty prompt's. ``cond_latents`` (n, 4, h, w) are the befores' unscaled VAE latent modes, ``target_latents``
    (n, 4, h, w) the afters' scaled by the VAE's factor. ``timesteps`` (steps,) is the order of training
    timesteps; ``noises`` (T, 4, h, w) holds one noise per timestep index. ``text_projection`` maps (1, d) text
    hidden states to CLIP's joint space and ``direction`` is the normalized image direction; both or neither."""

    def __init__(self, unet: torch.nn.Module, scheduler_config: dict, prompt_embeds: torch.Tensor, eos: int,
                 uncond: torch.Tensor, cond_latents: torch.Tensor, target_latents: torch.Tensor,
                 timesteps: torch.Tensor, noises: torch.Tensor,
                 text_projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 direction: torch.Tensor | None = None, options: OfficialOptions | None = None):
        self.options = o = options or OfficialOptions()
        if (text_projection is None) != (direction is None):
            raise InvertError("the CLIP term needs both text_projection and direction, or neither")
        if len(cond_latents) != len(target_latents):
            raise InvertError(f"{len(cond_latents)} conditioning latents but {len(target_latents)} targets")
        self.unet, self.eos = unet, eos
        self.device = prompt_embeds.device
        self.sigmas = euler_sigmas(scheduler_config).to(self.device)
        self.cond = cond_latents.float()
        self.target = target_latents.float()
        self.timesteps = timesteps.flatten().long().cpu()
        self.noises = noises.float()
        self.text_projection, self.direction = text_projection, direction
        self.orig = torch.cat([prompt_embeds, uncond, uncond]).float().detach()
        self.embeds = self.orig.clone().requires_grad_(True)
        self.learned_mask = torch.zeros_like(self.orig, dtype=torch.bool)
        self.learned_mask[0, 1:eos] = True
        self.clip_value = clip_value(o.grad_clip, self.orig, eos)
        self.loss_scale = OFFICIAL_LOSS_SCALE if o.grad_clip == "official" else 1.0
        self.optimizer = _make_optimizer([self.embeds], o)
        self.records: list[StepRecord] = []
        self.best: torch.Tensor | None = None
        self.best_step: int | None = None
        self._best_mse = OFFICIAL_BEST_START

    def guided_prediction(self, embeds: torch.Tensor, cond: torch.Tensor, target: torch.Tensor, t: int,
                          noise: torch.Tensor) -> torch.Tensor:
        """The guidance-combined noise prediction for targets (n, 4, h, w) noised with ``noise`` at timestep
        ``t``, conditioned on ``cond`` and on the (3, 77, d) embedding batch ``embeds``: one UNet call on 3n rows."""
        o, dtype = self.options, self.unet.dtype
        sigma = self.sigmas[t]
        noisy = target + noise * sigma
        scaled = noisy / (sigma**2 + 1) ** 0.5
        x = torch.cat([torch.cat([scaled] * 3), torch.cat([cond, cond, torch.zeros_like(cond)])], dim=1)
        timestep = torch.tensor([float(t)], device=self.device)  # the official code passes a float tensor
        hidden = embeds.repeat_interleave(len(target), dim=0).to(dtype)
        pred = self.unet(x.to(dtype), timestep, encoder_hidden_states=hidden).sample.float()
        text, image, uncond = pred.chunk(3)
        return uncond + o.guidance * (text - image) + o.image_guidance * (image - uncond)

    def loss(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``step``'s total loss and MSE, with autograd to the embedding batch."""
        o = self.options
        t = int(self.timesteps[step])
        noise = self.noises[t:t + 1]
        pair = t % len(self.target)
        pred = self.guided_prediction(self.embeds, self.cond[pair:pair + 1], self.target[pair:pair + 1], t, noise)
        mse = torch.nn.functional.mse_loss(pred, noise)
        loss = o.mse_weight * mse
        if self.text_projection is not None and o.clip_weight:
            text = self.text_projection(self.embeds[0].mean(0, keepdim=True)).float()
            text = text / text.norm(dim=-1, keepdim=True)
            cos = torch.nn.functional.cosine_similarity(self.direction.to(text).view(1, -1), text, dim=1)
            loss = loss - o.clip_weight * cos.clamp(min=-1.0, max=o.clip_clamp).sum()
        return loss, mse

    def step(self) -> StepRecord:
        """Run the next training step; its record."""
        step = len(self.records)
        if step >= len(self.timesteps):
            raise InvertError(f"all {len(self.timesteps)} steps are done")
        self.optimizer.zero_grad(set_to_none=True)
        loss, mse = self.loss(step)
        (loss * self.loss_scale).backward()
        grad = self.embeds.grad
        grad_max = float(grad[self.learned_mask].abs().max()) / self.loss_scale
        clipped, clipped_all = clip_gradient(grad, self.clip_value, self.learned_mask)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.embeds[~self.learned_mask] = self.orig[~self.learned_mask]
        record = StepRecord(step, int(self.timesteps[step]), loss.item(), mse.item(), clipped, clipped_all, grad_max)
        self.records.append(record)
        if self._best_mse >= record.mse:
            self._best_mse, self.best, self.best_step = record.mse, self.embeds[:1].detach().clone(), step
        return record

    def run(self, steps: int | None = None) -> OfficialResult:
        """Run ``steps`` more steps (all that are left by default) and return the result so far."""
        for _ in range(len(self.timesteps) - len(self.records) if steps is None else steps):
            self.step()
        return self.result()

    def result(self) -> OfficialResult:
        return OfficialResult(list(self.records), self.embeds[:1].detach().clone(), self.best, self.best_step,
                              self.eos)
