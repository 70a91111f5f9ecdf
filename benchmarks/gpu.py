"""The whole GPU speed table in one call, for a machine with one CUDA GPU and no network.

For visii, brush and lora on the full IP2P architecture with random weights at 512 px, in fp16 and in bf16:
fit steps/s of ours against the reference loop (interleaved in one run, the reference in the same precision by
autocast, as the official fp16 mixed-precision code), ours over the floor, the projected whole fit, peak memory
with and without ``--low-memory``, and apply images/s at batch 1 and 4; then a separate precision line (ours in
fp16 against the reference in fp32) and the host CPU's bf16 against fp32 on the toy model. Writes
``OUT/gpu_speed.json`` and ``OUT/gpu_speed.md`` after every measurement, so a run cut short keeps what it did.

Every measurement runs in its own try block (an error is recorded and the run goes on) and under a time box;
the run as a whole stops starting new ones when its budget (default 8 minutes, all included) is spent, the
most important first. ``--tiny`` runs the same code on the toy model at its own size on whatever device there
is (the CPU in CI), with a few steps: it checks that the script works, its figures mean nothing.

``--backbones`` adds, after the IP2P table, each named model (``random:NAME``: random weights from the shipped
full-size configs of that name; or a diffusers folder) in bf16 at its own resolution: for each method, ours'
fit seconds per step and peak memory, default and ``--low-memory``, and apply seconds per image and its peak
(no reference loop or floor: those are IP2P's). ``--backbones-only`` leaves the IP2P table out
(examples/gpu_backbones.sh).

    python -m benchmarks.gpu --out gpu-speed               # on the GPU machine; or examples/gpu_speed.sh
    python -m benchmarks.gpu --out /tmp/gpu-check --tiny   # the CPU check CI runs
    python -m benchmarks.gpu --out gpu-sdxl --backbones random:sdxl-instructpix2pix --backbones-only
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import signal
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from invert.backbones import Editor, load_editor, resolve_device, resolve_dtype

from .speed import SpeedOptions, benchmark, device_name

METHODS = ("visii", "brush", "lora")
PRECISIONS = ("fp16", "bf16")


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full one for a GPU, or the tiny one that checks the script."""

    model: str
    fit: SpeedOptions  # the interleaved fit measurement (ours, reference, floor) and apply at batch 1
    memory_steps: int  # ours alone, for peak memory (default and --low-memory)
    apply_steps: int
    host_cpu: dict  # arguments of the host CPU's precision measurement
    box_seconds: float  # time box of one measurement
    backbone: SpeedOptions  # ours alone on another backbone, at its own resolution (--backbones)


BACKBONE = dict(warmup=1, reference=False, floor=False, apply_batches=1)
FULL = Plan("random", SpeedOptions(resolution=512, steps=20, block=5, warmup=5, apply_steps=20, apply_batches=2),
            memory_steps=3, apply_steps=20, host_cpu=dict(steps=3, apply_steps=2, cycles=3), box_seconds=90,
            backbone=SpeedOptions(steps=3, block=3, apply_steps=20, **BACKBONE))
# The toy model at half its size: 8x8 latents still pass through both UNet levels.
TINY = Plan("toy", SpeedOptions(resolution=16, steps=1, block=1, warmup=1, apply_steps=1), memory_steps=1,
            apply_steps=1, host_cpu=dict(resolution=16, steps=1, apply_steps=1, cycles=1, warmup_cycles=0,
                                         modes=("fp32", "bf16-autocast")),
            box_seconds=60, backbone=SpeedOptions(steps=1, block=1, apply_steps=1, **BACKBONE))


class TimeBoxExceeded(Exception):
    pass


@contextlib.contextmanager
def time_box(seconds: float):
    """Raise TimeBoxExceeded in the block after ``seconds`` (a signal: between Python operations, so a long
    kernel on the CPU finishes first; GPU work is queued asynchronously and ends the wait at once)."""
    def expire(signum, frame):
        raise TimeBoxExceeded(f"over its time box of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Models:
    """One copy of the model's weights in fp32 on the host, built once (random weights take a while to draw);
    each editor the benchmarks ask for is a copy of it in the dtype asked for, on the device, freed with it."""

    def __init__(self, model: str):
        self.model = model
        self.base: Editor | None = None

    def __call__(self, model: str, device: str, dtype: str) -> Editor:
        if self.base is None:
            self.base = load_editor(self.model, "cpu", "fp32")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        base = self.base.pipe
        # The networks are copied; the tokenizer (a large vocabulary, slow to deep-copy) and scheduler are shared.
        nets = {name: copy.deepcopy(getattr(base, name)).to(dtype=dt) for name in ("unet", "vae", "text_encoder")}
        pipe = type(base)(**nets, tokenizer=base.tokenizer, scheduler=base.scheduler, safety_checker=None,
                          feature_extractor=None, requires_safety_checker=False)
        return type(self.base)(pipe, model, dev, dt)


class Run:
    """The measurements of one run, written out after each."""

    def __init__(self, out: Path, plan: Plan, budget: float, device: str):
        self.out, self.plan, self.budget, self.device = out, plan, budget, device
        self.start = time.perf_counter()
        self.records: list[dict] = []
        self.models = Models(plan.model)
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def measure(self, name: str, fn: Callable[[], dict], box: float | None = None, **labels) -> dict | None:
        """Run one measurement in a try block, time-boxed (the plan's box, or ``box``) within what is left of the
        budget; record it."""
        record = {"name": name, **labels}
        box = min(box or self.plan.box_seconds, self.left())
        if box < 1:
            record["error"] = "skipped: the run's time budget is spent"
        else:
            began = time.perf_counter()
            try:
                with time_box(box):
                    record["result"] = fn()
            except Exception as exc:  # a failed measurement is a result too; the run goes on
                record["error"] = f"{type(exc).__name__}: {exc}"
                record["traceback"] = traceback.format_exc(limit=4)
            record["seconds"] = time.perf_counter() - began
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.records.append(record)
        self.write()
        return record.get("result")

    def fit(self, method: str, precision: str, **changes) -> dict:
        options = replace(self.plan.fit, method=method, **changes)
        return benchmark(self.plan.model, options, self.device, precision, load=self.models)

    def write(self) -> None:
        summary = {"device": self.device_name(), "host": platform.processor() or platform.machine(),
                   "torch": torch.__version__, "model": self.plan.model, "budget_seconds": self.budget,
                   "elapsed_seconds": time.perf_counter() - self.start, "measurements": self.records}
        (self.out / "gpu_speed.json").write_text(json.dumps(summary, indent=2) + "\n")
        (self.out / "gpu_speed.md").write_text(markdown(summary) + "\n")

    def device_name(self) -> str:
        return device_name(resolve_device(self.device))


def run(out: Path, tiny: bool = False, budget: float = 480.0, device: str = "auto",
        methods: tuple[str, ...] = METHODS, precisions: tuple[str, ...] = PRECISIONS,
        backbones: tuple[str, ...] = (), backbones_only: bool = False) -> dict:
    """Every measurement for ``methods`` and ``precisions``, most important first, then each of ``backbones``,
    within ``budget`` seconds; the summary written to ``out``."""
    plan = TINY if tiny else FULL
    r = Run(out, plan, budget, device)
    if not backbones_only:
        _ip2p_table(r, methods, precisions)
    for model in backbones:
        _backbone(r, model, methods)
    r.write()
    return json.loads((out / "gpu_speed.json").read_text())


def _ip2p_table(r: "Run", methods: tuple[str, ...], precisions: tuple[str, ...]) -> None:
    from .precision import speed as precision_speed

    plan = r.plan
    quick = dict(steps=plan.memory_steps, block=plan.memory_steps, warmup=1, reference=False, floor=False,
                 apply_steps=plan.apply_steps, apply_batches=1)
    # Drawing random weights for 1.1B parameters takes a while: once, before the first time box.
    r.measure("load", lambda: {"seconds": _timed(lambda: r.models(plan.model, "cpu", "fp32"))}, box=r.budget / 4)
    for precision in precisions:
        for method in methods:
            r.measure("fit", lambda: r.fit(method, precision), method=method, precision=precision)
    for precision in precisions:
        for method in methods:
            r.measure("alone", lambda: _alone(r, method, precision, quick), method=method, precision=precision)
    # Precisions compared, apart from the ratio above: ours in half precision against the reference in fp32.
    half, first = precisions[0], methods[0]
    r.measure("fit_vs_fp32_reference", lambda: r.fit(first, half, reference_dtype="fp32", floor=False),
              method=first, precision=half)
    r.measure("host_cpu_bf16", lambda: precision_speed("toy", log=lambda line: None, **plan.host_cpu),
              method="visii", precision="fp32/bf16 (host CPU)")


def _backbone(r: "Run", model: str, methods: tuple[str, ...]) -> None:
    """``model`` loaded once in bf16 (random full-size weights take a while to draw), then for each method ours'
    fit, default and --low-memory, and apply (:func:`benchmarks.speed.benchmark` without reference or floor)."""
    loaded: list[Editor] = []

    def load() -> dict:
        return {"seconds": _timed(lambda: loaded.append(load_editor(model, r.device, "bf16")))}

    r.measure("backbone_load", load, box=max(r.plan.box_seconds, 240), backbone=model)
    if not loaded:
        return
    editor = loaded[0]

    def measure(method: str) -> dict:
        options = replace(r.plan.backbone, method=method)
        plain = benchmark(model, options, r.device, "bf16", load=lambda *args: editor)
        low = benchmark(model, options, r.device, "bf16", low_memory=True, load=lambda *args: editor)
        editor.set_low_memory(False)
        rows = plain["timed_steps"] // options.steps  # timesteps an optimizer step trains (brush: its time parts)
        return {"resolution": plain["resolution"], "rows": rows, "seconds_per_step": rows / plain["steps_per_s"],
                "peak_memory_mb": plain["peak_memory_mb"], "low_memory_seconds_per_step": rows / low["steps_per_s"],
                "low_memory_peak_memory_mb": low["peak_memory_mb"], "apply_steps": plain["apply_steps"],
                "apply_seconds_per_image": 1 / plain["apply_images_per_s"],
                "apply_peak_memory_mb": plain["apply_peak_memory_mb"],
                "low_memory_apply_peak_memory_mb": low["apply_peak_memory_mb"]}

    for method in methods:
        r.measure("backbone", lambda: measure(method), box=max(r.plan.box_seconds, 180), backbone=model,
                  method=method, precision="bf16")


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _alone(r: Run, method: str, precision: str, quick: dict) -> dict:
    """Ours alone, with and without --low-memory: fit peak memory and speed, and apply at batch 4."""
    plain = r.fit(method, precision, **quick, batch_size=4)
    low = benchmark(r.plan.model, replace(r.plan.fit, method=method, **quick), r.device, precision, low_memory=True,
                    load=r.models)
    return {"peak_memory_mb": plain["peak_memory_mb"], "steps_per_s": plain["steps_per_s"],
            "apply_batch_4_images_per_s": plain["apply_images_per_s"],
            "apply_batch_4_peak_memory_mb": plain["apply_peak_memory_mb"],
            "low_memory_peak_memory_mb": low["peak_memory_mb"], "low_memory_steps_per_s": low["steps_per_s"],
            "low_memory_apply_peak_memory_mb": low["apply_peak_memory_mb"]}


def markdown(summary: dict) -> str:
    """The table: a row per precision and method, then the separate lines and any errors."""
    found: dict[tuple, dict] = {}
    errors = []
    for m in summary["measurements"]:
        if "error" in m:
            errors.append(f"- {m['name']} {m.get('backbone', '')} {m.get('method', '')} {m.get('precision', '')}: "
                          f"{m['error']}")
        else:
            found[m["name"], m.get("method"), m.get("precision")] = m["result"]
    ip2p = any(name in ("fit", "alone") for name, _, _ in found)
    lines = [f"GPU speed on {summary['device']} (host {summary['host']}), torch {summary['torch']}"
             + (f", model {summary['model']}" if ip2p else "")
             + f"; {summary['elapsed_seconds']:.0f} s of a {summary['budget_seconds']:.0f} s budget."]
    if ip2p:
        lines += ["", "| precision | method | ours steps/s | reference steps/s | ours/reference, median (quartiles) | "
                      "ours/floor | whole fit s (ours / reference) | fit peak MB (default / --low-memory) | "
                      "apply images/s (batch 1 / 4) |",
                  "|---|---|---|---|---|---|---|---|---|"]
    for precision in PRECISIONS:
        for method in METHODS:
            fit = found.get(("fit", method, precision))
            alone = found.get(("alone", method, precision))
            if not (fit or alone):
                continue
            lines.append(f"| {precision} | {method} | {_f(fit, 'steps_per_s')} | {_f(fit, 'reference_steps_per_s')} | "
                         f"{_ratio(fit, 'speedup_vs_reference')} | {_ratio(fit, 'ours_over_floor')} | "
                         f"{_f(fit, 'projected_fit_seconds', '.0f')} / "
                         f"{_f(fit, 'reference_projected_fit_seconds', '.0f')} | "
                         f"{_f(alone, 'peak_memory_mb', '.0f')} / {_f(alone, 'low_memory_peak_memory_mb', '.0f')} | "
                         f"{_f(fit, 'apply_images_per_s')} / {_f(alone, 'apply_batch_4_images_per_s')} |")
    for (name, method, precision), vs32 in found.items():
        if name == "fit_vs_fp32_reference":
            lines += ["", f"Precision (a separate question): {method}, ours in {precision} against the reference in "
                          f"fp32: ours/reference {_ratio(vs32, 'speedup_vs_reference')} (above 1: ours faster)."]
    backbone_rows = [m for m in summary["measurements"] if m["name"] == "backbone" and "result" in m]
    if backbone_rows:
        lines += ["", "Other backbones, ours alone, bf16, random weights (fit: one optimizer step, every row of it; "
                      "apply: one image):", "",
                  "| model | method | resolution | fit s/step (default / --low-memory) | fit peak MB (default / "
                  "--low-memory) | apply s/image (steps) | apply peak MB |", "|---|---|---|---|---|---|---|"]
        for m in backbone_rows:
            b = m["result"]
            lines.append(f"| {m['backbone']} | {m['method']} | {b['resolution']} | {_f(b, 'seconds_per_step')} / "
                         f"{_f(b, 'low_memory_seconds_per_step')} | {_f(b, 'peak_memory_mb', '.0f')} / "
                         f"{_f(b, 'low_memory_peak_memory_mb', '.0f')} | {_f(b, 'apply_seconds_per_image')} "
                         f"({b['apply_steps']}) | {_f(b, 'apply_peak_memory_mb', '.0f')} |")
    cpu = found.get(("host_cpu_bf16", "visii", "fp32/bf16 (host CPU)"))
    if cpu:
        units = ", ".join(k for k, v in cpu["cpu_bf16"].items() if v) or "none"
        lines += ["", f"Host CPU ({cpu['device']}, bf16 units: {units}), toy model, time relative to fp32: " +
                  "; ".join(f"{mode} fit {r['fit_vs_fp32']:.2f}x, apply {r['apply_vs_fp32']:.2f}x"
                            for mode, r in cpu["modes"].items())]
    if errors:
        lines += ["", "Not measured:", *errors]
    return "\n".join(lines)


def _f(result: dict | None, key: str, fmt: str = ".3g") -> str:
    value = None if result is None else result.get(key)
    return "-" if value is None else format(value, fmt)


def _ratio(result: dict | None, key: str) -> str:
    if result is None or key not in result:
        return "-"
    q1, q3 = result[f"{key}_quartiles"]
    return f"{result[key]:.2f}x ({q1:.2f}-{q3:.2f})"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_speed.json and gpu_speed.md")
    p.add_argument("--tiny", action="store_true", help="the toy model, a few steps: checks the script on any device")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 8 minutes)")
    p.add_argument("--device", default="auto")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated; default: all")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated; default: all")
    p.add_argument("--backbones", default="", help="comma-separated models measured after the IP2P table (ours "
                                                   "alone, bf16): random:NAME (shipped full-size configs) or folders")
    p.add_argument("--backbones-only", action="store_true", help="leave the IP2P table out")
    args = p.parse_args(argv)
    methods, precisions = tuple(args.methods.split(",")), tuple(args.precisions.split(","))
    for chosen, known in ((methods, METHODS), (precisions, PRECISIONS)):
        if not set(chosen) <= set(known):
            p.error(f"choose from {', '.join(known)}")
    backbones = tuple(b for b in args.backbones.split(",") if b)
    summary = run(args.out, args.tiny, args.budget, args.device, methods, precisions, backbones, args.backbones_only)
    print((args.out / "gpu_speed.md").read_text())
    return summary


if __name__ == "__main__":
    main()
