"""FLUX.1 Kontext [dev] (Black Forest Labs 2025; diffusers' ``FluxKontextPipeline``): T5's output tokens are the
text, CLIP's pooled vector conditions every block through the timestep embedding, the input image is read as
reference tokens (the scaled VAE latents packed in 2x2 patches; position ids with first coordinate 1) after the
noisy target's, and guidance is distilled into the model: the guidance scale is an input of its one call, no
unconditional rows. The instruction's T5 tokens start at position 0 (T5 has no BOS) and end at its ``</s>``.

invert edits an image at its own size (rounded down to a multiple of 16), as the pipeline does with
``_auto_resize=False`` and ``max_area`` the image's area; the pipeline's default resizes the input to one of its
preferred resolutions around 1024x1024 and makes a 1024x1024 output. Its true CFG (a negative prompt with
``true_cfg_scale``) is not used."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from PIL import Image

from .base import Conditioning, Group, TextEncoding
from .flux import TEXT_ROWS, FluxEditor
from .flux_attention import DoubleStreamRoute, SingleStreamRoute
from .model_info import pipeline_settings

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, FluxKontextPipeline

CONFIGS = Path(__file__).parent / "configs"
KONTEXT_CONFIGS = CONFIGS / "flux1-kontext-dev"
MAX_SEQUENCE_LENGTH = 512  # FluxKontextPipeline's default


class FluxKontext(FluxEditor):
    name = "flux1-kontext"
    pipeline_classes = ("FluxKontextPipeline",)
    full_size_configs = KONTEXT_CONFIGS
    instruction_start = 0
    learns_pooled = True  # CLIP's pooled vector modulates every block: VISII learns it with the T5 tokens
    default_guidance = 2.5  # the guidance Kontext's model card edits with
    # the model card's guidance; VISII's CLIP direction term reads CLIP's tokens, and the learned ones are T5's
    fit_defaults = {"guidance": default_guidance, "visii": {"visii_clip_weight": 0.0}}

    def __init__(self, pipe: DiffusionPipeline, model_id: str, device: torch.device, dtype: torch.dtype,
                 fingerprint: str | None = None):
        super().__init__(pipe, model_id, device, dtype, fingerprint)
        self.max_sequence_length = int(pipeline_settings(model_id).get("max_sequence_length", MAX_SEQUENCE_LENGTH))

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def pipeline_type(cls) -> type[FluxKontextPipeline]:
        from diffusers import FluxKontextPipeline

        return FluxKontextPipeline

    @classmethod
    def from_configs(cls, folder: str | Path = KONTEXT_CONFIGS, dtype: torch.dtype = torch.float32, seed: int = 0
                     ) -> FluxKontextPipeline:
        """A Kontext pipeline with random weights from the diffusers configs in ``folder``; CLIP's real BPE, and
        the folder's T5 tokenizer or a small one trained in-process (a random T5 reads any ids below its
        vocabulary)."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        from .tokenizer import clip_tokenizer
        from .trained_tokenizers import t5_tokenizer

        folder = Path(folder)
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(folder / "transformer"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        text_encoder_2 = T5EncoderModel(T5Config.from_pretrained(folder / "text_encoder_2"))
        tokenizer_2 = AutoTokenizer.from_pretrained(folder / "tokenizer_2") if (folder / "tokenizer_2").is_dir() \
            else t5_tokenizer()
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            FlowMatchEulerDiscreteScheduler.load_config(folder / "scheduler"))
        pipe = cls.pipeline_type()(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(),
                                   text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
        return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe

    # -- modules ------------------------------------------------------------------------------------------------
    def text_modules(self) -> list[torch.nn.Module]:
        return [self.pipe.text_encoder, self.pipe.text_encoder_2]

    @classmethod
    def fingerprinted(cls, pipe: DiffusionPipeline) -> list[torch.nn.Module]:
        return [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]

    # -- text ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextEncoding:
        """T5's tokens and CLIP's pooled vector exactly as the pipeline computes them (its own ``encode_prompt``),
        and where each instruction's ``</s>`` sits."""
        with self.text_encoders_here():
            embeds, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                        max_sequence_length=self.max_sequence_length)
        tokenizer = self.pipe.tokenizer_2
        ids = tokenizer(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True).input_ids
        eos = [row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else len(row) for row in ids]
        return TextEncoding(embeds.to(self.device, self.dtype), eos, pooled.to(self.device, self.dtype), start=0)

    @property
    def text_positions(self) -> int:
        return self.max_sequence_length

    @property
    def text_width(self) -> int:
        return self.pipe.text_encoder_2.config.d_model

    # -- images -------------------------------------------------------------------------------------------------
    def to_tensor(self, images: list[Image.Image]) -> torch.Tensor:
        """As the pipeline prepares its input image without auto-resizing: its size rounded down to a multiple of
        :attr:`size_multiple`."""
        processor, m = self.pipe.image_processor, self.size_multiple
        height, width = processor.get_default_height_width(images[0])
        height, width = height // m * m, width // m * m
        return processor.preprocess(processor.resize(images, height, width), height, width).to(self.device,
                                                                                               self.dtype)

    @torch.no_grad()
    def condition(self, images: list[Image.Image]) -> torch.Tensor:
        """The pipeline's image latents before packing: the VAE's latent mode, shifted and scaled."""
        return self.pipe._encode_vae_image(self.to_tensor(images), generator=None)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> list[Image.Image]:
        config = self.vae.config
        images = self.vae.decode(x0 / config.scaling_factor + config.shift_factor, return_dict=False)[0]
        return self.to_images(images)

    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        return latents.shape[-2] // 2, latents.shape[-1] // 2

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pipe._pack_latents(latents, *latents.shape)

    def unpack(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        pixels = 2 * self.pipe.vae_scale_factor
        return self.pipe._unpack_latents(tokens, grid[0] * pixels, grid[1] * pixels, self.pipe.vae_scale_factor)

    def image_ids(self, grid: tuple[int, int], reference: bool) -> torch.Tensor:
        """(first, row, column), first = 1 for the reference image's tokens, 0 for the target's, as the pipeline
        (in the text encoder's dtype, as it makes them)."""
        ids = self.pipe._prepare_latent_image_ids(1, *grid, self.device, self.dtype)
        if reference:
            ids[..., 0] = 1
        return ids

    # -- the transformer ----------------------------------------------------------------------------------------
    def mu(self, tokens: int, steps: int) -> float:
        from diffusers.pipelines.flux.pipeline_flux_kontext import calculate_shift

        config = self.scheduler.config
        return calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                               config.get("base_shift", 0.5), config.get("max_shift", 1.15))

    def call_transformer(self, hidden: torch.Tensor, timestep: torch.Tensor, conditioning: Conditioning,
                         img_ids: torch.Tensor, guidance: float | None) -> torch.Tensor:
        """``guidance`` (default :attr:`default_guidance`) goes in as the distilled guidance embedding."""
        embedded = None
        if self.transformer.config.guidance_embeds:
            scale = self.default_guidance if guidance is None else guidance
            embedded = torch.full([1], scale, device=self.device, dtype=torch.float32).expand(hidden.shape[0])
        txt_ids = torch.zeros(conditioning.embeds.shape[1], 3).to(self.device, self.pipe.text_encoder.dtype)
        return self.transformer(hidden_states=hidden, timestep=timestep, guidance=embedded,
                                pooled_projections=conditioning.pooled, encoder_hidden_states=conditioning.embeds,
                                txt_ids=txt_ids, img_ids=img_ids, joint_attention_kwargs=conditioning.attention,
                                return_dict=False)[0]

    def guidance_groups(self) -> list[Group]:
        return [TEXT_ROWS]

    def combine(self, predictions: list[torch.Tensor], guidance: float, image_guidance: float) -> torch.Tensor:
        return predictions[0]  # the guidance is the model's input, not a combination of rows

    # -- InstructBrush's layers ---------------------------------------------------------------------------------
    def route(self, name: str, processor: Callable[..., Any]) -> DoubleStreamRoute | SingleStreamRoute:
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        if self.transformer.get_submodule(name.removesuffix(".processor")).added_kv_proj_dim is not None:
            return DoubleStreamRoute(name, processor, _get_qkv_projections)
        return SingleStreamRoute(name, processor, _get_qkv_projections)


__all__ = ["FluxKontext", "KONTEXT_CONFIGS"]
