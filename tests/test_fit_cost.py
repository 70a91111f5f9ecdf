"""What a fit's self-check costs (issue 27): each phase's denoiser rows, counted at the denoiser, and the init
search's candidates scored in one batched sampling run."""
import pytest
from conftest import scene, tiny_fit

from invert.instruction import Instruction

BEFORES = [scene(i) for i in range(3)]
AFTERS = [scene(i, night=True) for i in range(3)]
GROUPS = 3  # IP2P's guidance rows at the default scales: text+image, image only, neither


@pytest.mark.parametrize("method, text_rows_only", [("visii", True), ("lora", False)])
def test_each_phase_counts_its_denoiser_rows(editor, clip, tmp_path, method, text_rows_only):
    """2 candidates scored on 3 pairs with 2 sampling steps; 2 fit steps scored before, after each step: every
    sampling row forward only; a step trains its text row forward and backward and runs the other two without
    autograd, except for an adapter, which changes every row."""
    texts = ("make it night", "make it sepia")
    inst = tiny_fit(editor, BEFORES, AFTERS, method, clip=clip, steps=2, init_text=texts, val_steps=2, val_every=1,
                    lr=1e-3)
    cost = inst.meta.cost
    assert cost["init_search"] | {"seconds": 0} == {"seconds": 0, "forward_rows": 2 * 2 * 3 * GROUPS,
                                                     "backward_rows": 0}
    assert cost["validation"] | {"seconds": 0} == {"seconds": 0, "forward_rows": 3 * 2 * 3 * GROUPS,
                                                    "backward_rows": 0}
    trained = (1, 2) if text_rows_only else (3, 0)
    assert (cost["training"]["backward_rows"], cost["training"]["forward_rows"]) == tuple(2 * r for r in trained)
    assert all(c["seconds"] > 0 for c in cost.values())
    inst.save(tmp_path / "a.inst")
    assert Instruction.load(tmp_path / "a.inst").meta.cost == cost, "the file keeps it"


def test_a_fit_without_checks_costs_only_its_loop(editor):
    inst = tiny_fit(editor, BEFORES, AFTERS, "visii", steps=2, init_text="make it night", val_every=0)
    cost = inst.meta.cost
    assert cost["init_search"]["forward_rows"] == cost["validation"]["forward_rows"] == 0
    assert cost["validation"]["seconds"] == 0 and cost["training"]["backward_rows"] == 2


@pytest.mark.parametrize("method", ["visii", "brush", "lora"])
def test_candidates_scored_together_score_as_one_by_one(editor, method):
    """The init search samples all its candidates in one run, one denoiser call per sampling step: each scores
    what it scores alone (the same noise per image; only a larger batch's float rounding differs)."""
    from invert.fitting.validation import Validation
    from invert.methods import method_class, settings_for

    cls, options = method_class(method), settings_for(method, {"parts": 2} if method == "brush" else {})[1]
    texts = ["make it night", "a photo at dusk with long shadows", ""]
    candidates = [cls.initialize(editor, editor.encode_text([t]), t, options, 0) for t in texts]
    scorer = Validation(editor, BEFORES, AFTERS, steps=3, guidance=7.5, image_guidance=1.5, seed=0)
    calls = []
    handle = editor.denoiser.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        together = scorer.score_many(candidates)
    finally:
        handle.remove()
    alone = [scorer.score(c) for c in candidates]
    assert len(calls) == 3, "one call per sampling step for every candidate and pair"
    assert together == pytest.approx(alone, abs=1e-3)
    assert len(set(alone)) == len(alone), "the candidates edit differently: the test tells them apart"
