"""The whole GPU speed table in one call, for a machine with one CUDA GPU and no network.

For visii, brush and lora on the full IP2P architecture with random weights at 512 px, in fp16 and in bf16:
fit steps/s of ours against the reference loop (interleaved in one run, the reference in the same precision by
autocast, as the official fp16 mixed-precision code), ours over the floor, the projected whole fit, peak memory
with and without ``--low-memory``, and apply images/s at batch 1 and 4; then the DiT editors, FLUX.2 [klein]
base 4B and FLUX.1 Kontext [dev] with random weights from the shipped full-size configs, drawn on the GPU in
bf16, at 1024 px with ``--low-memory``: fit seconds per step and peak memory, apply seconds per image and peak
memory (``benchmarks.flux_memory`` projects the same peaks from the configs alone); then a separate precision line
(ours in fp16 against the reference in fp32) and the host CPU's bf16 against fp32 on the toy model. Writes
``OUT/gpu_speed.json`` and ``OUT/gpu_speed.md`` after every measurement, so a run cut short keeps what it did.

Every measurement runs in its own try block (an error is recorded and the run goes on) and under a time box;
the run as a whole stops starting new ones when its budget (default 8 minutes, all included) is spent, the
most important first. ``--tiny`` runs the same code on the toy model at its own size, and the DiT part on tiny
configs (benchmarks/configs/tiny-*), on whatever device there is (the CPU in CI), with a few steps: it checks that
the script works, its figures mean nothing.

    python -m benchmarks.gpu --out gpu-speed               # on the GPU machine; or examples/gpu_speed.sh
    python -m benchmarks.gpu --out /tmp/gpu-check --tiny   # the CPU check CI runs
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

from invert.backbones import Editor, backbone_class, load_editor, resolve_device, resolve_dtype
from invert.backbones.flux2_klein import KLEIN_CONFIGS
from invert.backbones.flux_kontext import KONTEXT_CONFIGS

from .speed import SpeedOptions, benchmark, device_name

METHODS = ("visii", "brush", "lora")
PRECISIONS = ("fp16", "bf16")
MODELS = ("ip2p", "flux2-klein", "flux1-kontext")  # the IP2P table, then each DiT editor's rows
TINY_CONFIGS = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full one for a GPU, or the tiny one that checks the script."""

    model: str
    fit: SpeedOptions  # the interleaved fit measurement (ours, reference, floor) and apply at batch 1
    memory_steps: int  # ours alone, for peak memory (default and --low-memory)
    apply_steps: int
    host_cpu: dict  # arguments of the host CPU's precision measurement
    box_seconds: float  # time box of one measurement
    dits: dict[str, Path]  # DiT backbone -> folder of its configs (random weights)
    dit: SpeedOptions  # their fit and apply, ours alone, bf16, --low-memory


FULL = Plan("random", SpeedOptions(resolution=512, steps=20, block=5, warmup=5, apply_steps=20, apply_batches=2),
            memory_steps=3, apply_steps=20, host_cpu=dict(steps=3, apply_steps=2, cycles=3), box_seconds=90,
            dits={"flux2-klein": KLEIN_CONFIGS, "flux1-kontext": KONTEXT_CONFIGS},
            dit=SpeedOptions(resolution=1024, steps=3, block=3, warmup=1, apply_steps=4, reference=False,
                             floor=False))
# The toy model at half its size: 8x8 latents still pass through both UNet levels.
TINY = Plan("toy", SpeedOptions(resolution=16, steps=1, block=1, warmup=1, apply_steps=1), memory_steps=1,
            apply_steps=1, host_cpu=dict(resolution=16, steps=1, apply_steps=1, cycles=1, warmup_cycles=0,
                                         modes=("fp32", "bf16-autocast")),
            box_seconds=60, dits={"flux2-klein": TINY_CONFIGS / "tiny-flux2-klein",
                                  "flux1-kontext": TINY_CONFIGS / "tiny-flux1-kontext"},
            dit=SpeedOptions(resolution=32, steps=1, block=1, warmup=1, apply_steps=1, reference=False, floor=False))


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
        nets = {name: copy.deepcopy(part).to(dtype=dt) for name, part in base.components.items()
                if isinstance(part, torch.nn.Module)}
        options = {k: v for k, v in base.config.items() if not k.startswith("_") and k not in base.components}
        pipe = type(base)(**{**base.components, **nets}, **options)
        return type(self.base)(pipe, model, dev, dt)


def random_dit(name: str, folder: Path, device: str, dtype: str = "bf16") -> Editor:
    """``name``'s backbone with random weights from the configs in ``folder``, drawn on the device in ``dtype``
    directly (12B parameters in fp32 on the host would take minutes and 45 GB); not fingerprinted."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    cls = backbone_class(name)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        with dev:
            pipe = cls.from_configs(folder)
    finally:
        torch.set_default_dtype(previous)
    return cls(pipe, f"random:{folder}", dev, dt, fingerprint="random weights")


class Run:
    """The measurements of one run, written out after each."""

    def __init__(self, out: Path, plan: Plan, budget: float, device: str):
        self.out, self.plan, self.budget, self.device = out, plan, budget, device
        self.start = time.perf_counter()
        self.records: list[dict] = []
        self.models = Models(plan.model)
        self.dit: tuple[str, Editor] | None = None  # the DiT editor of the latest DiT measurement
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
        models: tuple[str, ...] = MODELS) -> dict:
    """Every measurement for ``methods``, ``precisions`` and ``models``, most important first, within ``budget``
    seconds; the summary written to ``out``."""
    from .precision import speed as precision_speed

    plan = TINY if tiny else FULL
    r = Run(out, plan, budget, device)
    quick = dict(steps=plan.memory_steps, block=plan.memory_steps, warmup=1, reference=False, floor=False,
                 apply_steps=plan.apply_steps, apply_batches=1)
    ip2p = "ip2p" in models
    if ip2p:
        # Drawing random weights for 1.1B parameters takes a while: once, before the first time box.
        r.measure("load", lambda: {"seconds": _timed(lambda: r.models(plan.model, "cpu", "fp32"))}, box=budget / 4)
        for precision in precisions:
            for method in methods:
                r.measure("fit", lambda: r.fit(method, precision), method=method, precision=precision)
    for name, folder in plan.dits.items():
        if name in models:
            for method in methods:
                r.measure("dit", lambda: _dit(r, name, folder, method), box=2 * plan.box_seconds, method=method,
                          precision="bf16", model=name)
    r.dit = None  # the last DiT's weights go before the next measurements
    if ip2p:
        for precision in precisions:
            for method in methods:
                r.measure("alone", lambda: _alone(r, method, precision, quick), method=method, precision=precision)
        # Precisions compared, apart from the ratio above: ours in half precision against the reference in fp32.
        half, first = precisions[0], methods[0]
        r.measure("fit_vs_fp32_reference", lambda: r.fit(first, half, reference_dtype="fp32", floor=False),
                  method=first, precision=half)
        r.measure("host_cpu_bf16", lambda: precision_speed("toy", log=lambda line: None, **plan.host_cpu),
                  method="visii", precision="fp32/bf16 (host CPU)")
    r.write()
    return json.loads((out / "gpu_speed.json").read_text())


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _dit(r: Run, name: str, folder: Path, method: str) -> dict:
    """A DiT editor's fit (ours alone, --low-memory: gradient checkpointing, text encoders on the host between
    encodings) and apply at batch 1, in bf16. The random model is drawn once per backbone."""
    if r.dit is None or r.dit[0] != name:
        r.dit = None  # one DiT on the device at a time
        r.dit = name, random_dit(name, folder, r.device)
    editor = r.dit[1]
    result = benchmark(f"random:{folder}", replace(r.plan.dit, method=method), r.device, "bf16", low_memory=True,
                       load=lambda *_: editor)
    return {"seconds_per_step": 1 / result["steps_per_s"], "peak_memory_mb": result["peak_memory_mb"],
            "apply_seconds_per_image": 1 / result["apply_images_per_s"],
            "apply_peak_memory_mb": result["apply_peak_memory_mb"], "resolution": result["resolution"],
            "apply_steps": result["apply_steps"], "timed_steps": result["timed_steps"]}


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
            label = " ".join(str(m[k]) for k in ("name", "model", "method", "precision") if m.get(k))
            errors.append(f"- {label}: {m['error']}")
        else:
            found[m["name"], m.get("method"), m.get("precision")] = m["result"]
    lines = [f"GPU speed on {summary['device']} (host {summary['host']}), torch {summary['torch']}, model "
             f"{summary['model']}; {summary['elapsed_seconds']:.0f} s of a {summary['budget_seconds']:.0f} s budget.",
             "", "| precision | method | ours steps/s | reference steps/s | ours/reference, median (quartiles) | "
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
    if len(lines) == 4:  # no IP2P row (--models without ip2p): no IP2P table
        lines = lines[:1]
    dits = [m for m in summary["measurements"] if m["name"] == "dit" and "result" in m]
    if dits:
        lines += ["", "DiT editors, random weights from the full-size configs, bf16, --low-memory (gradient "
                      "checkpointing, text encoders on the host between encodings), batch 1:", "",
                  "| model | method | px | fit s/step | fit peak MB | apply s/image (steps) | apply peak MB |",
                  "|---|---|---|---|---|---|---|"]
        for m in dits:
            d = m["result"]
            lines.append(f"| {m['model']} | {m['method']} | {d['resolution']} | {_f(d, 'seconds_per_step')} | "
                         f"{_f(d, 'peak_memory_mb', '.0f')} | {_f(d, 'apply_seconds_per_image')} "
                         f"({d['apply_steps']}) | {_f(d, 'apply_peak_memory_mb', '.0f')} |")
    for (name, method, precision), vs32 in found.items():
        if name == "fit_vs_fp32_reference":
            lines += ["", f"Precision (a separate question): {method}, ours in {precision} against the reference in "
                          f"fp32: ours/reference {_ratio(vs32, 'speedup_vs_reference')} (above 1: ours faster)."]
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
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated; default: all (the DiT "
                   "editors run in bf16)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: ip2p (the table), flux2-klein, "
                   "flux1-kontext; default: all")
    args = p.parse_args(argv)
    methods, precisions = tuple(args.methods.split(",")), tuple(args.precisions.split(","))
    models = tuple(args.models.split(","))
    for chosen, known in ((methods, METHODS), (precisions, PRECISIONS), (models, MODELS)):
        if not set(chosen) <= set(known):
            p.error(f"choose from {', '.join(known)}")
    summary = run(args.out, args.tiny, args.budget, args.device, methods, precisions, models)
    print((args.out / "gpu_speed.md").read_text())
    return summary


if __name__ == "__main__":
    main()
