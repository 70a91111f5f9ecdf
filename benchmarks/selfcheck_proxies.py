"""Can the init search rank its candidate texts more cheaply (issue 27, item 2)? Today a fit scores each candidate
on its training pairs with 10 sampling steps (the validation score: PSNR of the untrained instruction's edits to
the afters, the fit's noise). The cheaper judges compared here: fewer sampling steps, fewer pairs, and a
forward-only proxy (each candidate's guided denoising loss on the pairs at a few fixed timesteps with the fit's
fixed noises, one denoiser call per timestep and no sampling).

Only the toy world's *validation scenes* are used (``quality.VALIDATION_SEED``, never the quality table's test
scenes): per edit, 8 pairs of them stand for a fit's training pairs, the candidates are those ``--init best``
finds on them, and every judge scores every candidate. Per edit and judge: the Spearman rank correlation with
today's scores, and the regret, today's score of today's best candidate less today's score of the judge's pick
(what choosing by the judge would lose, in today's dB). Rows are counted as the fit counts them.

    OMP_NUM_THREADS=1 python -m benchmarks.selfcheck_proxies --json examples/toy/selfcheck_proxies.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from invert.api import model_defaults
from invert.backbones import load_editor
from invert.clip import clip_name_for, load_clip
from invert.fitting.loop import KEEP_MARGIN, FitData, predict
from invert.fitting.losses import row_mse
from invert.fitting.phrases import init_candidates
from invert.fitting.validation import Validation
from invert.methods import method_class, settings_for

from .keep_rules import EDITS, last_unless, trace
from .quality import VALIDATION_SEED, edit_pairs

PAIRS = 8  # a fit of 10 exemplars trains on 8
TODAY = 10  # today's sampling steps (FitSettings.val_steps)
# name -> (sampling steps, pairs used); "proxy K" is the forward-only loss at K timesteps
JUDGES = {"10 steps (today)": (10, PAIRS), "5 steps": (5, PAIRS), "3 steps": (3, PAIRS), "2 steps": (2, PAIRS),
          "10 steps, 4 pairs": (10, 4), "5 steps, 4 pairs": (5, 4), "3 steps, 4 pairs": (3, 4)}
PROXY_TIMESTEPS = {"proxy 3 timesteps": (250, 500, 750), "proxy 5 timesteps": (100, 300, 500, 700, 900)}


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties averaged."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


@torch.no_grad()
def proxy_score(method, data: FitData, settings, timesteps: tuple[int, ...]) -> float:
    """Minus the guided denoising loss on every pair at each of ``timesteps`` (their fixed noises): higher is
    better, as a PSNR. One denoiser call per timestep, every pair a row."""
    pairs = torch.arange(len(data))
    total = 0.0
    with method.installed():
        for t in timesteps:
            x = data.inputs(torch.full((len(data),), t), pairs)
            total += float(row_mse(predict(method, data, settings, x.noisy, x.cond, x.timesteps), x.objective).mean())
    return -total / len(timesteps)


def study_edit(editor, clip, method: str, name: str) -> dict:
    _, val = edit_pairs(name, 0, PAIRS, editor.resolution, test_seed=VALIDATION_SEED)
    befores, afters = [b for b, _ in val], [a for _, a in val]
    given = {"resolution": editor.resolution}  # the rest the toy model's own fit defaults (text guidance 3)
    settings, method_settings = settings_for(method, {**model_defaults(editor.model_id, method, given), **given})
    texts, _ = init_candidates(clip, settings.vocab, editor.model_id, befores, afters, settings)
    cls = method_class(method)
    candidates = [cls.initialize(editor, editor.encode_text([t]), t, method_settings, settings.seed) for t in texts]
    scores, seconds = {}, {}
    for judge, (steps, pairs) in JUDGES.items():
        scorer = Validation(editor, befores[:pairs], afters[:pairs], steps=steps, guidance=settings.guidance,
                            image_guidance=settings.image_guidance, seed=settings.seed)
        start = time.perf_counter()
        scores[judge] = [scorer.score(c) for c in candidates]
        seconds[judge] = time.perf_counter() - start
    data = FitData(editor, befores, afters, settings.seed)
    for judge, timesteps in PROXY_TIMESTEPS.items():
        start = time.perf_counter()
        scores[judge] = [proxy_score(c, data, settings, timesteps) for c in candidates]
        seconds[judge] = time.perf_counter() - start
    today = scores["10 steps (today)"]
    best = max(today)
    return {"texts": texts, "scores": scores, "seconds": seconds,
            "spearman": {j: spearman(s, today) for j, s in scores.items()},
            "regret": {j: best - today[max(range(len(s)), key=lambda i: s[i])] for j, s in scores.items()}}


VALIDATION_STEPS = (5, 3, 2)  # the fit's validation scored with this many sampling steps instead of 10


def study_validation(editor, clip, method: str, name: str) -> dict:
    """One default fit on an edit's training scenes (keep_rules.trace: its states at each validation point, their
    scores on the validation scenes); its held-out pairs scored again with VALIDATION_STEPS steps. Per judge: the
    Spearman correlation with today's curve, and what the --keep rule (last unless the best is 1 dB higher) keeps
    by it: the kept state's validation-scene score less that of the state today's curve keeps."""
    row = trace(editor, clip, method, name, also_steps=VALIDATION_STEPS, log=lambda line: None)
    today = row["held_out"]
    kept_today = row["truth"][last_unless(today, KEEP_MARGIN)]
    judges = {f"{n} steps": row["held_out_at"][str(n)] for n in VALIDATION_STEPS}
    return {**row, "spearman": {j: spearman(c, today) for j, c in judges.items()},
            "kept_change_db": {j: row["truth"][last_unless(c, KEEP_MARGIN)] - kept_today for j, c in judges.items()}}


def rows_per_candidate() -> dict[str, int]:
    """Denoiser rows per candidate of each judge (IP2P's three guidance rows)."""
    out = {j: steps * pairs * 3 for j, (steps, pairs) in JUDGES.items()}
    out.update({j: len(t) * PAIRS * 3 for j, t in PROXY_TIMESTEPS.items()})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--methods", default="visii,brush")
    parser.add_argument("--edits", default=",".join(EDITS))
    parser.add_argument("--json", type=Path, help="write the result here (and continue from it)")
    parser.add_argument("--study", choices=["init", "validation"], default="init",
                        help="init: the init search's judges; validation: the fit's validation steps")
    args = parser.parse_args(argv)
    editor = load_editor(args.model, "cpu")
    clip = load_clip(clip_name_for(None, editor.model_id))
    result = json.loads(args.json.read_text()) if args.json and args.json.exists() else {"runs": {}}
    if args.study == "validation":
        return validation_main(editor, clip, args, result)
    for method in args.methods.split(","):
        for name in args.edits.split(","):
            if name in result["runs"].get(method, {}):
                continue
            row = study_edit(editor, clip, method, name)
            result["runs"].setdefault(method, {})[name] = row
            print(f"{method:6s} {name:12s} " + "  ".join(f"{j}: rho {row['spearman'][j]:.2f} regret "
                                                         f"{row['regret'][j]:.2f}" for j in row["spearman"]),
                  flush=True)
            if args.json:
                args.json.write_text(json.dumps(result, indent=1))
    runs = [r for m in result["runs"].values() for r in m.values()]
    judges = list(runs[0]["spearman"])
    result["rows_per_candidate"] = rows_per_candidate()
    result["summary"] = {j: {"mean_spearman": sum(r["spearman"][j] for r in runs) / len(runs),
                             "min_spearman": min(r["spearman"][j] for r in runs),
                             "mean_regret_db": sum(r["regret"][j] for r in runs) / len(runs),
                             "max_regret_db": max(r["regret"][j] for r in runs),
                             "rows_per_candidate": result["rows_per_candidate"][j]} for j in judges}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print("| judge | rows per candidate | mean rho | min rho | mean regret dB | max regret dB |")
    print("|---|---|---|---|---|---|")
    for j, s in result["summary"].items():
        print(f"| {j} | {s['rows_per_candidate']} | {s['mean_spearman']:.2f} | {s['min_spearman']:.2f} | "
              f"{s['mean_regret_db']:.2f} | {s['max_regret_db']:.2f} |")


def validation_main(editor, clip, args, result: dict) -> None:
    for method in args.methods.split(","):
        for name in args.edits.split(","):
            if name not in result["runs"].get(method, {}):
                result["runs"].setdefault(method, {})[name] = row = study_validation(editor, clip, method, name)
                print(f"{method:6s} {name:12s} " + "  ".join(
                    f"{j}: rho {row['spearman'][j]:.2f} kept {row['kept_change_db'][j]:+.2f} dB"
                    for j in row["spearman"]), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(result, indent=1))
    runs = [r for m in result["runs"].values() for r in m.values()]
    result["summary"] = {j: {"mean_spearman": sum(r["spearman"][j] for r in runs) / len(runs),
                             "min_spearman": min(r["spearman"][j] for r in runs),
                             "mean_kept_change_db": sum(r["kept_change_db"][j] for r in runs) / len(runs),
                             "worst_kept_change_db": min(r["kept_change_db"][j] for r in runs)}
                         for j in runs[0]["spearman"]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print("| validation steps | mean rho | min rho | kept state's change, mean dB | worst dB |")
    print("|---|---|---|---|---|")
    for j, s in result["summary"].items():
        print(f"| {j} | {s['mean_spearman']:.2f} | {s['min_spearman']:.2f} | {s['mean_kept_change_db']:+.2f} | "
              f"{s['worst_kept_change_db']:+.2f} |")


if __name__ == "__main__":
    main()
