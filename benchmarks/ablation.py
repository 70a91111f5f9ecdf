"""The official VISII code's behaviours, one at a time and together, and InstructBrush's paper choices, on the toy
world (issue 16): which of them make a fit better, and how the three noise modes of apply trade edit strength
for fidelity to the input (the VISII paper's Fig. 8 question).

Protocol: the quality table's (``python -m benchmarks quality``): its 14 edits (5 global, 5 local, 4 held-out hard), 10
exemplar pairs, 5 held-out test scenes, 100 steps at lr 1e-2, guidance 3 / 1.5, 20 sampling steps, seed 0. Each
row changes one thing from the default and is scored by PSNR (dB) and SSIM to the true edits. The noise modes are
compared on the default fits: PSNR to the truth (edit) and to the input (fidelity).

    python -m benchmarks.ablation --json examples/toy/ablation.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from invert.api import apply, fit_images
from invert.backbones import load_editor
from invert.clip import clip_name_for, load_clip
from invert.evaluation import as_tensor, psnr, score
from invert.methods import settings_for

from .quality import BEFORE_SELF_CHECK, DEFAULT_EDITS, QualitySettings, edit_pairs, group_of

BENCH = QualitySettings()
BASE = {"steps": 100, "lr": 1e-2, "guidance": BENCH.guidance[0], "image_guidance": BENCH.guidance[1],
        "seed": BENCH.seed}
# row -> (method, options changed from the default, apply options)
ROWS: dict[str, tuple[str, dict, dict]] = {
    "visii": ("visii", {}, {}),
    "visii --grad-clip official": ("visii", {"grad_clip": "official"}, {}),
    "visii --grad-clip none": ("visii", {"grad_clip": "none"}, {}),
    "visii --optimizer adamw8bit": ("visii", {"optimizer": "adamw8bit"}, {}),
    "visii --keep best-mse": ("visii", {"keep": "best-mse"}, {}),
    "visii --init pez": ("visii", {"init": "pez"}, {}),
    "visii --pair-order timestep": ("visii", {"pair_order": "timestep"}, {}),
    "visii --official (100 steps, lr 1e-2, guidance 3)": (
        "visii", {"official": True, "pez_steps": 300, **BASE}, {}),
    "brush": ("brush", {}, {}),
    "brush --grad-clip abs": ("brush", {"grad_clip": "abs"}, {}),
    "brush --keep best-mse": ("brush", {"keep": "best-mse"}, {}),
    "brush --pair-order timestep": ("brush", {"pair_order": "timestep"}, {}),
    "brush --brush-parts-sequential": ("brush", {"brush_parts_sequential": True}, {}),
    "brush, apply --scheduler euler_a_karras": ("brush", {}, {"scheduler": "euler_a_karras"}),
}
METHODS = tuple(dict.fromkeys(method for method, _, _ in ROWS.values()))  # in ROWS' order
NOISE_MODES = ("stream", "fit", "fresh")
FRESH_SEEDS = (1, 2, 3)  # fresh noise is averaged over three seeds


def _scores(befores, results, truths) -> dict:
    mean = score(befores, results, truths)["mean"]
    return {"psnr": mean["psnr"], "ssim": mean["ssim"],
            "psnr_to_input": float(psnr(as_tensor(results), as_tensor(befores)).mean())}


def run(editor, clip, edits: list[str], rows: list[str], log: Callable[[str], None] = print) -> dict:
    n_train, n_test = 10, BENCH.n_test
    out: dict = {}
    for name in edits:
        train, test = edit_pairs(name, n_train, n_test, editor.resolution)
        befores, truths = [b for b, _ in test], [a for _, a in test]
        cells: dict = {"group": group_of(name), "no_edit": _scores(befores, befores, truths), "rows": {}}
        fits: dict = {}
        for row in rows:
            method, options, apply_options = ROWS[row]
            key = (method, json.dumps(options, sort_keys=True))
            start = time.perf_counter()
            if key not in fits:
                # measured before the self-check: each row changes one option from the fit as it was then (the
                # --official row sets its own)
                pinned = {} if options.get("official") else BEFORE_SELF_CHECK
                fit_settings, method_settings = settings_for(
                    method, {**pinned, **BASE, "resolution": editor.resolution, **options})
                fits[key] = (fit_images(editor, [b for b, _ in train], [a for _, a in train], method, fit_settings,
                                        method_settings, clip=clip, quiet=True), time.perf_counter() - start)
            inst, seconds = fits[key]
            results = apply(inst, befores, editor=editor, steps=BENCH.apply_steps, **apply_options)
            cells["rows"][row] = {**_scores(befores, results, truths), "fit_seconds": seconds,
                                  "init_text": inst.meta.init_text, "kept_step": inst.meta.kept_step}
            log(f"{name:22s} {row:52s} psnr {cells['rows'][row]['psnr']:6.2f} (no edit "
                f"{cells['no_edit']['psnr']:6.2f}) {seconds:5.1f} s")
        for method in METHODS:
            inst = fits.get((method, "{}"), (None,))[0]
            if inst is None:
                continue
            noise = {}
            for mode in NOISE_MODES:
                seeds = FRESH_SEEDS if mode == "fresh" else (None,)
                runs = [_scores(befores, apply(inst, befores, editor=editor, steps=BENCH.apply_steps, noise=mode,
                                               seed=seed), truths) for seed in seeds]
                noise[mode] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
            cells[f"{method}_noise"] = noise
            log(f"{name:22s} {method} noise " + "  ".join(f"{m} {v['psnr']:6.2f}/{v['psnr_to_input']:6.2f}"
                                                          for m, v in noise.items()))
        out[name] = cells
    return out


def summarize(per_edit: dict) -> dict:
    """Means per group (catalogue = global + local; hard) of every row and noise mode."""
    groups = {"catalogue": lambda g: not g.startswith("hard"), "hard": lambda g: g.startswith("hard"),
              "all": lambda g: True}
    summary: dict = {}
    rows = sorted({row for e in per_edit.values() for row in e["rows"]}, key=list(ROWS).index)
    for group, member in groups.items():
        edits = [e for e in per_edit.values() if member(e["group"])]
        if not edits:
            continue
        cell = {"no_edit": {m: float(np.mean([e["no_edit"][m] for e in edits])) for m in ("psnr", "ssim")}}
        for row in rows:
            values = [e["rows"][row] for e in edits if row in e["rows"]]
            cell[row] = {m: float(np.mean([v[m] for v in values])) for m in ("psnr", "ssim", "fit_seconds")}
        for method in METHODS:
            for mode in NOISE_MODES:
                values = [e[f"{method}_noise"][mode] for e in edits if f"{method}_noise" in e]
                if values:
                    cell[f"{method} noise {mode}"] = {m: float(np.mean([v[m] for v in values]))
                                                      for m in ("psnr", "psnr_to_input")}
        summary[group] = cell
    return summary


def format_table(result: dict) -> str:
    s = result["summary"]
    lines = ["| row | PSNR catalogue | PSNR hard | PSNR all | SSIM all | fit s |", "|---|---|---|---|---|---|"]
    for row in ["no_edit", *[r for r in ROWS if r in s["all"]]]:
        def cell(group: str, metric: str, fmt: str = ".2f") -> str:
            value = s.get(group, {}).get(row, {}).get(metric)
            return "" if value is None else format(value, fmt)
        lines.append(f"| {row} | {cell('catalogue', 'psnr')} | {cell('hard', 'psnr')} | {cell('all', 'psnr')} | "
                     f"{cell('all', 'ssim', '.3f')} | {cell('all', 'fit_seconds', '.1f')} |")
    lines += ["", "| apply noise | " + " | ".join(f"{m}: PSNR to truth / to input" for m in METHODS) + " |",
              "|---" * (len(METHODS) + 1) + "|"]
    for mode in NOISE_MODES:
        cells = []
        for method in METHODS:
            v = s["all"].get(f"{method} noise {mode}")
            cells.append("" if v is None else f"{v['psnr']:.2f} / {v['psnr_to_input']:.2f}")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines.append(f"\nRun time {result['seconds'] / 60:.1f} min.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy")
    p.add_argument("--edits", default=None, help="comma-separated; default: the quality table's 14")
    p.add_argument("--rows", default=None, help="comma-separated row names; default: all (adamw8bit only with "
                                                "bitsandbytes installed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the full result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    editor = load_editor(args.model, "cpu", "fp32")
    clip = load_clip(clip_name_for(None, editor.model_id), editor.device)
    edits = args.edits.split(",") if args.edits else [e for group in DEFAULT_EDITS.values() for e in group]
    rows = args.rows.split(",") if args.rows else [r for r in ROWS if "adamw8bit" not in r
                                                   or importlib.util.find_spec("bitsandbytes")]
    start = time.perf_counter()
    per_edit = run(editor, clip, edits, rows)
    result = {"protocol": {**BASE, "shots": 10, "n_test": BENCH.n_test, "apply_steps": BENCH.apply_steps,
                           "fresh_seeds": FRESH_SEEDS}, "rows": rows, "edits": per_edit,
              "summary": summarize(per_edit), "seconds": time.perf_counter() - start}
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
