"""A result that is not finite is an error, never an image (issue 24, class 2): whatever the cause (a guidance
scale that overflows, a strength or mix weight that is NaN), the sampler refuses NaN or inf in one line naming
the likely setting, and the CLI writes nothing for it."""
import math

import pytest
from conftest import messages, scene, tiny_fit

from invert.api import load_method
from invert.fitting.validation import Validation
from invert.sampling import NonFiniteResult, sample


@pytest.fixture(scope="module")
def inst(editor):
    return tiny_fit(editor, [scene(0)], [scene(0, night=True)], "visii", steps=2, lr=5e-2, init_text="make it night")


@pytest.mark.parametrize("options, fault", [
    ({"guidance": 1e30}, "--guidance 1e+30 is far outside"),
    ({"image_guidance": float("inf")}, "--image-guidance is inf"),
])
def test_the_sampler_refuses_a_guidance_that_breaks_the_result(editor, inst, options, fault):
    with pytest.raises(NonFiniteResult, match="NaN or inf") as caught:
        sample(editor, load_method(inst, editor), [scene(3)], steps=2, **options)
    assert fault in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("strength", [float("nan"), float("inf")])
def test_the_sampler_refuses_an_instruction_holding_nan(editor, inst, strength):
    with pytest.raises(NonFiniteResult, match="--strength or --mix weight"):
        sample(editor, load_method(inst, editor, strength), [scene(3)], steps=2)


def test_a_finite_result_passes(editor, inst):
    assert sample(editor, load_method(inst, editor), [scene(3)], steps=2)[0].size == (32, 32)


def test_a_validation_scores_a_non_finite_edit_worst(editor, inst):
    judge = Validation(editor, [scene(3)], [scene(3, night=True)], steps=2, guidance=7.5, image_guidance=1.5, seed=0)
    assert math.isfinite(judge.score(load_method(inst, editor)))
    assert judge.score(load_method(inst, editor, float("nan"))) == float("-inf")


@pytest.mark.parametrize("args, fault", [
    (["--guidance", "1e30"], "--guidance"), (["--strength", "nan"], "--strength"), (["--mix", "nan,1"], "--mix"),
    (["--image-guidance", "1e30"], "--image-guidance"), ([], "NaN or inf")])
def test_apply_writes_no_image_for_a_non_finite_result(run, tiny_model_dir, editor, inst, tmp_path, args, fault):
    """Settings out of range are refused before sampling (the usage error names the flag); an instruction file
    holding NaN, which no setting refuses, is refused by the sampler. Either way no image is written."""
    if not args:
        import copy

        inst = copy.deepcopy(inst)
        inst.tensors["visii.learned"][0, 0, 0] = float("nan")
    inst.save(tmp_path / "a.inst")
    files = [tmp_path / "a.inst"] * (2 if args[:1] == ["--mix"] else 1)
    scene(4).save(tmp_path / "photo.png")
    out = tmp_path / "out.png"
    r = run("apply", *files, tmp_path / "photo.png", "-o", out, "--steps", 2, "--model", tiny_model_dir, "--quiet",
            *args)
    assert r.exit_code != 0 and fault in messages(r.output)[-1], r.output
    assert set(tmp_path.iterdir()) == {tmp_path / "a.inst", tmp_path / "photo.png"}, "nothing written"
