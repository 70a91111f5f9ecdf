"""Toy-world measurements of the LoRA of change and of reverse edits (issue 8's tables).

``leakage``: 1-shot LoRA fits with LoRA Reverse off, swap and both. Appearance leakage is the result looking like
the exemplar's after image instead of like the input edited: we report the PSNR of the results to the truth and
to the exemplar's after (higher = more copying; the truth's own PSNR to it is the reference).

``reverse``: 10-shot fits with --reverse, without and with the cycle term, for every method: the forward edit's
PSNR to the truth, and the PSNR of before -> forward -> reverse to the before (the plain forward fit as reference).

    python -m benchmarks.lora_and_reverse leakage --json examples/toy/lora_leakage.json
    python -m benchmarks.lora_and_reverse reverse --json examples/toy/reverse_bench.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from invert.api import apply, fit_images
from invert.backbones import load_editor
from invert.clip import clip_name_for, load_clip
from invert.errors import InstructionFileError
from invert.evaluation import as_tensor, psnr
from invert.methods import settings_for

from .quality import BEFORE_SELF_CHECK, QualitySettings, edit_pairs

SETTINGS = QualitySettings()  # the quality table's guidance (3, 1.5)
LR = 1e-2  # the learning rate of every method when README's figures of this benchmark were measured
LEAKAGE_EDITS = ["night", "sepia", "circle_red", "add_star", "remove_square", "background_blue"]
REVERSE_EDITS = ["night", "invert", "hue60", "add_star"]  # edits whose inverse the before pairs determine


def mean_psnr(results: list[Image.Image], truths: list[Image.Image]) -> float:
    return float(psnr(as_tensor(results), as_tensor(truths)).mean())


def fit(editor, clip, train, method: str, steps: int, **options):
    start = time.perf_counter()
    fit_settings, method_settings = settings_for(method, dict(
        **BEFORE_SELF_CHECK, steps=steps, lr=LR, resolution=editor.resolution, guidance=SETTINGS.guidance[0],
        image_guidance=SETTINGS.guidance[1], **options))
    inst = fit_images(editor, [b for b, _ in train], [a for _, a in train], method, fit_settings, method_settings,
                      clip=clip, quiet=True)
    return inst, time.perf_counter() - start


def leakage(editor, clip, edits: list[str], steps: int, n_test: int, log=print) -> dict:
    out = {}
    for name in edits:
        train, test = edit_pairs(name, 1, n_test, editor.resolution)
        befores, truths = [b for b, _ in test], [a for _, a in test]
        exemplar = [train[0][1]] * n_test
        row = {"no_edit": mean_psnr(befores, truths), "truth_to_exemplar": mean_psnr(truths, exemplar)}
        for mode in ("off", "swap", "both"):
            inst, seconds = fit(editor, clip, train, "lora", steps, lora_reverse=mode)
            results = apply(inst, befores, editor=editor)
            row[mode] = {"psnr": mean_psnr(results, truths), "to_exemplar": mean_psnr(results, exemplar),
                         "fit_seconds": seconds}
            log(f"{name:16s} reverse {mode:4s} psnr {row[mode]['psnr']:6.2f} to exemplar "
                f"{row[mode]['to_exemplar']:6.2f} (truth {row['truth_to_exemplar']:6.2f}) {seconds:5.1f} s")
        out[name] = row
    modes = ("off", "swap", "both")
    mean = {m: {k: float(np.mean([out[e][m][k] for e in edits])) for k in ("psnr", "to_exemplar", "fit_seconds")}
            for m in modes}
    mean.update({k: float(np.mean([out[e][k] for e in edits])) for k in ("no_edit", "truth_to_exemplar")})
    return {"edits": out, "mean": mean}


def reverse(editor, clip, edits: list[str], steps: int, n_test: int, methods: list[str], cycle_weight: float = 1.0,
            log=print) -> dict:
    out = {}
    for name in edits:
        train, test = edit_pairs(name, 10, n_test, editor.resolution)
        befores, truths = [b for b, _ in test], [a for _, a in test]
        row = {"no_edit": mean_psnr(befores, truths)}
        for method in methods:
            cells = {}
            variants = {"plain": {}, "reverse_no_cycle": {"reverse": True, "cycle_weight": 0.0},
                        "reverse_cycle": {"reverse": True, "cycle_weight": cycle_weight}}
            for variant, options in variants.items():
                inst, seconds = fit(editor, clip, train, method, steps, **options)
                forward = apply(inst, befores, editor=editor)
                cell = {"forward_psnr": mean_psnr(forward, truths), "fit_seconds": seconds}
                try:  # a plain fit has a reverse only where its method builds one in (a LoRA's negation)
                    cell["cycle_psnr"] = mean_psnr(apply(inst, forward, editor=editor, reverse=True), befores)
                    cell["reverse_psnr"] = mean_psnr(apply(inst, truths, editor=editor, reverse=True), befores)
                except InstructionFileError:
                    pass
                cells[variant] = cell
                log(f"{name:10s} {method:5s} {variant:16s} forward {cell['forward_psnr']:6.2f} cycle "
                    f"{cell.get('cycle_psnr', float('nan')):6.2f} reverse {cell.get('reverse_psnr', float('nan')):6.2f}"
                    f" {seconds:5.1f} s")
            row[method] = cells
        out[name] = row
    mean = {m: {v: {k: float(np.mean([out[e][m][v][k] for e in edits])) for k in out[edits[0]][m][v]}
                for v in out[edits[0]][m]} for m in methods}
    mean["no_edit"] = float(np.mean([out[e]["no_edit"] for e in edits]))
    return {"edits": out, "mean": mean}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=["leakage", "reverse"])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--edits", default=None, help="comma-separated edit names")
    parser.add_argument("--methods", default="visii,brush,lora")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=5)
    parser.add_argument("--cycle-weight", type=float, default=1.0, help="reverse: the cycle term's weight")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    editor = load_editor(args.model, args.device)
    clip = load_clip(clip_name_for(None, editor.model_id), editor.device)
    start = time.perf_counter()
    if args.table == "leakage":
        result = leakage(editor, clip, args.edits.split(",") if args.edits else LEAKAGE_EDITS, args.steps, args.n_test)
    else:
        result = reverse(editor, clip, args.edits.split(",") if args.edits else REVERSE_EDITS, args.steps,
                         args.n_test, args.methods.split(","), args.cycle_weight)
    result.update(seconds=time.perf_counter() - start, settings=vars(args) | {"json": str(args.json)})
    print(json.dumps(result["mean"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
