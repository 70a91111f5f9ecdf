"""The frozen InstructPix2Pix model: loading (hub id, local folder, toy model, or random weights from the
shipped configs), device and dtype, and the encodings every method needs. Nothing method-specific lives here."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..defaults import DEFAULT_MODEL
from ..errors import ModelLoadError
from .model_info import local_folder, looks_like_path, resolve_model_path, where

CONFIGS = Path(__file__).parent / "configs"
IP2P_CONFIGS = CONFIGS / "instruct-pix2pix"
log = logging.getLogger("invert")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu. A device that is no device, or one this machine does not have, is
    a one-line error (not torch's traceback at the first tensor moved there)."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"--device {device}: not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ModelLoadError(f"--device {device}: CUDA is not available on this machine ({why}); use --device cpu "
                             "or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if dev.type == "mps" and not _mps_available():
        raise ModelLoadError(f"--device {device}: Apple's MPS is not available on this machine; use --device cpu")
    return dev


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on cuda and mps, fp32 on the cpu, whatever bf16 units the cpu has."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # bf16 on the cpu was measured (benchmarks.precision, README "What --dtype auto picks on the CPU") only
        # on a cpu without bf16 units, where torch emulates it: several times slower than fp32. It becomes auto's
        # pick only where it has been measured at least as fast and as good, which no cpu here has shown yet.
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}' (use auto, fp32, fp16 or bf16)")
    return _DTYPES[dtype]


def _load_pipeline(model: str, dtype: torch.dtype):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    source = resolve_model_path(model)
    is_folder = Path(source).is_dir()
    if not is_folder and looks_like_path(source):
        raise ModelLoadError(f"{source}: no such model folder")
    try:
        return StableDiffusionInstructPix2PixPipeline.from_pretrained(
            source, dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    except Exception as exc:  # hub and file errors come in many types; all end in one line for the user
        if is_folder:
            raise ModelLoadError(f"{source}: not a diffusers InstructPix2Pix folder ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        raise ModelLoadError(
            f"cannot load '{source}': it is no local folder, not in the Hugging Face cache, and the hub cannot be "
            f"reached. Download it where there is network (hf download {source} --local-dir ip2p) and pass --model "
            "ip2p") from None


def build_from_configs(folder: str | Path = IP2P_CONFIGS, seed: int = 0, dtype: torch.dtype = torch.float32):
    """An InstructPix2Pix pipeline with random weights built from diffusers configs (no weights, no network).

    The tokenizer is the real CLIP BPE. Used to time and test the full-size architecture offline."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import clip_tokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    scheduler = EulerAncestralDiscreteScheduler.from_config(
        EulerAncestralDiscreteScheduler.load_config(folder / "scheduler"))
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe


def fingerprint(*modules: torch.nn.Module) -> str:
    """A short hash of the weights an instruction depends on, independent of device and of fp16/fp32 loading.

    Hashes every parameter's name and shape and a strided sample of its values rounded to fp16: cheap on an
    860M-parameter UNet, yet any retrained or different checkpoint changes it. Weights already rounded to bf16
    (8 significant bits, fp16 keeps 11) hash differently, so :func:`load_editor` hashes a bf16 model before
    its cast."""
    h = hashlib.sha256()
    for module in modules:
        for name, param in module.named_parameters():
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 64)][:64]
            h.update(f"{name}{tuple(param.shape)}".encode())
            h.update(sample.to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class TextEncoding:
    embeds: torch.Tensor  # (batch, 77, d) text-encoder output
    eos: list[int]  # index of the EOS token per row: the number of tokens before it, BOS included


class Editor:
    """A frozen InstructPix2Pix pipeline plus the encodings that fitting and applying share."""

    def __init__(self, pipe, model_id: str, device: torch.device, dtype: torch.dtype, fingerprint: str | None = None):
        """``fingerprint``: the model's, when it was taken before a cast that changes it (see :func:`fingerprint`);
        by default computed from the weights when first asked for."""
        self.pipe = pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False).eval()
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self._fingerprint = fingerprint
        self._uncond: torch.Tensor | None = None

    unet = property(lambda self: self.pipe.unet)
    vae = property(lambda self: self.pipe.vae)
    text_encoder = property(lambda self: self.pipe.text_encoder)
    tokenizer = property(lambda self: self.pipe.tokenizer)
    scheduler = property(lambda self: self.pipe.scheduler)

    @property
    def resolution(self) -> int:
        """The image size the model was trained at (512 for IP2P): fitting's default."""
        return self.unet.config.sample_size * self.pipe.vae_scale_factor

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.unet, self.text_encoder)
        return self._fingerprint

    @property
    def uncond(self) -> torch.Tensor:
        """The empty prompt's encoding (1, positions, width): the conditioning of IP2P's unconditional rows."""
        if self._uncond is None:
            self._uncond = self.encode_text([""]).embeds
        return self._uncond

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    def set_low_memory(self, enabled: bool) -> None:
        """Trade speed for memory without changing results: the UNet recomputes its activations in the backward
        pass (gradient checkpointing, fitting only) and the VAE takes one image at a time (slicing)."""
        if enabled:
            self.unet.enable_gradient_checkpointing()
            self.vae.enable_slicing()
        else:
            self.unet.disable_gradient_checkpointing()
            self.vae.disable_slicing()

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

    def to_tensor(self, images: list[Image.Image]) -> torch.Tensor:
        return self.pipe.image_processor.preprocess(images).to(self.device, self.dtype)

    @torch.no_grad()
    def condition_latents(self, images: list[Image.Image]) -> torch.Tensor:
        """The IP2P image conditioning: the VAE latent mode, unscaled."""
        return self.vae.encode(self.to_tensor(images)).latent_dist.mode()

    @torch.no_grad()
    def target_latents(self, images: list[Image.Image]) -> torch.Tensor:
        """Latents of the images to denoise towards, scaled as the UNet sees them."""
        return self.condition_latents(images) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's pixels for ``latents``: (n, 3, h, w), about [-1, 1], not yet clamped (see :meth:`to_images`)."""
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample

    def to_images(self, pixels: torch.Tensor) -> list[Image.Image]:
        """Decoded pixels as images, as diffusers' pipeline makes them (clamped to [-1, 1])."""
        return self.pipe.image_processor.postprocess(pixels, output_type="pil")


def load_editor(model: str = DEFAULT_MODEL, device: str | None = "auto", dtype: str | torch.dtype | None = "auto",
                ) -> Editor:
    """Load InstructPix2Pix from a hub id, a local diffusers folder, ``toy`` (the shipped toy model) or
    ``random:FOLDER`` (random weights from diffusers configs; ``random`` alone is the full IP2P architecture)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    # A bf16 model is loaded in fp32, fingerprinted and then cast, so that an instruction fitted in bf16 records,
    # and one fitted in any dtype is checked against, the fingerprint of fp32 and fp16 loading.
    load = torch.float32 if dt == torch.bfloat16 else dt
    log.info("loading %s (%s) ...", model, where(model))
    if model.startswith("random"):
        folder = model.partition(":")[2] or IP2P_CONFIGS
        pipe = build_from_configs(folder, dtype=load)
    else:
        pipe = _load_pipeline(model, load)
    name = local_folder(model)
    if load == dt:
        return Editor(pipe, name, dev, dt)
    taken = fingerprint(pipe.unet, pipe.text_encoder)
    return Editor(pipe.to(dtype=dt), name, dev, dt, fingerprint=taken)

