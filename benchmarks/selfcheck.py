"""What the self-checking fit costs on top of its loop (issue 27): a default ``invert fit`` against the same fit's
loop alone (``--init auto --val-every 0 --keep last``), each a whole process as a user runs it (start-up, model
and CLIP loading included), run side by side in one run (the default then the loop, per method, per
repetition), so that each ratio compares processes under the same load: on a shared machine compare ratios,
never absolute times across runs. Each default fit's ``cost`` (seconds and denoiser rows per phase) comes along.

    OMP_NUM_THREADS=1 python -m benchmarks.selfcheck --json examples/toy/selfcheck_ratio.json
    OMP_NUM_THREADS=1 python -m benchmarks.selfcheck --proposal "--val-steps 5" --json ...
    OMP_NUM_THREADS=1 python -m benchmarks.selfcheck --other-tree ../old --json ...   # a change of code
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

LOOP_ALONE = ["--init", "auto", "--val-every", "0", "--keep", "last"]


# ``python -m invert`` with the library of the checkout named by the first argument: an editable install's import
# finder (pip install -e) comes before sys.path, so it is taken out first.
RUN_TREE = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__"
            ".startswith('__editable__')]; sys.path.insert(0, sys.argv.pop(1)); runpy.run_module('invert', "
            "run_name='__main__', alter_sys=True)")


def run_fit(pairs: str, method: str, model: str, extra: list[str], out: Path, tree: str | None = None) -> dict:
    """One ``invert fit --json`` process: its wall seconds and its report; ``tree``: a checkout whose library it
    runs."""
    command = [sys.executable, *(["-c", RUN_TREE, tree] if tree else ["-m", "invert"]), "fit", pairs, "-o", str(out),
               "--model", model, "--method", method, "--json", "--quiet", "--force", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return {"wall_seconds": round(seconds, 2), "report": json.loads(done.stdout)}


def measure(pairs: str, methods: list[str], model: str, repeats: int, extra: list[str],
            proposal: list[str] | None = None, tree: str | None = None) -> dict:
    """``proposal``: options of a third fit, run beside the other two (a default proposed for the checks);
    ``tree``: a checkout whose library the third fit runs (a change of code), with ``proposal`` or the defaults."""
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for method in methods:
                default = run_fit(pairs, method, model, extra, Path(tmp) / "default.inst")
                proposed = run_fit(pairs, method, model, [*extra, *(proposal or [])], Path(tmp) / "proposed.inst",
                                   tree) if proposal or tree else None
                loop = run_fit(pairs, method, model, [*extra, *LOOP_ALONE], Path(tmp) / "loop.inst")
                row = {"default": default["wall_seconds"], "loop_alone": loop["wall_seconds"],
                       "ratio": round(default["wall_seconds"] / loop["wall_seconds"], 3),
                       "cost": default["report"]["cost"], "loop_cost": loop["report"]["cost"]}
                if proposed:
                    row.update(proposed=proposed["wall_seconds"], proposed_cost=proposed["report"]["cost"],
                               proposed_ratio=round(proposed["wall_seconds"] / loop["wall_seconds"], 3))
                rows[method].append(row)
                print(f"{method} rep {rep + 1}: " + ", ".join(f"{k} {row[k]:.2f}" for k in
                                                             ("default", "proposed", "loop_alone", "ratio",
                                                              "proposed_ratio") if k in row), file=sys.stderr)
    summary = {m: {"ratio_median": statistics.median(r["ratio"] for r in runs), "runs": runs} for m, runs in
               rows.items()}
    if proposal or tree:
        for m, runs in rows.items():
            summary[m]["proposed_ratio_median"] = statistics.median(r["proposed_ratio"] for r in runs)
    return {"pairs": pairs, "model": model, "extra": extra, "proposal": proposal, "other_tree": tree,
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "methods": summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="examples/toy/night/train")
    parser.add_argument("--methods", nargs="+", default=["visii", "brush"])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--proposal", default="", help="Fit options of a third fit run beside the others, as one "
                        "string: e.g. '--val-steps 5'.")
    parser.add_argument("--other-tree", help="A checkout (another commit's) whose library the third fit runs, "
                        "with --proposal's options or the defaults: a change of code, side by side.")
    parser.add_argument("--json", dest="json_path", help="Also write the result here.")
    parser.add_argument("extra", nargs="*", help="More fit options for both fits (after --).")
    args = parser.parse_args(argv)
    result = measure(args.pairs, args.methods, args.model, args.repeats, args.extra, args.proposal.split() or None,
                     args.other_tree)
    text = json.dumps(result, indent=2)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
