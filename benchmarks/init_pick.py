"""Does a change to the init search (its options: ``--best-val-steps``, ``--best-shortlist``) change the quality
table? (issue 27: a cheaper self-check must keep every group within 0.3 dB of today's, and no more fits below no
edit.)

The init search is the only part of a fit these options change, and a fit is deterministic given its init text
(the seed fixes everything else). So for every edit and shot count of the quality table (its training and test
scenes, its settings), the search runs with today's options and with the proposed ones; only where the two pick
different texts do the fitted rows differ, and only there are they fitted, both ways. A group's change is then the
sum of those edits' changes over the group's edit count (an unchanged edit's rows are identical by construction).

    # 5 sampling steps against 10 (both scoring every candidate on every pair), all 22 edits, 10 and 1 shots
    python -m benchmarks.init_pick --json examples/toy/init_steps.json
    # the shortlist of 4 against none, 10 shots
    python -m benchmarks.init_pick --today '{"best_shortlist": 0}' --proposed '{"best_shortlist": 4}' --shots 10
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path


from .quality import FITTED, QualitySettings, benchmark_edit, edit_pairs, group_of, search_init, study_setup

# The rows the init search changes: every fitted row but the one given its own init text.
ROWS = tuple(row for row, (_, _, init_text) in FITTED.items() if init_text is None)


# The steps study of issue 27: the candidates scored with as many steps as the fit's validation (the default
# until then) against half as many, every candidate on every pair.
TODAY = {"best_val_steps": 10, "best_shortlist": 0}
PROPOSED = {"best_val_steps": 5, "best_shortlist": 0}


def compare(editor, clip, name: str, shots: int, today: dict, proposed: dict,
            bench: QualitySettings = QualitySettings(), log=print) -> dict:
    """One edit at one shot count: the picks of the searches with ``today``'s and ``proposed``'s fit options, and
    where they differ every affected row fitted both ways (``{"today": {row: metrics}, "proposed": {...}, "no_edit":
    dB}``); ``bench``: the quality table's settings."""
    train, _ = edit_pairs(name, shots, bench.n_test, editor.resolution)
    common = {"seed": bench.seed, "resolution": editor.resolution, "guidance": bench.guidance[0],
              "image_guidance": bench.guidance[1]}
    rows = ("no_edit", *ROWS)
    settings = {"today": replace(bench, shots=(shots,), rows=rows, fit_options=today),
                "proposed": replace(bench, shots=(shots,), rows=rows, fit_options=proposed)}
    searches = {k: search_init(editor, clip, train[:shots], common, s) for k, s in settings.items()}
    out = {"group": group_of(name), "shots": shots, "today_options": today, "proposed_options": proposed,
           "texts": {k: v["text"] for k, v in searches.items()},
           "search_seconds": {k: round(v["seconds"], 2) for k, v in searches.items()}}
    log(f"{name:22s} {shots:2d}-shot today {out['texts']['today']!r} ({out['search_seconds']['today']} s), "
        f"proposed {out['texts']['proposed']!r} ({out['search_seconds']['proposed']} s)")
    if out["texts"]["today"] != out["texts"]["proposed"]:
        for key, s in settings.items():
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
    parser.add_argument("--today", type=json.loads, default=TODAY, help="today's fit options, as JSON")
    parser.add_argument("--proposed", type=json.loads, default=PROPOSED, help="the proposed fit options, as JSON")
    parser.add_argument("--shots", default="10,1")
    parser.add_argument("--edits", default=None, help="comma-separated; default: the quality table's 22")
    parser.add_argument("--guidance", type=float, default=QualitySettings().guidance[0],
                        help="text guidance of the fits and applies (the toy DiT: 1)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    editor, clip, names = study_setup(args.model, args.edits)
    start = time.perf_counter()
    bench = QualitySettings(guidance=(args.guidance, QualitySettings().guidance[1]))
    per_edit = [compare(editor, clip, name, int(k), args.today, args.proposed, bench)
                for k in args.shots.split(",") for name in names]
    command = "python -m benchmarks.init_pick " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "model": args.model, "edits": per_edit, "summary": summarize(per_edit),
              "seconds": time.perf_counter() - start}
    for shots, rows in result["summary"].items():
        for row, groups in rows.items():
            print(f"{shots:>2}-shot {row:15s} " + "  ".join(
                f"{g} {c['delta_db']:+.2f} dB ({c['changed_edits']}/{c['edits']} changed, below no edit "
                f"{c['below_no_edit_today']}->{c['below_no_edit_proposed']})" for g, c in groups.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
