"""Does scoring the init candidates with fewer sampling steps (``--best-val-steps``) change the quality table?
(issue 27: a cheaper self-check must keep every group within 0.3 dB of today's, and no more fits below no edit.)

The init search is the only part of a fit the option changes, and a fit is deterministic given its init text (the
seed fixes everything else). So for every edit and shot count of the quality table (its training and test scenes,
its settings), the search runs at today's steps and at the proposed ones; only where the two pick different texts
do the fitted rows differ, and only there are they fitted, both ways. A group's change is then the sum of those
edits' changes over the group's edit count (an unchanged edit's rows are identical by construction).

    python -m benchmarks.init_steps --json examples/toy/init_steps.json     # all 22 edits, 10 and 1 shots
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from invert.api import model_defaults
from invert.backbones import load_editor
from invert.clip import clip_name_for, load_clip
from invert.settings import FitSettings

from .quality import DEFAULT_EDITS, FITTED, QualitySettings, benchmark_edit, edit_pairs, group_of, search_init

# The rows the init search changes: every fitted row but the one given its own init text.
ROWS = tuple(row for row, (_, _, init_text) in FITTED.items() if init_text is None)


def compare(editor, clip, name: str, shots: int, steps: int, bench: QualitySettings = QualitySettings(),
            log=print) -> dict:
    """One edit at one shot count: both searches' picks, and where they differ every affected row fitted both ways
    (``{"today": {row: metrics}, "proposed": {...}, "no_edit": dB}``); ``bench``: the quality table's settings."""
    train, _ = edit_pairs(name, shots, bench.n_test, editor.resolution)
    common = {"seed": bench.seed, "resolution": editor.resolution, "guidance": bench.guidance[0],
              "image_guidance": bench.guidance[1]}
    # "today": the candidates scored with as many steps as the fit's validation (the default until issue 27)
    today_steps = model_defaults(editor.model_id, "visii", {}).get("val_steps", FitSettings().val_steps)
    rows = ("no_edit", *ROWS)
    base = replace(bench, shots=(shots,), rows=rows, fit_options={"best_val_steps": today_steps})
    proposed = replace(bench, shots=(shots,), rows=rows, fit_options={"best_val_steps": steps})
    searches = {"today": search_init(editor, clip, train[:shots], common, base),
                "proposed": search_init(editor, clip, train[:shots], common, proposed)}
    out = {"group": group_of(name), "shots": shots, "today_steps": today_steps, "proposed_steps": steps,
           "texts": {k: v["text"] for k, v in searches.items()},
           "search_seconds": {k: round(v["seconds"], 2) for k, v in searches.items()}}
    log(f"{name:22s} {shots:2d}-shot today {out['texts']['today']!r} ({out['search_seconds']['today']} s), "
        f"proposed {out['texts']['proposed']!r} ({out['search_seconds']['proposed']} s)")
    if out["texts"]["today"] != out["texts"]["proposed"]:
        for key, s in (("today", base), ("proposed", proposed)):
            result = benchmark_edit(editor, clip, name, s, log=log)
            out["no_edit"] = result["text"]["no_edit"]["psnr"]
            out[key] = {row: {m: cells[m] for m in ("psnr", "ssim", "init_text", "fit_seconds")}
                        for row, cells in result["shots"][str(shots)].items()}
    return out


def summarize(per_edit: list[dict]) -> dict:
    """Per shot count, row and group: the mean change (dB, over all the group's edits), and the fits below no
    edit today and proposed (among the changed edits: the others are the same fits)."""
    out: dict = {}
    for shots in sorted({e["shots"] for e in per_edit}):
        rows: dict = {}
        for row in ROWS:
            for group in ("global", "local", "hard", "hard_new"):
                members = [e for e in per_edit if e["shots"] == shots and e["group"] == group]
                if not members:
                    continue
                changed = [e for e in members if "today" in e]
                delta = sum(e["proposed"][row]["psnr"] - e["today"][row]["psnr"] for e in changed)
                rows.setdefault(row, {})[group] = {
                    "delta_db": delta / len(members), "changed_edits": len(changed), "edits": len(members),
                    "below_no_edit_today": sum(e["today"][row]["psnr"] < e["no_edit"] for e in changed),
                    "below_no_edit_proposed": sum(e["proposed"][row]["psnr"] < e["no_edit"] for e in changed)}
        out[str(shots)] = rows
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--steps", type=int, default=5, help="the proposed --best-val-steps")
    parser.add_argument("--shots", default="10,1")
    parser.add_argument("--edits", default=None, help="comma-separated; default: the quality table's 22")
    parser.add_argument("--guidance", type=float, default=QualitySettings().guidance[0],
                        help="text guidance of the fits and applies (the toy DiT: 1)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    editor = load_editor(args.model, "cpu")
    clip = load_clip(clip_name_for(None, editor.model_id), editor.device)
    names = args.edits.split(",") if args.edits else [n for group in DEFAULT_EDITS.values() for n in group]
    start = time.perf_counter()
    bench = QualitySettings(guidance=(args.guidance, QualitySettings().guidance[1]))
    per_edit = [compare(editor, clip, name, int(k), args.steps, bench) for k in args.shots.split(",") for name in names]
    command = "python -m benchmarks.init_steps " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "model": args.model, "edits": per_edit, "summary": summarize(per_edit), "seconds": time.perf_counter() - start}
    for shots, rows in result["summary"].items():
        for row, groups in rows.items():
            print(f"{shots:>2}-shot {row:15s} " + "  ".join(
                f"{g} {c['delta_db']:+.2f} dB ({c['changed_edits']}/{c['edits']} changed, below no edit "
                f"{c['below_no_edit_today']}->{c['below_no_edit_proposed']})" for g, c in groups.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
