"""What a fit's self-check costs (issue 27): each phase's denoiser rows, counted at the denoiser, and the benchmarks
that measure, project and judge it."""
import pytest
from conftest import scene, tiny_fit

from invert.instruction import Instruction

BEFORES = [scene(i) for i in range(3)]
AFTERS = [scene(i, night=True) for i in range(3)]
GROUPS = 3  # IP2P's guidance rows at the default scales: text+image, image only, neither


@pytest.mark.parametrize("method, text_rows_only", [("visii", True), ("lora", False)])
def test_each_phase_counts_its_denoiser_rows(editor, clip, tmp_path, method, text_rows_only):
    """2 candidates scored on 3 pairs with 2 sampling steps (half the validation's 4, the default); 2 fit steps
    scored before, after each step: every sampling row forward only; a step trains its text row forward and backward and runs the other two without
    autograd, except for an adapter, which changes every row."""
    texts = ("make it night", "make it sepia")
    inst = tiny_fit(editor, BEFORES, AFTERS, method, clip=clip, steps=2, init_text=texts, val_steps=4, val_every=1,
                    lr=1e-3)
    cost = inst.meta.cost
    assert cost["init_search"] | {"seconds": 0} == {"seconds": 0, "forward_rows": 2 * 2 * 3 * GROUPS,
                                                     "backward_rows": 0}
    assert cost["validation"] | {"seconds": 0} == {"seconds": 0, "forward_rows": 3 * 4 * 3 * GROUPS,
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
    assert cost["init_search"]["forward_rows"] == 2 * scored * 3 * GROUPS and inst.meta.init_scores["steps"] == scored
    assert cost["validation"]["forward_rows"] == 3 * val_steps * 3 * GROUPS
    assert inst.meta.validation["steps"] == val_steps


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
    out = measure(str(pairs_dir), ["visii"], str(tiny_model_dir), 1, fast, ["--best-val-steps", "1"])
    run = out["methods"]["visii"]["runs"][0]
    assert run["ratio"] == pytest.approx(run["default"] / run["loop_alone"], abs=1e-3)
    searched = run["cost"]["init_search"]["forward_rows"]
    assert searched > 0 and searched % (2 * 3 * GROUPS) == 0, "candidates x 2 steps (half of 4) x 3 pairs x 3 rows"
    assert run["proposed_cost"]["init_search"]["forward_rows"] * 2 == searched, "one sampling step instead of 2"
    assert run["loop_cost"]["init_search"]["forward_rows"] == run["loop_cost"]["validation"]["forward_rows"] == 0
