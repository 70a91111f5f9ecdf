"""The speed benchmark on the tiny model: the reference loop is a faithful port (same loss, one three-row UNet
call per step), --low-memory learns the same tensors, fp16 fits with loss scaling, and the command's output."""
import json
import os

import pytest
import torch
from click.testing import CliRunner

from invert.bench.speed import INIT_TEXT, make_method, reference_loss, reference_run, synthetic_pairs, trainer_for
from invert.cli.main import cli
from invert.editor import load_editor
from invert.losses import clip_direction
from invert.settings import FitSettings

from conftest import GUIDANCE_GAIN, float_noise, tiny_fit

RES = 32


def trainer(editor, method, steps=3, **options):
    befores, afters = synthetic_pairs(2, RES)
    return trainer_for(editor, method, befores, afters,
                       FitSettings(steps=steps, resolution=RES, init_text=INIT_TEXT, **options))


def unet_calls(editor):
    """Record the batch size of every UNet call, and whether autograd tracks its output."""
    calls = []
    handle = editor.unet.register_forward_hook(
        lambda module, args, out: calls.append((len(out.sample), out.sample.requires_grad)))
    return calls, handle


@pytest.mark.parametrize("method", ["visii", "brush"])
def test_reference_computes_our_loss_and_gradient_for_the_same_step(editor, clip, method):
    m = make_method(editor, method, parts=2, sequential=True)  # the paper's schedule: one timestep per step
    t = trainer(editor, m)
    if method == "visii":
        befores, afters = synthetic_pairs(2, RES)
        m.set_clip_direction(clip, clip_direction(clip, befores, afters))
    params = list(m.parameters())
    with m.installed():
        for step in (0, 1, t.total - 1):  # brush: the last is in the second part
            m.zero_grad(set_to_none=True)
            ours, _ = t.step_loss(step, lambda loss: loss)
            ours_grad = [p.grad for p in params]
            ref = reference_loss(t, step)
            ref_grad = torch.autograd.grad(ref, params, allow_unused=True)
            # The same rows in other batch shapes (see float_noise); the loss is a mean of squares of the guided
            # prediction's error, so its relative error is at most twice the prediction's.
            torch.testing.assert_close(ours, ref.detach(), atol=0, rtol=2 * float_noise(1.0, gain=GUIDANCE_GAIN))
            for a, b in zip(ours_grad, ref_grad):
                assert (a is None) == (b is None) or not (a if a is not None else b).any()
                if a is not None and b is not None:
                    torch.testing.assert_close(a, b, rtol=0, atol=float_noise(b, gain=GUIDANCE_GAIN))


def test_reference_runs_the_three_way_batch_in_one_call_with_autograd_ours_splits_it(editor):
    calls, handle = unet_calls(editor)
    try:
        reference_run(trainer(editor, make_method(editor, "visii", 1, False), steps=2))
        reference = list(calls)
        calls.clear()
        trainer(editor, make_method(editor, "visii", 1, False), steps=2).run(quiet=True)
    finally:
        handle.remove()
    assert reference == [(3, True)] * 2
    assert calls == [(1, True), (2, False)] * 2  # the image-only and unconditional rows run without autograd


def test_low_memory_computes_the_same_gradients(editor):
    from test_lora import assert_same_gradients, step_gradients

    m = make_method(editor, "brush", parts=2, sequential=False)
    befores, afters = synthetic_pairs(2, RES)
    plain, low = (step_gradients(editor, m, befores, afters, [0, 1], low, resolution=RES, init_text=INIT_TEXT)
                  for low in (False, True))
    assert_same_gradients(plain, low)


def test_fp16_fit_with_loss_scaling_follows_fp32(tiny_model_dir, editor):
    half = load_editor(str(tiny_model_dir), device="cpu", dtype="fp16")
    runs = {}
    for ed in (editor, half):
        m = make_method(ed, "visii", 1, False)
        start = m.learned.detach().clone()
        trainer(ed, m, steps=4).run(quiet=True)
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
    out = json.loads(r.stdout)
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
    out = json.loads(r.stdout)
    assert out["low_memory"] is True and "reference_steps_per_s" not in out


@pytest.mark.parametrize("load, warned", [(3.5, True), (0.2, False)])
def test_bench_speed_says_when_the_machine_was_busy(bench, tiny_model_dir, monkeypatch, load, warned):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    r = bench("--model", tiny_model_dir, *FAST, "--no-reference", "--apply-steps", 1, "--json", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["load_average"] == load
    assert ("warning: the machine was busy before the benchmark (1-minute load average 3.5" in r.stderr) == warned


def test_bench_speed_bad_model_is_a_one_line_error(bench, tmp_path):
    r = bench("--model", tmp_path / "missing", *FAST)
    assert r.exit_code != 0 and "no such model folder" in r.output


def test_apply_batch_size_and_low_memory_do_not_change_results(editor, clip):
    import numpy as np

    import invert

    befores, afters = synthetic_pairs(1, RES)
    inst = tiny_fit(editor, befores, afters, "visii", clip=clip, steps=1, init_text=INIT_TEXT)
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
