"""bf16 against fp32 for fitting and applying: speed, interleaved in one run, and the toy world's quality.

Three precisions of ours (the library's own fit loop and sampler):

* ``fp32``: the model in fp32, as ``--dtype fp32`` (the CPU's default);
* ``bf16-autocast``: the model in fp32, its UNet under ``torch.autocast(dtype=bfloat16)``: the UNet's matmuls and
  convolutions in bf16; its norms and softmax, the VAE, the loss and the learned parameters in fp32;
* ``bf16``: the model loaded in bf16, as ``--dtype bf16`` (learned parameters fp32, as always).

Speed: a fit block is a fresh fit of ``steps`` steps, timed from its first UNet call to its last step; an apply
block one sampling call, timed from its first UNet call to its last step (the VAE's encode and decode are left
out: they are per image, not per step). Each cycle runs every precision's blocks in turn; ratios to fp32 are
medians over the cycles, so they hold on a busy machine. Quality: :mod:`benchmarks.quality` on a chosen subset,
once per precision, plus fp32 with another seed: the spread between seeds is the noise a precision's difference
is judged against.

    python -m benchmarks.precision speed --model toy --steps 5 --cycles 5 --json out.json
    python -m benchmarks.precision speed --model random --resolution 512 --steps 1 --cycles 1 --warmup-cycles 0
    python -m benchmarks.precision quality --edits night,circle_red,hue90 --json quality.json
    python -m benchmarks.precision matmul --size 1024 --cycles 5
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from invert.backbones import Editor, load_editor

from .speed import apply_block, device_name, fit_block, synthetic_pairs

MODES = ("fp32", "bf16-autocast", "bf16")


def cpu_bf16_support() -> dict[str, bool]:
    """Whether this CPU has bf16 arithmetic units (AVX-512 BF16, AMX); without them torch emulates bf16."""
    capabilities = torch.cpu.get_capabilities()
    return {name: bool(capabilities.get(name, False)) for name in ("avx512_bf16", "amx_bf16")}


@contextlib.contextmanager
def precision(mode: str, editor: Editor):
    """For the block, ``editor``'s UNet computes in ``mode``: under bf16 autocast for ``bf16-autocast`` (only
    the UNet, so that the VAE, the loss and the quality metrics' CLIP stay as they are), else in its own dtype."""
    if mode != "bf16-autocast":
        yield
        return
    unet = editor.unet
    inner = unet.forward

    def forward(*args, **kwargs):
        with torch.autocast(editor.device.type, dtype=torch.bfloat16):
            out = inner(*args, **kwargs)
        out.sample = out.sample.to(editor.dtype)  # the sampler's latents stay in the model's dtype
        return out

    unet.forward = forward
    try:
        yield
    finally:
        del unet.forward  # the class's own again


def matmul(size: int = 1024, cycles: int = 5, reps: int = 3) -> dict:
    """GFLOP/s of a ``size`` x ``size`` matmul in fp32 and in bf16 on the CPU, the two timed in turn for
    ``cycles`` cycles after one untimed; the median of bf16's time over fp32's (above 1: bf16 slower). The raw
    arithmetic the fit and apply figures rest on: without bf16 units torch emulates bf16."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    pairs = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
    seconds: dict[str, list[float]] = {name: [] for name in pairs}
    for cycle in range(cycles + 1):
        for name, (x, y) in pairs.items():
            start = time.perf_counter()
            for _ in range(reps):
                x @ y
            if cycle:
                seconds[name].append((time.perf_counter() - start) / reps)
    flops = 2 * size**3
    return {"size": size, "cycles": cycles, "threads": torch.get_num_threads(), "cpu_bf16": cpu_bf16_support(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "gflops": {name: flops / statistics.median(v) / 1e9 for name, v in seconds.items()},
            "bf16_vs_fp32": statistics.median(x / y for x, y in zip(seconds["bf16"], seconds["fp32"]))}


def editors_for(model: str, modes: tuple[str, ...], device: str) -> dict[str, Editor]:
    """One editor per mode; the fp32 model serves both fp32 and bf16-autocast."""
    fp32 = load_editor(model, device, "fp32") if {"fp32", "bf16-autocast"} & set(modes) else None
    return {mode: load_editor(model, device, "bf16") if mode == "bf16" else fp32 for mode in modes}


def speed(model: str, modes: tuple[str, ...] = MODES, resolution: int | None = None, steps: int = 5,
          apply_steps: int = 4, cycles: int = 5, warmup_cycles: int = 1, method: str = "visii",
          device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """Seconds per fit step and per sampling step of each mode, interleaved over ``cycles`` cycles after
    ``warmup_cycles`` untimed ones; each mode's median ratio to fp32 (above 1: slower than fp32)."""
    editors = editors_for(model, modes, device)
    first = next(iter(editors.values()))
    resolution = resolution or first.resolution
    fit: dict[str, list[float]] = {m: [] for m in modes}
    apply: dict[str, list[float]] = {m: [] for m in modes}
    for cycle in range(warmup_cycles + cycles):
        for mode in modes:
            with precision(mode, editors[mode]):
                f = fit_block(editors[mode], method, *synthetic_pairs(1, resolution), steps)
                a = apply_block(editors[mode], method, synthetic_pairs(1, resolution)[0], apply_steps)[0]
            when = "warm-up" if cycle < warmup_cycles else f"cycle {cycle + 1 - warmup_cycles}"
            log(f"{when} {mode}: fit {f:.3g} s/step, apply {a:.3g} s/step")
            if cycle >= warmup_cycles:
                fit[mode].append(f)
                apply[mode].append(a)
    out = {"model": model, "resolution": resolution, "method": method, "device": device_name(first.device),
           "cpu_bf16": cpu_bf16_support(), "torch": torch.__version__, "steps": steps, "apply_steps": apply_steps,
           "cycles": cycles, "modes": {}}
    for mode in modes:
        row = {"fit_seconds_per_step": statistics.median(fit[mode]),
               "apply_seconds_per_step": statistics.median(apply[mode]), "fit_cycles": fit[mode],
               "apply_cycles": apply[mode]}
        if "fp32" in modes:
            row["fit_vs_fp32"] = statistics.median(x / y for x, y in zip(fit[mode], fit["fp32"]))
            row["apply_vs_fp32"] = statistics.median(x / y for x, y in zip(apply[mode], apply["fp32"]))
        out["modes"][mode] = row
    return out


def quality(model: str = "toy", modes: tuple[str, ...] = ("fp32", "bf16-autocast"), edits: list[str] | None = None,
            shots: tuple[int, ...] = (10,),
            rows: tuple[str, ...] = ("no_edit", "oracle_text", "visii", "brush", "lora"),
            noise_seed: int = 1, device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """The quality benchmark (its default settings, the given edits, shots and rows) once per mode, and once
    more in fp32 with seed ``noise_seed``: per mode and row, the mean PSNR/SSIM/CLIP-dir over the edits and the
    mean absolute per-edit PSNR difference to fp32 (always run); the seed run's is the noise."""
    from invert.clip import clip_name_for, load_clip

    from . import quality as bench

    modes = tuple(dict.fromkeys(("fp32", *modes)))  # fp32 is the baseline
    editors = editors_for(model, modes, device)
    clip = load_clip(clip_name_for(None, editors["fp32"].model_id), editors["fp32"].device)
    runs: dict[str, dict] = {}
    for name, mode, seed in [*((m, m, 0) for m in modes), (f"fp32-seed{noise_seed}", "fp32", noise_seed)]:
        settings = bench.QualitySettings(shots=shots, rows=rows, seed=seed)
        with precision(mode, editors[mode]):
            runs[name] = bench.run(editors[mode], clip, edits, settings, log=log)
    table = {}
    for name, result in runs.items():
        table[name] = {row: _row_summary(result, runs["fp32"], row) for row in rows}
        table[name]["minutes"] = result["seconds"] / 60
    return {"model": model, "edits": list(next(iter(runs.values()))["edits"]), "shots": list(shots),
            "cpu_bf16": cpu_bf16_support(), "table": table, "runs": runs}


def _row_summary(result: dict, baseline: dict, row: str) -> dict:
    """Mean metrics of ``row`` over the edits (every shot count), and the mean |PSNR difference| to ``baseline``."""
    cells, diffs = [], []
    for name, edit in result["edits"].items():
        for scores, base in _cells(edit, baseline["edits"][name], row):
            cells.append(scores)
            diffs.append(abs(scores["psnr"] - base["psnr"]))
    if not cells:
        return {}
    return {**{m: statistics.fmean(c[m] for c in cells) for m in ("psnr", "ssim", "clip_direction")},
            "mean_abs_psnr_diff": statistics.fmean(diffs)}


def _cells(edit: dict, base: dict, row: str):
    if row in edit["text"]:
        yield edit["text"][row], base["text"][row]
    for k, rows in edit["shots"].items():
        if row in rows:
            yield rows[row], base["shots"][k][row]


def format_speed(out: dict) -> str:
    lines = [f"{out['model']} at {out['resolution']} px, {out['method']}, {out['device']}, bf16 units: "
             f"{', '.join(k for k, v in out['cpu_bf16'].items() if v) or 'none'}; medians of {out['cycles']} cycles",
             "| precision | fit s/step | vs fp32 | apply s/step | vs fp32 |", "|---|---|---|---|---|"]
    for mode, r in out["modes"].items():
        lines.append(f"| {mode} | {r['fit_seconds_per_step']:.3g} | {r.get('fit_vs_fp32', float('nan')):.2f}x | "
                     f"{r['apply_seconds_per_step']:.3g} | {r.get('apply_vs_fp32', float('nan')):.2f}x |")
    return "\n".join(lines)


def format_quality(out: dict) -> str:
    lines = [f"{out['model']}: edits {', '.join(out['edits'])}; shots {', '.join(map(str, out['shots']))}",
             "| run | row | PSNR | SSIM | CLIP-dir | mean abs PSNR diff to fp32 | minutes |",
             "|---|---|---|---|---|---|---|"]
    for name, rows in out["table"].items():
        for row, m in rows.items():
            if row != "minutes" and m:
                lines.append(f"| {name} | {row} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['clip_direction']:.3f} | "
                             f"{m['mean_abs_psnr_diff']:.2f} | {rows['minutes']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed", help="fit and apply step times per precision, interleaved")
    s.add_argument("--model", default="toy")
    s.add_argument("--modes", default=",".join(MODES))
    s.add_argument("--resolution", type=int, default=None, help="default: the model's own")
    s.add_argument("--method", default="visii")
    s.add_argument("--steps", type=int, default=5, help="fit steps per block")
    s.add_argument("--apply-steps", type=int, default=4, help="sampling steps per block")
    s.add_argument("--cycles", type=int, default=5)
    s.add_argument("--warmup-cycles", type=int, default=1)
    m = sub.add_parser("matmul", help="fp32 and bf16 matmul GFLOP/s on the CPU, interleaved")
    m.add_argument("--size", type=int, default=1024)
    m.add_argument("--cycles", type=int, default=5)
    q = sub.add_parser("quality", help="the quality benchmark per precision, and fp32 with another seed")
    q.add_argument("--model", default="toy")
    q.add_argument("--modes", default="fp32,bf16-autocast")
    q.add_argument("--edits", default=None, help="comma-separated; default: the quality bench's")
    q.add_argument("--shots", default="10")
    q.add_argument("--rows", default="no_edit,oracle_text,visii,brush,lora")
    for a in (s, q):
        a.add_argument("--device", default="cpu")
    for a in (s, q, m):
        a.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.what == "matmul":
        out = matmul(args.size, args.cycles)
        print(f"{out['size']}x{out['size']} matmul, {out['threads']} thread(s), {out['capability']}: fp32 "
              f"{out['gflops']['fp32']:.1f} GFLOP/s, bf16 {out['gflops']['bf16']:.1f} GFLOP/s; bf16 time / fp32 "
              f"time {out['bf16_vs_fp32']:.2f}x (median of {out['cycles']} cycles)")
    elif args.what == "speed":
        modes = tuple(args.modes.split(","))
        out = speed(args.model, modes, args.resolution, args.steps, args.apply_steps, args.cycles, args.warmup_cycles,
                    args.method, args.device)
        print(format_speed(out))
    else:
        modes = tuple(args.modes.split(","))
        out = quality(args.model, modes, args.edits.split(",") if args.edits else None,
                      tuple(int(k) for k in args.shots.split(",")), tuple(args.rows.split(",")), device=args.device)
        print(format_quality(out))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
