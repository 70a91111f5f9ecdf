"""The backbone protocol: what every editing architecture gives the methods, the fitting loop and the sampler.

One subclass of :class:`Editor` per architecture (as diffusers has one pipeline per architecture): it loads its
pipeline, encodes an instruction as that pipeline does (:class:`TextEncoding`), conditions on the input image (IP2P
concatenates its latents on channels; FLUX editors read it as reference tokens), says how a training target is
noised and what the denoiser predicts (DDPM's epsilon or v; flow matching's velocity), lays out one denoiser call
with the rows its guidance needs (:class:`Group`, :class:`~invert.backbones.rows.Rows`) and combines them, and
samples. Methods see only this protocol; nothing outside a backbone module asks which architecture runs.

The learned state's view of a backbone is small: a token sequence (``embeds``) with the instruction's tokens at
known positions, an optional pooled vector, the attention layers that read those tokens (InstructBrush's K/V), and
the denoiser module itself (a LoRA)."""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, ContextManager, Iterator

import torch
from PIL import Image

from ..errors import ModelLoadError, NonFiniteResult
from ..settings.limits import ModelLimits

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


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


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, half: torch.dtype = torch.float16
                  ) -> torch.dtype:
    """``auto`` is ``half`` (the model's half precision: fp16, or bf16 for a model that overflows in fp16) on cuda
    and mps, fp32 on the cpu, whatever bf16 units the cpu has."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # bf16 on the cpu was measured (benchmarks.precision, docs/performance.md) only on a cpu without bf16 units,
        # where torch emulates it: several times slower than fp32. It becomes auto's pick only where it has been
        # measured at least as fast and as good, which no cpu here has shown yet.
        return half if device.type in ("cuda", "mps") else torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}' (use auto, fp32, fp16 or bf16)")
    return _DTYPES[dtype]


def fingerprint(*modules: torch.nn.Module) -> str:
    """A short hash of the weights an instruction depends on, independent of device and of fp16/fp32 loading.

    Hashes every parameter's name and shape and a strided sample of its values rounded to fp16: cheap on an
    860M-parameter UNet, yet any retrained or different checkpoint changes it. Weights already rounded to bf16
    (8 significant bits, fp16 keeps 11) hash differently, so :func:`~invert.backbones.load_editor` hashes a bf16
    model before its cast."""
    h = hashlib.sha256()
    for module in modules:
        for name, param in module.named_parameters():
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 64)][:64]
            h.update(f"{name}{tuple(param.shape)}".encode())
            h.update(sample.to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def pre_hooked(module: torch.nn.Module, hook: Callable) -> Iterator[None]:
    """``hook(module, args, kwargs)`` runs before every call of ``module`` in the block (a user's own pipeline
    call, whose denoiser calls we cannot pass arguments to otherwise)."""
    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class TextEncoding:
    """An instruction as the denoiser reads it: ``embeds`` (batch, positions, width), the text encoder's output
    token sequence; the instruction's own tokens sit at positions ``start`` to ``eos[row]`` (exclusive: for CLIP,
    after BOS up to EOS); ``pooled`` (batch, width), the pooled vector of backbones that take one (SDXL, FLUX.1)."""

    embeds: torch.Tensor
    eos: list[int]
    pooled: torch.Tensor | None = None
    start: int = 1


@dataclass
class Conditioning:
    """What a denoiser call takes from a method: the token sequence of every row, the pooled vector of every row
    (backbones that take one), and attention arguments its processors read (InstructBrush's K/V)."""

    embeds: torch.Tensor
    attention: dict[str, Any] | None = None
    pooled: torch.Tensor | None = None


@dataclass(frozen=True)
class Group:
    """One group of rows of a guidance batch: whether its rows read the instruction and whether they see the input
    image. IP2P's three groups are (text, image), (image only), (neither); a plain CFG editor's (text, image),
    (image only); a guidance-distilled one has the first alone."""

    text: bool
    image: bool


@dataclass(frozen=True)
class TrainingInputs:
    """A training step's denoiser input and target for rows at timesteps ``t``: the noised target, what the
    denoiser should predict, and ``signal``, each row's share of signal in ``noisy`` (1 clean, 0 pure noise; the
    cycle term's weight)."""

    noisy: torch.Tensor
    objective: torch.Tensor
    signal: torch.Tensor


class KVRoute:
    """What InstructBrush installs through :meth:`Editor.instruction_kv_routes`: given the projected keys and
    values of the text tokens in one attention layer, return them with the instruction's positions replaced."""

    def replace(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


KV_ARGUMENT = "kv_route"  # the attention argument naming a call's KVRoute (a processor parameter of this name)


class Editor:
    """A frozen instruction-editing pipeline and everything the methods, the loop and the sampler need from it.

    Subclasses register themselves in :mod:`invert.backbones` by the diffusers pipeline classes they load."""

    name: ClassVar[str]  # recorded in an .inst as its backbone
    pipeline_classes: ClassVar[tuple[str, ...]]  # model_index.json's _class_name values this backbone loads
    lora_prefix: ClassVar[str]  # diffusers' LoRA files name the denoiser's adapter keys with this prefix
    instruction_start: ClassVar[int] = 1  # the first position of an instruction's tokens (CLIP: after BOS)
    learns_pooled: ClassVar[bool] = False  # VISII learns the pooled vector too (SDXL: it conditions every block)
    half_dtype: ClassVar[torch.dtype] = torch.float16  # what --dtype auto picks on a GPU
    # Fit options every model of this architecture recommends (as a folder's invert.json "fit" object: shared
    # values, and an object per method), below what a model folder recommends for itself.
    fit_defaults: ClassVar[dict[str, Any]] = {}
    # The shipped diffusers configs of the architecture's reference model at full size (no weights): random
    # weights of it load as ``--model random:<folder name>``; the GPU benchmark measures it.
    full_size_configs: ClassVar[Path]

    def __init__(self, pipe: DiffusionPipeline, model_id: str, device: torch.device, dtype: torch.dtype,
                 fingerprint: str | None = None):
        """``fingerprint``: the model's, when it was taken before a cast that changes it (see :func:`fingerprint`);
        by default computed from the weights when first asked for."""
        self.pipe = pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        for module in self.frozen_modules():
            module.requires_grad_(False).eval()
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self._fingerprint = fingerprint
        self._uncond: TextEncoding | None = None
        self._offload_text = False  # the text encoders wait on the CPU between encodings (see keep_text_on_host)

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def pipeline_type(cls) -> type[DiffusionPipeline]:
        """The diffusers pipeline class."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, source: str, dtype: torch.dtype) -> DiffusionPipeline:
        """The diffusers pipeline in ``source`` (a folder or a hub id)."""
        return cls.pipeline_type().from_pretrained(source, dtype=dtype)

    @classmethod
    def from_configs(cls, folder: str | Path, dtype: torch.dtype) -> DiffusionPipeline:
        """The pipeline with random weights from the diffusers configs in ``folder`` (no weights, no network)."""
        raise NotImplementedError

    @classmethod
    def pipeline_arguments(cls, embeds: torch.Tensor, pooled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """An instruction's token sequence (and its pooled vector, which only the encodings of pipelines that take
        one have) as keyword arguments of this architecture's diffusers pipeline call: ``pipe(**arguments,
        image=...)`` conditions as invert does."""
        return {"prompt_embeds": embeds, **({} if pooled is None else {"pooled_prompt_embeds": pooled})}

    @classmethod
    def pipeline_guidance(cls, guidance: float, image_guidance: float) -> dict[str, float]:
        """invert's guidance scales as keyword arguments of the pipeline call (a pipeline without image guidance
        takes the text scale alone)."""
        return {"guidance_scale": guidance}

    @classmethod
    def save_lora(cls, folder: str, layers: dict[str, torch.Tensor], config: dict, weight_name: str) -> None:
        """Write a LoRA of the denoiser (peft's state-dict names, without the prefix) with the pipeline's own
        ``save_lora_weights``, so ``pipe.load_lora_weights`` loads it with its rank and alpha."""
        raise NotImplementedError

    # -- modules ------------------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        """The network a LoRA adapts and InstructBrush routes: a UNet or a transformer."""
        raise NotImplementedError

    def text_modules(self) -> list[torch.nn.Module]:
        """The text encoders."""
        raise NotImplementedError

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """The denoiser's modules a LoRA adapts unless ``--lora-targets`` says otherwise: its attention
        projections, named (as peft matches them: a module's name or the end of it after a dot) as diffusers' LoRA
        training scripts for the architecture target them."""
        raise NotImplementedError

    @classmethod
    def fingerprinted(cls, pipe: DiffusionPipeline) -> list[torch.nn.Module]:
        """The modules whose weights an instruction depends on (the denoiser and the text encoders), of a pipeline
        not yet wrapped (a bf16 model is fingerprinted before its cast)."""
        raise NotImplementedError

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.denoiser, self.pipe.vae, *self.text_modules()]

    vae = property(lambda self: self.pipe.vae)
    scheduler = property(lambda self: self.pipe.scheduler)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(*self.fingerprinted(self.pipe))
        return self._fingerprint

    @property
    def resolution(self) -> int:
        """The image size the model was trained at: fitting's default."""
        raise NotImplementedError

    @property
    def size_multiple(self) -> int:
        """Image sides must be a multiple of this (the VAE's factor, times the patch size of a DiT)."""
        return self.pipe.vae_scale_factor

    @property
    def limits(self) -> ModelLimits:
        """What this model allows: learned tokens, image sizes, sampling steps."""
        return ModelLimits(self.text_positions, self.size_multiple, self.num_train_timesteps)

    def set_low_memory(self, enabled: bool) -> None:
        """Trade speed for memory without changing results: the denoiser recomputes its activations in the
        backward pass (gradient checkpointing, fitting only) and the VAE takes one image at a time (slicing)."""
        if enabled:
            self.denoiser.enable_gradient_checkpointing()
            self.vae.enable_slicing()
        else:
            self.denoiser.disable_gradient_checkpointing()
            self.vae.disable_slicing()

    def keep_text_on_host(self, enabled: bool) -> None:
        """For a backbone whose --low-memory also offloads its text encoders: with ``enabled`` on a GPU they wait
        on the CPU between encodings (:meth:`text_encoders_here` brings them for each), else they stay on the
        device."""
        self._offload_text = enabled and self.device.type not in ("cpu", "meta")
        for module in self.text_modules():
            module.to("cpu" if self._offload_text else self.device)
        if self._offload_text and self.device.type == "cuda":
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def text_encoders_here(self) -> Iterator[None]:
        """The text encoders on the device for the block (where --low-memory keeps them on the CPU)."""
        if not self._offload_text:
            yield
            return
        for module in self.text_modules():
            module.to(self.device)
        try:
            yield
        finally:
            for module in self.text_modules():
                module.to("cpu")

    # -- text ---------------------------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> TextEncoding:
        """The instructions' encodings exactly as the pipeline computes them."""
        raise NotImplementedError

    @property
    def uncond(self) -> TextEncoding:
        """The conditioning of the rows that do not read the instruction (the pipeline's negative prompt)."""
        if self._uncond is None:
            self._uncond = self.encode_text([""])
        return self._uncond

    @property
    def text_positions(self) -> int:
        """Positions of the encoded token sequence."""
        raise NotImplementedError

    @property
    def text_width(self) -> int:
        raise NotImplementedError

    @property
    def text_segments(self) -> list[int]:
        """The widths of the text encoders whose outputs the token sequence concatenates, in order (SDXL: CLIP
        ViT-L's 768, then OpenCLIP bigG's 1280); one encoder by default. VISII's CLIP direction term reads the
        first encoder of its CLIP model's width."""
        return [self.text_width]

    # -- images -------------------------------------------------------------------------------------------------
    def to_tensor(self, images: list[Image.Image]) -> torch.Tensor:
        return self.pipe.image_processor.preprocess(images).to(self.device, self.dtype)

    def condition(self, images: list[Image.Image]) -> torch.Tensor:
        """The input images as the denoiser is conditioned on them."""
        raise NotImplementedError

    def target(self, images: list[Image.Image]) -> torch.Tensor:
        """The images to denoise towards, in the space the denoiser denoises (a fit's x0)."""
        raise NotImplementedError

    def reconditioned(self, x0: torch.Tensor) -> torch.Tensor:
        """An estimate in :meth:`target`'s space turned into :meth:`condition`'s (the cycle term conditions the
        reverse edit on the forward edit's estimate)."""
        raise NotImplementedError

    def decode(self, x0: torch.Tensor) -> list[Image.Image]:
        """Denoised ``x0`` as images, as the pipeline decodes them (each backbone's own way, ending in
        :meth:`to_images`)."""
        raise NotImplementedError

    def to_images(self, pixels: torch.Tensor) -> list[Image.Image]:
        """Decoded pixels (about [-1, 1]) as the pipeline's images; pixels of which any is NaN or inf are an error
        (one check per batch), never an image: clamped, they would be all black or white."""
        bad = ~torch.isfinite(pixels.flatten(1)).all(1)
        if bad.any():
            count = f" ({int(bad.sum())} of the batch's {len(pixels)} images)" if len(pixels) > 1 else ""
            raise NonFiniteResult(f"sampling gave NaN or inf{count}, not an image")
        return self.pipe.image_processor.postprocess(pixels, output_type="pil")

    # -- training -----------------------------------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    def timestep_values(self, indices: torch.Tensor) -> torch.Tensor:
        """The denoiser's timestep for each training timestep index (0 .. num_train_timesteps - 1), in the units a
        sampler passes (InstructBrush's time parts are taken of these values, so a part trains where it samples)."""
        return indices

    def training_inputs(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> TrainingInputs:
        raise NotImplementedError

    def clean_estimate(self, prediction: torch.Tensor, inputs: TrainingInputs, t: torch.Tensor) -> torch.Tensor:
        """The one-step estimate of x0 from a prediction of the objective's kind."""
        raise NotImplementedError

    # -- one denoiser call --------------------------------------------------------------------------------------
    def guidance_groups(self) -> list[Group]:
        """The groups of the guidance batch, the instruction's group first (a fit's cfg loss combines them)."""
        raise NotImplementedError

    def groups(self, guidance: float, image_guidance: float) -> list[Group]:
        """The groups a sampler runs at these scales (the pipeline leaves guidance out at some)."""
        return self.guidance_groups()

    def combine(self, predictions: list[torch.Tensor], guidance: float, image_guidance: float) -> torch.Tensor:
        """The guided prediction from each group's (in :meth:`groups`' order)."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor, image: torch.Tensor, conditioning: Conditioning, rows: Any,
                groups: list[Group], guidance: float | None = None) -> torch.Tensor:
        """One denoiser call on ``x`` (the rows of one group) repeated for each of ``groups``, each group seeing
        ``image`` or none as it says, with ``conditioning`` laid out as ``rows`` (Rows.of(groups, ...)); the raw
        prediction of every row, groups stacked. ``guidance``: the text guidance scale, which a guidance-distilled
        denoiser (FLUX.1's) reads as an input; others ignore it."""
        raise NotImplementedError

    # -- sampling -----------------------------------------------------------------------------------------------
    def sample(self, method: Any, images: list[Image.Image], *, steps: int, guidance: float, image_guidance: float,
               seed: int, noise: str, scheduler: str | None, on_step: Callable[[int], None] | None = None,
               first_step: dict | None = None) -> list[Image.Image]:
        """Edit ``images`` (one size) with ``method`` (already installed), whose ``conditioning(rows, uncond)``
        conditions each batch.

        ``first_step``: a dict the caller keeps across runs that differ only in the method, each a state that
        leaves the text-free rows alone (not ``changes_text_free_rows()``): the first step's text-free rows (the
        image-only and unconditional guidance groups) then have the same inputs and outputs in every run, so the
        first run computes them and keeps them there, and the later runs reuse them (a fit's validation and its
        init search score many states on the same pairs, noise and steps)."""
        raise NotImplementedError

    # -- what methods learn -------------------------------------------------------------------------------------
    def instruction_kv_layers(self) -> dict[str, int]:
        """The attention layers that read the instruction's tokens, by name, with their K/V width."""
        raise NotImplementedError

    def instruction_kv(self, encoding: TextEncoding, positions: int, timesteps: torch.Tensor
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's own keys and values of the instruction's first ``positions`` tokens of ``encoding``, at
        each of ``timesteps`` (layers whose text projection does not depend on the timestep give the same for
        each): {layer: ((timesteps, positions, width), (timesteps, positions, width))}, fp32."""
        raise NotImplementedError

    def instruction_kv_routes(self) -> ContextManager:
        """For the block, every layer of :meth:`instruction_kv_layers` replaces the instruction's K/V through the
        :class:`KVRoute` that a call names in its attention arguments under ``KV_ARGUMENT`` (calls without one run
        the layer's own processor)."""
        raise NotImplementedError

    def call_with(self, pipe: DiffusionPipeline, arguments: Callable[[Any], dict]) -> ContextManager:
        """For a user's own diffusers pipeline of this architecture: every denoiser call of the block gets
        ``arguments(rows)``, attention arguments for that call's batch layout (Rows)."""
        raise NotImplementedError


__all__ = ["Conditioning", "Editor", "Group", "KVRoute", "TextEncoding", "TrainingInputs", "fingerprint",
           "pre_hooked", "resolve_device", "resolve_dtype"]
