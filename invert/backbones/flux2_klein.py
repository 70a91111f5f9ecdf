"""FLUX.2 [klein] (Black Forest Labs 2026; diffusers' ``Flux2KleinPipeline``): a Qwen3 language model's hidden
states at three of its layers, stacked per token, are the text; the input image is read as reference tokens (the
VAE latents patchified 2x2, normalized with the VAE's batch-norm statistics, packed; position ids with time
coordinate 10) after the noisy target's tokens; real CFG against the empty prompt, unless the model is
step-distilled (``is_distilled``), which runs the prompt's rows alone. The instruction's tokens start after the
chat template's prefix (``<|im_start|>user\\n``).

A model folder's ``invert.json`` may say, under ``"pipeline"``, the padded prompt length and the text encoder's
layers where they differ from the pipeline's defaults for the real model (512 and 9, 18, 27): the toy DiT editor's
do. The pipeline refuses input images under 64 px; invert's sampler is the loop written out and edits any size
the VAE and the 2x2 patch divide."""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from PIL import Image

from .base import Conditioning, Group, TextEncoding
from .flux import EMPTY_PROMPT_ROWS, TEXT_ROWS, FluxEditor
from .flux_attention import DoubleStreamRoute, ParallelSingleStreamRoute
from .model_info import pipeline_settings

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, Flux2KleinPipeline

CONFIGS = Path(__file__).parent / "configs"
KLEIN_CONFIGS = CONFIGS / "flux2-klein-base-4b"
PIPELINE_DEFAULTS = {"max_sequence_length": 512, "text_encoder_out_layers": (9, 18, 27)}  # Flux2KleinPipeline's
MAX_AREA = 1024 * 1024  # the pipeline resizes larger input images to this area
_CONTENT = "\x00"  # stands for the instruction while the chat template's prefix is measured


class Flux2Klein(FluxEditor):
    name = "flux2-klein"
    pipeline_classes = ("Flux2KleinPipeline",)
    full_size_configs = KLEIN_CONFIGS
    # the pipeline's guidance; VISII's CLIP direction term reads a CLIP text encoder's tokens, which klein has not
    fit_defaults = {"guidance": 4.0, "visii": {"visii_clip_weight": 0.0}}

    def __init__(self, pipe: DiffusionPipeline, model_id: str, device: torch.device, dtype: torch.dtype,
                 fingerprint: str | None = None):
        super().__init__(pipe, model_id, device, dtype, fingerprint)
        settings = {**PIPELINE_DEFAULTS, **pipeline_settings(model_id)}
        self.max_sequence_length = int(settings["max_sequence_length"])
        self.text_layers = tuple(int(layer) for layer in settings["text_encoder_out_layers"])

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def pipeline_type(cls) -> type[Flux2KleinPipeline]:
        from diffusers import Flux2KleinPipeline

        return Flux2KleinPipeline

    @classmethod
    def from_configs(cls, folder: str | Path = KLEIN_CONFIGS, dtype: torch.dtype = torch.float32, seed: int = 0
                     ) -> Flux2KleinPipeline:
        """A klein pipeline with random weights from the diffusers configs in ``folder``; its tokenizer the
        folder's, or a small one trained in-process (a random text encoder reads any ids below its vocabulary)."""
        from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
        from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

        from .trained_tokenizers import qwen_tokenizer

        folder = Path(folder)
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel.from_config(Flux2Transformer2DModel.load_config(folder / "transformer"))
        vae = AutoencoderKLFlux2.from_config(AutoencoderKLFlux2.load_config(folder / "vae"))
        text_encoder = Qwen3ForCausalLM(Qwen3Config.from_pretrained(folder / "text_encoder"))
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer") if (folder / "tokenizer").is_dir() \
            else qwen_tokenizer()
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            FlowMatchEulerDiscreteScheduler.load_config(folder / "scheduler"))
        distilled = bool(json.loads((folder / "model_index.json").read_text()).get("is_distilled", False))
        pipe = cls.pipeline_type()(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   transformer=transformer, is_distilled=distilled)
        return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe

    # -- modules ------------------------------------------------------------------------------------------------
    text_encoder = property(lambda self: self.pipe.text_encoder)
    tokenizer = property(lambda self: self.pipe.tokenizer)

    def text_modules(self) -> list[torch.nn.Module]:
        return [self.pipe.text_encoder]

    @classmethod
    def fingerprinted(cls, pipe: DiffusionPipeline) -> list[torch.nn.Module]:
        return [pipe.transformer, pipe.text_encoder]

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Also the single-stream blocks' attention, which is fused: its input projection (queries, keys, values
        and the feed-forward input in one Linear) and its output, named block by block (a double-stream block's
        ``attn.to_out`` is a ModuleList peft cannot adapt), as diffusers' klein LoRA script targets them."""
        single = [f"single_transformer_blocks.{i}.attn.to_out" for i in range(self.transformer.config.num_single_layers)]
        return (*super().lora_targets, "to_qkv_mlp_proj", *single)

    @property
    def is_distilled(self) -> bool:
        return bool(self.pipe.config.is_distilled)

    # -- text ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextEncoding:
        """The stacked hidden states exactly as the pipeline computes them (its own function), and where each
        instruction's tokens end (its ``<|im_end|>``)."""
        with self.text_encoders_here():
            embeds = self.pipe._get_qwen3_prompt_embeds(
                self.text_encoder, self.tokenizer, prompts, device=self.device,
                max_sequence_length=self.max_sequence_length, hidden_states_layers=self.text_layers)
        return TextEncoding(embeds.to(self.device, self.dtype), [self._span(p)[1] for p in prompts],
                            start=self.instruction_start)

    def _chat(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=False)

    @cached_property
    def _prefix(self) -> int:
        """Characters of the chat template before the instruction."""
        return len(self._chat(_CONTENT).split(_CONTENT)[0])

    def _span(self, prompt: str) -> tuple[int, int]:
        """The token positions [start, end) of ``prompt``'s own text in its padded, chat-templated tokens."""
        enc = self.tokenizer(self._chat(prompt), padding="max_length", truncation=True,
                             max_length=self.max_sequence_length, return_offsets_mapping=True)
        offsets = enc["offset_mapping"][:sum(enc["attention_mask"])]
        start = next((i for i, (_, end) in enumerate(offsets) if end > self._prefix), len(offsets))
        stop = self._prefix + len(prompt)
        return start, next((i for i, (begin, _) in enumerate(offsets) if i >= start and begin >= stop), len(offsets))

    @cached_property
    def instruction_start(self) -> int:
        return self._span("")[0]

    @property
    def text_positions(self) -> int:
        return self.max_sequence_length

    @property
    def text_width(self) -> int:
        return len(self.text_layers) * self.text_encoder.config.hidden_size

    # -- images -------------------------------------------------------------------------------------------------
    def to_tensor(self, images: list[Image.Image]) -> torch.Tensor:
        """As the pipeline prepares a reference image: resized to 1024x1024's area if larger, cropped to a
        multiple of :attr:`size_multiple`."""
        processor = self.pipe.image_processor
        images = [processor._resize_to_target_area(img, MAX_AREA) if img.width * img.height > MAX_AREA else img
                  for img in images]
        m = self.size_multiple
        width, height = images[0].size
        return processor.preprocess(images, height=height // m * m, width=width // m * m,
                                    resize_mode="crop").to(self.device, self.vae.dtype)

    @torch.no_grad()
    def condition(self, images: list[Image.Image]) -> torch.Tensor:
        """The pipeline's reference latents before packing: the VAE's latent mode, patchified, normalized."""
        return self.pipe._encode_vae_image(self.to_tensor(images), generator=None).to(self.dtype)

    def _batch_norm(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(like.device,
                                                                                                 like.dtype)
        return mean, std

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> list[Image.Image]:
        mean, std = self._batch_norm(x0)
        images = self.vae.decode(self.pipe._unpatchify_latents(x0 * std + mean), return_dict=False)[0]
        return self.to_images(images)

    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        return tuple(latents.shape[-2:])

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pipe._pack_latents(latents)

    def unpack(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The pipeline scatters tokens by their ids; on its own grid that is this reshape, value for value."""
        return tokens.permute(0, 2, 1).reshape(tokens.shape[0], -1, *grid)

    def image_ids(self, grid: tuple[int, int], reference: bool) -> torch.Tensor:
        """(t, row, column, 0), t = 10 for the (first) reference image, 0 for the target, as the pipeline."""
        shape = torch.empty(1, 1, *grid)
        ids = self.pipe._prepare_image_ids([shape]) if reference else self.pipe._prepare_latent_ids(shape)
        return ids[0].to(self.device)

    # -- the transformer ----------------------------------------------------------------------------------------
    def mu(self, tokens: int, steps: int) -> float:
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        return compute_empirical_mu(image_seq_len=tokens, num_steps=steps)

    def call_transformer(self, hidden: torch.Tensor, timestep: torch.Tensor, conditioning: Conditioning,
                         img_ids: torch.Tensor, guidance: float | None) -> torch.Tensor:
        embeds = conditioning.embeds
        txt_ids = self.pipe._prepare_text_ids(embeds[:1])[0].to(self.device)
        return self.transformer(hidden_states=hidden.to(self.transformer.dtype), timestep=timestep, guidance=None,
                                encoder_hidden_states=embeds, txt_ids=txt_ids, img_ids=img_ids,
                                joint_attention_kwargs=conditioning.attention, return_dict=False)[0]

    def guidance_groups(self) -> list[Group]:
        return [TEXT_ROWS] if self.is_distilled else [TEXT_ROWS, EMPTY_PROMPT_ROWS]

    def groups(self, guidance: float, image_guidance: float) -> list[Group]:
        """The prompt's rows, and the empty prompt's with real CFG (guidance > 1, a model not distilled), as the
        pipeline's ``do_classifier_free_guidance``."""
        return self.guidance_groups() if guidance > 1 else [TEXT_ROWS]

    def combine(self, predictions: list[torch.Tensor], guidance: float, image_guidance: float) -> torch.Tensor:
        if len(predictions) == 1:
            return predictions[0]
        text, empty = predictions
        return empty + guidance * (text - empty)

    # -- InstructBrush's layers ---------------------------------------------------------------------------------
    def route(self, name: str, processor: Callable[..., Any]) -> DoubleStreamRoute | ParallelSingleStreamRoute:
        from diffusers.models.transformers.transformer_flux2 import Flux2Attention, _get_qkv_projections

        if isinstance(self.transformer.get_submodule(name.removesuffix(".processor")), Flux2Attention):
            return DoubleStreamRoute(name, processor, _get_qkv_projections)
        return ParallelSingleStreamRoute(name, processor)


__all__ = ["Flux2Klein", "KLEIN_CONFIGS", "PIPELINE_DEFAULTS"]
