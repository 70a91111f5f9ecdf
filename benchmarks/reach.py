"""How soon a fit reaches a default fit's score, read from quality runs (issue 30: "a fit started from the encoder
reaches the default fit's validation score in at most a third of its steps").

For each edit and shot count: the default fit's kept validation score (the state ``--keep last-unless-worse``
keeps: the last, unless an earlier one scored more than ``KEEP_MARGIN`` higher), and the first validation point of
the other fit's curve at or above it. Both rows come from ``python -m benchmarks quality`` JSON files (the same run
or two: the fits hold out the same pairs and score them with the same sampling), each ``FILE:ROW``.

    python -m benchmarks.reach examples/toy/visii_cond_quality.json:visii_cond \\
        examples/toy/encoder_cond_fit_quality.json:encoder+cond_fit
"""
from __future__ import annotations

import argparse
import json

from invert.fitting.loop import KEEP_MARGIN

from .keep_rules import last_unless


def kept_score(curve: list[list[float]]) -> float:
    """The validation score of the state ``--keep last-unless-worse`` keeps, from a fit's curve [(step, score)]."""
    scores = [score for _, score in curve]
    return scores[last_unless(scores, KEEP_MARGIN)]


def reach(default: dict, default_row: str, other: dict, other_row: str, shots: str) -> dict[str, dict]:
    """Per edit (of both runs' ``edits``, with a curve in each row): the default fit's kept score and steps, and
    the step at which ``other_row``'s curve first reaches that score (None: never)."""
    out = {}
    for edit, cells in default.items():
        a = cells["shots"].get(shots, {}).get(default_row)
        b = other.get(edit, {}).get("shots", {}).get(shots, {}).get(other_row)
        if not a or not b or not a.get("curve") or not b.get("curve"):
            continue
        target = kept_score(a["curve"])
        out[edit] = {"target": target, "steps": a["curve"][-1][0],
                     "reached_at": next((step for step, score in b["curve"] if score >= target), None)}
    return out


def within(result: dict[str, dict], fraction: float = 1 / 3) -> int:
    """How many edits reached the target within ``fraction`` of the default fit's steps."""
    return sum(1 for r in result.values() if r["reached_at"] is not None and r["reached_at"] <= r["steps"] * fraction)


def _row(spec: str) -> tuple[dict, str]:
    path, _, row = spec.rpartition(":")
    if not path or not row:
        raise SystemExit(f"{spec}: give FILE:ROW")
    with open(path) as f:
        return json.load(f)["edits"], row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("default", help="FILE:ROW of the default fit.")
    parser.add_argument("other", help="FILE:ROW of the fit that should reach it.")
    parser.add_argument("--shots", default="10,1")
    parser.add_argument("--json", default=None, help="Write the result here.")
    args = parser.parse_args(argv)
    (a, row_a), (b, row_b) = _row(args.default), _row(args.other)
    result = {}
    for shots in args.shots.split(","):
        result[shots] = reach(a, row_a, b, row_b, shots)
        for edit, r in result[shots].items():
            print(f"{shots:>3} shots {edit:26s} target {r['target']:6.2f} of {r['steps']} steps: reached at "
                  f"{r['reached_at']}")
        print(f"{shots} shots: {within(result[shots])} of {len(result[shots])} edits within a third of the steps")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
