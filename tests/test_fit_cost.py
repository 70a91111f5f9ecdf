"""What a fit's self-check costs (issue 27): each phase's denoiser rows, counted at the denoiser, and the benchmarks
that measure, project and judge it."""
from pathlib import Path

import pytest
from conftest import scene, tiny_fit

from invert.fitting.init_search import best_text, shortlist
from invert.instruction import Instruction

BEFORES = [scene(i) for i in range(3)]
AFTERS = [scene(i, night=True) for i in range(3)]
GROUPS = 3  # IP2P's guidance rows at the default scales: text+image, image only, neither


def sampled(states: int, pairs: int, steps: int, shared: bool = True) -> int:
    """Denoiser rows of scoring ``states`` on the same ``pairs`` with ``steps`` sampling steps: every row of every
    run, but for a method that conditions the text rows only (``shared``) the first step's text-free rows, the same
    in every run, are computed once."""
    return states * pairs * steps * GROUPS - (states - 1) * pairs * (GROUPS - 1) * shared


@pytest.mark.parametrize("method, text_rows_only", [("visii", True), ("lora", False)])
def test_each_phase_counts_its_denoiser_rows(editor, clip, tmp_path, method, text_rows_only):
    """2 candidates scored on 3 pairs with 2 sampling steps (half the validation's 4, the default); 2 fit steps
    scored before, after each step: every sampling row forward only (the first step's text-free rows once per
    scorer, where the states leave them alone); a step trains its text row forward and backward and runs the other
    two without autograd, except for an adapter, which changes every row."""
    texts = ("make it night", "make it sepia")
    inst = tiny_fit(editor, BEFORES, AFTERS, method, clip=clip, steps=2, init_text=texts, val_steps=4, val_every=1,
                    lr=1e-3)
    cost = inst.meta.cost
    # the candidates are untrained, a lora's a zero adapter, which leaves the text-free rows alone; a trained
    # adapter changes them, so a lora's validation reuses none
    assert cost["init_search"] | {"seconds": 0} == {"seconds": 0, "forward_rows": sampled(2, 3, 2),
                                                     "backward_rows": 0}
    assert cost["validation"] | {"seconds": 0} == {"seconds": 0, "forward_rows": sampled(3, 3, 4, text_rows_only),
                                                    "backward_rows": 0}
    assert inst.meta.init_scores["steps"] == 2 and inst.meta.validation["steps"] == 4
    trained = (1, 2) if text_rows_only else (3, 0)
    assert (cost["training"]["backward_rows"], cost["training"]["forward_rows"]) == tuple(2 * r for r in trained)
    assert all(c["seconds"] > 0 for c in cost.values())
    inst.save(tmp_path / "a.inst")
    assert Instruction.load(tmp_path / "a.inst").meta.cost == cost, "the file keeps it"


@pytest.mark.parametrize("val_steps, best_val_steps, scored", [(3, None, 2), (3, 3, 3), (2, 1, 1)])
def test_the_init_search_scores_with_best_val_steps_or_half_the_validations(editor, val_steps, best_val_steps,
                                                                             scored):
    inst = tiny_fit(editor, BEFORES, AFTERS, "visii", steps=2, init_text=("make it night", "make it sepia"),
                    val_steps=val_steps, best_val_steps=best_val_steps, val_every=1)
    cost = inst.meta.cost
    assert cost["init_search"]["forward_rows"] == sampled(2, 3, scored) and inst.meta.init_scores["steps"] == scored
    assert cost["validation"]["forward_rows"] == sampled(3, 3, val_steps)
    assert inst.meta.validation["steps"] == val_steps


SIX_BEFORES = [scene(i) for i in range(6)]
SIX_AFTERS = [scene(i, night=True) for i in range(6)]
FIVE_TEXTS = ("make it night", "make it sepia", "a photo", "make it dark", "")


def test_a_shortlist_scores_every_candidate_on_half_the_pairs_and_its_best_on_all(editor):
    """5 candidates, 6 training pairs (none held out: val 0), a shortlist of 2: all 5 on the first 3 pairs, the best
    2 of them on the other 3 too, and those 2 score what scoring every candidate on every pair gives them."""
    common = dict(steps=0, init_text=FIVE_TEXTS, val=0, val_steps=2, best_val_steps=1)
    full = tiny_fit(editor, SIX_BEFORES, SIX_AFTERS, "visii", best_shortlist=0, **common).meta
    two = tiny_fit(editor, SIX_BEFORES, SIX_AFTERS, "visii", best_shortlist=2, **common).meta
    assert full.cost["init_search"]["forward_rows"] == sampled(5, 6, 1)
    assert two.cost["init_search"]["forward_rows"] == sampled(5, 3, 1) + sampled(2, 3, 1)
    first, listed = two.init_scores["first_round"], two.init_scores["texts"]
    assert set(first) == set(FIVE_TEXTS) and two.init_scores["first_round_pairs"] == 3
    assert list(listed) == shortlist(first, 2) and len(listed) == 2
    for text, score in listed.items():
        assert score == pytest.approx(full.init_scores["texts"][text], abs=1e-4), text
    assert two.init_scores["no_edit"] == pytest.approx(full.init_scores["no_edit"], abs=1e-5)
    assert two.init_text == best_text(listed, two.init_scores["no_edit"])
    assert "first_round" not in full.init_scores


@pytest.mark.parametrize("pairs, keep", [(5, 2), (6, 5), (6, 0)])
def test_no_shortlist_below_six_pairs_or_for_as_many_candidates_as_it_keeps(editor, pairs, keep):
    meta = tiny_fit(editor, SIX_BEFORES[:pairs], SIX_AFTERS[:pairs], "visii", steps=0, init_text=FIVE_TEXTS, val=0,
                    val_steps=2, best_val_steps=1, best_shortlist=keep).meta
    assert meta.cost["init_search"]["forward_rows"] == sampled(5, pairs, 1) and "first_round" not in meta.init_scores


def test_a_shortlist_is_the_best_first_round_scores_ties_in_order():
    assert shortlist({"a": 1.0, "b": 3.0, "c": 3.0, "d": 2.0}, 3) == ["b", "c", "d"]
    assert shortlist({"a": 1.0, "b": float("-inf")}, 5) == ["a", "b"]


def test_a_fit_without_checks_costs_only_its_loop(editor):
    inst = tiny_fit(editor, BEFORES, AFTERS, "visii", steps=2, init_text="make it night", val_every=0)
    cost = inst.meta.cost
    assert cost["init_search"]["forward_rows"] == cost["validation"]["forward_rows"] == 0
    assert cost["validation"]["seconds"] == 0 and cost["training"]["backward_rows"] == 2



def test_bench_speed_projects_a_fits_phases_from_its_rows():
    """Training rows at the measured seconds per trained timestep row (its guidance rows in it), sampling rows at
    the measured seconds per row of a sampling step."""
    from benchmarks.speed import project_phases

    measured = {"steps_per_s": 2.0, "apply_images_per_s": 0.5, "apply_steps": 4, "sampling_rows_per_image": 3}
    cost = {"init_search": {"seconds": 9.0, "forward_rows": 60, "backward_rows": 0},
            "training": {"seconds": 9.0, "forward_rows": 200, "backward_rows": 100},
            "validation": {"seconds": 9.0, "forward_rows": 12, "backward_rows": 0}}
    out = project_phases(cost, measured)
    per_row = 1 / (0.5 * 4 * 3)  # seconds per sampling row
    assert out["projected_phase_seconds"] == pytest.approx({"init_search": 60 * per_row, "training": 50.0,
                                                            "validation": 12 * per_row})
    assert out["projected_checks_over_loop"] == pytest.approx(72 * per_row / 50)


def test_rank_correlation_of_the_proxy_study():
    from benchmarks.selfcheck_proxies import ranks, spearman

    assert ranks([3.0, 1.0, 2.0, 2.0]) == [4.0, 1.0, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


@pytest.mark.processes  # six invert processes: .ci/run runs it after README's command
def test_the_ratio_benchmark_runs_the_default_fit_beside_its_loop(tiny_model_dir, pairs_dir):
    from benchmarks.selfcheck import measure

    fast = ["--resolution", "32", "--steps", "2", "--val-every", "1", "--val-steps", "4"]
    root = str(Path(__file__).resolve().parents[1])  # the third fit runs this checkout's library, as --other-tree
    out = measure(str(pairs_dir), ["visii"], str(tiny_model_dir), 1, fast, ["--best-val-steps", "1"], root)
    run = out["methods"]["visii"]["runs"][0]
    assert run["ratio"] == pytest.approx(run["default"] / run["loop_alone"], abs=1e-3) and out["other_tree"] == root
    searched = run["cost"]["init_search"]["forward_rows"]
    candidates = [c for c in range(2, 40) if sampled(c, 3, 2) == searched]  # 2 steps (half of 4), 3 pairs
    assert candidates, searched
    assert run["proposed_cost"]["init_search"]["forward_rows"] == sampled(candidates[0], 3, 1), "one step, not 2"
    assert run["loop_cost"]["init_search"]["forward_rows"] == run["loop_cost"]["validation"]["forward_rows"] == 0


def test_the_shortlist_study_replays_the_two_rounds_on_per_pair_scores():
    """benchmarks.init_shortlist: round one on the first half of the pairs, the shortlist on all; a miss when
    today's best is left off the shortlist, its regret in today's score."""
    from benchmarks.init_shortlist import apply_rule

    scores = {"a": [20.0, 20.0, 10.0, 10.0], "b": [19.0, 19.0, 19.0, 19.0], "c": [18.0, 18.0, 18.0, 18.0],
              "d": [10.0, 10.0, 10.0, 10.0]}
    missed = apply_rule(scores, keep=1)
    assert missed == {"pick": "a", "today": "b", "regret_db": 4.0, "rank_of_today_in_round_one": 2,
                      "samplings": 4 * 2 + 1 * 2, "today_samplings": 16}
    assert apply_rule(scores, keep=2)["pick"] == "b" and apply_rule(scores, keep=2)["regret_db"] == 0.0
