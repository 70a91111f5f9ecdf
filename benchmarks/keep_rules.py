"""Which state should a fit keep? The study --keep's default rule is chosen from (issue 25, item 8): two held-out
pairs are a noisy judge, so the state scoring best on them may not be the one that edits new scenes best.

Protocol: the toy model's own defaults per method (its invert.json: steps, lr, guidance 3 / 1.5; --init best; 10
exemplar pairs from the quality bench's training scenes, the last 2 held out for the fit's validation, scored 10
times per fit and at its start). One fit per (method, edit) runs with --keep last and a snapshot of its state at
every validation point; each snapshot (the start included) is applied to new *validation scenes*
(``quality.VALIDATION_SEED``, never the quality table's test scenes): PSNR (dB) to the true edits, 20 sampling
steps, the fit's noise. Each rule picks a state from the held-out curve alone; its score is that state's on the
validation scenes. "oracle" (the best state on the validation scenes) and "start" are references, not rules.

    python -m benchmarks.keep_rules --json examples/toy/keep_rules.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

from invert.api import apply, fit_images, load_method, model_defaults
from invert.backbones import load_editor
from invert.clip import clip_name_for, load_clip
from invert.evaluation import as_tensor, psnr
from invert.fitting.validation import Validation, held_out, scoring_interval
from invert.methods import method_names, settings_for

from .quality import VALIDATION_SEED, QualitySettings, edit_pairs

BENCH = QualitySettings()
# Two edits of each kind: global, local, hard (compositions and in-between strengths).
EDITS = ["night", "sepia", "circle_red", "add_star", "night_frame", "hue200"]
RESCORE_STEPS = 20  # "more validation steps": the held-out pairs scored again with this many sampling steps


def best(curve: list[float], margin: float = 0.0) -> int:
    """The first state whose score beats the kept one's by more than ``margin`` replaces it (the start first)."""
    kept = 0
    for i, score in enumerate(curve):
        if score > curve[kept] + margin:
            kept = i
    return kept


def smoothed(curve: list[float], window: int = 3) -> int:
    """The state whose score averaged with its neighbours' (``window`` wide, centred) is the highest."""
    half = window // 2
    means = [sum(curve[max(0, i - half):i + half + 1]) / len(curve[max(0, i - half):i + half + 1])
             for i in range(len(curve))]
    return best(means)


def last_unless(curve: list[float], margin: float) -> int:
    """The last state, unless the best scores more than ``margin`` above it."""
    top = best(curve)
    return top if curve[top] > curve[-1] + margin else len(curve) - 1


def sparser(every: int, rule: Callable[[list[float]], int]) -> Callable[[dict], int]:
    """``rule`` on a curve scored ``every`` times less often (every ``every``-th score, the start and the last kept):
    what scoring fewer times per fit would keep (issue 27)."""
    def pick(r: dict) -> int:
        points = sorted({*range(0, len(r["held_out"]), every), len(r["held_out"]) - 1})
        return points[rule([r["held_out"][i] for i in points])]
    return pick


def patience_stop(curve: list[float], patience: int) -> int:
    """The index of the score at which --patience ``patience`` ends the fit (the loop's own rule,
    ``BestScore.scores_since_best``); the last when it runs to the end."""
    from invert.fitting.loop import BestScore

    scores = BestScore(None, keep_state=False)
    for i, score in enumerate(curve):
        scores.update(score, i)
        if 0 < i < len(curve) - 1 and scores.scores_since_best >= patience:
            return i
    return len(curve) - 1


PATIENCE = (2, 3, 4, 5, 6)


def early_stop(patience: int) -> Callable[[dict], int]:
    """The state --keep last-unless-worse keeps of a fit that --patience ended: a fit stopped early is the full
    fit's first steps (same seed, same schedule), so its curve is the full curve up to the stop."""
    return lambda r: last_unless(r["held_out"][:patience_stop(r["held_out"], patience) + 1], 1.0)


def loop_share(runs: dict, patience: int) -> float:
    """The share of the fits' steps that --patience runs, over all fits."""
    rows = [r for method_rows in runs.values() for r in method_rows.values()]
    return sum(r["steps"][patience_stop(r["held_out"], patience)] / r["steps"][-1] for r in rows) / len(rows)


RULES: dict[str, Callable[[dict], int]] = {
    "best (--keep best, the default before)": lambda r: best(r["held_out"]),
    "best, margin 0.5 dB": lambda r: best(r["held_out"], 0.5),
    "best, margin 1 dB": lambda r: best(r["held_out"], 1.0),
    "best, margin 2 dB": lambda r: best(r["held_out"], 2.0),
    "best of 3-point means": lambda r: smoothed(r["held_out"]),
    "last (--keep last)": lambda r: len(r["held_out"]) - 1,
    "last unless best +0.5 dB": lambda r: last_unless(r["held_out"], 0.5),
    "last unless best +1 dB (--keep last-unless-worse)": lambda r: last_unless(r["held_out"], 1.0),
    "last unless best +2 dB": lambda r: last_unless(r["held_out"], 2.0),
    "last unless best +1 dB, scored half as often": sparser(2, lambda c: last_unless(c, 1.0)),
    "last unless best +1 dB, scored a fifth as often": sparser(5, lambda c: last_unless(c, 1.0)),
    f"best, {RESCORE_STEPS} val steps": lambda r: best(r["held_out_rescored"]),
    **{f"last unless best +1 dB, --patience {k}": early_stop(k) for k in PATIENCE},
    "start (reference)": lambda r: 0,
    "oracle (reference)": lambda r: best(r["truth"]),
}


def trace(editor, clip, method: str, name: str, shots: int = 10, n_val: int = 8, log=print,
          also_steps: tuple[int, ...] = (), **overrides) -> dict:
    """One fit's held-out curve, its snapshots' scores on the validation scenes, and the held-out pairs scored
    again with RESCORE_STEPS sampling steps (and with each of ``also_steps``, under ``held_out_at``).
    ``overrides``: fit settings instead of the model's (a test's)."""
    size = editor.resolution
    train, val = edit_pairs(name, shots, n_val, size, test_seed=VALIDATION_SEED)
    befores, afters = [b for b, _ in train], [a for _, a in train]
    given = {"seed": BENCH.seed, "resolution": size, "guidance": BENCH.guidance[0],
             "image_guidance": BENCH.guidance[1], "keep": "last", **overrides}
    settings, method_settings = settings_for(method, {**model_defaults(editor.model_id, method, given), **given})
    snaps = {}
    start = time.perf_counter()
    # The fit scores its held-out pairs every `every` steps (each method here trains in one stage of
    # settings.steps steps); a checkpoint at the same steps is the scored state.
    every = scoring_interval(settings.steps, settings.val_every)
    final = fit_images(editor, befores, afters, method, settings, method_settings, clip=clip, quiet=True,
                       checkpoint=lambda inst, step: snaps.__setitem__(step, inst), save_every=every)
    seconds = time.perf_counter() - start
    curve = final.meta.validation["curve"]
    steps = [int(step) for step, _ in curve]
    states = {**snaps, steps[-1]: final}
    truths, held = as_tensor([a for _, a in val]), held_out(len(train), settings.val)

    def rescored(sampling_steps: int) -> list[float]:
        rescorer = Validation(editor, [befores[i] for i in held], [afters[i] for i in held], steps=sampling_steps,
                              guidance=settings.guidance, image_guidance=settings.image_guidance, seed=settings.seed)
        return [rescorer.score(load_method(final, editor, 0.0)),
                *(rescorer.score(load_method(states[s], editor)) for s in steps[1:])]

    def truth(inst, strength: float = 1.0) -> float:
        results = apply(inst, [b for b, _ in val], editor=editor, steps=BENCH.apply_steps, strength=strength)
        return float(psnr(as_tensor(results), truths).mean())

    row = {"steps": steps, "held_out": [float(score) for _, score in curve],
           "truth": [truth(final, 0.0), *(truth(states[s]) for s in steps[1:])],
           "held_out_rescored": rescored(RESCORE_STEPS),
           "no_edit": float(psnr(as_tensor([b for b, _ in val]), truths).mean()),
           "init_text": final.meta.init_text, "fit_seconds": seconds}
    if also_steps:
        row["held_out_at"] = {str(n): rescored(n) for n in also_steps}
    log(f"{method:6s} {name:12s} held-out " + " ".join(f"{x:.1f}" for x in row["held_out"]) + "  val "
        + " ".join(f"{x:.1f}" for x in row["truth"]) + f"  ({seconds:.0f} s)")
    return row


def summarize(runs: dict) -> dict:
    """``{rule: {method: mean validation PSNR of the kept states, "all": ..., "regret": mean dB below the oracle}}``."""
    out = {}
    for rule, pick in RULES.items():
        per_method = {}
        for method, rows in runs.items():
            per_method[method] = sum(r["truth"][pick(r)] for r in rows.values()) / len(rows)
        rows = [r for method_rows in runs.values() for r in method_rows.values()]
        per_method["all"] = sum(r["truth"][pick(r)] for r in rows) / len(rows)
        per_method["regret"] = sum(r["truth"][best(r["truth"])] - r["truth"][pick(r)] for r in rows) / len(rows)
        out[rule] = per_method
    return out


def format_table(summary: dict) -> str:
    methods = [k for k in next(iter(summary.values())) if k not in ("all", "regret")]
    lines = ["| rule | " + " | ".join(methods) + " | all | below oracle |", "|---|" + "---|" * (len(methods) + 2)]
    for rule, cells in summary.items():
        lines.append(f"| {rule} | " + " | ".join(f"{cells[m]:.2f}" for m in methods)
                     + f" | {cells['all']:.2f} | {cells['regret']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--methods", default=",".join(method_names()))
    parser.add_argument("--edits", default=",".join(EDITS))
    parser.add_argument("--json", type=Path, help="write the result here (and continue from it)")
    args = parser.parse_args(argv)
    editor = load_editor(args.model, "cpu")
    clip = load_clip(clip_name_for(None, editor.model_id))
    result = json.loads(args.json.read_text()) if args.json and args.json.exists() else {"runs": {}}
    result["edits"], start = args.edits.split(","), time.perf_counter()
    for method in args.methods.split(","):
        for name in result["edits"]:
            if name in result["runs"].get(method, {}):
                continue
            result["runs"].setdefault(method, {})[name] = trace(editor, clip, method, name)
            if args.json:
                args.json.write_text(json.dumps(result, indent=1))
    result["summary"] = summarize(result["runs"])
    result["patience_loop_share"] = {str(k): loop_share(result["runs"], k) for k in PATIENCE}
    result["seconds"] = result.get("seconds", 0.0) + time.perf_counter() - start
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(format_table(result["summary"]))
    print("share of the loop run: " + ", ".join(f"--patience {k}: {v:.2f}" for k, v in
                                                 result["patience_loop_share"].items()))


if __name__ == "__main__":
    main()
