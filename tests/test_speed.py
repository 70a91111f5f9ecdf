"""The speed benchmark on the tiny model: the reference loop is a faithful port (same loss, one three-row UNet
call per step), --low-memory learns the same tensors, fp16 fits with loss scaling, and the command's output."""
import json

import pytest
import torch
from click.testing import CliRunner

from invert.cli.main import cli
from invert.editor import load_editor
from invert.fitting import Fitter, FitOptions, clip_direction
from invert.speed import INIT_TEXT, make_method, reference_loss, reference_run, synthetic_pairs

from conftest import GUIDANCE_GAIN, float_noise

RES = 32


def fitter_for(editor, steps=3, **options):
    befores, afters = synthetic_pairs(2, RES)
    return Fitter(editor, befores, afters, FitOptions(steps=steps, resolution=RES, init_text=INIT_TEXT, **options))


def unet_calls(editor):
    """Record the batch size of every UNet call, and whether autograd tracks its output."""
    calls = []
    handle = editor.unet.register_forward_hook(
        lambda module, args, out: calls.append((len(out.sample), out.sample.requires_grad)))
    return calls, handle


@pytest.mark.parametrize("method", ["visii", "brush"])
def test_reference_computes_our_loss_and_gradient_for_the_same_step(editor, clip, method):
    fitter = fitter_for(editor)
    m = make_method(editor, method, parts=2, sequential=True)  # the paper's schedule: one timestep per step
    if method == "visii":
        befores, afters = synthetic_pairs(2, RES)
        m.set_clip_direction(clip, clip_direction(clip, befores, afters), 0.1, 0.5)
    fitter.schedule(m)
    with m.sampling_context(editor):
        for step in (0, 1, len(fitter.order) - 1):  # brush: the last is in the second part
            ours, _ = fitter.loss(m, step)
            ours_grad = torch.autograd.grad(ours, m.parameters(), allow_unused=True)
            ref = reference_loss(fitter, m, step)
            ref_grad = torch.autograd.grad(ref, m.parameters(), allow_unused=True)
            # The same rows in other batch shapes (see float_noise); the loss is a mean of squares of the guided
            # prediction's error, so its relative error is at most twice the prediction's.
            torch.testing.assert_close(ours, ref, atol=0, rtol=2 * float_noise(1.0, gain=GUIDANCE_GAIN))
            for a, b in zip(ours_grad, ref_grad):
                assert (a is None) == (b is None)
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=0, atol=float_noise(b, gain=GUIDANCE_GAIN))


def test_reference_runs_the_three_way_batch_in_one_call_with_autograd_ours_splits_it(editor):
    fitter = fitter_for(editor, steps=2)
    calls, handle = unet_calls(editor)
    try:
        reference_run(fitter, make_method(editor, "visii", 1, False))
        reference = list(calls)
        calls.clear()
        fitter.run(make_method(editor, "visii", 1, False), quiet=True)
    finally:
        handle.remove()
    assert reference == [(3, True)] * 2
    assert calls == [(2, False), (1, True)] * 2  # the image-only and unconditional rows run without autograd


def test_low_memory_learns_the_same_tensors(editor):
    learned = {}
    for low in (False, True):
        editor.set_low_memory(low)
        try:
            assert editor.unet.is_gradient_checkpointing == low
            m = make_method(editor, "brush", parts=2, sequential=False)
            fitter_for(editor, steps=4, clip_weight=0.0).run(m, quiet=True)
            learned[low] = torch.cat(m.parameters())
        finally:
            editor.set_low_memory(False)
    moved = (learned[False] - torch.cat(make_method(editor, "brush", 2, False).parameters())).abs().max()
    assert moved > 1e-4
    # Recomputing the forward in the backward pass may pick other kernels (float noise). AdamW divides each
    # gradient entry by its running RMS, so noise on an entry near zero can change that entry's step by a
    # visible fraction of lr: compare with what the fit moved. Learning from other state moves it by ~100%.
    assert (learned[True] - learned[False]).abs().max() <= 0.01 * moved


def test_fp16_fit_with_loss_scaling_follows_fp32(tiny_model_dir, editor):
    half = load_editor(str(tiny_model_dir), device="cpu", dtype="fp16")
    runs = {}
    for ed in (editor, half):
        m = make_method(ed, "visii", 1, False)
        start = m.learned.detach().clone()
        fitter_for(ed, steps=4, clip_weight=0.0).run(m, quiet=True)
        runs[ed.dtype] = m.learned.detach() - start
    fp32, fp16 = runs[torch.float32], runs[torch.float16]
    assert fp16.dtype == torch.float32 and torch.isfinite(fp16).all()
    # AdamW's first steps move every entry by about lr whatever its gradient's size, so an entry whose tiny
    # gradient changes sign in fp16 moves the other way: compare the whole update, not its worst entry.
    assert torch.nn.functional.cosine_similarity(fp16.flatten(), fp32.flatten(), dim=0) > 0.98


@pytest.fixture
def bench():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, ["bench", "speed", *map(str, args)], catch_exceptions=False)

    return invoke


FAST = ("--resolution", RES, "--steps", 1, "--warmup", 1, "--apply-steps", 2, "--device", "cpu")


def test_bench_speed_json(bench, tiny_model_dir):
    r = bench("--model", tiny_model_dir, *FAST, "--method", "brush", "--parts", 2, "--batch-size", 2, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["method"] == "brush" and out["model"] == str(tiny_model_dir) and out["resolution"] == RES
    assert out["device"].startswith("cpu") and out["batch_size"] == 2
    for key in ("steps_per_s", "reference_steps_per_s", "peak_memory_mb", "reference_peak_memory_mb",
                "apply_images_per_s"):
        assert out[key] > 0, key
    assert out["speedup_vs_reference"] == pytest.approx(out["steps_per_s"] / out["reference_steps_per_s"])
    assert out["timed_steps"] == 2  # one optimizer step trains both parts
    assert out["projected_fit_seconds"] == pytest.approx(2 * 1000 / out["steps_per_s"])


def test_bench_speed_table_and_no_reference(bench, tiny_model_dir):
    r = bench("--model", tiny_model_dir, *FAST)
    assert r.exit_code == 0, r.output
    assert "steps/s" in r.output and "x faster" in r.output and "images/s" in r.output
    r = bench("--model", tiny_model_dir, *FAST, "--no-reference", "--low-memory", "--json")
    out = json.loads(r.output)
    assert out["low_memory"] is True and "reference_steps_per_s" not in out


def test_bench_speed_bad_model_is_a_one_line_error(bench, tmp_path):
    r = bench("--model", tmp_path / "missing", *FAST)
    assert r.exit_code != 0 and "no such model folder" in r.output


def test_apply_batch_size_and_low_memory_do_not_change_results(editor, clip):
    import numpy as np

    import invert
    from invert.fitting import fit_images

    befores, afters = synthetic_pairs(1, RES)
    inst = fit_images(editor, befores, afters, "visii", FitOptions(steps=1, resolution=RES, init_text=INIT_TEXT),
                      clip=clip, quiet=True)
    images = synthetic_pairs(3, RES, seed=1)[0]
    runs = []
    for batch_size, low in ((None, False), (1, False), (2, True)):
        try:
            out = invert.apply(inst, images, editor=editor, steps=2, batch_size=batch_size, low_memory=low)
        finally:
            editor.set_low_memory(False)
        runs.append(np.stack([np.asarray(img, dtype=np.int16) for img in out]))
    # Another batch shape changes the order of the CPU kernels' sums: the same image up to one level of rounding.
    assert np.abs(runs[1] - runs[0]).max() <= 1
    assert np.abs(runs[2] - runs[0]).max() <= 1
