"""A sequential brush fit (--parts-sequential: the time parts trained one after another) keeps only a complete
instruction (issue 25, item 5). Its resumes at, and one step either side of, each part boundary (item 6) are part
of every method's contract (test_method_contract.py, the staged cases)."""
import torch
from conftest import make_trainer, scene, tiny_fit

from invert.fitting.loop import Scoring
from invert.methods.brush import Brush
from invert.methods.settings import BrushSettings

BEFORES = [scene(i) for i in range(2)]
AFTERS = [scene(i, night=True) for i in range(2)]
PARTS, PER_PART = 3, 2  # boundaries after steps 2 and 4 of 6

def sequential(editor):
    return Brush.initialize(editor, editor.encode_text(["make it night"]), "make it night",
                            BrushSettings(brush_parts=PARTS, brush_parts_sequential=True))


def test_keep_best_never_keeps_a_part_trained_instruction(editor):
    """Scores that favour the earliest trained state: the old loop kept step 1 (part 0 trained, the others at their
    init); now the first candidate after the start is the first state with every part trained."""
    method = sequential(editor)
    trainer = make_trainer(editor, BEFORES, AFTERS, method, steps=PER_PART, lr=5e-2, keep="best")
    assert trainer.complete_from == (PARTS - 1) * PER_PART
    calls = []

    def score() -> float:
        calls.append(len(calls))
        return -100.0 if len(calls) == 1 else 10.0 - len(calls)  # the start worst, then ever lower

    trainer.run(quiet=True, scoring=Scoring(score, every=1))
    steps = [step for step, _ in trainer.scores.curve]
    assert steps == [0, 5, 6], "the start and the complete states only"
    assert trainer.scores.best_step == 5
    init = sequential(editor)
    for name in method.layer_names:
        for p in range(PARTS):
            assert not torch.equal(method.layer(name).k[p], init.layer(name).k[p]), (name, p, "part untrained")


def test_a_sequential_fit_scores_the_complete_states(editor):
    whole = tiny_fit(editor, BEFORES, AFTERS, "brush", steps=PER_PART, lr=5e-2, init_text="make it night", parts=PARTS,
                     parts_sequential=True, val_every=1, val_steps=2)
    curve = whole.meta.validation["curve"]
    assert [step for step, _ in curve] == [0, 5, 6]
    assert whole.meta.kept_step in (0, 5, 6)
