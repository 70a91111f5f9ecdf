"""InstructPix2Pix on SDXL (``StableDiffusionXLInstructPix2PixPipeline``: diffusers/sdxl-instructpix2pix-768, CosXL
Edit): IP2P's 8-channel UNet, input-image latents concatenated on channels and three-row guidance, with SDXL's
conditioning. Two CLIP text encoders, whose penultimate hidden states are concatenated (768 + 1280 = 2048 wide);
the second one's pooled projection and the size ids (original size, crop corner, target size) are added
conditions of every UNet call; the rows without the instruction get zeros, token sequence and pooled vector alike
(the pipeline's ``force_zeros_for_empty_prompt``). The input image's latents enter unscaled, scaled by the VAE's
factor for CosXL Edit (``is_cosxl_edit``).

CosXL Edit samples with an EDM scheduler (``EDMEulerScheduler``, v-prediction, sigma_data 1): with one, a fit
trains with EDM's preconditioning (:mod:`.edm`); with a DDPM-family scheduler (the 768 model's Euler, epsilon), as
IP2P does. ``model_index.json`` does not store ``is_cosxl_edit`` unless it is registered to the pipeline's config
before saving (see docs); invert reads it from there."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from PIL import Image

from ..errors import InvertError
from .base import Conditioning, TextEncoding, TrainingInputs
from .edm import EdmTraining, is_edm
from .ip2p import CONFIGS, InstructPix2Pix

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, StableDiffusionXLInstructPix2PixPipeline

    from .rows import Rows

SDXL_IP2P_CONFIGS = CONFIGS / "sdxl-instructpix2pix"


class SDXLInstructPix2Pix(InstructPix2Pix):
    name = "sdxl-ip2p"
    pipeline_classes = ("StableDiffusionXLInstructPix2PixPipeline",)
    full_size_configs = SDXL_IP2P_CONFIGS
    learns_pooled = True  # the pooled vector conditions every block through the time embedding

    def __init__(self, pipe: DiffusionPipeline, model_id: str, device: torch.device, dtype: torch.dtype,
                 fingerprint: str | None = None):
        super().__init__(pipe, model_id, device, dtype, fingerprint)
        self._edm: EdmTraining | None = None

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def pipeline_type(cls) -> type[StableDiffusionXLInstructPix2PixPipeline]:
        from diffusers import StableDiffusionXLInstructPix2PixPipeline

        return StableDiffusionXLInstructPix2PixPipeline

    @classmethod
    def from_configs(cls, folder: str | Path = SDXL_IP2P_CONFIGS, dtype: torch.dtype = torch.float32,
                     seed: int = 0) -> StableDiffusionXLInstructPix2PixPipeline:
        """The pipeline with random weights built from the diffusers configs in ``folder``: its scheduler class,
        ``force_zeros_for_empty_prompt`` and ``is_cosxl_edit`` from its model_index.json; both tokenizers the
        real CLIP BPE (the second pads with "!", as SDXL's)."""
        import diffusers
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        from .tokenizer import clip_tokenizer

        folder = Path(folder)
        index = json.loads((folder / "model_index.json").read_text())
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
        scheduler_class = getattr(diffusers, index["scheduler"][1])
        with torch.device("cpu"):  # its tables live on the CPU, also where the models are built on the meta device
            scheduler = scheduler_class.from_config(scheduler_class.load_config(folder / "scheduler"))
        tokenizer_2 = clip_tokenizer()
        tokenizer_2.pad_token = "!"
        pipe = cls.pipeline_type()(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=clip_tokenizer(),
            tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, add_watermarker=False,
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
            is_cosxl_edit=index.get("is_cosxl_edit", False))
        return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe

    # -- modules ------------------------------------------------------------------------------------------------
    text_encoder_2 = property(lambda self: self.pipe.text_encoder_2)
    tokenizer_2 = property(lambda self: self.pipe.tokenizer_2)

    def text_modules(self) -> list[torch.nn.Module]:
        return [self.pipe.text_encoder, self.pipe.text_encoder_2]

    @classmethod
    def fingerprinted(cls, pipe: DiffusionPipeline) -> list[torch.nn.Module]:
        return [pipe.unet, pipe.text_encoder, pipe.text_encoder_2]

    def set_low_memory(self, enabled: bool) -> None:
        """As IP2P's, and on a GPU the text encoders (1.5 GiB in bf16) wait on the CPU between encodings, which
        still run on the device: the same encodings, without the encoders' weights at a fit step's peak."""
        super().set_low_memory(enabled)
        self.keep_text_on_host(enabled)

    # -- text ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextEncoding:
        """As the pipeline's ``encode_prompt``: each encoder's penultimate hidden states, concatenated, and the
        second encoder's projected pooled output; EOS where the first tokenizer puts it (both tokenize alike, the
        second pads with "!")."""
        with self.text_encoders_here():
            return self._encode(prompts)

    def _encode(self, prompts: list[str]) -> TextEncoding:
        hidden, pooled, first_ids = [], None, None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            out = encoder(ids.to(self.device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # the encoder with a projection: its text_embeds
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
            first_ids = ids if first_ids is None else first_ids
        eos = [int((row == self.tokenizer.eos_token_id).nonzero()[0]) for row in first_ids]
        return TextEncoding(torch.cat(hidden, dim=-1).to(self.dtype), eos, pooled.to(self.dtype))

    @property
    def uncond(self) -> TextEncoding:
        """The pipeline's negative conditioning without a negative prompt: zeros where it forces them (SDXL's
        ``force_zeros_for_empty_prompt``), the empty prompt's encoding otherwise."""
        if self._uncond is None:
            empty = self.encode_text([""])
            if self.pipe.config.force_zeros_for_empty_prompt:
                empty = TextEncoding(torch.zeros_like(empty.embeds), empty.eos, torch.zeros_like(empty.pooled))
            self._uncond = empty
        return self._uncond

    @property
    def text_width(self) -> int:
        return sum(self.text_segments)

    @property
    def text_segments(self) -> list[int]:
        return [self.text_encoder.config.hidden_size, self.text_encoder_2.config.hidden_size]

    def added_conditions(self, conditioning: Conditioning, latents: torch.Tensor) -> dict:
        """SDXL's added conditions: the pooled vector of every row and the size ids of the image being denoised
        (original size = target size = its size, crop corner 0, 0), in the token sequence's dtype."""
        if conditioning.pooled is None:
            raise InvertError("an SDXL UNet call needs a pooled text vector for every row")
        height, width = (side * self.vae_scale_factor for side in latents.shape[-2:])
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=conditioning.embeds.dtype,
                                device=latents.device)
        return {"added_cond_kwargs": {"text_embeds": conditioning.pooled,
                                      "time_ids": time_ids.repeat(latents.shape[0], 1)}}

    # -- images -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _vae_precision(self):
        """The pipeline's VAE precision: an fp16 VAE whose config says ``force_upcast`` (SDXL's VAE overflows in
        fp16) runs in fp32 for the block; yields the dtype it runs in."""
        upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if upcast:
            self.vae.to(torch.float32)
        try:
            yield self.vae.dtype
        finally:
            if upcast:
                self.vae.to(torch.float16)

    @torch.no_grad()
    def _latents(self, images: list[Image.Image]) -> torch.Tensor:
        """The VAE latent mode of the images, unscaled, in the VAE's dtype (as the pipeline's image latents)."""
        with self._vae_precision() as dtype:
            latents = self.vae.encode(self.to_tensor(images).to(dtype)).latent_dist.mode()
        return latents.to(self.vae.dtype)

    def _scaled(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents as the UNet denoises them (the inverse of :meth:`_unscaled`)."""
        mean, std = self._latent_statistics(latents)
        if mean is None:
            return latents * self.vae.config.scaling_factor
        return (latents - mean) * self.vae.config.scaling_factor / std

    def _unscaled(self, latents: torch.Tensor) -> torch.Tensor:
        """Denoised latents as the VAE decodes them, as the pipeline unscales them."""
        mean, std = self._latent_statistics(latents)
        if mean is None:
            return latents / self.vae.config.scaling_factor
        return latents * std / self.vae.config.scaling_factor + mean

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        config = self.vae.config
        if getattr(config, "latents_mean", None) is None or getattr(config, "latents_std", None) is None:
            return None, None
        return tuple(torch.tensor(v).view(1, -1, 1, 1).to(like.device, like.dtype)
                     for v in (config.latents_mean, config.latents_std))

    def condition(self, images: list[Image.Image]) -> torch.Tensor:
        """The pipeline's image latents: the latent mode, unscaled; times the scaling factor for CosXL Edit."""
        latents = self._latents(images)
        return latents * self.vae.config.scaling_factor if self.pipe.is_cosxl_edit else latents

    def target(self, images: list[Image.Image]) -> torch.Tensor:
        return self._scaled(self._latents(images))

    def reconditioned(self, x0: torch.Tensor) -> torch.Tensor:
        latents = self._unscaled(x0)
        return latents * self.vae.config.scaling_factor if self.pipe.is_cosxl_edit else latents

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> list[Image.Image]:
        """As the pipeline decodes: in the VAE's precision, then its watermark where it has one."""
        with self._vae_precision() as dtype:
            images = self.vae.decode(self._unscaled(x0.to(dtype))).sample
        if self.pipe.watermark is not None:
            images = self.pipe.watermark.apply_watermark(images)
        return self.to_images(images)

    # -- training -----------------------------------------------------------------------------------------------
    @property
    def edm(self) -> EdmTraining | None:
        """EDM training with the model's EDM scheduler (CosXL Edit); None with a DDPM-family one."""
        if self._edm is None and is_edm(self.scheduler):
            self._edm = EdmTraining(self.scheduler, self.device)
        return self._edm

    def training_inputs(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> TrainingInputs:
        edm = self.edm
        return edm.training_inputs(x0, noise, t) if edm else super().training_inputs(x0, noise, t)

    def clean_estimate(self, prediction: torch.Tensor, inputs: TrainingInputs, t: torch.Tensor) -> torch.Tensor:
        edm = self.edm
        return edm.clean_estimate(prediction, inputs, t) if edm else super().clean_estimate(prediction, inputs, t)

    def sampling_position(self, timestep: torch.Tensor) -> torch.Tensor:
        edm = self.edm
        return edm.position(timestep) if edm else super().sampling_position(timestep)

    def unet_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        edm = self.edm
        return edm.unet_timesteps(timesteps) if edm else timesteps

    # -- sampling -----------------------------------------------------------------------------------------------
    def sample(self, method: Any, images: list[Image.Image], *, steps: int, guidance: float, image_guidance: float,
               seed: int, noise: str, scheduler: str | None, on_step: Callable[[int], None] | None = None,
               first_step: dict | None = None) -> list[Image.Image]:
        if scheduler is not None and self.edm:
            raise InvertError(f"--scheduler {scheduler}: this model samples with its own EDM scheduler "
                              f"({type(self.scheduler).__name__}); leave --scheduler out")
        return super().sample(method, images, steps=steps, guidance=guidance, image_guidance=image_guidance,
                              seed=seed, noise=noise, scheduler=scheduler, on_step=on_step, first_step=first_step)

    @contextlib.contextmanager
    def call_with(self, pipe: DiffusionPipeline, arguments: Callable[[Rows], dict]) -> Iterator[None]:
        """As IP2P's; the SDXL pipeline decides its guidance inside its call (no ``do_classifier_free_guidance``
        property): its ``encode_prompt`` call, which is told, is watched for the block."""
        guided = [True]
        encode = pipe.encode_prompt
        own = pipe.__dict__.get("encode_prompt")  # a user's own replacement, put back afterwards

        def watched(*args, **kwargs):
            guided[0] = bool(kwargs.get("do_classifier_free_guidance", True))
            return encode(*args, **kwargs)

        pipe.encode_prompt = watched
        try:
            with self.unet_hook(arguments, lambda: guided[0]):
                yield
        finally:
            if own is None:
                del pipe.encode_prompt
            else:
                pipe.encode_prompt = own


__all__ = ["SDXLInstructPix2Pix", "SDXL_IP2P_CONFIGS"]
