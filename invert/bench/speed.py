"""Speed and memory of fitting and applying, against a faithful port of the reference training loops.

"Ours" is the library itself: :class:`~invert.training.Trainer` and :func:`~invert.sampling.sample`, as
``invert fit`` and ``invert apply`` run them. The reference does per step what VISII's official code does:
fp32, batch 1, the three-way guidance batch [text+image, image-only, unconditional] in one UNet call with
autograd through all of it, encodings computed once before the loop; for InstructBrush (no official code) the
paper's schedule, the time parts one after another, each step the same three-way batch. The rest (timesteps,
noise, pairs, noising, loss, AdamW, gradient clipping) is shared with ours, so both compute the same loss for
the same step and the ratio measures only how the work is done. Both loops run in the same process, so the
ratio holds on a noisy machine."""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..editor import Editor, load_editor
from ..errors import InvertError
from ..guidance import Rows, guided
from ..losses import row_mse
from ..methods import SETTINGS, method_class, settings_for
from ..methods.base import Method
from ..sampling import sample
from ..settings import FitSettings, settings_fields
from ..training import FitData, Trainer

# Ten tokens between BOS and EOS, as the official VISII initial (PEZ) prompt and InstructBrush's instructions.
INIT_TEXT = "turn the photo into a soft watercolor painting with pastel colours"


@dataclass
class SpeedOptions:
    method: str = "visii"
    resolution: int = 512
    steps: int = 10  # timed optimizer steps of ours, after ``warmup``; the reference times as many of its own
    warmup: int = 2
    pairs: int = 1
    parts: int = 5  # brush
    loss_target: str = "cfg"
    fit_steps: int = 1000  # the whole fit the projection is for (per time part for brush, as the paper)
    apply_steps: int = 20
    batch_size: int = 1  # images per sampling call
    apply_batches: int = 1  # timed sampling calls, after one warm-up call
    reference: bool = True


def synthetic_pairs(count: int, resolution: int, seed: int = 0) -> tuple[list[Image.Image], list[Image.Image]]:
    """Blocky random images and a darkened, blue-tinted copy: timing does not depend on the content."""
    rng = np.random.default_rng(seed)
    befores, afters = [], []
    for _ in range(count):
        cells = rng.uniform(0.2, 1.0, (8, 8, 3))
        img = np.kron(cells, np.ones((-(-resolution // 8), -(-resolution // 8), 1)))[:resolution, :resolution]
        befores.append(Image.fromarray((img * 255).astype(np.uint8)))
        afters.append(Image.fromarray((img * [0.3, 0.35, 0.6] * 255).astype(np.uint8)))
    return befores, afters


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:  # Linux: writing 5 resets the process's peak resident set size (VmHWM)
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated since the last reset; elsewhere the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
           f"{torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fit(trainer: Trainer, warmup: int) -> tuple[float, float]:
    """Optimizer steps per second of the library's own loop after ``warmup`` steps, and peak memory (MB)."""
    marks: list[float] = []
    reset_peak_memory(trainer.data.editor.device)
    # A refresh after every step: the host then waits for the device, so each mark ends a finished step.
    trainer.run(quiet=True, progress=lambda p: marks.append(time.perf_counter()), sync_at=lambda done: True)
    return _rate(marks, warmup), peak_memory_mb(trainer.data.editor.device)


def _rate(marks: list[float], warmup: int) -> float:
    if warmup < 1 or len(marks) <= warmup:
        raise InvertError(f"need at least one warm-up step and one timed step (got {len(marks)} steps, "
                          f"{warmup} warm-up)")
    return (len(marks) - warmup) / (marks[-1] - marks[warmup - 1])


def reference_loss(trainer: Trainer, step: int) -> torch.Tensor:
    """One step's loss as the official VISII code computes it: the three-way guidance batch in one UNet call,
    so autograd runs back through all three rows, and the MSE of the guided prediction."""
    data, s, method = trainer.data, trainer.settings, trainer.method
    t = trainer.schedule[step]
    if len(t) != 1:
        raise InvertError("the reference loop trains one timestep per step")
    x = data.inputs(t, trainer.pair(step))
    editor = data.editor
    latents = torch.cat([x.noisy] * 3)
    image = torch.cat([x.cond, x.cond, torch.zeros_like(x.cond)])
    rows = Rows.ip2p(1, t, True, editor.device)
    c = method.conditioning(rows, data.uncond)
    pred = editor.unet(torch.cat([latents, image], 1).to(editor.dtype), rows.timesteps, encoder_hidden_states=c.embeds,
                       cross_attention_kwargs=c.attention).sample.float()
    loss = s.mse_weight * row_mse(guided(*pred.chunk(3), s.guidance, s.image_guidance), x.objective).sum()
    extra = method.extra_loss()
    return loss if extra is None else loss + extra


def reference_run(trainer: Trainer, steps: int | None = None, on_step=None) -> list[float]:
    """The reference training loop (see the module docstring) for the first ``steps`` steps of the method's
    schedule (all by default); returns the loss of every step."""
    method = trainer.method
    params = list(method.parameters())
    opt = torch.optim.AdamW(params, lr=trainer.settings.lr)
    clip_value = max(float(p.detach().abs().max()) for p in params)
    losses: list[float] = []
    with method.installed():
        for step in range(trainer.total if steps is None else steps):
            opt.zero_grad(set_to_none=True)
            loss = reference_loss(trainer, step)
            loss.backward()
            torch.nn.utils.clip_grad_value_([p for p in params if p.grad is not None], clip_value)
            opt.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(step + 1, losses[-1])
    return losses


def time_reference(trainer: Trainer, steps: int, warmup: int) -> tuple[float, float]:
    """Steps per second of the reference loop after ``warmup`` of ``steps`` steps, and peak memory (MB)."""
    marks: list[float] = []
    reset_peak_memory(trainer.data.editor.device)
    reference_run(trainer, steps, on_step=lambda step, loss: marks.append(time.perf_counter()))
    return _rate(marks, warmup), peak_memory_mb(trainer.data.editor.device)


def time_apply(editor: Editor, method: Method, images: list[Image.Image], steps: int, batches: int
               ) -> tuple[float, float]:
    """Images per second of :func:`sample` on one batch of ``images``, after one warm-up call, and peak MB."""
    sample(editor, method, images, steps=steps)
    reset_peak_memory(editor.device)
    start = time.perf_counter()
    for _ in range(batches):
        sample(editor, method, images, steps=steps)
    _sync(editor.device)
    return batches * len(images) / (time.perf_counter() - start), peak_memory_mb(editor.device)


def make_method(editor: Editor, name: str, parts: int, sequential: bool) -> Method:
    """``name``'s instruction from INIT_TEXT, with ``parts`` time parts where the method has them."""
    known = {f.name for f in settings_fields(SETTINGS.get(name, FitSettings))}
    options = {k: v for k, v in {"parts": parts, "parts_sequential": sequential}.items() if k in known}
    return method_class(name).initialize(editor, editor.encode_text([INIT_TEXT]), INIT_TEXT,
                                         settings_for(name, options)[1], 0)


def trainer_for(editor: Editor, method: Method, befores, afters, settings: FitSettings) -> Trainer:
    return Trainer(method, FitData(editor, befores, afters, settings.seed), settings)


def benchmark(model: str, options: SpeedOptions, device: str = "auto", dtype: str = "auto",
              low_memory: bool = False) -> dict:
    """Time ours (fit and apply) and the reference loop on ``model``; one flat dict of settings and results.

    A "step" is one timestep trained: ours batches InstructBrush's time parts, so one of its optimizer steps
    counts ``parts`` steps. The CLIP direction term (one projection per step, negligible) is in neither loop:
    the benchmark needs no CLIP model."""
    editor = load_editor(model, device, dtype)
    befores, afters = synthetic_pairs(options.pairs, options.resolution)
    fit_options = FitSettings(steps=options.warmup + options.steps, resolution=options.resolution,
                              init_text=INIT_TEXT, loss_target=options.loss_target)
    result = {"method": options.method, "device": device_name(editor.device), "model": model,
              "resolution": options.resolution, "dtype": str(editor.dtype).removeprefix("torch."),
              "loss_target": options.loss_target, "low_memory": low_memory,
              "torch": torch.__version__,
              **_time_ours(editor, befores, afters, fit_options, options, low_memory)}
    if not options.reference:
        return result
    if editor.dtype != torch.float32:  # the reference runs the UNet in fp32
        editor = None  # let the first model go before the second one loads
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        editor = load_editor(model, device, "fp32")
    editor.set_low_memory(False)
    method = make_method(editor, options.method, options.parts, sequential=True)
    trainer = trainer_for(editor, method, befores, afters, fit_options)
    # The sequential schedule trains the parts one after another; any of its steps costs the same.
    rate, peak = time_reference(trainer, options.warmup + options.steps, options.warmup)
    return {**result, "reference_steps_per_s": rate, "reference_seconds_per_1000_steps": 1000 / rate,
            "reference_projected_fit_seconds": result["whole_fit_steps"] / rate, "reference_peak_memory_mb": peak,
            "speedup_vs_reference": result["steps_per_s"] / rate}


def _time_ours(editor: Editor, befores: list[Image.Image], afters: list[Image.Image], fit_options: FitSettings,
               options: SpeedOptions, low_memory: bool) -> dict:
    editor.set_low_memory(low_memory)
    method = make_method(editor, options.method, options.parts, sequential=False)
    trainer = trainer_for(editor, method, befores, afters, fit_options)
    start = time.perf_counter()
    step_rate, fit_peak = time_fit(trainer, options.warmup)
    rows = trainer.schedule.shape[1]  # timesteps trained per optimizer step (brush: one per time part)
    first = time.perf_counter() - start - options.steps / step_rate  # the warm-up steps
    rate = step_rate * rows
    whole = options.fit_steps * rows
    inputs = (befores * options.batch_size)[:options.batch_size]
    apply_rate, apply_peak = time_apply(editor, method, inputs, options.apply_steps, options.apply_batches)
    return {"timed_steps": options.steps * rows, "warmup_seconds": first, "steps_per_s": rate,
            "seconds_per_1000_steps": 1000 / rate, "whole_fit_steps": whole, "projected_fit_seconds": whole / rate,
            "peak_memory_mb": fit_peak, "apply_steps": options.apply_steps, "batch_size": options.batch_size,
            "apply_images_per_s": apply_rate, "apply_peak_memory_mb": apply_peak}
