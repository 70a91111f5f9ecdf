"""Speed and memory of fitting and applying, against a faithful port of the reference training loops and the
floor, the bare UNet work a step cannot avoid.

"Ours" is the library itself: :class:`~invert.fitting.loop.Trainer` and :func:`~invert.sampling.sample`, as
``invert fit`` and ``invert apply`` run them. The reference does per step what VISII's official code does: batch
1, the three-way guidance batch [text+image, image-only, unconditional] in one UNet call with autograd through
all of it, encodings computed once before the loop, the UNet's weights in fp32 and, where ours computes in half
precision, the same precision by autocast (the official code runs under fp16 mixed precision on a GPU); for
InstructBrush (no official code) the paper's schedule, the time parts one after another, each step the same
three-way batch. The rest (timesteps, noise, pairs, noising, loss, AdamW, gradient clipping) is shared with
ours, so both compute the same loss for the same step and the ratio measures only how the work is done.

The floor is one conditional row forward and backward (to the encoder hidden states) and, for the ``cfg`` loss,
the image-only and unconditional rows forward without autograd, per timestep row of ours: nothing else of a
step (noising, loss, optimizer, hooks, checks, host syncs) is in it.

The three loops run interleaved in blocks, ours then the reference then the floor, again and again, in one
process: each cycle's ratio compares blocks run under the same load, and the median over cycles, with its
spread, is what holds on a busy machine."""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from invert.backbones import Editor, load_editor, resolve_dtype
from invert.backbones.rows import Rows
from invert.defaults import IP2P_GUIDANCE, IP2P_IMAGE_GUIDANCE
from invert.errors import InvertError
from invert.fitting.loop import FitData, FitProgress, Trainer
from invert.fitting.losses import row_mse
from invert.methods import method_class, settings_classes, settings_for
from invert.methods.base import Method
from invert.sampling import sample
from invert.settings import FitSettings, settings_fields

# Ten tokens between BOS and EOS, as the official VISII initial (PEZ) prompt and InstructBrush's instructions.
INIT_TEXT = "turn the photo into a soft watercolor painting with pastel colours"
# A ratio whose cycles' interquartile range exceeds this fraction of its median gets a warning: the machine's
# load changed within cycles more than now and then, so even the median is uncertain by about that much.
SPREAD_WARNING = 0.15


@dataclass
class SpeedOptions:
    method: str = "visii"
    resolution: int | None = None  # None: the model's own (512 for IP2P, 32 for the toy model)
    steps: int = 10  # timed optimizer steps of ours, after ``warmup``, in blocks of ``block`` steps
    warmup: int = 2
    block: int = 2  # ours' steps per block; the reference and the floor run as many steps per block
    pairs: int = 1
    parts: int = 5  # brush
    loss_target: str = "cfg"
    fit_steps: int = 1000  # the whole fit the projection is for (per time part for brush, as the paper)
    apply_steps: int = 20
    batch_size: int = 1  # images per sampling call
    apply_batches: int = 1  # timed sampling calls, after one warm-up call
    reference: bool = True
    floor: bool = True
    # The reference's compute precision: None, ours' (the ratio measures how the work is done); "fp32" etc.
    # compares precisions as well, a separate question.
    reference_dtype: str | None = None
    # A fit's cost (fit --json's "cost": denoiser rows per phase) to project onto this model (project_phases).
    fit_cost: dict | None = None


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


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it ends a finished piece of work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    rows = Rows.of(editor.guidance_groups(), t)
    c = method.conditioning(rows, data.uncond)
    pred = editor.unet(torch.cat([latents, image], 1).to(editor.dtype), rows.timesteps, encoder_hidden_states=c.embeds,
                       cross_attention_kwargs=c.attention).sample.float()
    loss = s.mse_weight * row_mse(editor.combine(list(pred.chunk(3)), s.guidance, s.image_guidance), x.objective).sum()
    extra = method.extra_loss()
    return loss if extra is None else loss + extra


class ReferenceLoop:
    """The reference training loop (see the module docstring) over the method's schedule, run a few steps at a
    time; ``autocast``: the UNet computes in this dtype (its weights stay as loaded), as mixed precision does."""

    def __init__(self, trainer: Trainer, autocast: torch.dtype | None = None):
        self.trainer, self.autocast = trainer, autocast
        self.params = list(trainer.method.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=trainer.settings.lr)
        self.clip_value = max(float(p.detach().abs().max()) for p in self.params)
        self.done = 0
        self.losses: list[float] = []

    def run(self, steps: int, on_step: Callable[[int, float], None] | None = None) -> float:
        """Train the next ``steps`` steps; the seconds they took (the method's installation excluded)."""
        device = self.trainer.data.editor.device
        precision = torch.autocast(device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with self.trainer.method.installed(), precision:
            sync(device)
            start = time.perf_counter()
            for step in range(self.done, self.done + steps):
                self.opt.zero_grad(set_to_none=True)
                loss = reference_loss(self.trainer, step)
                loss.backward()
                torch.nn.utils.clip_grad_value_([p for p in self.params if p.grad is not None], self.clip_value)
                self.opt.step()
                self.losses.append(loss.item())  # a host sync per step, as the official loop's logging
                if on_step is not None:
                    on_step(step + 1, self.losses[-1])
            seconds = time.perf_counter() - start
        self.done += steps
        return seconds


def reference_run(trainer: Trainer, steps: int | None = None, on_step=None) -> list[float]:
    """The reference loop for the first ``steps`` steps of the method's schedule (all by default); the loss of
    every step."""
    loop = ReferenceLoop(trainer)
    loop.run(trainer.total if steps is None else steps, on_step)
    return loop.losses


class FloorLoop:
    """The UNet work one step of ``trainer`` cannot avoid, on its editor as it is (its method installed, if
    the loop runs inside the fit): per timestep row of the step, one conditional row forward and backward to the
    encoder hidden states, and for the ``cfg`` loss the image-only and unconditional rows forward without
    autograd; for a method that changes every row (an adapter), all three rows forward and backward in one call.
    Inputs are built once: nothing else is timed."""

    def __init__(self, trainer: Trainer):
        data = trainer.data
        self.unet, self.device = data.editor.unet, data.editor.device
        t = trainer.schedule[0]
        x = data.inputs(t, 0)
        dtype = data.editor.dtype
        text_x = torch.cat([x.noisy, x.cond], 1).to(dtype)
        others = torch.cat([text_x, torch.cat([x.noisy, torch.zeros_like(x.cond)], 1).to(dtype)])
        uncond = data.uncond.embeds
        width = uncond.shape[1:]
        self.grad_calls = [(text_x, t)]  # (input, timesteps) of each call with autograd
        self.plain_calls = []
        if trainer.settings.loss_target == "cfg":
            if trainer.method.conditions_all_rows:
                self.grad_calls = [(torch.cat([text_x, others]), torch.cat([t, t, t]))]
            else:
                self.plain_calls = [(others, torch.cat([t, t]))]
        self.embeds = [uncond.expand(len(x), *width).clone().requires_grad_(True) for x, _ in self.grad_calls]
        self.plain_embeds = [uncond.expand(len(x), *width) for x, _ in self.plain_calls]

    def run(self, steps: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            for (x, t), embeds in zip(self.grad_calls, self.embeds):
                pred = self.unet(x, t, encoder_hidden_states=embeds).sample
                torch.autograd.grad(pred.float().square().mean(), embeds)
            with torch.no_grad():
                for (x, t), embeds in zip(self.plain_calls, self.plain_embeds):
                    self.unet(x, t, encoder_hidden_states=embeds)
        sync(self.device)
        return time.perf_counter() - start


def make_method(editor: Editor, name: str, parts: int, sequential: bool) -> Method:
    """``name``'s instruction from INIT_TEXT, with ``parts`` time parts where the method has them."""
    known = {f.name for f in settings_fields(settings_classes()[name])}
    options = {k: v for k, v in {"brush_parts": parts, "brush_parts_sequential": sequential}.items() if k in known}
    return method_class(name).initialize(editor, editor.encode_text([INIT_TEXT]), INIT_TEXT,
                                         settings_for(name, options)[1], 0)


def trainer_for(editor: Editor, method: Method, befores, afters, settings: FitSettings) -> Trainer:
    return Trainer(method, FitData(editor, befores, afters, settings.seed), settings)


def time_apply(editor: Editor, method: Method, images: list[Image.Image], steps: int, batches: int
               ) -> tuple[float, float]:
    """Images per second of :func:`sample` on one batch of ``images``, after one warm-up call, and peak MB."""
    sample(editor, method, images, steps=steps)
    reset_peak_memory(editor.device)
    start = time.perf_counter()
    for _ in range(batches):
        sample(editor, method, images, steps=steps)
    sync(editor.device)
    return batches * len(images) / (time.perf_counter() - start), peak_memory_mb(editor.device)


def first_call_clock(editor: Editor) -> tuple[list[float], Callable[[], None]]:
    """A list that receives the time of the UNet's first call from now on, and the function that stops that:
    a block timed from there leaves out its setup (encoding the exemplars, building the method)."""
    first: list[float] = []
    handle = editor.unet.register_forward_pre_hook(lambda module, args: None if first else
                                                   first.append(time.perf_counter()))
    return first, handle.remove


def fit_block(editor: Editor, method: str, befores: list[Image.Image], afters: list[Image.Image], steps: int,
              parts: int = 5) -> float:
    """A fresh fit of ``method`` on the pairs for ``steps`` steps: seconds per optimizer step, from its first UNet
    call to the end of its last step (the last refresh waits for the device)."""
    trainer = trainer_for(editor, make_method(editor, method, parts, False), befores, afters,
                          FitSettings(steps=steps, resolution=befores[0].width, init_text=INIT_TEXT))
    first, stop = first_call_clock(editor)
    marks: list[float] = []
    try:
        trainer.run(quiet=True, progress=lambda p: marks.append(time.perf_counter()),
                    sync_at=lambda done: done == steps)
    finally:
        stop()
    return (marks[-1] - first[0]) / steps


def apply_block(editor: Editor, method: str, images: list[Image.Image], steps: int) -> tuple[float, float]:
    """One sampling call of ``steps`` steps on ``images`` with ``method``'s untrained instruction: seconds per
    sampling step (from the first UNet call to the last step's end: the VAE left out), and seconds of the whole
    call (the VAE's encode and decode in)."""
    learned = make_method(editor, method, 5, False)
    first, stop = first_call_clock(editor)
    marks: list[float] = []

    def mark(step: int) -> None:
        sync(editor.device)
        marks.append(time.perf_counter())

    start = time.perf_counter()
    try:
        sample(editor, learned, images, steps=steps, on_step=mark)
    finally:
        stop()
    sync(editor.device)
    return (marks[-1] - first[0]) / steps, time.perf_counter() - start


@dataclass
class Ratio:
    """A ratio measured once per cycle: every cycle's value, their median and quartiles."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.values) < 2:
            return self.values[0], self.values[0]
        q1, _, q3 = statistics.quantiles(self.values, n=4, method="inclusive")
        return q1, q3

    @property
    def spread(self) -> float:
        """The interquartile range relative to the median: unlike the full range, one cycle disturbed by a burst
        of load does not move it."""
        q1, q3 = self.quartiles
        return (q3 - q1) / self.median

    def spread_warnings(self, what: str) -> list[str]:
        """The warning a result carries when ``what``'s cycles cannot be judged: one cycle, or a spread over
        SPREAD_WARNING (a busy machine); none otherwise."""
        q1, q3 = self.quartiles
        if len(self.values) < 2:
            return [f"{what}: one cycle, so no spread to judge it by; use --steps of 2 blocks or more"]
        if self.spread > SPREAD_WARNING:
            return [f"{what}: the middle half of {len(self.values)} cycles ranges {q1:.2f}-{q3:.2f} around the "
                    f"median {self.median:.2f} (spread {self.spread:.0%}): the machine's load varies; more --steps and "
                    f"a fixed thread count (OMP_NUM_THREADS) steady it"]
        return []


def interleaved(trainer: Trainer, others: list[Callable[[int], float]], warmup: int, steps: int, block: int,
                on_warm: Callable[[], None] | None = None) -> tuple[list[float], list[list[float]]]:
    """Run ``trainer`` (ours) for ``warmup + steps`` steps; after its warm-up run each of ``others`` (a function
    that runs that many steps of its own and returns their seconds) for ``warmup`` untimed steps, then after each
    block of ``block`` steps of ours the same number of steps of each. Seconds per block: ours, and each other's.

    Ours runs its own loop unchanged (the others run from its progress callback, with its method installed);
    a block of ours is timed from the end of the previous cycle to the refresh that ends it, which waits for the
    device, so it holds the block's whole work."""
    if warmup < 1:
        raise InvertError("need at least one warm-up step")
    if steps % block:
        raise InvertError(f"--steps {steps} is not a multiple of --block {block}")
    ours: list[float] = []
    times: list[list[float]] = [[] for _ in others]
    resumed = [0.0]

    def boundary(done: int) -> bool:
        return done >= warmup and (done - warmup) % block == 0

    def at_refresh(p: FitProgress) -> None:
        if not boundary(p.step):
            return
        if p.step == warmup:
            if on_warm is not None:
                on_warm()
            for run in others:
                run(warmup)
        else:
            ours.append(time.perf_counter() - resumed[0])
            for run, seconds in zip(others, times):
                seconds.append(run(block))
        resumed[0] = time.perf_counter()

    trainer.run(quiet=True, progress=at_refresh, sync_at=boundary)
    return ours, times


def benchmark(model: str, options: SpeedOptions, device: str = "auto", dtype: str = "auto",
              low_memory: bool = False, load: Callable[[str, str, str], Editor] = load_editor) -> dict:
    """Time ours (fit and apply), the reference loop and the floor on ``model``; one flat dict of settings and
    results (ratios: medians over the interleaved cycles, with their quartiles). ``load(model, device, dtype)``
    gives each loop's editor (:func:`load_editor` by default).

    A "step" is one timestep trained: ours batches InstructBrush's time parts, so one of its optimizer steps
    counts ``parts`` steps. The CLIP direction term (one projection per step, negligible) is in neither loop:
    the benchmark needs no CLIP model."""
    o = options
    editor = load(model, device, dtype)
    resolution = o.resolution or editor.resolution
    befores, afters = synthetic_pairs(o.pairs, resolution)
    settings = FitSettings(steps=o.warmup + o.steps, resolution=resolution, init_text=INIT_TEXT,
                           loss_target=o.loss_target)
    editor.set_low_memory(low_memory)
    method = make_method(editor, o.method, o.parts, sequential=False)
    trainer = trainer_for(editor, method, befores, afters, settings)
    rows = trainer.schedule.shape[1]  # timesteps trained per optimizer step (brush: one per time part)
    result: dict = {"method": o.method, "device": device_name(editor.device), "model": model,
                    "resolution": resolution, "dtype": _name(editor.dtype), "loss_target": o.loss_target,
                    "low_memory": low_memory, "torch": torch.__version__, "block": o.block, "warnings": []}
    others: list[Callable[[int], float]] = []
    reference = _LazyReference(model, editor, o, befores, afters, settings, low_memory, load)
    if o.reference:
        others.append(reference.run)
    if o.floor:
        floor = FloorLoop(trainer)
        others.append(floor.run)
    peak = {}
    reset_peak_memory(editor.device)
    start = time.perf_counter()
    ours, times = interleaved(trainer, others, o.warmup, o.steps, o.block,
                              on_warm=lambda: peak.update(ours=peak_memory_mb(editor.device),
                                                          warmup=time.perf_counter() - start))
    rate = rows * o.steps / sum(ours)
    whole = o.fit_steps * rows
    result.update(timed_steps=o.steps * rows, warmup_seconds=peak["warmup"], steps_per_s=rate,
                  seconds_per_1000_steps=1000 / rate, whole_fit_steps=whole, projected_fit_seconds=whole / rate,
                  peak_memory_mb=peak["ours"], cycles=len(ours))
    if o.reference:
        ref = times.pop(0)
        ref_rate = o.steps / sum(ref)
        speedup = Ratio([(r / o.block) / (s / (o.block * rows)) for r, s in zip(ref, ours)])
        result.update(reference_dtype=_name(reference.compute), reference_autocast=reference.autocast,
                      reference_steps_per_s=ref_rate, reference_seconds_per_1000_steps=1000 / ref_rate,
                      reference_projected_fit_seconds=whole / ref_rate,
                      reference_peak_memory_mb=reference.peak_memory_mb,
                      **_ratio("speedup_vs_reference", speedup))
        result["warnings"] += speedup.spread_warnings("ours/reference")
        reference.loop = None  # the reference's own model, if it loaded one, goes before apply is timed
    if o.floor:
        bare = times.pop(0)
        over = Ratio([s / f for s, f in zip(ours, bare)])
        result.update(floor_steps_per_s=rows * o.steps / sum(bare), **_ratio("ours_over_floor", over))
        result["warnings"] += over.spread_warnings("ours/floor")
        if o.reference:  # the structural ceiling: what ours would gain over the reference with no overhead
            ceiling = Ratio([(r / o.block) / (f / (o.block * rows)) for r, f in zip(ref, bare)])
            result.update(ceiling_vs_reference=ceiling.median, ceiling_fraction=1 / over.median)
    inputs = (befores * o.batch_size)[:o.batch_size]
    apply_rate, apply_peak = time_apply(editor, method, inputs, o.apply_steps, o.apply_batches)
    result.update(apply_steps=o.apply_steps, batch_size=o.batch_size, apply_images_per_s=apply_rate,
                  apply_peak_memory_mb=apply_peak,
                  sampling_rows_per_image=len(editor.groups(IP2P_GUIDANCE, IP2P_IMAGE_GUIDANCE)))
    if o.fit_cost is not None:
        result.update(project_phases(o.fit_cost, result))
    return result


def project_phases(cost: dict, result: dict) -> dict:
    """A fit's phases (its ``cost``: denoiser rows per phase, as ``fit --json`` and the .inst record them) projected
    onto the benchmarked model and resolution from the per-row costs measured here: a forward+backward row costs
    what one timestep row of ours' fit step costs (its guidance rows without autograd included, as the fit runs
    them), a forward-only row what one row of a sampling step costs (the VAE's encode and decode of apply's call
    included, spread over its steps). Rows at the measured batch sizes: per-row costs of other batch sizes differ
    where the device is not saturated (small models, CPUs). Seconds per phase, and the checks' (init search and
    validation) share of the loop's."""
    per_step = 1 / result["steps_per_s"]  # one timestep row trained, with its guidance rows
    per_forward = 1 / (result["apply_images_per_s"] * result["apply_steps"] * result["sampling_rows_per_image"])
    # A step's guidance rows without autograd are in per_step: only the trained rows count its steps.
    seconds = {phase: c["backward_rows"] * per_step + (0 if phase == "training" else c["forward_rows"] * per_forward)
               for phase, c in cost.items()}
    checks = sum(v for phase, v in seconds.items() if phase != "training")
    return {"projected_phase_seconds": seconds,
            "projected_checks_over_loop": checks / seconds["training"] if seconds["training"] else None}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _ratio(key: str, ratio: Ratio) -> dict:
    return {key: ratio.median, f"{key}_quartiles": list(ratio.quartiles), f"{key}_spread": ratio.spread,
            f"{key}_cycles": ratio.values}


class _LazyReference:
    """The reference loop, set up at its first call (after ours' warm-up, so ours' peak memory is its own). It
    computes in ours' precision (or ``reference_dtype``) with fp32 weights, by autocast where that precision is
    lower, as the official mixed-precision run. It shares ours' model where it can: fp32 weights, no gradient
    checkpointing, and a method whose installation nests in ours' (not a LoRA adapter); else it loads its own."""

    def __init__(self, model: str, editor: Editor, o: SpeedOptions, befores, afters, settings: FitSettings,
                 low_memory: bool, load: Callable[[str, str, str], Editor]):
        self.model, self.editor, self.o, self.load = model, editor, o, load
        self.befores, self.afters, self.settings = befores, afters, settings
        self.compute = resolve_dtype(o.reference_dtype, editor.device) if o.reference_dtype else editor.dtype
        self.autocast = self.compute != torch.float32
        # An adapter (a method that changes every row) wraps the UNet's own layers: a second one would wrap the
        # first's, so such a reference loads its own model.
        nests = not method_class(o.method).conditions_all_rows
        self.shared = editor.dtype == torch.float32 and not low_memory and nests
        self.loop: ReferenceLoop | None = None
        self.peak_memory_mb: float | None = None

    def run(self, steps: int) -> float:
        if self.loop is not None:
            return self.loop.run(steps)
        device, o = self.editor.device, self.o
        reset_peak_memory(device)
        held = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" and not self.shared else 0.0
        editor = self.editor if self.shared else self.load(self.model, str(device), "fp32")
        # The sequential schedule trains the parts one after another; any of its steps costs the same.
        trainer = trainer_for(editor, make_method(editor, o.method, o.parts, sequential=True), self.befores,
                              self.afters, self.settings)
        self.loop = ReferenceLoop(trainer, self.compute if self.autocast else None)
        seconds = self.loop.run(steps)
        # Its own model counts, not ours that stays resident: CUDA's allocator tells them apart, a process's peak
        # RSS does not (the heap ours freed hides how much the reference added), so a CPU figure only when shared.
        if self.shared or device.type == "cuda":
            self.peak_memory_mb = peak_memory_mb(device) - held
        return seconds


__all__ = ["FloorLoop", "INIT_TEXT", "ReferenceLoop", "SpeedOptions", "apply_block", "benchmark", "device_name",
           "first_call_clock", "fit_block", "interleaved", "make_method", "peak_memory_mb", "project_phases",
           "reference_loss", "reference_run", "reset_peak_memory", "sync", "synthetic_pairs", "time_apply",
           "trainer_for"]
