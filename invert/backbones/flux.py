"""What the flow-matching DiT editors share (FLUX.1 Kontext, FLUX.2 [klein]): the input image read as reference
tokens after the noisy target's, position ids, flow-matching training on the scheduler's shifted sigmas, one
transformer call, the Euler sampler written out as the pipelines' loops, and the routes of the text tokens'
keys and values (InstructBrush). Each model's module (``flux_kontext``, ``flux2_klein``) says how it encodes text
and images, packs latents into tokens and calls its transformer.

Latent space. :meth:`condition` and :meth:`target` give the latents the pipeline draws its noise in, before
packing (klein: the VAE latents patchified 2x2 and normalized with the VAE's batch-norm statistics; Kontext: the
scaled VAE latents); the transformer reads them packed into tokens of 2x2 patches. A fit's noises, targets and
predictions stay unpacked, so the loop's per-timestep noises have the pipeline's noise shape.

Time. The sampler passes the scheduler's timesteps, 1000 sigma, and the transformer takes sigma. Training draws
integer indices 0..999 (each once per pass); :meth:`timestep_values` maps index i to 1000 times the scheduler's
shifted sigma of (i + 1) / 1000, computed with the model's own shift (mu) at its resolution, so that training
sees noise levels as densely as the sampler visits them and InstructBrush's time parts, taken of these values as
of the sampler's, train where they sample."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, ClassVar, ContextManager, Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import InvertError
from .base import KV_ARGUMENT, Conditioning, Editor, Group, TextEncoding, TrainingInputs, pre_hooked
from .flux_attention import Capture
from .rows import Rows

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# invert's default number of sampling steps (apply --steps): FLUX.2's shift depends on the step count, and
# training noise levels are the sampler's at this count.
SAMPLER_STEPS = 20
TEXT_ROWS = Group(text=True, image=True)  # the instruction's rows: text and the input image's tokens
EMPTY_PROMPT_ROWS = Group(text=False, image=True)  # real CFG's other rows: the empty prompt, the same image


class FluxEditor(Editor):
    """A FLUX-family pipeline: a transformer that reads text tokens, the noisy target's tokens and the input
    image's reference tokens in one sequence, trained with flow matching."""

    lora_prefix = "transformer."
    half_dtype = torch.bfloat16  # T5 and the FLUX transformers overflow in fp16
    default_guidance: ClassVar[float] = 1.0  # the guidance a call without one embeds (guidance-distilled models)

    def __init__(self, pipe: DiffusionPipeline, model_id: str, device: torch.device, dtype: torch.dtype,
                 fingerprint: str | None = None):
        super().__init__(pipe, model_id, device, dtype, fingerprint)
        self._values: torch.Tensor | None = None

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def save_lora(cls, folder: str, layers: dict[str, torch.Tensor], config: dict, weight_name: str) -> None:
        cls.pipeline_type().save_lora_weights(folder, transformer_lora_layers=layers, weight_name=weight_name,
                                              transformer_lora_adapter_metadata=config)

    # -- modules ------------------------------------------------------------------------------------------------
    transformer = property(lambda self: self.pipe.transformer)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """The attention projections of both streams: the image tokens' (to_q, to_k, to_v, to_out.0) and the
        text tokens' of double-stream blocks (add_q_proj, add_k_proj, add_v_proj, to_add_out), which read and
        write the instruction (diffusers' FLUX.1 and Kontext LoRA scripts, less their feed-forward layers)."""
        return ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

    @property
    def resolution(self) -> int:
        """The image size the model was trained at: its VAE config's sample size (1024 for the FLUX models)."""
        size = self.vae.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def size_multiple(self) -> int:
        """The VAE's factor times the 2x2 patch a token packs."""
        return self.pipe.vae_scale_factor * 2

    def set_low_memory(self, enabled: bool) -> None:
        """Also keep the text encoders on the CPU between encodings (they are as large as the transformer, and a
        fit encodes only at its start): each encoding moves them to the device and back."""
        super().set_low_memory(enabled)
        self.keep_text_on_host(enabled)

    # -- what each model says -----------------------------------------------------------------------------------
    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        """The token grid (rows, columns) of latents in :meth:`target`'s space."""
        raise NotImplementedError

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(batch, ...) latents -> (batch, tokens, channels), as the pipeline packs them."""
        raise NotImplementedError

    def unpack(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def image_ids(self, grid: tuple[int, int], reference: bool) -> torch.Tensor:
        """(tokens, axes) position ids of the target's tokens or of the reference image's."""
        raise NotImplementedError

    def mu(self, tokens: int, steps: int) -> float:
        """The scheduler's shift for an image of ``tokens`` tokens sampled in ``steps`` steps, as the pipeline
        computes it."""
        raise NotImplementedError

    def call_transformer(self, hidden: torch.Tensor, timestep: torch.Tensor, conditioning: Conditioning,
                         img_ids: torch.Tensor, guidance: float | None) -> torch.Tensor:
        """The transformer's raw output for ``hidden`` ([target tokens; reference tokens]) at ``timestep`` (sigma,
        one per row) reading ``conditioning``'s text (and its attention arguments)."""
        raise NotImplementedError

    # -- images -------------------------------------------------------------------------------------------------
    def target(self, images: list[Image.Image]) -> torch.Tensor:
        return self.condition(images)

    def reconditioned(self, x0: torch.Tensor) -> torch.Tensor:
        return x0  # the input image is read in the target's own space

    # -- training -----------------------------------------------------------------------------------------------
    def scheduler_sigmas(self, steps: int, tokens: int, unshifted: np.ndarray | None = None) -> torch.Tensor:
        """A fresh copy of the model's scheduler set as the pipeline sets it for ``steps`` steps of an image of
        ``tokens`` tokens (``unshifted``: other sigmas before the shift); the scheduler itself."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)
        sigmas = unshifted
        if sigmas is None and not getattr(sched.config, "use_flow_sigmas", False):
            sigmas = np.linspace(1.0, 1 / steps, steps)
        sched.set_timesteps(None if sigmas is not None else steps, device=self.device, sigmas=sigmas,
                            mu=self.mu(tokens, steps))
        sched.set_begin_index(0)
        return sched

    def timestep_values(self, indices: torch.Tensor) -> torch.Tensor:
        """1000 x the scheduler's shifted sigma of (i + 1) / 1000 for each index i: the sampler's noise levels (at
        the model's resolution and invert's default step count), each index once (see the module's note)."""
        if self._values is None:
            count = self.num_train_timesteps
            tokens = (self.resolution // self.size_multiple) ** 2
            sched = self.scheduler_sigmas(SAMPLER_STEPS, tokens, np.arange(1, count + 1)[::-1] / count)
            self._values = (sched.sigmas[:-1].flip(0) * count).cpu()
        indices = torch.as_tensor(indices)
        return self._values.to(indices.device)[indices]

    def sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Each row's sigma for training indices ``t``, shaped to broadcast over ``like``."""
        sigma = self.timestep_values(t).to(like.device, torch.float32) / self.num_train_timesteps
        return sigma.view(-1, *[1] * (like.dim() - 1))

    def training_inputs(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> TrainingInputs:
        """Flow matching: x_s = (1 - s) x0 + s noise; the transformer predicts the velocity noise - x0."""
        s = self.sigma(t, x0)
        return TrainingInputs((1 - s) * x0 + s * noise, noise - x0, 1 - s)

    def clean_estimate(self, prediction: torch.Tensor, inputs: TrainingInputs, t: torch.Tensor) -> torch.Tensor:
        return inputs.noisy - (1 - inputs.signal) * prediction

    # -- one denoiser call --------------------------------------------------------------------------------------
    def denoise(self, tokens: torch.Tensor, reference: torch.Tensor, conditioning: Conditioning,
                timesteps: torch.Tensor, grid: tuple[int, int], guidance: float | None) -> torch.Tensor:
        """The transformer's prediction for the target's ``tokens`` at ``timesteps`` (the sampler's units), with
        the input image's ``reference`` tokens after them (of the same grid: invert edits an image into one of its
        own size), as the pipelines call it."""
        ids = torch.cat([self.image_ids(grid, reference=False), self.image_ids(grid, reference=True)])
        hidden = torch.cat([tokens, reference], dim=1)
        out = self.call_transformer(hidden, timesteps.to(tokens.dtype) / 1000, conditioning, ids, guidance)
        return out[:, :tokens.shape[1]]

    def predict(self, x: torch.Tensor, image: torch.Tensor, conditioning: Conditioning, rows: Rows,
                groups: list[Group], guidance: float | None = None) -> torch.Tensor:
        if not all(g.image for g in groups):
            raise InvertError(f"a {self.name} call always reads the input image")
        grid = self.grid(x)
        tokens = self.pack(x.to(self.dtype)).repeat(len(groups), 1, 1)
        reference = self.pack(image.to(self.dtype)).repeat(len(groups), 1, 1)
        return self.unpack(self.denoise(tokens, reference, conditioning, rows.timesteps, grid, guidance), grid)

    # -- sampling -----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, method: Any, images: list[Image.Image], *, steps: int, guidance: float, image_guidance: float,
               seed: int, noise: str, scheduler: str | None, on_step: Callable[[int], None] | None = None,
               first_step: dict | None = None) -> list[Image.Image]:
        """The pipeline's loop written out, one transformer call per guidance group as the pipeline makes them,
        the input image's tokens per row (the pipeline repeats one image for its batch): with an untrained
        instruction and one image, the pipeline's result bit for bit (a test checks it).

        ``noise`` "stream" and "fresh": each image's initial noise from its own CPU generator seeded with
        ``seed`` (the pipeline's with ``generator=torch.Generator().manual_seed(seed)``); the Euler sampler draws
        nothing else. "fit": the fit's noise of the first sampling timestep (the fit's seed). ``first_step``: see
        :meth:`Editor.sample`."""
        from diffusers.utils.torch_utils import randn_tensor

        if scheduler is not None:
            raise InvertError(f"--scheduler {scheduler}: {self.name} samples with its own flow-matching Euler "
                              "scheduler only")
        cond = self.condition(images)
        grid, n = self.grid(cond), len(images)
        sched = self.scheduler_sigmas(steps, grid[0] * grid[1])
        if noise == "fit":
            first = fit_noise(seed, cond.shape, self._index_of(sched.timesteps[0]), self.device, self.dtype)
        else:
            first = randn_tensor(cond.shape, generator=[torch.Generator("cpu").manual_seed(seed) for _ in images],
                                 device=self.device, dtype=self.dtype)
        latents, reference = self.pack(first), self.pack(cond)
        groups = self.groups(guidance, image_guidance)
        for i, t in enumerate(sched.timesteps):
            timestep = t.expand(n).to(latents.dtype)
            predictions = []
            for g, group in enumerate(groups):
                if i == 0 and first_step is not None and not group.text and g in first_step:
                    predictions.append(first_step[g])
                    continue
                rows = Rows.of([group], timestep)
                c = method.conditioning(rows, self.uncond)
                predictions.append(self.denoise(latents, reference, c, timestep, grid, guidance))
                if i == 0 and first_step is not None and not group.text:
                    first_step[g] = predictions[-1]
            latents = sched.step(self.combine(predictions, guidance, image_guidance), t, latents,
                                 return_dict=False)[0]
            if on_step is not None:
                on_step(i + 1)
        return self.decode(self.unpack(latents, grid))

    def _index_of(self, timestep: torch.Tensor) -> int:
        """The training index whose timestep value is nearest ``timestep``."""
        values = self.timestep_values(torch.arange(self.num_train_timesteps))
        return int((values - float(timestep)).abs().argmin())

    # -- InstructBrush's layers ---------------------------------------------------------------------------------
    def route(self, name: str, processor: Callable[..., Any]) -> Callable[..., Any]:
        """The route processor of attention layer ``name`` wrapping its ``processor``."""
        raise NotImplementedError

    def instruction_kv_layers(self) -> dict[str, int]:
        """Every attention layer (each reads the text tokens' K/V), with its K/V width."""
        return {name: self.transformer.get_submodule(name.removesuffix(".processor")).inner_dim
                for name in self.transformer.attn_processors}

    def instruction_kv(self, encoding: TextEncoding, positions: int, timesteps: torch.Tensor
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's own K/V of the instruction's first ``positions`` tokens at each of ``timesteps``: the
        text stream is modulated by the timestep, so they differ per timestep. Projected by the transformer run on
        the text alone (no image tokens): past the first block a layer's text K/V also depend on the image the
        text attends to, which a learned constant cannot follow; the text alone is what every image shares."""
        capture = Capture(encoding.start, positions)
        rows = len(timesteps)
        embeds = encoding.embeds[:1].to(self.device, self.dtype).expand(rows, -1, -1)
        pooled = encoding.pooled if encoding.pooled is not None else self.uncond.pooled
        pooled = None if pooled is None else pooled[:1].to(self.device, self.dtype).expand(rows, -1)
        hidden = torch.zeros(rows, 0, self.transformer.config.in_channels, device=self.device, dtype=self.dtype)
        values = torch.as_tensor(timesteps, device=self.device).to(self.dtype) / 1000
        with torch.no_grad(), self.instruction_kv_routes():
            self.call_transformer(hidden, values, Conditioning(embeds, {KV_ARGUMENT: capture}, pooled),
                                  self.image_ids((0, 0), reference=False), None)
        return capture.kv

    @contextlib.contextmanager
    def instruction_kv_routes(self) -> Iterator[None]:
        transformer = self.transformer
        original = dict(transformer.attn_processors)
        transformer.set_attn_processor({name: self.route(name, p) for name, p in original.items()})
        try:
            yield
        finally:
            transformer.set_attn_processor(dict(original))  # set_attn_processor pops from the dict it is given

    def call_with(self, pipe: DiffusionPipeline, arguments: Callable[[Any], dict]) -> ContextManager[None]:
        """For a user's own diffusers pipeline: a transformer pre-hook adds ``arguments(rows)`` to every call's
        ``joint_attention_kwargs``. Both pipelines call the transformer on the prompt first at each timestep and
        then, with real CFG, on the negative prompt: the second call at a timestep gets unconditional rows."""
        last: list[float | None] = [None]

        def add(module, args, kwargs):
            timestep = kwargs["timestep"]
            now = float(timestep.reshape(-1)[0])
            conditional, last[0] = now != last[0], now
            rows = Rows.of([Group(text=conditional, image=True)], timestep.reshape(-1) * 1000)
            kwargs["joint_attention_kwargs"] = {**(kwargs.get("joint_attention_kwargs") or {}), **arguments(rows)}
            return args, kwargs

        return pre_hooked(self.transformer, add)


def fit_noise(seed: int, shape: tuple[int, ...], index: int, device: torch.device, dtype: torch.dtype
              ) -> torch.Tensor:
    """The fit's noise of training index ``index`` (``draw_noises``' draw of that index, one per row of
    ``shape``), drawn in order from the fit's seed on the CPU, keeping only that one."""
    from diffusers.utils.torch_utils import randn_tensor

    gen = torch.Generator("cpu").manual_seed(seed)
    for _ in range(index + 1):
        drawn = randn_tensor((1, *shape[1:]), generator=gen, device=torch.device("cpu"), dtype=dtype)
    return drawn.to(device).expand(shape[0], *shape[1:])


__all__ = ["EMPTY_PROMPT_ROWS", "FluxEditor", "SAMPLER_STEPS", "TEXT_ROWS", "fit_noise"]
