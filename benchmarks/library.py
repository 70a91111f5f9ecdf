"""Editing without fitting on the toy world (issue 8): how close does an instruction library of the catalogue
edits, fitted once, come to fitting from scratch, on held-out compositions and on catalogue edits?

The library: InstructBrush (the best method on the toy world) fitted on 10 pairs of every catalogue edit, with the
quality bench's settings (100 steps per time part, lr 1e-2, guidance 3 / 1.5, seed 0, its training pairs), so
each entry is the quality bench's 10-shot brush instruction of that edit. For every evaluated edit, from 10 new
exemplar pairs (seeds of their own) and the quality bench's 5 test scenes:

* no edit (the input itself);
* from scratch: brush fitted on the 10 new pairs (hard edits; for catalogue edits the library's own entry, fitted
  the same way on 10 other pairs of the edit), then applied; seconds = fit + apply;
* library: the instructions weighted by softmax(cosine(direction, key) / T), with the direction of the first 1
  or all 10 new pairs, mixed and applied; seconds = CLIP direction + choice + mix + apply. Every T of the sweep
  is run; the one with the best mean PSNR over both groups and both shot counts is reported as the library
  row (chosen on these scenes: the sweep is in the JSON), and a variant is run at it: only the instructions whose
  token count equals the best match's (instead of widening).

PSNR (dB) and SSIM to the true edits, averaged per group; 20 sampling steps.

    python -m benchmarks.library --json examples/toy/library_bench.json [--insts DIR]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from invert.api import apply, fit, fit_images
from invert.backbones import load_editor
from invert.clip import clip_name_for, load_clip
from invert.evaluation import score
from invert.fitting.losses import clip_direction
from invert.instruction import Instruction
from invert.library import DEFAULT_TEMPERATURE, Library, build_library, mix_entries
from invert.methods import settings_for
from invert.toy import world
from invert.writing import write_text

from .quality import BEFORE_SELF_CHECK, DEFAULT_EDITS, TEST_SEED, TRAIN_SEED, edit_index, edit_pairs

METHOD = "brush"
# the quality bench's settings when README's figures of this benchmark were measured (before the fit checked itself)
SETTINGS = {"steps": 100, "lr": 1e-2, "seed": 0, "guidance": 3.0, "image_guidance": 1.5}
QUERY_SEED = 4 * 10**6  # the new exemplar pairs: disjoint from the library's training pairs and the test scenes
TEMPERATURES = (0.01, 0.03, 0.1, 0.3)
EVAL_EDITS = {"hard": list(world.HARD_EDITS), "catalogue": DEFAULT_EDITS["global"] + DEFAULT_EDITS["local"]}
SHOTS = (1, 10)
N_TEST = 5
APPLY_STEPS = 20
VARIANTS = ("same_tokens",)


def fit_library(editor, clip, folder: Path, names: list[str], log: Callable[[str], None]) -> dict[str, float]:
    """``folder/NAME.inst`` for every catalogue edit in ``names`` (existing files are kept, as fit-batch does);
    returns each one's fitting seconds (as recorded in the file)."""
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = folder / f"{name}.inst"
            if not path.exists():
                pairs = world.write_pair_folder(Path(tmp) / name, name, n_train=10, n_test=0,
                                                seed=TRAIN_SEED + edit_index(name), size=editor.resolution)
                fit(pairs / "train", METHOD, editor=editor, clip=clip, quiet=True, **BEFORE_SELF_CHECK,
                    **SETTINGS).save(path)
            seconds[name] = Instruction.load(path).meta.fit_seconds
            log(f"library {name:18s} fitted in {seconds[name]:6.1f} s")
    return seconds


def _scores(befores, results, truths) -> dict:
    mean = score(befores, results, truths)["mean"]
    return {"psnr": mean["psnr"], "ssim": mean["ssim"]}


def library_edit(lib: Library, editor, clip, train, befores, temperature: float, variant: str = "",
                 done: dict | None = None) -> dict:
    """Edit ``befores`` as the exemplar pairs ``train`` show, with no fitting; its scores come later.

    ``done`` holds earlier edits of the same images by their mix: a temperature or variant that gives the same
    mix (every weight within 1e-4; weights under 1e-4 count as 0, a change far below one grey level) reuses
    that result and its seconds instead of sampling again."""
    start = time.perf_counter()
    direction = clip_direction(clip, [b for b, _ in train], [a for _, a in train])
    chosen, weights = lib.choose(direction, METHOD, temperature)
    if variant == "same_tokens":  # the alternative to widening: mix only those of the best's token count
        best = chosen[0].instruction.meta.num_tokens
        keep = [i for i, e in enumerate(chosen) if e.instruction.meta.num_tokens == best]
        total = sum(weights[i] for i in keep)
        chosen, weights = [chosen[i] for i in keep], [weights[i] / total for i in keep]
    mix = tuple((e.name, round(w, 4)) for e, w in zip(chosen, weights) if w >= 1e-4)
    key = mix
    shown = [[e.name, round(w, 4)] for e, w in zip(chosen, weights)][:3]
    if done is not None and repr(key) in done:
        return {**done[repr(key)], "chosen": shown, "reused": True}
    inst, chosen, weights = mix_entries(chosen, weights, editor)
    results = apply(inst, befores, editor=editor, steps=APPLY_STEPS)
    out = {"results": results, "seconds": time.perf_counter() - start, "chosen": shown}
    if done is not None:
        done[repr(key)] = {"results": results, "seconds": out["seconds"]}
    return out


def evaluate_edit(lib: Library, editor, clip, name: str, library_fits: dict[str, float], temperatures,
                  scratch: Path, log: Callable[[str], None]) -> dict:
    """No edit, from scratch and the library at every temperature, for one edit. A from-scratch fit is kept as
    ``scratch/NAME.inst`` and reused from there."""
    size = editor.resolution
    query, test = edit_pairs(name, max(SHOTS), N_TEST, size, QUERY_SEED)
    befores, truths = [b for b, _ in test], [a for _, a in test]
    group = "hard" if name in world.HARD_EDITS else "catalogue"
    row: dict = {"group": group, "no_edit": _scores(befores, befores, truths), "library": {}}
    if name in library_fits:
        inst, fit_seconds, source = next(e.instruction for e in lib.entries if e.name == name), library_fits[name], \
            "the library's own entry (10 other pairs of the edit)"
    else:
        path = scratch / f"{name}.inst"
        if not path.exists():
            fit_settings, brush_settings = settings_for(METHOD, {"resolution": size, **BEFORE_SELF_CHECK,
                                                                 **SETTINGS})
            fit_images(editor, [b for b, _ in query], [a for _, a in query], METHOD, fit_settings, brush_settings,
                       clip=clip, quiet=True).save(path)
        inst = Instruction.load(path)
        fit_seconds, source = inst.meta.fit_seconds, "fitted on the 10 new pairs"
    start = time.perf_counter()
    results = apply(inst, befores, editor=editor, steps=APPLY_STEPS)
    row["scratch"] = {**_scores(befores, results, truths), "fit_seconds": fit_seconds, "source": source,
                      "seconds": fit_seconds + time.perf_counter() - start}
    row["done"] = {}  # this edit's results by mix, for run_variants too (dropped before the JSON)
    for k in SHOTS:
        row["library"][str(k)] = {}
        for t in temperatures:
            edit = library_edit(lib, editor, clip, query[:k], befores, t, done=row["done"])
            cell = {**_scores(befores, edit.pop("results"), truths), **edit}
            row["library"][str(k)][f"{t:g}"] = cell
            log(f"{name:22s} {k:2d}-shot T {t:<5g} psnr {cell['psnr']:6.2f} (no edit {row['no_edit']['psnr']:6.2f}, "
                f"scratch {row['scratch']['psnr']:6.2f}) {cell['seconds']:5.1f} s  {cell['chosen']}")
    return row


def run_variants(lib, editor, clip, rows: dict, temperature: float, log) -> None:
    """The alternatives (VARIANTS) to the library's mix, at ``temperature``, added to ``rows``."""
    for name, row in rows.items():
        query, test = edit_pairs(name, max(SHOTS), N_TEST, editor.resolution, QUERY_SEED)
        befores, truths = [b for b, _ in test], [a for _, a in test]
        for k in SHOTS:
            for variant in VARIANTS:
                edit = library_edit(lib, editor, clip, query[:k], befores, temperature, variant, row["done"])
                cell = {**_scores(befores, edit.pop("results"), truths), **edit}
                row["library"][str(k)][variant] = cell
                log(f"{name:22s} {k:2d}-shot {variant:11s} psnr {cell['psnr']:6.2f} {cell['chosen']}")


def _mean(rows: dict, group: str, get: Callable[[dict], dict | None], metric: str) -> float | None:
    values = [get(r) for r in rows.values() if r["group"] == group]
    values = [v[metric] for v in values if v and metric in v]
    return float(np.mean(values)) if values else None


def summarize(rows: dict, temperatures, chosen: float) -> dict:
    """``{row: {group: {psnr, ssim, seconds}}}`` for no edit, from scratch, the library at the chosen temperature
    and its variants (1 and 10 shots), and every temperature of the sweep."""
    getters: dict[str, Callable[[dict], dict | None]] = {"no_edit": lambda r: r["no_edit"],
                                                         "scratch_10": lambda r: r["scratch"]}
    for k in SHOTS:
        getters[f"library_{k}"] = lambda r, k=k: r["library"][str(k)][f"{chosen:g}"]
        for variant in VARIANTS:
            getters[f"library_{k}_{variant}"] = lambda r, k=k, v=variant: r["library"][str(k)].get(v)
        for t in temperatures:
            getters[f"library_{k}_T{t:g}"] = lambda r, k=k, t=t: r["library"][str(k)][f"{t:g}"]
    return {row: {g: {m: _mean(rows, g, get, m) for m in ("psnr", "ssim", "seconds")} for g in ("hard", "catalogue")}
            for row, get in getters.items()}


def choose_temperature(rows: dict, temperatures) -> tuple[float, dict]:
    """The temperature with the best mean PSNR over the groups (each weighing alike) and both shot counts."""
    groups = {r["group"] for r in rows.values()}
    means = {f"{t:g}": float(np.mean([np.mean([r["library"][str(k)][f"{t:g}"]["psnr"] for r in rows.values()
                                               if r["group"] == g]) for g in groups for k in SHOTS]))
             for t in temperatures}
    return max(temperatures, key=lambda t: means[f"{t:g}"]), means


def run(editor, clip, insts: Path, library_edits: list[str], eval_edits: list[str], temperatures=TEMPERATURES,
        log: Callable[[str], None] = print) -> dict:
    """The whole measurement (module doc): the library fitted into (or reused from) ``insts``, every evaluated
    edit at every temperature, the variants at the chosen one, and the summary."""
    start = time.perf_counter()
    library_fits = fit_library(editor, clip, insts, library_edits, log)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_library([insts / f"{n}.inst" for n in library_edits]).save(Path(tmp) / "library.safetensors")
        lib = Library.load(path)
    (insts / "scratch").mkdir(exist_ok=True)
    rows = {name: evaluate_edit(lib, editor, clip, name, library_fits, temperatures, insts / "scratch", log)
            for name in eval_edits}
    chosen, means = choose_temperature(rows, temperatures)
    run_variants(lib, editor, clip, rows, chosen, log)
    for row in rows.values():
        del row["done"]
    return {"settings": {"method": METHOD, **SETTINGS, "shots": list(SHOTS), "n_test": N_TEST,
                         "apply_steps": APPLY_STEPS, "temperatures": list(temperatures), "query_seed": QUERY_SEED,
                         "train_seed": TRAIN_SEED, "test_seed": TEST_SEED, "threads": torch.get_num_threads()},
            "library": {"edits": library_edits, "fit_seconds": library_fits,
                        "total_fit_seconds": sum(library_fits.values())},
            "temperature": {"chosen": chosen, "library_default": DEFAULT_TEMPERATURE, "mean_psnr": means},
            "edits": rows, "summary": summarize(rows, temperatures, chosen), "seconds": time.perf_counter() - start}


def format_table(result: dict) -> str:
    """Markdown: PSNR, SSIM and seconds per edit, hard and catalogue edits, for the main rows then the sweep."""
    s, t = result["summary"], result["temperature"]["chosen"]
    labels = {"no_edit": "no edit", "scratch_10": "from scratch, 10 pairs (fit + apply)",
              "library_1": f"library, 1 pair (T {t:g})", "library_10": f"library, 10 pairs (T {t:g})"}
    for k in SHOTS:
        labels[f"library_{k}_same_tokens"] = f"library, {k} pair{'s' * (k > 1)}, same token count only"
    for k in SHOTS:
        for temp in result["settings"]["temperatures"]:
            labels[f"library_{k}_T{temp:g}"] = f"library, {k} pair{'s' * (k > 1)}, T {temp:g}"

    def cell(row: str, group: str, metric: str, fmt: str) -> str:
        value = s[row][group][metric]
        return "" if value is None else format(value, fmt)

    lines = ["| row | Hard PSNR | Catalogue PSNR | Hard SSIM | Catalogue SSIM | s per edit |",
             "|---|---|---|---|---|---|"]
    for row, label in labels.items():
        seconds = [v for v in (s[row]["hard"]["seconds"], s[row]["catalogue"]["seconds"]) if v is not None]
        lines.append(f"| {label} | {cell(row, 'hard', 'psnr', '.2f')} | {cell(row, 'catalogue', 'psnr', '.2f')} | "
                     f"{cell(row, 'hard', 'ssim', '.3f')} | {cell(row, 'catalogue', 'ssim', '.3f')} | "
                     f"{format(np.mean(seconds), '.1f') if seconds else ''} |")
    fitting = result["library"]["total_fit_seconds"] / 60
    lines.append(f"\nRun time {result['seconds'] / 60:.1f} min (library fits {fitting:.1f} min of fitting, reused when "
                 "already in --insts).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.library", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--force", action="store_true", help="overwrite --json")
    p.add_argument("--insts", type=Path, help="folder for the library's .inst files (and the from-scratch fits, in "
                   "scratch/); those already there are reused (default: a temporary folder)")
    p.add_argument("--library-edits", default=",".join(world.EDITS), help="catalogue edits in the library (all)")
    p.add_argument("--edits", default=",".join(EVAL_EDITS["hard"] + EVAL_EDITS["catalogue"]),
                   help="edits to evaluate (default: the 7 hard ones and the quality bench's 10 catalogue ones)")
    p.add_argument("--temperatures", default=",".join(f"{t:g}" for t in TEMPERATURES))
    p.add_argument("--model", default="toy")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.json and args.json.exists() and not args.force:
        p.error(f"{args.json}: already exists (use --force to overwrite)")
    torch.set_num_threads(args.threads)
    library_edits, edits = args.library_edits.split(","), args.edits.split(",")
    bad = [n for n in library_edits if n not in world.EDITS] + [n for n in edits if n not in world.EDITS and
                                                                 n not in world.HARD_EDITS]
    if bad:
        p.error(f"not catalogue edits (--library-edits) or unknown (--edits): {', '.join(bad)}")
    editor = load_editor(args.model, args.device)
    clip = load_clip(clip_name_for(None, editor.model_id), editor.device)
    with tempfile.TemporaryDirectory() as tmp:
        insts = args.insts or Path(tmp)
        insts.mkdir(parents=True, exist_ok=True)
        result = run(editor, clip, insts, library_edits, edits, tuple(float(t) for t in args.temperatures.split(",")))
    print(format_table(result))
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n", args.force)


if __name__ == "__main__":
    main()
