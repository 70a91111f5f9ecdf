"""FLUX.2 [klein]'s sampling loop by hand: batched over input images, and at any size the VAE divides.

``Flux2KleinPipeline`` takes one reference image for the whole batch and refuses images under 64 px (a check on
the PIL size); the toy DiT editor works at 32 px and the oracle edits many scenes at once. This loop does what the
pipeline's ``__call__`` does, step for step and with the pipeline's own helpers (prompt encoding, patchify and
pack, position ids, the empirically shifted sigmas, Euler steps, real CFG against the empty prompt), so with one
image of 64 px or more it gives the pipeline's output bit for bit (tests/test_toy_dit.py checks it).

The toy's text settings (its padded prompt length and the text encoder's layers) differ from the pipeline's
defaults for the real model (512 and 9, 18, 27); the model folder's ``invert.json`` records them under
``"pipeline"`` and :func:`call_settings` reads them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PIPELINE_DEFAULTS = {"max_sequence_length": 512, "text_encoder_out_layers": (9, 18, 27)}  # Flux2KleinPipeline's


@dataclass(frozen=True)
class TextSettings:
    max_sequence_length: int = PIPELINE_DEFAULTS["max_sequence_length"]
    text_encoder_out_layers: tuple[int, ...] = PIPELINE_DEFAULTS["text_encoder_out_layers"]


def call_settings(model_dir: str | Path) -> TextSettings:
    """The pipeline arguments a model folder asks for (its ``invert.json``'s ``"pipeline"``), else the defaults."""
    path = Path(model_dir) / "invert.json"
    recorded = json.loads(path.read_text()).get("pipeline", {}) if path.is_file() else {}
    return TextSettings(int(recorded.get("max_sequence_length", PIPELINE_DEFAULTS["max_sequence_length"])),
                        tuple(recorded.get("text_encoder_out_layers", PIPELINE_DEFAULTS["text_encoder_out_layers"])))


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], text: TextSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The stacked hidden states (B, L, layers x hidden) and text ids (B, L, 4), as the pipeline computes them."""
    embeds = pipe._get_qwen3_prompt_embeds(pipe.text_encoder, pipe.tokenizer, prompts,
                                           max_sequence_length=text.max_sequence_length,
                                           hidden_states_layers=text.text_encoder_out_layers)
    return embeds, pipe._prepare_text_ids(embeds)


@torch.no_grad()
def encode_references(pipe, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference tokens (B, h*w, 4 x latent channels) of images in [-1, 1] and their ids (time coordinate 10):
    the VAE's latent mode, patchified 2x2, normalized with the VAE's batch-norm statistics, packed."""
    latents = pipe._encode_vae_image(images, generator=None)  # argmax: draws nothing
    ids = pipe._prepare_image_ids([latents[:1]]).expand(len(images), -1, -1)
    return pipe._pack_latents(latents), ids


def preprocess(pipe, images) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) in [-1, 1], cropped to a multiple of the latent patch as the pipeline does."""
    multiple = pipe.vae_scale_factor * 2
    width, height = images[0].size
    return pipe.image_processor.preprocess(images, height=height // multiple * multiple,
                                           width=width // multiple * multiple, resize_mode="crop")


@torch.no_grad()
def decode(pipe, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed, normalized latent tokens -> images (B, 3, H, W) in [0, 1]."""
    h, w = height // (pipe.vae_scale_factor * 2), width // (pipe.vae_scale_factor * 2)
    ids = pipe._prepare_latent_ids(torch.empty(len(tokens), 1, h, w))
    latents = pipe._unpack_latents_with_ids(tokens, ids, h, w)
    mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1).to(latents.dtype)
    std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(latents.dtype)
    images = pipe.vae.decode(pipe._unpatchify_latents(latents * std + mean), return_dict=False)[0]
    return pipe.image_processor.postprocess(images, output_type="pt")


def time_shift(sigmas, mu: float):
    """The scheduler's exponential shift: sigma -> e^mu / (e^mu + 1/sigma - 1); numpy arrays or tensors."""
    return np.exp(mu) / (np.exp(mu) + (1 / sigmas - 1))


@torch.no_grad()
def sample(pipe, images, prompts: list[str], guidance_scale: float, steps: int, generator: torch.Generator,
           text: TextSettings) -> torch.Tensor:
    """Edit each PIL image in ``images`` by the prompt at the same index; returns (B, 3, H, W) in [0, 1].

    As the pipeline: the noise is drawn first, the references are encoded without drawing, and with
    ``guidance_scale > 1`` (and a model that is not distilled) each step runs the transformer on the prompt and on
    the empty prompt and mixes the two."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu, retrieve_timesteps

    embeds, text_ids = encode_prompts(pipe, prompts, text)
    cfg = guidance_scale > 1 and not pipe.config.is_distilled
    if cfg:
        negative, negative_ids = encode_prompts(pipe, [""] * len(prompts), text)
    pixels = preprocess(pipe, images)
    height, width = pixels.shape[-2:]
    x, x_ids = pipe.prepare_latents(len(prompts), pipe.transformer.config.in_channels // 4, height, width,
                                    embeds.dtype, pipe.device, generator)
    references, reference_ids = encode_references(pipe, pixels.to(pipe.vae.dtype))
    ids = torch.cat([x_ids, reference_ids], dim=1)
    sigmas = np.linspace(1.0, 1 / steps, steps)
    timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, pipe.device, sigmas=sigmas,
                                      mu=compute_empirical_mu(image_seq_len=x.shape[1], num_steps=steps))
    pipe.scheduler.set_begin_index(0)
    n = x.shape[1]
    for t in timesteps:
        inputs = torch.cat([x, references], dim=1).to(pipe.transformer.dtype)
        timestep = t.expand(len(x)).to(x.dtype) / 1000
        v = pipe.transformer(hidden_states=inputs, timestep=timestep, guidance=None, encoder_hidden_states=embeds,
                             txt_ids=text_ids, img_ids=ids, return_dict=False)[0][:, :n]
        if cfg:
            v_empty = pipe.transformer(hidden_states=inputs, timestep=timestep, guidance=None,
                                       encoder_hidden_states=negative, txt_ids=negative_ids, img_ids=ids,
                                       return_dict=False)[0][:, :n]
            v = v_empty + guidance_scale * (v - v_empty)
        x = pipe.scheduler.step(v, t, x, return_dict=False)[0]
    return decode(pipe, x, height, width)
