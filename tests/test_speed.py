"""The speed benchmark on the tiny model: the reference loop is a faithful port (same loss, one three-row UNet
call per step), the floor runs exactly the UNet work a step cannot avoid, the loops alternate in blocks,
--low-memory learns the same tensors, fp16 fits with loss scaling, and the command's output."""
import json
import os

import pytest
import torch
from click.testing import CliRunner
from conftest import GUIDANCE_GAIN, float_noise, tiny_fit

from benchmarks.cli import bench as bench_group
from benchmarks.speed import (
    INIT_TEXT,
    FloorLoop,
    Ratio,
    ReferenceLoop,
    interleaved,
    make_method,
    reference_loss,
    reference_run,
    synthetic_pairs,
    trainer_for,
)
from invert.backbones import load_editor
from invert.fitting.losses import clip_direction
from invert.settings import FitSettings

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


def test_floor_runs_the_rows_a_step_cannot_avoid_and_nothing_else(editor):
    cases = {("visii", "cfg"): [(1, True), (2, False)], ("brush", "cfg"): [(2, True), (4, False)],
             ("visii", "cond"): [(1, True)], ("lora", "cfg"): [(3, True)]}
    for (name, target), expected in cases.items():
        floor = FloorLoop(trainer(editor, make_method(editor, name, 2, False), loss_target=target))
        calls, handle = unet_calls(editor)
        try:
            floor.run(2)
        finally:
            handle.remove()
        assert calls == expected * 2, (name, target)


def test_loops_alternate_in_blocks_after_their_warm_ups(editor):
    calls, handle = unet_calls(editor)  # ours: two UNet calls per step
    log = []

    def other(name):
        return lambda steps: log.append((name, steps, len(calls) // 2)) or 1.0

    try:
        t = trainer(editor, make_method(editor, "visii", 1, False), steps=2 + 6)
        ours, (ref, floor) = interleaved(t, [other("ref"), other("floor")], warmup=2, steps=6, block=3)
    finally:
        handle.remove()
    # (loop, its steps, ours' steps done by then): each loop warms up once, then a block of each per block of ours.
    assert log == [("ref", 2, 2), ("floor", 2, 2), ("ref", 3, 5), ("floor", 3, 5), ("ref", 3, 8), ("floor", 3, 8)]
    assert len(ours) == 2 and ref == floor == [1.0, 1.0] and all(s > 0 for s in ours)


def test_reference_autocast_computes_in_half_precision_with_fp32_weights(editor):
    dtypes = []
    handle = editor.unet.conv_in.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    try:
        ReferenceLoop(trainer(editor, make_method(editor, "visii", 1, False)), torch.bfloat16).run(1)
    finally:
        handle.remove()
    assert dtypes == [torch.bfloat16] and editor.unet.conv_in.weight.dtype == torch.float32


def test_a_wide_spread_or_a_single_cycle_is_warned_about():
    steady = Ratio([1.0, 1.02, 0.99, 1.01, 1.6])  # one disturbed cycle: the interquartile range ignores it
    assert steady.spread_warnings("steady") == []
    busy = Ratio([0.7, 1.0, 1.3, 0.8, 1.2]).spread_warnings("busy")
    assert len(busy) == 1 and busy[0].startswith("busy: the middle half of 5 cycles")
    once = Ratio([1.0]).spread_warnings("once")
    assert len(once) == 1 and "one cycle" in once[0]


@pytest.fixture
def bench():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(bench_group, ["speed", *map(str, args)], catch_exceptions=False)

    return invoke


# The command's runs (seconds each: the reference and floor loops, cycles, apply) are marked bench: .ci/run runs
# them after README's command.
FAST = ("--resolution", RES, "--steps", 2, "--block", 1, "--warmup", 1, "--apply-steps", 2, "--device", "cpu")


@pytest.mark.bench
def test_bench_speed_json(bench, tiny_model_dir):
    r = bench("--model", tiny_model_dir, *FAST, "--method", "brush", "--parts", 2, "--batch-size", 2, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["method"] == "brush" and out["model"] == str(tiny_model_dir) and out["resolution"] == RES
    assert out["device"].startswith("cpu") and out["batch_size"] == 2
    for key in ("steps_per_s", "reference_steps_per_s", "floor_steps_per_s", "peak_memory_mb",
                "reference_peak_memory_mb", "apply_images_per_s", "ours_over_floor", "ceiling_vs_reference"):
        assert out[key] > 0, key
    assert out["cycles"] == 2 and len(out["speedup_vs_reference_cycles"]) == 2
    assert out["speedup_vs_reference"] == pytest.approx(sum(out["speedup_vs_reference_cycles"]) / 2)  # a median
    assert out["reference_dtype"] == "float32" and not out["reference_autocast"]
    assert out["timed_steps"] == 4  # one optimizer step trains both parts
    assert out["projected_fit_seconds"] == pytest.approx(2 * 1000 / out["steps_per_s"])


@pytest.mark.bench
def test_bench_speed_table_and_no_reference(bench, tiny_model_dir):
    r = bench("--model", tiny_model_dir, *FAST)
    assert r.exit_code == 0, r.output
    for text in ("steps/s", "x faster", "ours/floor", "structural ceiling", "images/s"):
        assert text in r.output, text
    r = bench("--model", tiny_model_dir, *FAST, "--no-reference", "--no-floor", "--low-memory", "--json")
    out = json.loads(r.stdout)
    assert out["low_memory"] is True and "reference_steps_per_s" not in out and "ours_over_floor" not in out


@pytest.mark.bench
def test_bench_speed_resolution_defaults_to_the_models_own(bench, tiny_model_dir):
    fast = [a for i, a in enumerate(FAST) if "--resolution" not in FAST[max(0, i - 1):i + 1]]
    r = bench("--model", tiny_model_dir, *fast, "--no-reference", "--no-floor", "--json")
    assert json.loads(r.stdout)["resolution"] == 32  # the tiny UNet's 16 latents x 2


@pytest.mark.bench
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


def test_an_adapter_runs_its_three_rows_in_one_call(editor):
    calls, handle = unet_calls(editor)
    try:
        trainer(editor, make_method(editor, "lora", 1, False), steps=2).run(quiet=True)
    finally:
        handle.remove()
    assert calls == [(3, True)] * 2


@pytest.mark.bench
def test_bench_speed_projects_a_fit_report(bench, tiny_model_dir, tmp_path):
    cost = {"init_search": {"seconds": 1.0, "forward_rows": 30, "backward_rows": 0},
            "training": {"seconds": 1.0, "forward_rows": 4, "backward_rows": 2},
            "validation": {"seconds": 1.0, "forward_rows": 6, "backward_rows": 0}}
    report = tmp_path / "fit.json"
    report.write_text(json.dumps({"cost": cost}))
    r = bench("--model", tiny_model_dir, *FAST, "--no-reference", "--no-floor", "--fit-report", report, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["projected_phase_seconds"]["training"] == pytest.approx(2 / out["steps_per_s"])
    assert out["projected_checks_over_loop"] > 0
    report.write_text("[1, 2]")
    r = bench("--model", tiny_model_dir, *FAST, "--fit-report", report)
    assert r.exit_code != 0 and "--fit-report" in r.output and "not the JSON object" in r.output
