"""InstructPix2Pix (Brooks et al. 2023) on Stable Diffusion 1.5: the 8-channel UNet reads the input image's VAE
latents concatenated on channels, the instruction through CLIP's 77 output tokens in every cross-attention layer
(``attn2``), and samples with IP2P's three-row guidance [text+image, image only, neither]. Trained with DDPM noise
(epsilon or v prediction). Loading: a hub id, a local diffusers folder, the shipped toy model, or random weights
from the shipped configs."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvertError
from .ddpm import check_prediction_type, clean_estimate, objective
from .base import Conditioning, Editor, Group, KVRoute, TextEncoding, TrainingInputs, pre_hooked
from .rows import Rows

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

CONFIGS = Path(__file__).parent / "configs"
IP2P_CONFIGS = CONFIGS / "instruct-pix2pix"


def guided(text: torch.Tensor, image: torch.Tensor, uncond: torch.Tensor, guidance: float,
           image_guidance: float) -> torch.Tensor:
    """IP2P's guidance combination: uncond + s_T (text - image) + s_I (image - uncond)."""
    return uncond + guidance * (text - image) + image_guidance * (image - uncond)


def is_guided(guidance: float, image_guidance: float) -> bool:
    """Whether IP2P runs the three-row guidance batch (diffusers' ``do_classifier_free_guidance``)."""
    return guidance > 1.0 and image_guidance >= 1.0


THREE_ROWS = [Group(text=True, image=True), Group(text=False, image=True), Group(text=False, image=False)]


UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


class InstructPix2Pix(Editor):
    name = "ip2p"
    pipeline_classes = ("StableDiffusionInstructPix2PixPipeline",)
    full_size_configs = IP2P_CONFIGS
    lora_prefix = "unet."

    def __init__(self, pipe: DiffusionPipeline, model_id: str, device: torch.device, dtype: torch.dtype,
                 fingerprint: str | None = None):
        super().__init__(pipe, model_id, device, dtype, fingerprint)
        self._ddpm = None

    # -- loading ------------------------------------------------------------------------------------------------
    # (typed as any DiffusionPipeline: SDXLInstructPix2Pix, a subclass, loads another pipeline class)
    @classmethod
    def pipeline_type(cls) -> type[DiffusionPipeline]:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        return StableDiffusionInstructPix2PixPipeline

    @classmethod
    def from_pretrained(cls, source: str, dtype: torch.dtype) -> DiffusionPipeline:
        return cls.pipeline_type().from_pretrained(source, dtype=dtype, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)

    @classmethod
    def from_configs(cls, folder: str | Path = IP2P_CONFIGS, dtype: torch.dtype = torch.float32, seed: int = 0
                     ) -> DiffusionPipeline:
        """An InstructPix2Pix pipeline with random weights built from diffusers configs (no weights, no network).

        The tokenizer is the real CLIP BPE. Used to time and test the full-size architecture offline."""
        from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from .tokenizer import clip_tokenizer

        folder = Path(folder)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        scheduler = EulerAncestralDiscreteScheduler.from_config(
            EulerAncestralDiscreteScheduler.load_config(folder / "scheduler"))
        pipe = cls.pipeline_type()(
            vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe

    @classmethod
    def pipeline_guidance(cls, guidance: float, image_guidance: float) -> dict[str, float]:
        return {"guidance_scale": guidance, "image_guidance_scale": image_guidance}

    @classmethod
    def save_lora(cls, folder: str, layers: dict[str, torch.Tensor], config: dict, weight_name: str) -> None:
        cls.pipeline_type().save_lora_weights(folder, unet_lora_layers=layers, weight_name=weight_name,
                                              unet_lora_adapter_metadata=config)

    # -- modules ------------------------------------------------------------------------------------------------
    unet = property(lambda self: self.pipe.unet)
    text_encoder = property(lambda self: self.pipe.text_encoder)
    tokenizer = property(lambda self: self.pipe.tokenizer)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    def text_modules(self) -> list[torch.nn.Module]:
        return [self.pipe.text_encoder]

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Every attention projection of the UNet, self- and cross-attention (diffusers' SD and SDXL scripts)."""
        return UNET_ATTENTION

    @classmethod
    def fingerprinted(cls, pipe: DiffusionPipeline) -> list[torch.nn.Module]:
        return [pipe.unet, pipe.text_encoder]

    @property
    def resolution(self) -> int:
        """The image size the model was trained at (512 for IP2P)."""
        return self.unet.config.sample_size * self.pipe.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    # -- text ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextEncoding:
        """The text-encoder output exactly as the IP2P pipeline computes it, and where each EOS sits."""
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        ids = tok.input_ids
        mask = tok.attention_mask.to(self.device) if getattr(self.text_encoder.config, "use_attention_mask", False) \
            else None
        embeds = self.text_encoder(ids.to(self.device), attention_mask=mask)[0].to(self.dtype)
        eos = [int((row == self.tokenizer.eos_token_id).nonzero()[0]) for row in ids]
        return TextEncoding(embeds, eos)

    @property
    def text_positions(self) -> int:
        return self.tokenizer.model_max_length

    @property
    def text_width(self) -> int:
        return self.text_encoder.config.hidden_size

    # -- images -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def condition(self, images: list[Image.Image]) -> torch.Tensor:
        """The IP2P image conditioning: the VAE latent mode, unscaled."""
        return self.vae.encode(self.to_tensor(images)).latent_dist.mode()

    @torch.no_grad()
    def target(self, images: list[Image.Image]) -> torch.Tensor:
        """Latents of the images to denoise towards, scaled as the UNet sees them."""
        return self.condition(images) * self.vae.config.scaling_factor

    def reconditioned(self, x0: torch.Tensor) -> torch.Tensor:
        return x0 / self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> list[Image.Image]:
        images = self.vae.decode(x0 / self.vae.config.scaling_factor).sample
        return self.to_images(images)

    # -- training -----------------------------------------------------------------------------------------------
    @property
    def ddpm(self) -> tuple[torch.Tensor, str]:
        """The DDPM form of the model's scheduler: its alpha-bars and prediction type. Training noises with it
        directly (equal to Euler's noising followed by its input scaling): a per-step ``scale_model_input`` on an
        Euler scheduler would reuse its first step's sigma."""
        if self._ddpm is None:
            from diffusers import DDPMScheduler

            ddpm = DDPMScheduler.from_config(self.scheduler.config)
            check_prediction_type(ddpm.config.prediction_type)
            self._ddpm = ddpm.alphas_cumprod.to(self.device), ddpm.config.prediction_type
        return self._ddpm

    def training_inputs(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> TrainingInputs:
        alphas, prediction_type = self.ddpm
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return TrainingInputs(noisy, objective(prediction_type, noise, x0, a), a)

    def clean_estimate(self, prediction: torch.Tensor, inputs: TrainingInputs, t: torch.Tensor) -> torch.Tensor:
        return clean_estimate(self.ddpm[1], prediction, inputs.noisy, inputs.signal)

    # -- one denoiser call --------------------------------------------------------------------------------------
    def guidance_groups(self) -> list[Group]:
        return THREE_ROWS

    def groups(self, guidance: float, image_guidance: float) -> list[Group]:
        """[text+image, image only, neither] when guided, as diffusers' pipeline decides; the text rows alone
        otherwise."""
        return THREE_ROWS if is_guided(guidance, image_guidance) else THREE_ROWS[:1]

    def combine(self, predictions: list[torch.Tensor], guidance: float, image_guidance: float) -> torch.Tensor:
        return guided(*predictions, guidance, image_guidance) if len(predictions) == 3 else predictions[0]

    def added_conditions(self, conditioning: Conditioning, latents: torch.Tensor) -> dict:
        """Keyword arguments of a UNet call on ``latents`` (its input batch) besides the token sequence (SDXL's
        pooled vector and size ids)."""
        return {}

    def sampling_position(self, timestep: torch.Tensor) -> torch.Tensor:
        """A sampling timestep of the scheduler in :meth:`timestep_values`' units, which rows carry and the fit's
        noises are indexed by (a DDPM scheduler's timesteps are those units)."""
        return torch.as_tensor(timestep, device=self.device)

    def unet_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The UNet's timestep argument for rows at ``timesteps`` (:meth:`timestep_values`' units)."""
        return timesteps

    def predict(self, x: torch.Tensor, image: torch.Tensor, conditioning: Conditioning, rows: Rows,
                groups: list[Group], guidance: float | None = None) -> torch.Tensor:
        inputs = [torch.cat([x, image if g.image else torch.zeros_like(image)], 1) for g in groups]
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
        return self.unet(x.to(self.dtype), self.unet_timesteps(rows.timesteps),
                         encoder_hidden_states=conditioning.embeds, cross_attention_kwargs=conditioning.attention,
                         **self.added_conditions(conditioning, x)).sample

    # -- sampling -----------------------------------------------------------------------------------------------
    def sample(self, method: Any, images: list[Image.Image], *, steps: int, guidance: float, image_guidance: float,
               seed: int, noise: str, scheduler: str | None, on_step: Callable[[int], None] | None = None,
               first_step: dict | None = None) -> list[Image.Image]:
        from .ip2p_sampling import sample_ip2p

        return sample_ip2p(self, method, images, steps=steps, guidance=guidance, image_guidance=image_guidance,
                           seed=seed, noise=noise, scheduler=scheduler, on_step=on_step, first_step=first_step)

    # -- InstructBrush's layers ---------------------------------------------------------------------------------
    def cross_attention_layers(self) -> list[str]:
        """Names of the UNet's cross-attention processors (``...attn2.processor``), in the UNet's order."""
        return [name for name in self.unet.attn_processors if name.endswith("attn2.processor")]

    def instruction_kv_layers(self) -> dict[str, int]:
        """Each cross-attention layer's K/V width (its ``to_k`` output features)."""
        return {name: self.unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
                for name in self.cross_attention_layers()}

    def instruction_kv(self, encoding: TextEncoding, positions: int, timesteps: torch.Tensor
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's own to_k/to_v of the instruction's first ``positions`` tokens; a UNet's cross-attention
        reads the text without the timestep, so every timestep gets the same."""
        start = encoding.start
        tokens = encoding.embeds[0, start:start + positions].to(self.device, self.dtype)
        out = {}
        with torch.no_grad():
            for name in self.cross_attention_layers():
                attn = self.unet.get_submodule(name.removesuffix(".processor"))
                k, v = attn.to_k(tokens).float(), attn.to_v(tokens).float()
                out[name] = k.expand(len(timesteps), -1, -1), v.expand(len(timesteps), -1, -1)
        return out

    @contextlib.contextmanager
    def instruction_kv_routes(self) -> Iterator[None]:
        """Every cross-attention layer gets a :class:`_CrossAttentionRoute` (every self-attention layer passes the
        argument through), for the block; the UNet's own processors afterwards."""
        unet = self.unet
        for name in self.cross_attention_layers():
            attn = unet.get_submodule(name.removesuffix(".processor"))
            if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_cross or \
                    attn.residual_connection or attn.norm_k is not None:
                raise NotImplementedError(f"{name}: cross-attention with extra norms is not supported by "
                                          "InstructBrush")
        original = dict(unet.attn_processors)
        routes = {name: _CrossAttentionRoute(name, processor) if name.endswith("attn2.processor")
                  else _PassRouteArgument(processor) for name, processor in original.items()}
        unet.set_attn_processor(routes)  # set_attn_processor pops from the dict it is given: a fresh one each time
        try:
            yield
        finally:
            unet.set_attn_processor(dict(original))

    def call_with(self, pipe: DiffusionPipeline, arguments: Callable[[Rows], dict]
                  ) -> contextlib.AbstractContextManager:
        """For a user's own diffusers pipeline: a UNet pre-hook adds ``arguments(rows)`` (attention arguments for
        the pipeline's batch layout) to every UNet call of the block."""
        return self.unet_hook(arguments, lambda: pipe.do_classifier_free_guidance)

    def unet_hook(self, arguments: Callable[[Rows], dict], guided: Callable[[], bool]
                  ) -> contextlib.AbstractContextManager:
        """A UNet pre-hook for the block that adds ``arguments(rows)`` to every call, its rows laid out as IP2P's
        three groups when ``guided()`` says the pipeline's call is guided, as the text rows alone otherwise."""
        groups = THREE_ROWS

        def add(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            laid_out = groups if guided() else groups[:1]
            if sample.shape[0] % len(laid_out):
                raise InvertError(f"a guided IP2P batch of {sample.shape[0]} rows is not three groups")
            n = sample.shape[0] // len(laid_out)
            rows = Rows.of(laid_out, self.sampling_position(timestep).to(sample.device).reshape(-1).expand(n))
            kwargs["cross_attention_kwargs"] = {**(kwargs.get("cross_attention_kwargs") or {}), **arguments(rows)}
            return args, kwargs

        return pre_hooked(self.unet, add)


class _CrossAttentionRoute:
    """Installed on one cross-attention layer: diffusers' AttnProcessor2_0 for SD's plain cross-attention with the
    instruction's keys and values replaced by the :class:`KVRoute` the call names, or the layer's own processor for
    a call without one."""

    def __init__(self, name: str, original):
        self.name, self.original = name, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 kv_route: KVRoute | None = None, **kwargs):
        if kv_route is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key, value = kv_route.replace(self.name, attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states))
        head_dim = key.shape[-1] // attn.heads
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        q, k, v = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


class _PassRouteArgument:
    """Wraps a self-attention processor so that the route argument, which the UNet hands to every attention layer,
    is taken and dropped here instead of warned about on every call."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 kv_route: KVRoute | None = None, **kwargs):
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


__all__ = ["IP2P_CONFIGS", "InstructPix2Pix", "guided", "is_guided"]
