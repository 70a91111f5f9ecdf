"""The keep-rule study (benchmarks.keep_rules): its rules pick what they say from a held-out curve, and each
snapshot it scores is the state the fit's curve scored at that step."""
import pytest
from conftest import tiny_fit

from benchmarks import quality
from benchmarks.keep_rules import best, early_stop, last_unless, loop_share, patience_stop, smoothed, summarize, trace
from invert.api import apply
from invert.evaluation import as_tensor, psnr


def test_the_rules_pick_from_the_curve():
    curve = [10.0, 12.0, 11.5, 12.4, 9.0]
    assert best(curve) == 3, "the highest; the start is a candidate"
    assert best([12.0, 11.0, 12.0]) == 0, "a later state must score strictly higher"
    assert best(curve, margin=0.5) == 1, "12.4 is not 0.5 dB above the kept 12.0"
    assert smoothed(curve) == 2, "3-point means: 11.0, 11.17, 11.97, 10.97, 10.7"
    assert last_unless(curve, 1.0) == 3 and last_unless([10.0, 12.0, 11.5], 1.0) == 2
    runs = {"m": {"e": {"held_out": curve, "held_out_rescored": curve, "truth": [1.0, 2.0, 3.0, 0.0, 4.0]}}}
    table = summarize(runs)
    assert table["best (--keep best, the default before)"]["m"] == 0.0 and table["oracle (reference)"]["all"] == 4.0
    assert table["last (--keep last)"]["regret"] == 0.0 and table["start (reference)"]["regret"] == 3.0


def test_patience_replays_the_loops_stop_on_a_stored_curve():
    """The fit stops at the score that makes ``patience`` in a row without a better one, never at the start or the
    last; --keep then chooses among the states up to there."""
    curve = [10.0, 12.0, 11.0, 12.0, 11.5, 13.0, 9.0]
    assert patience_stop(curve, 3) == 4, "scores 2, 3 and 4 do not beat 12.0 (a tie does not)"
    assert patience_stop(curve, 4) == 6 and patience_stop([10.0, 9.0], 1) == 1, "runs to the end"
    assert early_stop(3)({"held_out": curve}) == 4 and early_stop(4)({"held_out": curve}) == 5
    runs = {"m": {"e": {"held_out": curve, "steps": [0, 10, 20, 30, 40, 50, 60]}}}
    assert loop_share(runs, 3) == pytest.approx(40 / 60) and loop_share(runs, 4) == 1.0


def test_a_snapshot_is_the_state_the_curve_scored(editor, clip):
    """Step 2 of a 4-step trace is a 2-step fit's last state: the same held-out score and validation score."""
    options = {"steps": 4, "lr": 5e-2, "val_every": 2, "val_steps": 2, "init_text": "make it night"}
    row = trace(editor, clip, "visii", "night", shots=8, n_val=2, log=lambda line: None, also_steps=(2,), **options)
    assert row["steps"] == [0, 2, 4] and len(row["truth"]) == len(row["held_out_rescored"]) == 3
    assert row["held_out_at"]["2"] == pytest.approx(row["held_out"], abs=1e-4), "rescored as the fit scored"
    train, val = quality.edit_pairs("night", 8, 2, editor.resolution, test_seed=quality.VALIDATION_SEED)
    two = tiny_fit(editor, [b for b, _ in train], [a for _, a in train], "visii", clip=clip, keep="last",
                   guidance=3.0, **{**options, "steps": 2})
    assert row["held_out"][1] == pytest.approx(two.meta.validation["curve"][-1][1], abs=1e-5)
    results = apply(two, [b for b, _ in val], editor=editor, steps=20)
    assert row["truth"][1] == pytest.approx(psnr(as_tensor(results), as_tensor([a for _, a in val])).mean().item(),
                                            abs=1e-4)


def test_reach_reads_when_a_fit_first_scores_the_default_fits_kept_score():
    """benchmarks.reach (issue 30's third target): the default fit's kept score is --keep last-unless-worse's, and
    the other fit reaches it at the first point of its curve at or above it."""
    from benchmarks.reach import kept_score, reach, within

    assert kept_score([[0, 10.0], [100, 12.0], [200, 11.5]]) == 11.5, "within the 1 dB margin: the last"
    assert kept_score([[0, 10.0], [100, 13.0], [200, 11.5]]) == 13.0, "over the margin: the best"
    default = {"a": {"shots": {"10": {"d": {"curve": [[0, 10.0], [300, 12.0]]}}}},
               "b": {"shots": {"10": {"d": {"curve": [[0, 10.0], [300, 15.0]]}}}},
               "c": {"shots": {"10": {"d": {"curve": [[0, 10.0], [300, 12.0]]}}}}}
    other = {"a": {"shots": {"10": {"o": {"curve": [[0, 11.0], [100, 12.0], [200, 13.0]]}}}},
             "b": {"shots": {"10": {"o": {"curve": [[0, 11.0], [100, 12.0], [200, 15.5]]}}}},
             "c": {"shots": {"10": {"o": {"curve": [[0, 11.0], [300, 11.9]]}}}}}
    result = reach(default, "d", other, "o", "10")
    assert {e: r["reached_at"] for e, r in result.items()} == {"a": 100, "b": 200, "c": None}
    assert within(result) == 1 and within(result, 1.0) == 2
