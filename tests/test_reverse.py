"""fit --reverse: the inverse instruction learned in the same run, stored beside the forward one, applied with
apply --reverse; the cycle term couples the two."""
import pytest
import torch
from conftest import scene, tiny_fit

import invert
from invert.api import load_method
from invert.errors import InstructionFileError
from invert.instruction import Instruction
from invert.methods import method_names


def night_pairs(n=3):
    return [scene(i) for i in range(n)], [scene(i, night=True) for i in range(n)]


def fit(editor, clip, method, **options):
    befores, afters = night_pairs()
    defaults = dict(steps=6, lr=1e-2, **({"clip_weight": 0.0} if method == "visii" else {}))
    return tiny_fit(editor, befores, afters, method, clip=clip, **{**defaults, **options})


def test_untouched_reverse_is_the_swapped_initialization(editor, clip):
    """With no steps, the reverse of a phrase-initialized brush instruction is the initialization found for the
    pairs the other way round, and applying it is applying that text's initialization."""
    inst = fit(editor, clip, "brush", steps=0, reverse=True, init="phrases")
    befores, afters = night_pairs()
    swapped = tiny_fit(editor, afters, befores, "brush", clip=clip, steps=0, init="phrases")
    reverse = inst.meta.extra["reverse"]
    assert reverse["init_text"] == swapped.meta.init_text != inst.meta.init_text
    untouched = fit(editor, clip, "brush", steps=0, init_text=reverse["init_text"])
    image = scene(9)
    undone = invert.apply(inst, [image], editor=editor, steps=3, reverse=True)[0]
    assert undone.tobytes() == invert.apply(untouched, [image], editor=editor, steps=3)[0].tobytes()
    forward = invert.apply(inst, [image], editor=editor, steps=3)[0]
    assert forward.tobytes() != undone.tobytes()


def test_without_the_cycle_term_the_forward_instruction_is_a_plain_fit(editor, clip):
    """The two instructions have separate parameters, so with --cycle-weight 0 the forward one learns exactly
    what a plain fit learns; the cycle term's gradient reaches it."""
    common = dict(init_text="make it night", steps=5)
    plain = fit(editor, clip, "visii", **common)
    uncoupled = fit(editor, clip, "visii", reverse=True, cycle_weight=0.0, **common)
    coupled = fit(editor, clip, "visii", reverse=True, cycle_weight=10.0, **common)
    assert torch.equal(plain.tensors["visii.learned"], uncoupled.tensors["visii.learned"])
    assert not torch.equal(uncoupled.tensors["reverse.visii.learned"], uncoupled.tensors["reverse.visii.init"][:, 1:3])
    assert not torch.equal(coupled.tensors["visii.learned"], plain.tensors["visii.learned"])


@pytest.mark.parametrize("method", method_names())
def test_reverse_round_trips_through_the_file(editor, clip, method, tmp_path):
    inst = fit(editor, clip, method, steps=3, reverse=True, init_text="make it night" if method != "lora" else "")
    inst.save(tmp_path / "x.inst")
    loaded = Instruction.load(tmp_path / "x.inst")
    image = scene(4)
    for reverse in (False, True):
        a = invert.apply(inst, [image], editor=editor, steps=2, reverse=reverse)[0]
        b = invert.apply(loaded, [image], editor=editor, steps=2, reverse=reverse)[0]
        assert a.tobytes() == b.tobytes()
    assert loaded.meta.options["reverse"] is True


def test_reverse_of_an_instruction_without_one_is_refused(editor, clip):
    inst = fit(editor, clip, "visii", steps=1, init_text="make it night")
    with pytest.raises(InstructionFileError, match="no reverse instruction"):
        load_method(inst, editor, reverse=True)


def test_cli_reverse(run, tiny_model_dir, pairs_dir, tmp_path):
    inst = tmp_path / "night.inst"
    r = run("fit", pairs_dir, "-o", inst, "--model", tiny_model_dir, "--method", "brush", "--steps", 2, "--reverse",
            "--init-text", "make it night", "--quiet")
    assert r.exit_code == 0, r.output
    scene(5).save(tmp_path / "in.png")
    r = run("apply", inst, tmp_path / "in.png", "-o", tmp_path / "back.png", "--reverse", "--steps", 2)
    assert r.exit_code == 0 and (tmp_path / "back.png").exists(), r.output
    plain = tmp_path / "plain.inst"
    assert run("fit", pairs_dir, "-o", plain, "--model", tiny_model_dir, "--steps", 1, "--quiet",
               "--init-text", "x").exit_code == 0
    r = run("apply", plain, tmp_path / "in.png", "-o", tmp_path / "b2.png", "--reverse")
    assert r.exit_code == 1 and "no reverse instruction" in r.output


def test_low_memory_computes_the_gradients_of_a_plain_two_way_fit(editor, clip):
    """Regression: the reverse instruction's K/V must be the ones a recomputed forward pass uses too (it used to
    recompute with the forward instruction's processors installed: learned tensors differed by 0.005)."""
    from test_lora import assert_same_gradients, step_gradients

    from invert.methods.brush import Brush

    def two_way():
        forward = Brush.initialize(editor, editor.encode_text(["make it night"]), "make it night")
        back = Brush.initialize(editor, editor.encode_text(["make it day"]), "make it day")
        with torch.no_grad():
            for p in [*forward.parameters(), *back.parameters()]:
                p.add_(0.1 * torch.randn_like(p))
        from invert.methods.two_way import TwoWay

        return TwoWay(forward, back, "make it day")

    torch.manual_seed(0)
    method = two_way()
    plain, low = (step_gradients(editor, method, *night_pairs(2), [0, 1], low, lr=1e-2, reverse=True)
                  for low in (False, True))
    assert any(name.startswith("undo.") for name in plain[0]), "the reverse instruction is trained"
    assert_same_gradients(plain, low)
