"""A fit that checks itself (issue 17): held-out pairs scored while it runs, the best state kept (its start
included), failures reported in one line, and the init text chosen among candidates by the same score."""
import warnings

import pytest
import torch
from conftest import make_trainer, scene, stop_at, tiny_fit

from invert.errors import InvertWarning
from invert.fitting.checkpoint import FitState, FitStopped
from invert.fitting.init_search import best_text
from invert.fitting.loop import Scoring
from invert.fitting.validation import Validation, check_fit, held_out, scoring_interval
from invert.methods import method_class, method_names, settings_for
from invert.methods.settings import VisiiSettings
from invert.sampling import sample

BEFORES = [scene(i) for i in range(3)]
AFTERS = [scene(i, night=True) for i in range(3)]


def visii(editor, text="make it night"):
    return method_class("visii").initialize(editor, editor.encode_text([text]), text, VisiiSettings(visii_clip_weight=0))


def test_held_out_pairs_and_scoring_interval():
    assert held_out(10, None) == [8, 9] and held_out(8, None) == [6, 7]
    assert held_out(7, None) == [] and held_out(1, None) == []  # few pairs: scored on the training pairs
    assert held_out(10, 3) == [7, 8, 9] and held_out(10, 0) == []
    assert held_out(2, 5) == [1], "at least one pair trains"
    assert scoring_interval(100, None) == 10 and scoring_interval(25, None) == 3
    assert scoring_interval(19, None) == 0 and scoring_interval(0, None) == 0, "too short to be worth scoring"
    assert scoring_interval(100, 7) == 7 and scoring_interval(100, 0) == 0


def test_a_fit_whose_training_makes_its_score_worse_keeps_its_start(editor):
    """The score here falls with every step away from the start, so the best state is the start itself."""
    method = visii(editor)
    start = method.learned.detach().clone()
    trainer = make_trainer(editor, BEFORES, AFTERS, method, steps=5, lr=1e-2, keep="best")
    trainer.run(quiet=True, scoring=Scoring(lambda: -float((method.learned - start).detach().norm()), 1))
    assert trainer.scores.best_step == 0 and [s for s, _ in trainer.scores.curve] == [0, 1, 2, 3, 4, 5]
    assert torch.equal(method.learned.detach(), start)


def test_keep_best_keeps_the_best_scoring_step_and_keep_last_the_last(editor):
    reference = visii(editor)
    states = []
    trainer = make_trainer(editor, BEFORES, AFTERS, reference, steps=6, lr=1e-2, keep="last")
    trainer.run(quiet=True, scoring=Scoring(lambda: states.append(reference.learned.detach().clone()) or 0.0, 2))
    assert [s for s, _ in trainer.scores.curve] == [0, 2, 4, 6] and len(states) == 4
    target = states[2]  # the state after 4 steps scores best
    method = visii(editor)
    trainer = make_trainer(editor, BEFORES, AFTERS, method, steps=6, lr=1e-2, keep="best")
    trainer.run(quiet=True, scoring=Scoring(lambda: -float((method.learned - target).detach().norm()), 2))
    assert trainer.scores.best_step == 4 and torch.equal(method.learned.detach(), target)


@pytest.mark.parametrize("best_at, expected", [(4, 6), (2, 2)])
def test_the_default_keeps_the_last_unless_an_earlier_state_scored_clearly_higher(editor, best_at, expected):
    """Scores of 0 except at step ``best_at``: 0.9 dB (within the margin: the last state is kept) or 1.1 dB (an
    earlier state clearly better: it is kept)."""
    states = {}
    method = visii(editor)
    trainer = make_trainer(editor, BEFORES, AFTERS, method, steps=6, lr=1e-2)
    assert trainer.settings.keep == "last-unless-worse", "the default"

    def score() -> float:
        step = 2 * len(states)
        states[step] = method.learned.detach().clone()
        return {4: 0.9, 2: 1.1}[best_at] if step == best_at else 0.0

    trainer.run(quiet=True, scoring=Scoring(score, 2))
    assert trainer.kept_step == expected and torch.equal(method.learned.detach(), states[expected])


def test_scoring_changes_nothing_that_is_learned(editor, clip):
    """Validation samples with its own generators: the fit's noise, timesteps and updates are untouched."""
    base = dict(steps=4, lr=1e-2, init_text="make it night", keep="last", val=0)
    plain = tiny_fit(editor, BEFORES, AFTERS, "visii", clip=clip, val_every=0, **base)
    scored = tiny_fit(editor, BEFORES, AFTERS, "visii", clip=clip, val_every=1, **base)
    assert torch.equal(plain.tensors["visii.learned"], scored.tensors["visii.learned"])
    assert plain.meta.validation["curve"] == [] and len(scored.meta.validation["curve"]) == 5


@pytest.mark.parametrize("method", method_names())
def test_the_curve_is_the_instruction_applied_to_the_held_out_pairs(editor, clip, method):
    """The kept state's score is what sampling the saved instruction on the validation pairs gives, and the
    start's score is the init text's own; with --keep best the kept score is the curve's best."""
    befores, afters = [scene(i) for i in range(8)], [scene(i, night=True) for i in range(8)]
    opts = {"parts": 2} if method == "brush" else {}
    inst = tiny_fit(editor, befores, afters, method, clip=clip, steps=4, lr=1e-2, init_text="make it night",
                    val_every=2, val_steps=3, keep="best", **opts)
    v = inst.meta.validation
    assert v["pairs"] == [6, 7] and v["every"] == 2 and [s for s, _ in v["curve"]] == [0, 2, 4]
    best_step, best = max(v["curve"], key=lambda c: (c[1], -c[0]))
    assert inst.meta.kept_step == best_step
    from invert.api import load_method

    judge = Validation(editor, befores[6:], afters[6:], steps=3, guidance=7.5, image_guidance=1.5, seed=0)
    assert judge.score(load_method(inst, editor)) == pytest.approx(best, abs=1e-4)
    init = method_class(method).initialize(editor, editor.encode_text(["make it night"]), "make it night",
                                           settings_for(method, opts)[1], 0)
    assert judge.score(init) == pytest.approx(v["curve"][0][1], abs=1e-4)


def test_sampling_inside_an_installed_method_does_not_install_it_again(editor):
    """A LoRA adapter cannot be added twice: a validation inside a fit samples with install=False."""
    from invert.methods.settings import LoraSettings

    lora = method_class("lora").initialize(editor, editor.encode_text([""]), "", LoraSettings(), 0)
    alone = sample(editor, lora, BEFORES[:1], steps=2)
    with lora.installed():
        inside = sample(editor, lora, BEFORES[:1], steps=2, install=False)
    assert list(alone[0].getdata()) == list(inside[0].getdata())


def test_a_resumed_fit_with_validation_equals_the_uninterrupted_one(editor, clip, tmp_path):
    befores, afters = [scene(i) for i in range(8)], [scene(i, night=True) for i in range(8)]
    base = dict(steps=6, lr=1e-2, init_text="make it night", val_every=2, val_steps=2, keep="best")
    whole = tiny_fit(editor, befores, afters, "lora", clip=clip, **base)
    with pytest.raises(FitStopped) as stopped:
        tiny_fit(editor, befores, afters, "lora", clip=clip, **stop_at(2),
                 **base)
    saved = stopped.value.state.save(tmp_path / "state.ckpt")
    resumed = tiny_fit(editor, befores, afters, "lora", clip=clip, resume=FitState.load(saved), **base)
    assert whole.meta.validation == resumed.meta.validation
    assert whole.meta.kept_step == resumed.meta.kept_step
    for key, value in whole.tensors.items():
        assert torch.equal(value, resumed.tensors[key]), key


def test_check_fit_reports_each_failure_with_what_to_try():
    flat = [1.0 + 0.01 * (i % 3) for i in range(40)]
    falling = [2.0 - 0.04 * i for i in range(40)]
    spike = falling[:20] + [50.0] + falling[21:]
    assert check_fit(falling, [(0, 15.0), (40, 18.0)], 12.0, 40, 1e-2).line() is None
    # A spike alone, or a wander of less than a dB around a good start, is how a fit that goes well looks.
    assert check_fit(spike, [(0, 15.0), (20, 16.0), (40, 14.5)], 12.0, 20, 1e-2).line() is None
    collapsed = check_fit(falling, [(0, 15.0), (20, 16.0), (40, 9.0)], 12.0, 20, 1e-2).line()
    assert "fell from 16.00 dB at step 20 to 9.00 dB at step 40 (it keeps the best)" in collapsed
    assert "lower --lr (0.0033)" in collapsed and "\n" not in collapsed
    never = check_fit(spike, [(0, 15.0), (20, 14.0), (40, 9.0)], 12.0, 0, 1e-2).line()
    assert "never beat its start's 15.00 dB (step 40: 9.00 dB), so it keeps the start" in never
    assert "spiked to 50 at step 21" in never, "a spike is named as the likely cause of a fall"
    kept_worse = check_fit(falling, [(0, 15.0), (40, 13.0)], 12.0, None, 1e-2).line()
    assert "the state it keeps (the last) scores 13.00 dB, below its start's 15.00 dB" in kept_worse
    assert "--keep last-unless-worse" in kept_worse
    below = check_fit(falling, [(0, 10.0), (40, 11.0)], 12.0, 40, 1e-2).line()
    assert "kept state scores 11.00 dB, below the unedited input's 12.00 dB" in below
    stalled = check_fit(flat, [(0, 15.0), (40, 15.0)], 12.0, 0, 1e-2).line()
    assert "its loss did not fall" in stalled and "more --steps" in stalled
    unscored = check_fit(spike, [], None, None, 1e-2).line()
    assert "spiked to 50 at step 21" in unscored, "without scores a spike is all there is to go by"


def test_the_best_text_is_never_empty_when_a_worded_one_beats_no_edit():
    assert best_text({"": 20.0, "make it night": 16.0, "a": 14.0}, 15.0) == "make it night"
    assert best_text({"": 20.0, "make it night": 14.0}, 15.0) == "", "no worded text beats doing nothing"
    assert best_text({"a": 14.0, "b": 16.0}, 15.0) == "b"


def test_several_init_texts_start_from_the_best_scoring_one(editor, clip):
    texts = ("make it night", "a photo, with a comma", "make it sepia")
    inst = tiny_fit(editor, BEFORES, AFTERS, "visii", clip=clip, steps=2, lr=1e-2, init_text=texts, val_steps=2,
                    best_val_steps=2, val_every=1)
    scores = inst.meta.init_scores["texts"]
    assert set(scores) == set(texts) and inst.meta.init_text == max(scores, key=scores.get)
    # Scored on every pair with the validation's steps, as the fit's validation is with 3 pairs: the fit starts from
    # the best text's score.
    assert inst.meta.validation["curve"][0][1] == pytest.approx(max(scores.values()), abs=1e-4)


def test_the_init_is_chosen_on_the_training_pairs_only(editor, clip):
    """8 pairs, the last 2 held out (with afters of another edit): the candidates are scored on the 6 training
    pairs, never on the held-out ones, which only score the fit."""
    befores = [scene(i) for i in range(8)]
    afters = [scene(i, night=True) for i in range(6)] + [scene(i + 20, night=True) for i in (6, 7)]
    texts = ("make it night", "make it sepia")
    inst = tiny_fit(editor, befores, afters, "visii", clip=clip, steps=0, init_text=texts, val_steps=2)
    assert inst.meta.validation["pairs"] == [6, 7]
    found = inst.meta.init_scores
    assert found["steps"] == 1, "half the validation's steps, by default"
    judge = Validation(editor, befores[:6], afters[:6], steps=1, guidance=7.5, image_guidance=1.5, seed=0)
    assert found["no_edit"] == pytest.approx(judge.no_edit, abs=1e-6)
    for text in texts:
        assert found["texts"][text] == pytest.approx(judge.score(visii(editor, text)), abs=1e-4), text


def test_init_best_compares_the_candidate_texts(editor, clip):
    inst = tiny_fit(editor, BEFORES, AFTERS, "brush", clip=clip, steps=0, parts=2, val_steps=2)
    scores = inst.meta.init_scores["texts"]
    assert len(scores) >= 3 and "" in scores and inst.meta.init_text in scores
    assert inst.meta.init_text == best_text(scores, inst.meta.init_scores["no_edit"])


def test_an_edit_that_changes_nothing_is_reported(editor, clip):
    """Exemplars whose afters are their befores: every instruction scores below leaving the input as it is."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inst = tiny_fit(editor, BEFORES, BEFORES, "visii", clip=clip, steps=2, init_text="make it night",
                        val_steps=2, val_every=1)
    lines = [str(w.message) for w in caught if issubclass(w.category, InvertWarning)]
    assert len(lines) == 1 and "below the unedited input's 100.00 dB" in lines[0]
    assert inst.meta.fit_check == lines[0]


def test_fit_json_and_fit_batch_name_the_fits_that_fail_their_check(tiny_model_dir, pairs_dir, tmp_path):
    """A set whose afters are its befores cannot be beaten by any instruction: fit --json carries its check and
    curve (also in the saved file), and fit-batch lists it, and only it, after its table."""
    import json
    import shutil

    from click.testing import CliRunner

    from invert.cli.main import cli
    from invert.instruction import Instruction

    sets = tmp_path / "sets"
    shutil.copytree(pairs_dir, sets / "night")
    shutil.copytree(pairs_dir, sets / "same")
    shutil.rmtree(sets / "same" / "after")
    shutil.copytree(pairs_dir / "before", sets / "same" / "after")
    common = ["--model", str(tiny_model_dir), "--resolution", "32", "--steps", "2", "--val-every", "1",
              "--val-steps", "2", "--init-text", "make it night"]
    runner = CliRunner()
    r = runner.invoke(cli, ["fit", str(sets / "same"), "-o", str(tmp_path / "same.inst"), "--json", *common])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["fit_check"].startswith("fit check: the kept state scores") and "Try " in report["fit_check"]
    assert [s for s, _ in report["validation"]["curve"]] == [0, 1, 2] and report["validation"]["pairs"] == "train"
    assert f"warning: {report['fit_check']}" in r.stderr
    # its cost: 3 scores (start, steps 1 and 2) of 2 sampling steps on the 3 pairs, 3 guidance rows each, but the
    # first step's 2 text-free rows per pair only in the first score
    cost = report["cost"]
    assert cost["validation"]["forward_rows"] == 3 * 2 * 3 * 3 - 2 * 3 * 2 and cost["init_search"]["forward_rows"] == 0
    saved = Instruction.load(tmp_path / "same.inst").meta
    assert saved.validation == report["validation"] and saved.fit_check == report["fit_check"]

    r = runner.invoke(cli, ["fit-batch", str(sets), "-o", str(tmp_path / "insts"), *common])
    assert r.exit_code == 0, r.output
    assert "1 of 2 sets did not pass the fit check:" in r.stderr
    assert "  same: fit check: the kept state scores" in r.stderr and "night: fit check" not in r.stderr


def test_a_fit_ruined_by_a_huge_learning_rate_keeps_its_start_and_says_so(toy):
    """On the toy model, lora at lr 1 wrecks the night edit within a few steps (measured: 26.7 dB from "make it
    night" down to 3 dB on held-out pairs): the fit keeps its start and the warning names the fall and a lower lr."""
    from invert.api import fit_images, load_method
    from invert.toy import world

    pairs = world.make_pairs("night", 3, 5 * 10**6)
    befores, afters = [b for b, _ in pairs], [a for _, a in pairs]
    options = dict(steps=4, lr=1.0, guidance=3.0, init_text="make it night", val_every=2, val_steps=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inst = fit_images(toy, befores, afters, "lora", *settings_for("lora", options), quiet=True)
    lines = [str(w.message) for w in caught if issubclass(w.category, InvertWarning)]
    curve = inst.meta.validation["curve"]
    assert curve[-1][1] < curve[0][1] - 3, curve
    assert len(lines) == 1 and "never beat its start" in lines[0] and "a lower --lr (0.33)" in lines[0]
    assert inst.meta.kept_step == 0
    judge = Validation(toy, befores, afters, steps=4, guidance=3.0, image_guidance=1.5, seed=0)
    assert judge.score(load_method(inst, toy)) == pytest.approx(curve[0][1], abs=1e-4)


def test_patience_stops_a_fit_whose_scores_stop_beating_the_best(editor):
    """lr 1e-12 leaves the instruction where it starts, so no score beats the start's: with --patience 3 and a score
    after every step the fit ends after its third score, and everything up to there is the full fit's."""
    common = dict(steps=6, lr=1e-12, val_every=1, val_steps=2, init_text="make it night")
    full = tiny_fit(editor, BEFORES, AFTERS, "visii", **common).meta
    early = tiny_fit(editor, BEFORES, AFTERS, "visii", patience=3, **common).meta
    assert early.validation["stopped_at"] == 3 and early.steps == 3 and early.kept_step == 3
    assert early.validation["curve"] == full.validation["curve"][:4] and "stopped_at" not in full.validation
    assert early.cost["training"]["backward_rows"] == 3 and full.cost["training"]["backward_rows"] == 6
    whole = tiny_fit(editor, BEFORES, AFTERS, "visii", patience=6, **common).meta
    assert "stopped_at" not in whole.validation and whole.steps == 6, "6 scores without a better one: the last step"


def test_scores_since_the_best():
    from invert.fitting.loop import BestScore

    scores = BestScore(visii_like := torch.nn.Linear(1, 1), keep_state=False)
    assert scores.scores_since_best == 0 and visii_like is not None
    for step, score in enumerate([20.0, 19.0, 21.0, 21.0, 20.5]):
        scores.update(score, step)
    assert scores.scores_since_best == 2, "a tie does not beat the best"
    nan = BestScore(torch.nn.Linear(1, 1), keep_state=False)
    nan.update(float("nan"), 0)
    nan.update(float("nan"), 1)
    assert nan.scores_since_best == 2


def test_patience_needs_validation():
    with pytest.raises(Exception, match="--patience 2 stops a fit by its validation scores, and --val-every 0"):
        settings_for("visii", {"patience": 2, "val_every": 0})


def test_a_score_is_the_mean_of_its_pair_scores(editor):
    judge = Validation(editor, BEFORES, AFTERS, steps=2, guidance=7.5, image_guidance=1.5, seed=0)
    pairs = judge.pair_scores(visii(editor))
    assert len(pairs) == 3 and judge.score(visii(editor)) == pytest.approx(sum(pairs) / 3, abs=1e-4)
    assert len(set(pairs)) == 3, "one score per pair"


@pytest.mark.parametrize("method", ["visii", "brush", "lora"])  # lora: untrained, zero adapters
def test_states_scored_on_the_same_pairs_compute_the_first_steps_text_free_rows_once(editor, method):
    from conftest import check_states_share_the_first_steps_text_free_rows

    check_states_share_the_first_steps_text_free_rows(editor, BEFORES[:2], AFTERS[:2], method, guidance=7.5)
