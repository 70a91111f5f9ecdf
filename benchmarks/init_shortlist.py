"""Can the init search score its candidates on half the training pairs first, and only a shortlist on all of them
(issue 27)? A candidate's score is the mean PSNR over the pairs, each pair sampled with its own noise generator (a
pair's edit does not depend on the batch it is in), so a two-round search gives the shortlisted candidates exactly
the one-round scores; it can only differ by leaving today's best candidate off the shortlist.

Only the toy world's *validation scenes* (``quality.VALIDATION_SEED``, never the quality table's test scenes): per
edit, 8 pairs stand for a 10-exemplar fit's training pairs, the candidates are those ``--init best`` finds on them,
and every candidate is scored on every pair (the fit's candidate steps, guidance and seed). Each shortlist rule is
then applied to these per-pair scores: how often it misses today's pick, the regret (today's score of today's pick
less today's score of the rule's pick), and the share of the search's pair-samplings it saves.

    OMP_NUM_THREADS=1 python -m benchmarks.init_shortlist --json examples/toy/init_shortlist.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from invert.api import model_defaults
from invert.fitting.init_search import candidate_steps, shortlist
from invert.fitting.phrases import init_candidates
from invert.fitting.validation import Validation
from invert.methods import method_class, settings_for

from .quality import VALIDATION_SEED, edit_pairs, study_setup

PAIRS = 8  # a fit of 10 exemplars trains on 8
RULES = {f"top {k}": {"keep": k} for k in (2, 3, 4, 5, 6)}


def per_pair_scores(editor, clip, method: str, name: str) -> dict:
    """Every candidate's PSNR on each of the edit's 8 validation pairs."""
    _, val = edit_pairs(name, 0, PAIRS, editor.resolution, test_seed=VALIDATION_SEED)
    befores, afters = [b for b, _ in val], [a for _, a in val]
    given = {"resolution": editor.resolution}
    settings, method_settings = settings_for(method, {**model_defaults(editor.model_id, method, given), **given})
    texts, _ = init_candidates(clip, settings.vocab, editor.model_id, befores, afters, settings)
    cls = method_class(method)
    judge = Validation.of_fit(editor, befores, afters, settings, candidate_steps(settings))  # the fit's own scorer
    scores = {t: [round(v, 4) for v in judge.pair_scores(cls.initialize(editor, editor.encode_text([t]), t,
                                                                        method_settings, settings.seed))]
              for t in texts}
    return {"scores": scores, "steps": judge.steps}


def apply_rule(scores: dict[str, list[float]], keep: int) -> dict:
    """The two-round search on stored per-pair scores: round one on the first half of the pairs, the ``keep``
    best of it on the rest; its pick, regret and pair-samplings against scoring every candidate on every pair."""
    n = len(next(iter(scores.values())))
    half = n // 2
    mean = {t: sum(v) / n for t, v in scores.items()}
    first = {t: sum(v[:half]) / half for t, v in scores.items()}
    today = max(mean, key=mean.get)
    listed = shortlist(first, keep)
    pick = max(listed, key=mean.get)
    samplings = len(scores) * half + len(listed) * (n - half)
    return {"pick": pick, "today": today, "regret_db": round(mean[today] - mean[pick], 4),
            "rank_of_today_in_round_one": sorted(first, key=first.get, reverse=True).index(today) + 1,
            "samplings": samplings, "today_samplings": len(scores) * n}


def by_pair_count(edits: dict, keep: int, counts: tuple[int, ...] = (4, 5, 6, 7, 8)) -> dict:
    """Fewer training pairs: every window of ``n`` consecutive pairs of each edit's 8 stands for a fit's training
    pairs (round one on the first half of the window); misses and regret against one round over the window."""
    out = {}
    for n in counts:
        rows = [apply_rule({t: v[start:start + n] for t, v in e["scores"].items()}, keep)
                for e in edits.values() for start in range(PAIRS - n + 1)]
        out[str(n)] = {"misses": sum(r["pick"] != r["today"] for r in rows), "searches": len(rows),
                       "max_regret_db": max(r["regret_db"] for r in rows)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--method", default="visii", help="on the toy IP2P brush's untrained start is its text's "
                        "edit, so its candidates score as visii's")
    parser.add_argument("--edits", default=None, help="comma-separated; default: the quality table's 22")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    editor, clip, names = study_setup(args.model, args.edits)
    start = time.perf_counter()
    edits = {}
    for name in names:
        edits[name] = per_pair_scores(editor, clip, args.method, name)
        edits[name]["rules"] = {r: apply_rule(edits[name]["scores"], **o) for r, o in RULES.items()}
        print(f"{name:22s} " + "  ".join(f"{r}: regret {v['regret_db']:.2f}" for r, v in
                                         edits[name]["rules"].items()), flush=True)
    summary = {}
    for rule in RULES:
        rows = [e["rules"][rule] for e in edits.values()]
        summary[rule] = {"misses": sum(r["pick"] != r["today"] for r in rows), "edits": len(rows),
                         "max_regret_db": max(r["regret_db"] for r in rows),
                         "mean_regret_db": round(sum(r["regret_db"] for r in rows) / len(rows), 4),
                         "samplings_saved": round(1 - sum(r["samplings"] for r in rows)
                                                  / sum(r["today_samplings"] for r in rows), 4)}
        summary[rule]["by_training_pairs"] = by_pair_count(edits, RULES[rule]["keep"])
        print(f"{rule}: {summary[rule]}")
    command = "python -m benchmarks.init_shortlist " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "model": args.model, "method": args.method, "pairs": PAIRS, "edits": edits,
              "summary": summary, "seconds": round(time.perf_counter() - start, 1)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
