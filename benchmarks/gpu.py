"""The whole GPU speed table in one call, for a machine with one CUDA GPU and no network.

What it runs, most important first, within its budget (``--budget``, default 480 s: 8 minutes, all included, on
one H100; the device lease is 15 minutes with the machine's start):

1. The IP2P table (about 210 s of the budget): for visii, brush and lora on the full IP2P architecture with random
   weights at 512 px, in fp16 and in bf16: fit steps/s of ours against the reference loop (interleaved in one
   run, the reference in the same precision by autocast, as the official fp16 mixed-precision code), ours over
   the floor, the projected whole fit, then peak memory with and without ``--low-memory`` and apply images/s at
   batch 1 and 4.
2. Every other registered backbone (:data:`invert.backbones.BACKBONES`, in its order: today FLUX.2 [klein] base
   4B, SDXL InstructPix2Pix, FLUX.1 Kontext [dev]; about 80 s each), with random weights from its shipped
   full-size configs (``Editor.full_size_configs``) drawn on the device in bf16, at its own resolution, for each
   method, ours alone: fit seconds per optimizer step and peak memory with ``--low-memory`` and without, and
   apply seconds per image (a few sampling steps) with its peak (``benchmarks.flux_memory`` projects the FLUX
   peaks from the configs alone).
3. The table's extra lines (about 30 s): ours in fp16 against the reference in fp32, and the host CPU's bf16
   against fp32 on the toy model.

Each part has a deadline (the shares above, summed in order, scaled to the budget and to the parts chosen with
``--models``); a part that ends early leaves its time to the next. Every measurement runs in its own try block
(an error, such as running out of memory without ``--low-memory``, is recorded and the run goes on) under a time
box within its part's deadline; a measurement that would start past it is recorded as skipped. The shares are
estimates from the models' sizes, not yet checked on a GPU (none has been lent). ``OUT/gpu_speed.json`` and
``OUT/gpu_speed.md`` are rewritten after every measurement, so a run cut short keeps what it did.

``--tiny`` runs the same code on the toy model at its own size and on each other backbone's tiny configs
(benchmarks/configs/tiny-<backbone name>), on whatever device there is (the CPU in CI), with a few steps: it
checks that the script works, its figures mean nothing.

    python -m benchmarks.gpu --out gpu-speed               # on the GPU machine; or examples/gpu_speed.sh
    python -m benchmarks.gpu --out gpu-klein --models flux2-klein   # one backbone, the whole budget
    python -m benchmarks.gpu --out /tmp/gpu-check --tiny   # the CPU check CI runs
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import json
import platform
import signal
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from invert.backbones import BACKBONES, Editor, backbone_class, backbone_of, load_editor, resolve_device, \
    resolve_dtype

from .speed import SpeedOptions, benchmark, device_name

METHODS = ("visii", "brush", "lora")
PRECISIONS = ("fp16", "bf16")
MODELS = tuple(BACKBONES)  # the table's backbone (IP2P) and every other one, measured in this order
TINY_CONFIGS = Path(__file__).parent / "configs"
# The denoiser rows of a default 1000-step visii fit (its init search, training and validation; `fit --json`'s
# cost, which does not depend on the model): projected onto the table's model from apply's per-row cost at batch 4,
# the fit's self-check against its loop (issue 27).
DEFAULT_FIT = Path(__file__).resolve().parents[1] / "examples" / "toy" / "selfcheck_fit1000_shared.json"
# Seconds of the default budget for each part, in the order they run; scaled to the budget and the parts chosen.
TABLE_SECONDS, BACKBONE_SECONDS, EXTRA_SECONDS = 210.0, 80.0, 30.0


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full one for a GPU, or the tiny one that checks the script."""

    model: str  # the IP2P table's model
    fit: SpeedOptions  # the interleaved fit measurement (ours, reference, floor) and apply at batch 1
    memory_steps: int  # ours alone, for peak memory (default and --low-memory)
    apply_steps: int
    host_cpu: dict  # arguments of the host CPU's precision measurement
    box_seconds: float  # time box of one measurement
    backbone: SpeedOptions  # every other backbone: ours alone, bf16, at its own resolution
    tiny: bool  # each other backbone from its tiny configs (else its shipped full-size ones)

    def configs(self, cls: type[Editor]) -> Path:
        """The folder of configs the backbone's random weights are drawn from."""
        return TINY_CONFIGS / f"tiny-{cls.name}" if self.tiny else cls.full_size_configs


FULL = Plan("random", SpeedOptions(resolution=512, steps=20, block=5, warmup=5, apply_steps=20, apply_batches=2),
            memory_steps=3, apply_steps=20, host_cpu=dict(steps=3, apply_steps=2, cycles=3), box_seconds=90,
            backbone=SpeedOptions(steps=2, block=2, warmup=1, apply_steps=4, reference=False, floor=False),
            tiny=False)
# The toy model at half its size: 8x8 latents still pass through both UNet levels.
TINY = Plan("toy", SpeedOptions(resolution=16, steps=1, block=1, warmup=1, apply_steps=1), memory_steps=1,
            apply_steps=1, host_cpu=dict(resolution=16, steps=1, apply_steps=1, cycles=1, warmup_cycles=0,
                                         modes=("fp32", "bf16-autocast")),
            box_seconds=60, backbone=SpeedOptions(steps=1, block=1, warmup=1, apply_steps=1, reference=False,
                                                  floor=False),
            tiny=True)


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


def random_weights(cls: type[Editor], folder: Path, device: str, dtype: str = "bf16") -> Editor:
    """Backbone ``cls`` with random weights from the configs in ``folder``, drawn on the device in ``dtype``
    directly (12B parameters in fp32 on the host would take minutes and 45 GB); not fingerprinted. (A module
    that a config builds in its own dtype, such as a CLIP text model inside another, is cast after.)"""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        with dev:
            pipe = cls.from_configs(folder, dtype=dt)
    finally:
        torch.set_default_dtype(previous)
    return cls(pipe, f"random:{folder}", dev, dt, fingerprint="random weights")


class Run:
    """The measurements of one run, written out after each."""

    def __init__(self, out: Path, plan: Plan, budget: float, device: str):
        self.out, self.plan, self.budget, self.device = out, plan, budget, device
        self.start = time.perf_counter()
        self.deadline = budget  # of the part running now, in seconds from the start
        self.records: list[dict] = []
        self.models = Models(plan.model)
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds left to the part running now (never past the budget)."""
        return min(self.deadline, self.budget) - self.elapsed()

    def measure(self, name: str, fn: Callable[[], dict], box: float | None = None, **labels) -> dict | None:
        """Run one measurement in a try block, time-boxed (the plan's box, or ``box``) within what is left of the
        part; record it."""
        record = {"name": name, **labels}
        box = min(box or self.plan.box_seconds, self.left())
        if box < 1:
            record["error"] = "skipped: its part's share of the time budget is spent"
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

    def parts(self, parts: list[tuple[float, Callable[[], None]]]) -> None:
        """Run each part (weight, function) in order, each until its deadline: the weights so far, as a share
        of their sum, of the budget."""
        total, done = sum(weight for weight, _ in parts), 0.0
        for weight, part in parts:
            done += weight
            self.deadline = self.budget * done / total
            part()
            gc.collect()  # the part's models go before the next part's are built
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def fit(self, method: str, precision: str, **changes) -> dict:
        options = replace(self.plan.fit, method=method, **changes)
        return benchmark(self.plan.model, options, self.device, precision, load=self.models)

    def write(self) -> None:
        summary = {"device": self.device_name(), "host": platform.processor() or platform.machine(),
                   "torch": torch.__version__, "model": self.plan.model, "budget_seconds": self.budget,
                   "elapsed_seconds": self.elapsed(), "measurements": self.records}
        (self.out / "gpu_speed.json").write_text(json.dumps(summary, indent=2) + "\n")
        (self.out / "gpu_speed.md").write_text(markdown(summary) + "\n")

    def device_name(self) -> str:
        return device_name(resolve_device(self.device))


def table_backbone(plan: Plan) -> str:
    """The backbone of the IP2P table's model (the one --models names for the table)."""
    return backbone_of(plan.model).name


def run(out: Path, tiny: bool = False, budget: float = 480.0, device: str = "auto",
        methods: tuple[str, ...] = METHODS, precisions: tuple[str, ...] = PRECISIONS,
        models: tuple[str, ...] = MODELS) -> dict:
    """Every measurement for ``methods``, ``precisions`` and ``models`` (registered backbone names; the table's
    stands for the IP2P table), most important first, within ``budget`` seconds; the summary written to ``out``."""
    plan = TINY if tiny else FULL
    r = Run(out, plan, budget, device)
    table = table_backbone(plan)
    parts = [(TABLE_SECONDS, lambda: _table(r, methods, precisions))] if table in models else []
    parts += [(BACKBONE_SECONDS, lambda name=name: _backbone(r, name, methods))
              for name in MODELS if name in models and name != table]
    if table in models:
        parts.append((EXTRA_SECONDS, lambda: _extra_lines(r, methods, precisions)))
    r.parts(parts)
    r.write()
    return json.loads((out / "gpu_speed.json").read_text())


def _table(r: Run, methods: tuple[str, ...], precisions: tuple[str, ...]) -> None:
    """The IP2P table: the interleaved fit measurement of each precision and method, then ours alone."""
    plan = r.plan
    quick = dict(steps=plan.memory_steps, block=plan.memory_steps, warmup=1, reference=False, floor=False,
                 apply_steps=plan.apply_steps, apply_batches=1)
    # Drawing random weights for 1.1B parameters takes a while: once, before the first time box.
    r.measure("load", lambda: {"seconds": _timed(lambda: r.models(plan.model, "cpu", "fp32"))}, box=r.left())
    for precision in precisions:
        for method in methods:
            r.measure("fit", lambda: r.fit(method, precision), method=method, precision=precision)
    for precision in precisions:
        for method in methods:
            r.measure("alone", lambda: _alone(r, method, precision, quick), method=method, precision=precision)


def _extra_lines(r: Run, methods: tuple[str, ...], precisions: tuple[str, ...]) -> None:
    """Precisions compared, apart from the table's ratio: ours in half precision against the reference in fp32;
    and the host CPU's bf16 against fp32."""
    from .precision import speed as precision_speed

    half, first = precisions[0], methods[0]
    r.measure("fit_vs_fp32_reference", lambda: r.fit(first, half, reference_dtype="fp32", floor=False),
              method=first, precision=half)
    r.measure("host_cpu_bf16", lambda: precision_speed("toy", log=lambda line: None, **r.plan.host_cpu),
              method="visii", precision="fp32/bf16 (host CPU)")


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@functools.cache
def _default_fit() -> dict:
    """DEFAULT_FIT's report, read once for every method and precision."""
    return json.loads(DEFAULT_FIT.read_text())


def _alone(r: Run, method: str, precision: str, quick: dict) -> dict:
    """Ours alone, with and without --low-memory: fit peak memory and speed, and apply at batch 4; for the method
    of DEFAULT_FIT, its self-check projected (the checks' share of the loop)."""
    report = _default_fit()
    own = report["cost"] if report["method"] == method else None
    plain = r.fit(method, precision, **quick, batch_size=4, fit_cost=own)
    low = benchmark(r.plan.model, replace(r.plan.fit, method=method, **quick), r.device, precision, low_memory=True,
                    load=r.models)
    return {"peak_memory_mb": plain["peak_memory_mb"], "steps_per_s": plain["steps_per_s"],
            "apply_batch_4_images_per_s": plain["apply_images_per_s"],
            "apply_batch_4_peak_memory_mb": plain["apply_peak_memory_mb"],
            "low_memory_peak_memory_mb": low["peak_memory_mb"], "low_memory_steps_per_s": low["steps_per_s"],
            "low_memory_apply_peak_memory_mb": low["apply_peak_memory_mb"],
            **({"checks_over_loop": plain["projected_checks_over_loop"]} if own else {})}


def _backbone(r: Run, name: str, methods: tuple[str, ...]) -> None:
    """Backbone ``name`` with random weights drawn once (on the device, in bf16), then for each method ours' fit
    and apply with --low-memory (what a fit of a large model runs with) and without, each its own measurement (a
    fit that runs out of memory without --low-memory is recorded so)."""
    cls = backbone_class(name)
    folder = r.plan.configs(cls)
    loaded: list[Editor] = []
    r.measure("backbone_load", lambda: {"seconds": _timed(lambda: loaded.append(random_weights(cls, folder,
                                                                                               r.device)))},
              box=r.left(), backbone=name)
    if not loaded:
        return
    editor = loaded.pop()
    for method in methods:
        for low_memory in (True, False):
            r.measure("backbone", lambda: _backbone_fit(r, editor, method, low_memory), backbone=name,
                      method=method, precision="bf16", low_memory=low_memory)


def _backbone_fit(r: Run, editor: Editor, method: str, low_memory: bool) -> dict:
    """One fit and apply of ``method`` on ``editor`` (:func:`benchmarks.speed.benchmark` without reference or
    floor): seconds per optimizer step (every row it trains: brush's time parts) and peaks."""
    options = replace(r.plan.backbone, method=method)
    result = benchmark(editor.model_id, options, r.device, "bf16", low_memory=low_memory, load=lambda *_: editor)
    rows = result["timed_steps"] // options.steps  # timesteps an optimizer step trains
    return {"resolution": result["resolution"], "rows": rows, "seconds_per_step": rows / result["steps_per_s"],
            "peak_memory_mb": result["peak_memory_mb"], "apply_steps": result["apply_steps"],
            "apply_seconds_per_image": 1 / result["apply_images_per_s"],
            "apply_peak_memory_mb": result["apply_peak_memory_mb"]}


def markdown(summary: dict) -> str:
    """The IP2P table (a row per precision and method), the other backbones' table (a row per backbone and
    method), the separate lines, and what was not measured."""
    found: dict[tuple, dict] = {}
    errors = []
    for m in summary["measurements"]:
        if "error" in m:
            label = " ".join(str(m[k]) for k in ("name", "backbone", "method", "precision") if m.get(k))
            mode = {True: " --low-memory", False: " default"}.get(m.get("low_memory"), "")
            errors.append(f"- {label}{mode}: {m['error']}")
        else:
            found[m["name"], m.get("backbone"), m.get("method"), m.get("precision"), m.get("low_memory")] = \
                m["result"]
    lines = [f"GPU speed on {summary['device']} (host {summary['host']}), torch {summary['torch']}; "
             f"{summary['elapsed_seconds']:.0f} s of a {summary['budget_seconds']:.0f} s budget."]
    rows = []
    for precision in PRECISIONS:
        for method in METHODS:
            fit = found.get(("fit", None, method, precision, None))
            alone = found.get(("alone", None, method, precision, None))
            if fit or alone:
                rows.append(
                    f"| {precision} | {method} | {_f(fit, 'steps_per_s')} | {_f(fit, 'reference_steps_per_s')} | "
                    f"{_ratio(fit, 'speedup_vs_reference')} | {_ratio(fit, 'ours_over_floor')} | "
                    f"{_f(fit, 'projected_fit_seconds', '.0f')} / {_f(fit, 'reference_projected_fit_seconds', '.0f')}"
                    f" | {_f(alone, 'peak_memory_mb', '.0f')} / {_f(alone, 'low_memory_peak_memory_mb', '.0f')} | "
                    f"{_f(fit, 'apply_images_per_s')} / {_f(alone, 'apply_batch_4_images_per_s')} |")
    if rows:
        lines += ["", f"IP2P, model {summary['model']}:", "",
                  "| precision | method | ours steps/s | reference steps/s | ours/reference, median (quartiles) | "
                  "ours/floor | whole fit s (ours / reference) | fit peak MB (default / --low-memory) | "
                  "apply images/s (batch 1 / 4) |", "|---|---|---|---|---|---|---|---|---|", *rows]
    checks = [f"{precision} {_f(alone, 'checks_over_loop', '.0%')}" for precision in PRECISIONS
              if (alone := found.get(("alone", None, "visii", precision, None))) and "checks_over_loop" in alone]
    if checks:
        lines += ["", "The fit's self-check (issue 27): a default 1000-step visii fit's init search and validation "
                      "rows, at apply's cost per row (batch 4), against its loop's steps: " + ", ".join(checks) + "."]
    backbones = list(dict.fromkeys((m["backbone"], m["method"]) for m in summary["measurements"]
                                   if m["name"] == "backbone"))
    rows = []
    for backbone, method in backbones:
        default = found.get(("backbone", backbone, method, "bf16", False))
        low = found.get(("backbone", backbone, method, "bf16", True))
        either = default or low
        if either:
            rows.append(f"| {backbone} | {method} | {either['resolution']} | {either['rows']} | "
                        f"{_f(default, 'seconds_per_step')} / {_f(low, 'seconds_per_step')} | "
                        f"{_f(default, 'peak_memory_mb', '.0f')} / {_f(low, 'peak_memory_mb', '.0f')} | "
                        f"{_f(either, 'apply_seconds_per_image')} ({either['apply_steps']}) | "
                        f"{_f(default, 'apply_peak_memory_mb', '.0f')} / {_f(low, 'apply_peak_memory_mb', '.0f')} |")
    if rows:
        lines += ["", "Other backbones, ours alone, bf16, random weights, batch 1 (fit: one optimizer step, every row "
                      "of it; apply: one image, its sampling steps in brackets):", "",
                  "| backbone | method | px | rows | fit s/step (default / --low-memory) | fit peak MB (default / "
                  "--low-memory) | apply s/image (steps) | apply peak MB (default / --low-memory) |",
                  "|---|---|---|---|---|---|---|---|", *rows]
    vs32 = [(key, result) for key, result in found.items() if key[0] == "fit_vs_fp32_reference"]
    for (_, _, method, precision, _), result in vs32:
        lines += ["", f"Precision (a separate question): {method}, ours in {precision} against the reference in "
                      f"fp32: ours/reference {_ratio(result, 'speedup_vs_reference')} (above 1: ours faster)."]
    cpu = found.get(("host_cpu_bf16", None, "visii", "fp32/bf16 (host CPU)", None))
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
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_speed.json and gpu_speed.md")
    p.add_argument("--tiny", action="store_true", help="the toy model and each backbone's tiny configs, a few "
                                                       "steps: checks the script on any device")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 8 minutes)")
    p.add_argument("--device", default="auto")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated; default: all")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated, the IP2P table's; default: "
                                                                      "all (the other backbones run in bf16)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated registered backbones: {table_backbone(FULL)} (the IP2P table) and "
                        f"the others; default: all ({', '.join(MODELS)}), measured in that order")
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
