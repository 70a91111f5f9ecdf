"""How the cost of fitting and applying grows: with the exemplar pairs, the resolution, InstructBrush's time
parts, the apply batch, and the processes of a ``fit-batch``.

One dimension per call. Its values run interleaved, smallest first, a block each per cycle, so the relative
figures (each value against the first) hold on a busy machine; the medians over the cycles are reported. A fit
block is a fresh fit timed from its first UNet call (encoding the exemplars, building the method left out), an
apply block one sampling call, per sampling step (the VAE left out) and whole. Peak memory (the process's peak
RSS on the CPU, CUDA's max allocated on a GPU) is read in the first cycle, where the values run smallest first,
so a value's peak is not another one's left-over heap.

    python -m benchmarks.growth pairs --model toy --values 1,4,10,50
    python -m benchmarks.growth parts --model toy --values 1,2,5,10
    python -m benchmarks.growth resolution --model random --values 64,128,256,512 --steps 1 --cycles 1 \
        --warmup-cycles 0
    python -m benchmarks.growth apply-batch --model toy --values 1,2,4,8
    python -m benchmarks.growth fit-batch --model toy --values 1,2 --sets examples/toy --steps 100
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from invert.backbones import load_editor

from .speed import apply_block, device_name, fit_block, peak_memory_mb, reset_peak_memory, synthetic_pairs

DIMENSIONS = ("pairs", "parts", "resolution", "apply-batch", "fit-batch")


def grow(dimension: str, values: list[int], model: str = "toy", method: str = "visii", resolution: int | None = None,
         steps: int = 3, apply_steps: int = 2, cycles: int = 3, warmup_cycles: int = 1, device: str = "cpu",
         log: Callable[[str], None] = print) -> dict:
    """Seconds per fit step (pairs, parts, resolution) or per sampling step and per call (apply-batch) for each of
    ``values``, medians over ``cycles`` interleaved cycles after ``warmup_cycles`` untimed ones (the first call
    of a shape pays for allocations); each relative to the first value; peak memory."""
    if dimension not in DIMENSIONS[:4]:
        raise ValueError(f"unknown dimension {dimension!r} (choose from {', '.join(DIMENSIONS)})")
    editor = load_editor(model, device, "fp32")
    size = resolution or editor.resolution
    values = sorted(values)
    seconds: dict[int, list[float]] = {v: [] for v in values}
    calls: dict[int, list[float]] = {v: [] for v in values}
    memory: dict[int, float] = {}

    def block(value: int) -> tuple[float, float | None]:
        if dimension == "apply-batch":
            return apply_block(editor, method, synthetic_pairs(value, size)[0], apply_steps)
        pairs = value if dimension == "pairs" else 1
        res = value if dimension == "resolution" else size
        name = "brush" if dimension == "parts" else method
        parts = value if dimension == "parts" else 5
        return fit_block(editor, name, *synthetic_pairs(pairs, res), steps, parts), None

    for cycle in range(warmup_cycles + cycles):
        for value in values:
            reset_peak_memory(editor.device)
            step, whole = block(value)
            if cycle == 0:
                memory[value] = peak_memory_mb(editor.device)
            when = "warm-up" if cycle < warmup_cycles else f"cycle {cycle + 1 - warmup_cycles}"
            call = "" if whole is None else f", {whole:.3g} s/call"
            log(f"{when} {dimension} {value}: {step:.3g} s/step{call}")
            if cycle >= warmup_cycles:
                seconds[value].append(step)
                if whole is not None:
                    calls[value].append(whole)
    first = values[0]
    rows = []
    for value in values:
        row = {"value": value, "seconds_per_step": statistics.median(seconds[value]),
               "vs_first": statistics.median(a / b for a, b in zip(seconds[value], seconds[first])),
               "peak_memory_mb": memory[value], "cycles": seconds[value]}
        if calls[value]:
            row["seconds_per_call"] = statistics.median(calls[value])
            # Images per second of a 20-step apply: 20 sampling steps plus the call's VAE and setup.
            vae = row["seconds_per_call"] - apply_steps * row["seconds_per_step"]
            row["images_per_s_20_steps"] = value / (20 * row["seconds_per_step"] + vae)
        rows.append(row)
    return {"dimension": dimension, "model": model, "method": "brush" if dimension == "parts" else method,
            "resolution": size, "steps": steps, "apply_steps": apply_steps, "cycles": cycles,
            "device": device_name(editor.device), "rows": rows}


def fit_batch(sets: Path, processes: list[int], model: str = "toy", method: str = "visii", steps: int = 100,
              cycles: int = 2, log: Callable[[str], None] = print) -> dict:
    """Exemplar sets fitted per hour by ``invert fit-batch`` split over N processes (``--shard K/N``), each with
    one thread, for each N in ``processes``, interleaved over ``cycles``; wall time from the first process's
    start to the last one's end, model loading included (each process loads its own)."""
    count = sum(1 for d in sets.iterdir() if d.is_dir() and not d.name.startswith("."))
    hours: dict[int, list[float]] = {n: [] for n in processes}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for cycle in range(cycles):
        for n in processes:
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                jobs = [subprocess.Popen([sys.executable, "-m", "invert.cli", "fit-batch", str(sets), "-o", out,
                                          "--model", model, "--method", method, "--steps", str(steps),
                                          "--shard", f"{k}/{n}", "--device", "cpu", "--quiet"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                        for k in range(n)]
                for job in jobs:
                    _, err = job.communicate()
                    if job.returncode:
                        raise RuntimeError(f"fit-batch failed: {err[-2000:]}")
                wall = time.perf_counter() - start
            hours[n].append(wall / 3600)
            log(f"cycle {cycle + 1}: {n} process(es), {count} sets in {wall:.1f} s")
    first = processes[0]
    rows = [{"value": n, "sets_per_hour": count / statistics.median(hours[n]),
             "vs_first": statistics.median(b / a for a, b in zip(hours[n], hours[first])),
             "cycles_seconds": [h * 3600 for h in hours[n]]} for n in processes]
    return {"dimension": "fit-batch", "model": model, "method": method, "steps": steps, "sets": count,
            "cycles": cycles, "cpus": os.cpu_count(), "rows": rows}


def format_table(out: dict) -> str:
    d = out["dimension"]
    if d == "fit-batch":
        lines = [f"fit-batch: {out['sets']} sets x {out['steps']} {out['method']} steps, model {out['model']}, "
                 f"{out['cpus']} CPUs, 1 thread per process; medians of {out['cycles']} cycles",
                 "| processes | sets/hour | vs 1 process |", "|---|---|---|"]
        lines += [f"| {r['value']} | {r['sets_per_hour']:.0f} | {r['vs_first']:.2f}x |" for r in out["rows"]]
        return "\n".join(lines)
    unit = "s/sampling step" if d == "apply-batch" else "s/fit step"
    lines = [f"{d}: {out['method']}, model {out['model']} at {out['resolution']} px, {out['device']}; medians of "
             f"{out['cycles']} cycles", f"| {d} | {unit} | vs first | peak MB |"
             + (" s/call | images/s (20 steps) |" if d == "apply-batch" else ""),
             "|---|---|---|---|" + ("---|---|" if d == "apply-batch" else "")]
    for r in out["rows"]:
        line = f"| {r['value']} | {r['seconds_per_step']:.3g} | {r['vs_first']:.2f}x | {r['peak_memory_mb']:.0f} |"
        if d == "apply-batch":
            line += f" {r['seconds_per_call']:.3g} | {r['images_per_s_20_steps']:.3g} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.growth", description=__doc__.split("\n\n")[0])
    p.add_argument("dimension", choices=DIMENSIONS)
    p.add_argument("--values", required=True, help="comma-separated")
    p.add_argument("--model", default="toy")
    p.add_argument("--method", default="visii")
    p.add_argument("--resolution", type=int, default=None, help="default: the model's own")
    p.add_argument("--steps", type=int, default=3, help="fit steps per block (fit-batch: per set)")
    p.add_argument("--apply-steps", type=int, default=2)
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--warmup-cycles", type=int, default=1)
    p.add_argument("--sets", type=Path, default=Path("examples/toy"), help="fit-batch: the exemplar sets")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    values = [int(v) for v in args.values.split(",")]
    if args.dimension == "fit-batch":
        out = fit_batch(args.sets, values, args.model, args.method, args.steps, args.cycles)
    else:
        out = grow(args.dimension, values, args.model, args.method, args.resolution, args.steps, args.apply_steps,
                   args.cycles, args.warmup_cycles, args.device)
    print(format_table(out))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
