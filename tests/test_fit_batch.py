"""``invert fit-batch``: one instruction per set, skipping finished ones, sharded without coordination."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from invert.cli.batch import parse_shard
from invert.cli.main import cli
from invert.errors import InvertError


def batch(model, sets, out, *extra):
    """fit-batch for 1 step from the init text 'x' (--init best, the default, samples a dozen texts per set)."""
    args = ["fit-batch", str(sets), "-o", str(out), "--model", str(model), "--resolution", "32", "--steps", "1",
            "--init-text", "x", "--json", *map(str, extra)]
    return CliRunner().invoke(cli, args)


def test_shards_cover_the_sets_and_a_rerun_continues(tiny_model_dir, pairs_dir, tmp_path):
    sets = tmp_path / "sets"
    for name in ("a", "b", "c"):
        shutil.copytree(pairs_dir, sets / name)
    out = tmp_path / "insts"
    r = batch(tiny_model_dir, sets, out, "--shard", "1/2")
    assert r.exit_code == 0, r.output
    assert [row["set"] for row in json.loads(r.stdout)["sets"]] == ["b"]
    assert sorted(p.name for p in out.iterdir()) == ["b.inst"]
    first = (out / "b.inst").read_bytes()

    r = batch(tiny_model_dir, sets, out)
    rows = {row["set"]: row for row in json.loads(r.stdout)["sets"]}
    assert rows["b"]["status"] == "exists" and rows["a"]["status"] == rows["c"]["status"] == "fitted"
    assert rows["a"]["steps"] == 1 and rows["a"]["final_loss"] > 0
    assert (out / "b.inst").read_bytes() == first, "an existing instruction is never refitted"


def test_a_rerun_with_other_settings_is_refused_or_refits_with_force(tiny_model_dir, pairs_dir, tmp_path):
    """An existing SET.inst is kept only when it was fitted alike; otherwise the difference is named, and
    --force refits it (it used to be kept silently: 5-step brush files reported as done for a lora run)."""
    sets = tmp_path / "sets"
    shutil.copytree(pairs_dir, sets / "a")
    out = tmp_path / "insts"
    assert batch(tiny_model_dir, sets, out).exit_code == 0
    first = (out / "a.inst").read_bytes()
    r = batch(tiny_model_dir, sets, out, "--steps", 2, "--method", "brush")
    assert r.exit_code == 1 and "fitted with other settings (--method visii there, brush here)" in r.output
    r = batch(tiny_model_dir, sets, out, "--steps", 2)
    assert r.exit_code == 1 and "--steps 1 there, 2 here" in r.output and "--force" in r.output
    assert (out / "a.inst").read_bytes() == first
    r = batch(tiny_model_dir, sets, out, "--steps", 2, "--force")
    assert r.exit_code == 0 and json.loads(r.stdout)["sets"][0]["status"] == "fitted"
    r = batch(tiny_model_dir, sets, out, "--steps", 2)
    assert r.exit_code == 0 and json.loads(r.stdout)["sets"][0]["status"] == "exists"


def test_a_bad_set_fails_alone(tiny_model_dir, pairs_dir, tmp_path):
    sets = tmp_path / "sets"
    shutil.copytree(pairs_dir, sets / "good")
    (sets / "empty").mkdir()
    r = batch(tiny_model_dir, sets, tmp_path / "out")
    assert r.exit_code == 1
    rows = {row["set"]: row["status"] for row in json.loads(r.stdout)["sets"]}
    assert rows["good"] == "fitted" and rows["empty"].startswith("failed: ")


def test_a_set_that_is_a_broken_link_fails_alone_naming_it(tiny_model_dir, pairs_dir, tmp_path):
    """A set folder that is a dangling or looping symlink was left out of the summary without a word."""
    sets = tmp_path / "sets"
    shutil.copytree(pairs_dir, sets / "good")
    (sets / "gone").symlink_to(tmp_path / "nothing", target_is_directory=True)
    (sets / "loop").symlink_to(sets / "loop", target_is_directory=True)
    r = batch(tiny_model_dir, sets, tmp_path / "out")
    assert r.exit_code == 1, r.output
    rows = {row["set"]: row["status"] for row in json.loads(r.stdout)["sets"]}
    assert rows["good"] == "fitted"
    assert rows["gone"] == f"failed: {sets / 'gone'}: not a folder of exemplar pairs (a link to nowhere)"
    assert rows["loop"] == f"failed: {sets / 'loop'}: not a folder of exemplar pairs (a link that loops)"


def test_a_signal_keeps_the_stopped_sets_state_and_a_rerun_continues_it(tiny_model_dir, pairs_dir, tmp_path,
                                                                        monkeypatch):
    """Ctrl-C or SIGTERM in the middle of a set: the batch stops after that step, keeping the finished sets, saving
    the stopped one's state and listing the rest as not begun; a re-run continues it to the result of an
    uninterrupted batch. (It used to end with "Aborted!", or be killed by SIGTERM: the set's steps were lost and
    no summary said which sets were done.)"""
    from test_interrupt import same_instruction

    from invert.fitting.loop import Trainer
    from invert.instruction import Instruction

    sets = tmp_path / "sets"
    for name in ("a", "b", "c"):
        shutil.copytree(pairs_dir, sets / name)
    whole = tmp_path / "whole"
    assert batch(tiny_model_dir, sets, whole, "--steps", 6).exit_code == 0
    original, calls = Trainer.step_loss, []

    def step_loss(self, step, scale):
        calls.append(step)
        if len(calls) == 6 + 3:  # the second set's third step
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, scale)

    monkeypatch.setattr(Trainer, "step_loss", step_loss)
    out = tmp_path / "out"
    r = batch(tiny_model_dir, sets, out, "--steps", 6)
    assert r.exit_code == 128 + signal.SIGTERM, r.output
    rows = {row["set"]: row["status"] for row in json.loads(r.stdout)["sets"]}
    assert rows["a"] == "fitted"
    assert rows["b"] == f"stopped: stopped at step 3 of 6; saved the state to {out / 'b.inst.ckpt'}: a re-run continues it"
    assert rows["c"] == "stopped: not begun; a re-run fits it"
    assert sorted(p.name for p in out.iterdir()) == ["a.inst", "b.inst.ckpt"]
    monkeypatch.undo()

    r = batch(tiny_model_dir, sets, out, "--steps", 6)
    assert r.exit_code == 0, r.output
    assert [row["status"] for row in json.loads(r.stdout)["sets"]] == ["exists", "fitted", "fitted"]
    for name in ("a", "b", "c"):
        same_instruction(Instruction.load(whole / f"{name}.inst"), Instruction.load(out / f"{name}.inst"))


def test_the_state_of_another_fit_is_refused_naming_the_difference_or_dropped_with_force(tiny_model_dir, pairs_dir,
                                                                                         tmp_path, monkeypatch):
    from invert.fitting.loop import Trainer

    shutil.copytree(pairs_dir, tmp_path / "sets" / "a")
    original = Trainer.step_loss

    def step_loss(self, step, scale):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, step, scale)

    monkeypatch.setattr(Trainer, "step_loss", step_loss)
    out = tmp_path / "out"
    assert batch(tiny_model_dir, tmp_path / "sets", out, "--steps", 6).exit_code == 128 + signal.SIGINT
    monkeypatch.undo()
    r = batch(tiny_model_dir, tmp_path / "sets", out, "--steps", 8)
    assert r.exit_code == 1
    status = json.loads(r.stdout)["sets"][0]["status"]
    assert "differs in --steps (6 there, 8 here)" in status and "(--force fits it from the start)" in status
    r = batch(tiny_model_dir, tmp_path / "sets", out, "--steps", 8, "--force")
    assert r.exit_code == 0 and json.loads(r.stdout)["sets"][0]["steps"] == 8


def test_shard_from_flag_or_launcher_environment():
    assert parse_shard("2/4", {}) == (2, 4)
    assert parse_shard(None, {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert parse_shard(None, {}) == (0, 1)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(InvertError):
            parse_shard(bad, {})


@pytest.mark.processes
def test_torchrun_with_two_cpu_processes_splits_the_sets(tiny_model_dir, pairs_dir, tmp_path):
    """The launcher gives each process RANK and WORLD_SIZE; with no --shard every process fits its own sets,
    and none creates a process group, so plain CPU processes (no NCCL, no gloo) do."""
    sets = tmp_path / "sets"
    sets.mkdir()
    for name in ("a", "b", "c", "d"):
        (sets / name).symlink_to(pairs_dir, target_is_directory=True)
    out, logs = tmp_path / "insts", tmp_path / "logs"
    # Each rank's stdout goes to its own file (--redirects 1), so the two JSON summaries cannot interleave;
    # stderr stays on the pipe, to show in the assertion message if a worker fails.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--log-dir", str(logs), "--redirects", "1",
           "-m", "invert.cli", "fit-batch", str(sets), "-o", str(out), "--model", str(tiny_model_dir),
           "--device", "cpu", "--resolution", "32", "--steps", "2", "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # when pytest itself runs under a launcher
        env.pop(var, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["a.inst", "b.inst", "c.inst", "d.inst"]

    summaries = [json.loads(p.read_text()) for p in sorted(logs.glob("*/attempt_0/*/stdout.log"))]
    fitted = {s["shard"]: [r["set"] for r in s["sets"] if r["status"] == "fitted"] for s in summaries}
    assert fitted == {"0/2": ["a", "c"], "1/2": ["b", "d"]}, summaries
    assert all(r["steps"] == 2 for s in summaries for r in s["sets"])


def test_auto_device_under_a_launcher_takes_the_local_rank_gpu_only_if_there_is_one(
        tiny_model_dir, pairs_dir, tmp_path, monkeypatch):
    import torch

    import invert.backbones

    class Loaded(Exception):
        pass

    def load_editor(model, device, dtype):
        raise Loaded(device)

    monkeypatch.setattr(invert.backbones, "load_editor", load_editor)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    sets = tmp_path / "sets"
    sets.mkdir()
    for name in ("a", "b", "c", "d"):
        (sets / name).symlink_to(pairs_dir, target_is_directory=True)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}  # the second process of the second 2-GPU node
    for cuda, expected in ((False, "auto"), (True, "cuda:1")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        r = CliRunner().invoke(cli, ["fit-batch", str(sets), "-o", str(tmp_path / "out"), "--model",
                                     str(tiny_model_dir), "--json"], env=env)
        assert isinstance(r.exception, Loaded) and r.exception.args == (expected,), r.output
        # One worker (--shard 0/1) leaves the device to auto, whatever the launcher says.
        r = CliRunner().invoke(cli, ["fit-batch", str(sets), "-o", str(tmp_path / "out"), "--model",
                                     str(tiny_model_dir), "--shard", "0/1", "--json"], env=env)
        assert isinstance(r.exception, Loaded) and r.exception.args == ("auto",), r.output
