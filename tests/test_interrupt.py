"""Stopping a fit (SIGINT, SIGTERM, divergence, out of memory) loses nothing, and --resume continues it to the
result of an uninterrupted run with the same seed."""
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from conftest import scene, stop_at, tiny_fit

from invert.cli.signals import stop_on_signals
from invert.errors import InvertError
from invert.fitting.checkpoint import FitDiverged, FitState, FitStopped
from invert.fitting.loop import Trainer
from invert.instruction import Instruction
from invert.methods import method_names

BEFORES = [scene(i) for i in range(2)]
AFTERS = [scene(i, night=True) for i in range(2)]
STEPS = 6


def fit(editor, clip, method, **kw):
    extra = {"parts": 2} if method == "brush" else {}
    options = {"steps": STEPS, "init_text": "make it night", **extra, **kw.pop("opts", {}), **kw}
    return tiny_fit(editor, BEFORES, AFTERS, method, clip=clip, **options)


def same_instruction(a: Instruction, b: Instruction):
    assert a.tensors.keys() == b.tensors.keys()
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key
    assert replace(a.meta, fit_seconds=None, cost=None) == replace(b.meta, fit_seconds=None, cost=None)


def test_resume_refuses_another_fit_but_allows_a_new_lr(editor, clip, tmp_path):
    with pytest.raises(FitStopped) as stopped:
        fit(editor, clip, "visii", **stop_at(2))
    state = stopped.value.state
    with pytest.raises(InvertError, match=r"differs in .*--seed \(0 there, 1 here\)"):
        fit(editor, clip, "visii", resume=state, opts={"seed": 1})
    path = state.save(tmp_path / "x.inst.ckpt")
    with pytest.raises(InvertError) as refused:  # a state read from a file is named by it
        fit(editor, clip, "visii", resume=FitState.load(path), opts={"seed": 1})
    assert str(refused.value).startswith(f"{path}: saved by a different fit; differs in --seed"), refused.value
    with pytest.raises(InvertError, match="differs in init_text"):
        fit(editor, clip, "visii", resume=state, opts={"init_text": "make it day"})
    lowered = fit(editor, clip, "visii", resume=state, opts={"lr": 1e-4})
    assert lowered.meta.options["lr"] == 1e-4


def test_resume_refusal_names_the_exemplar_pairs_that_changed(tmp_path):
    def pair(name, digest="0"):
        return {"name": name, "before": digest, "after": digest}

    saved = [pair("a"), pair("b"), pair("c")] + [pair(f"x{i}") for i in range(5)]
    state = FitState(0, {}, {"state": {}, "param_groups": []}, [], identity={"method": "visii", "exemplars": saved},
                     path=tmp_path / "x.inst.ckpt")
    with pytest.raises(InvertError) as refused:
        state.check_identity({"method": "visii", "exemplars": [pair("a", "1"), pair("d")] + saved[3:]})
    assert str(refused.value) == (f"{tmp_path / 'x.inst.ckpt'}: saved by a different fit; differs in the exemplar "
                                  "images (d added; a changed; b removed; c removed). Resume with the command that "
                                  "wrote it"), refused.value
    with pytest.raises(InvertError, match=r"images \(d added; x0 changed; x1 changed; x2 changed; and 2 more\)\."):
        state.check_identity({"method": "visii", "exemplars": saved[:3] + [pair(f"x{i}", "1") for i in range(5)]
                              + [pair("d")]})
    assert "\n" not in str(refused.value)


def poison(monkeypatch, at_step, what):
    """Make step ``at_step`` (0-based) report a NaN loss, or leave a NaN gradient."""
    original = Trainer.step_loss

    def step_loss(self, step, scale):
        value, mse = original(self, step, scale)
        if step == at_step:
            if what == "loss":
                return value * float("nan"), mse
            next(self.method.parameters()).grad.fill_(float("nan"))
        return value, mse

    monkeypatch.setattr(Trainer, "step_loss", step_loss)


@pytest.mark.parametrize("what, words", [("loss", "the loss became nan at step 4"),
                                         ("gradient", "a gradient became NaN or inf at step 4")])
def test_divergence_stops_with_the_last_good_state(editor, clip, monkeypatch, what, words):
    with pytest.raises(FitStopped) as clean:
        fit(editor, clip, "visii", **stop_at(3))
    poison(monkeypatch, 3, what)
    with pytest.raises(FitDiverged, match=words) as diverged:
        fit(editor, clip, "visii")
    state = diverged.value.state
    assert state.step == 3 and all(torch.isfinite(p).all() for p in state.params.values())
    assert state.params.keys() == clean.value.state.params.keys()
    assert all(torch.equal(p, clean.value.state.params[n]) for n, p in state.params.items())


def test_non_finite_lr_is_refused(editor, clip):
    with pytest.raises(InvertError, match="option .lr.: must be a finite number, not nan"):
        fit(editor, clip, "visii", opts={"lr": float("nan")})


def test_stop_on_signals_asks_once_then_interrupts():
    heard = []
    with stop_on_signals(heard.append) as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # let the interpreter run the handler
        assert stop() and stop.signum == signal.SIGTERM and heard == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def cli_fit_args(model, pairs, out, *extra):
    return ("fit", pairs, "-o", out, "--model", model, "--resolution", 32, "--steps", STEPS, "--init-text",
            "make it night", "--quiet", *extra)


def signal_at(monkeypatch, at_step, signum):
    original = Trainer.step_loss

    def step_loss(self, step, scale):
        if step == at_step:
            os.kill(os.getpid(), signum)
        return original(self, step, scale)

    monkeypatch.setattr(Trainer, "step_loss", step_loss)


def test_cli_sigterm_saves_state_and_resume_matches(run, tiny_model_dir, pairs_dir, tmp_path, monkeypatch):
    whole = tmp_path / "whole.inst"
    assert run(*cli_fit_args(tiny_model_dir, pairs_dir, whole)).exit_code == 0
    out = tmp_path / "x.inst"
    signal_at(monkeypatch, 2, signal.SIGTERM)
    r = run(*cli_fit_args(tiny_model_dir, pairs_dir, out, "--save-every", 2))
    state = tmp_path / "x.inst.ckpt"
    assert r.exit_code == 128 + signal.SIGTERM, r.output
    assert "SIGTERM: saving the fit's state after this step" in r.output
    assert f"stopped at step 3 of 6; saved the state to {state}: run the same command with --resume {state}" in r.output
    assert not out.exists() and (tmp_path / "x.step-2.inst").exists()
    monkeypatch.undo()
    r = run(*cli_fit_args(tiny_model_dir, pairs_dir, out, "--save-every", 2, "--resume", state))
    assert r.exit_code == 0, r.output
    same_instruction(Instruction.load(whole), Instruction.load(out))
    assert sorted(p.name for p in tmp_path.glob("x.step-*.inst")) == ["x.step-2.inst", "x.step-4.inst"]


def test_cli_divergence_keeps_the_last_good_checkpoints(run, tiny_model_dir, pairs_dir, tmp_path, monkeypatch):
    poison(monkeypatch, 4, "loss")
    out = tmp_path / "x.inst"
    r = run(*cli_fit_args(tiny_model_dir, pairs_dir, out, "--save-every", 2))
    assert r.exit_code == 1 and "the loss became nan at step 5; try a lower --lr" in r.output
    assert f"--resume {tmp_path / 'x.inst.ckpt'}" in r.output
    assert not out.exists() and FitState.load(tmp_path / "x.inst.ckpt").step == 4
    assert Instruction.load(tmp_path / "x.step-4.inst").meta.steps == 4


def test_cli_resume_of_a_bad_checkpoint(run, tiny_model_dir, pairs_dir, tmp_path):
    bad = tmp_path / "x.inst.ckpt"
    Instruction("visii", {"a": torch.zeros(1)}).save(bad)
    r = run(*cli_fit_args(tiny_model_dir, pairs_dir, tmp_path / "x.inst", "--resume", bad))
    assert r.exit_code == 1 and "not a fit checkpoint (format is 'invert.inst')" in r.output


@pytest.mark.parametrize("command", ["fit", "apply"])
def test_out_of_memory_suggests_what_to_change(run, pairs_dir, tmp_path, monkeypatch, command):
    import invert

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")

    monkeypatch.setattr(invert, command, oom)
    monkeypatch.setattr(invert, "load_editor", lambda *args, **kwargs: None)  # apply loads its model first
    if command == "fit":
        r = run("fit", pairs_dir, "-o", tmp_path / "x.inst", "--init-text", "x")
    else:
        Instruction("visii", {"a": torch.zeros(1)}).save(tmp_path / "x.inst")
        r = run("apply", tmp_path / "x.inst", pairs_dir / "before", "-o", tmp_path / "out")
    assert r.exit_code == 1
    assert r.output.strip() == ("Error: out of GPU memory; try --low-memory or a smaller --resolution "
                                "(CUDA out of memory. Tried to allocate 2.00 GiB)")


def test_sigint_to_a_real_fit_then_resume(run, tiny_model_dir, pairs_dir, tmp_path):
    """Ctrl-C as a terminal sends it: to a separate `invert fit` process, in the middle of its fit."""
    steps = 16
    args = [str(a) for a in cli_fit_args(tiny_model_dir, pairs_dir, tmp_path / "x.inst", "--save-every", 1)]
    args[args.index("--steps") + 1] = str(steps)
    proc = subprocess.Popen([sys.executable, "-c", "from invert.cli.main import cli; cli()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600  # generous: a loaded machine can take minutes to import torch
    while not (tmp_path / "x.step-2.inst").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGINT, output
    state = FitState.load(tmp_path / "x.inst.ckpt")
    assert 2 <= state.step < steps and not (tmp_path / "x.inst").exists()

    rest = [a for a in args if a not in ("--save-every", "1")]
    r = run(*rest, "--resume", tmp_path / "x.inst.ckpt")
    assert r.exit_code == 0, r.output
    whole = tmp_path / "whole.inst"
    rest[rest.index("-o") + 1] = str(whole)
    assert run(*rest).exit_code == 0
    same_instruction(Instruction.load(whole), Instruction.load(tmp_path / "x.inst"))


@pytest.mark.parametrize("method", method_names())
def test_a_checkpoint_handed_to_the_caller_stays_the_state_of_its_step(editor, clip, method):
    """The instruction a fit hands to ``checkpoint`` every ``save_every`` steps is a copy: a caller that keeps it
    (the steps study does) still holds that step's state when the fit has gone on, equal to a fit that stopped
    there (it once shared storage with the live parameters, so every kept checkpoint became the last state)."""
    befores, afters = [scene(i) for i in range(2)], [scene(i, night=True) for i in range(2)]
    common = dict(clip=clip, lr=5e-2, init_text="make it night", **({"parts": 2} if method == "brush" else {}))
    kept = {}
    tiny_fit(editor, befores, afters, method, steps=3, save_every=1,
             checkpoint=lambda inst, step: kept.update({step: inst}), **common)
    one = tiny_fit(editor, befores, afters, method, steps=1, **common)
    assert sorted(kept) == [1, 2]
    learned = [k for k in one.tensors if not k.endswith(".init") and not k.startswith("clip.")]
    assert learned and all(torch.equal(kept[1].tensors[k], one.tensors[k]) for k in learned)
    assert any(not torch.equal(kept[1].tensors[k], kept[2].tensors[k]) for k in learned)
