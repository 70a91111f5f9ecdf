"""Loading the base model as a user meets it: what loads from where, the hub's download bars, paths that keep
working, devices this machine has not got, CPU threads, and the fit defaults a model folder ships."""
import json
import os
import shutil

import pytest
import torch
from conftest import scene

from invert.errors import ModelLoadError
from invert.instruction import Instruction

QUICK_FIT = ("--resolution", 32, "--steps", 0, "--init-text", "night", "--quiet")


def test_what_loads_and_from_where_is_said_and_the_hub_bars_stay(run, tiny_model_dir, pairs_dir, tmp_path,
                                                                  monkeypatch):
    import huggingface_hub
    from diffusers import StableDiffusionInstructPix2PixPipeline

    seen = []
    original = StableDiffusionInstructPix2PixPipeline.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        seen.append(huggingface_hub.utils.are_progress_bars_disabled())
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionInstructPix2PixPipeline, "from_pretrained", classmethod(from_pretrained))
    r = run("fit", pairs_dir, "-o", tmp_path / "x.inst", "--model", tiny_model_dir, "--resolution", 32, "--steps", 0,
            "--init-text", "night")
    assert r.exit_code == 0, r.output
    assert f"loading {tiny_model_dir} (local folder) ...\nloading CLIP {tiny_model_dir / 'clip'} (local folder) ..." \
        in r.stderr
    assert seen == [False], "a first download of real weights shows the hub's progress bars"
    quiet = run("fit", pairs_dir, "-o", tmp_path / "y.inst", "--model", tiny_model_dir, *QUICK_FIT)
    assert quiet.exit_code == 0 and "loading" not in quiet.output


def test_where_a_model_comes_from(monkeypatch, tmp_path):
    from invert.backbones.model_info import where

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert where("timbrooks/instruct-pix2pix") == "Hugging Face hub: downloading it the first time, several GB"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert where("timbrooks/instruct-pix2pix") == "Hugging Face cache, offline"
    assert where("toy") == "the toy model shipped with invert" and where(str(tmp_path)) == "local folder"


def test_an_unreachable_clip_model_says_how_to_download_it(tmp_path, monkeypatch):
    from invert.clip import load_clip

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(ModelLoadError, match=r"hf download someone/no-clip --local-dir clip\) and pass --clip-model"):
        load_clip("someone/no-clip")


def test_an_unreachable_hub_model_is_asked_for_once_not_twice(run, pairs_dir, tmp_path, monkeypatch):
    """A fit looks its model up for the architecture's defaults and again to load it: offline, the hub's retries
    (about 25 s) come once, and the error is the one line saying how to download it."""
    from diffusers import DiffusionPipeline

    asked = []

    def load_config(cls, source, *args, **kwargs):
        asked.append(source)
        raise OSError("no network")

    monkeypatch.setattr(DiffusionPipeline, "load_config", classmethod(load_config))
    r = run("fit", pairs_dir, "-o", tmp_path / "x.inst", "--model", "someone/unreachable-ip2p", *QUICK_FIT)
    assert r.exit_code == 1 and asked == ["someone/unreachable-ip2p"], (asked, r.output)
    assert "hf download someone/unreachable-ip2p --local-dir model) and pass --model model" in r.output.splitlines()[-1]
    assert not (tmp_path / "x.inst").exists()


def test_a_relative_model_folder_is_recorded_absolute_and_a_moved_one_named(run, tiny_model_dir, pairs_dir, tmp_path,
                                                                             monkeypatch):
    shutil.copytree(tiny_model_dir, tmp_path / "mymodel")
    monkeypatch.chdir(tmp_path)
    assert run("fit", pairs_dir, "-o", "night.inst", "--model", "mymodel", *QUICK_FIT).exit_code == 0
    assert Instruction.load(tmp_path / "night.inst").meta.base_model == str(tmp_path / "mymodel")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    image = tmp_path / "photo.png"
    scene(5).save(image)
    assert run("apply", "../night.inst", image, "-o", "a.png", "--steps", 1).exit_code == 0, "from another folder"

    (tmp_path / "mymodel").rename(tmp_path / "moved")
    r = run("apply", "../night.inst", image, "-o", "b.png", "--steps", 1)
    assert r.exit_code == 1 and r.output.strip() == (
        f"Error: ../night.inst: it was learned on the model folder {tmp_path / 'mymodel'}, which is not here; pass "
        "--model with the folder (or hub id) of the same weights: the file's fingerprint checks that they are")
    assert run("apply", "../night.inst", image, "-o", "b.png", "--steps", 1, "--model", "../moved").exit_code == 0


@pytest.mark.parametrize("device, words", [
    ("gpu", "--device gpu: not a device (use auto, cpu, cuda, cuda:N or mps)"),
    pytest.param("cuda", "--device cuda: CUDA is not available on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    pytest.param("cuda:7", "--device cuda:7: ", marks=pytest.mark.skipif(torch.cuda.device_count() > 7,
                                                                          reason="this machine has 8 GPUs")),
])
def test_a_device_this_machine_has_not_got_is_one_line(run, tiny_model_dir, pairs_dir, tmp_path, device, words):
    r = run("fit", pairs_dir, "-o", tmp_path / "x.inst", "--model", tiny_model_dir, "--device", device, *QUICK_FIT)
    assert r.exit_code == 1 and r.output.startswith(f"Error: {words}") and r.output.count("\n") == 1, r.output


def test_default_threads_leave_the_busy_cores_alone(monkeypatch):
    from invert.cli.threads import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert default_threads(cores=8, load=0.2) == 8
    assert default_threads(cores=8, load=3.4) == 5
    assert default_threads(cores=4, load=0.0) == 4, "no more than torch's physical cores"
    assert default_threads(cores=8, load=9.0) == 1, "a busy machine: one thread, not 8 waiting on each other"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_threads(cores=8, load=0.0) == 2, "only the cores this process may run on"


def test_threads_option_environment_and_default(run, tiny_model_dir, pairs_dir, tmp_path, monkeypatch):
    from invert.cli.main import cli

    runs_a_model = {"fit", "fit-batch", "apply", "eval", "phrases", "import-visii", "ui"}
    assert all("threads" in {p.name for p in cli.commands[c].params} for c in runs_a_model)
    from benchmarks.cli import bench

    assert all("threads" in {p.name for p in bench.commands[c].params} for c in ("speed", "quality"))
    before = torch.get_num_threads()
    try:
        assert run("fit", pairs_dir, "-o", tmp_path / "a.inst", "--model", tiny_model_dir, "--threads", 3,
                   *QUICK_FIT).exit_code == 0
        assert torch.get_num_threads() == 3
        monkeypatch.setenv("INVERT_THREADS", "2")
        assert run("fit", pairs_dir, "-o", tmp_path / "b.inst", "--model", tiny_model_dir, *QUICK_FIT).exit_code == 0
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("INVERT_THREADS")
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 40.0, 40.0))
        assert run("fit", pairs_dir, "-o", tmp_path / "c.inst", "--model", tiny_model_dir, *QUICK_FIT).exit_code == 0
        assert torch.get_num_threads() == 1, "the default on a machine busy with other work"
    finally:
        torch.set_num_threads(before)


def test_a_model_folder_ships_its_fit_defaults(run, tiny_model_dir, pairs_dir, tmp_path):
    import invert

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "invert.json").write_text(json.dumps({"fit": {"lr": 0.02, "guidance": 4.0, "parts": 3,
                                                            "lora": {"lr": 0.001}}}))
    inst = invert.fit(pairs_dir, "visii", model=str(model), resolution=32, steps=0, init_text="x", guidance=5.0)
    options = inst.meta.options
    assert options["lr"] == 0.02 and options["guidance"] == 5.0, "given options win over the model's"
    assert inst.meta.model_defaults == {"lr": 0.02}, "recorded; parts is not a visii option"
    assert Instruction.load(inst.save(tmp_path / "x.inst")).meta.model_defaults == {"lr": 0.02}
    lora = invert.fit(pairs_dir, "lora", model=str(model), resolution=32, steps=0, init_text="x")
    assert lora.meta.model_defaults == {"lr": 0.001, "guidance": 4.0}, "a method's own object wins for it"

    sets = tmp_path / "sets"
    shutil.copytree(pairs_dir, sets / "night")
    r = run("fit-batch", sets, "-o", tmp_path / "insts", "--model", model, *QUICK_FIT)
    assert r.exit_code == 0, r.output
    again = run("fit-batch", sets, "-o", tmp_path / "insts", "--model", model, *QUICK_FIT)
    assert again.exit_code == 0 and "exists" in again.stdout, "the model's defaults are not 'other settings'"

    (model / "invert.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="invert.json: not a valid invert.json"):
        invert.fit(pairs_dir, "visii", model=str(model), resolution=32, steps=0, init_text="x")


def test_the_toy_model_needs_no_learning_rate_or_guidance(run, tmp_path):
    from pathlib import Path

    pairs = Path(__file__).resolve().parent.parent / "examples" / "toy" / "night" / "train"
    r = run("fit", pairs, "-o", tmp_path / "night.inst", "--model", "toy", "--steps", 0, "--init-text", "night",
            "--quiet")
    assert r.exit_code == 0, r.output
    meta = Instruction.load(tmp_path / "night.inst").meta
    # visii's own lr and loss target
    assert meta.model_defaults == {"lr": 0.03, "guidance": 3.0, "loss_target": "cond"} and meta.text_guidance == 3.0
    assert meta.options["loss_target"] == "cond"
    r = run("fit", pairs, "-o", tmp_path / "official.inst", "--model", "toy", "--steps", 0, "--init-text", "night",
            "--quiet", "--official")
    assert r.exit_code == 0, r.output
    meta = Instruction.load(tmp_path / "official.inst").meta
    assert meta.options["lr"] == 1e-3 and meta.text_guidance == 7.5, "--official is the official code's"
    assert meta.options["loss_target"] == "cfg"
    assert meta.model_defaults is None


def test_a_config_file_gives_defaults_the_command_line_overrides(run, tiny_model_dir, pairs_dir, tmp_path):
    config = tmp_path / "fit.toml"
    config.write_text(f'model = "{tiny_model_dir}"\nresolution = 32\nsteps = 0\ninit-text = "make it night"\n'
                      'guidance = 2.0\nvocab = ["default"]\nquiet = true\n')
    r = run("fit", pairs_dir, "-o", tmp_path / "x.inst", "--config", config, "--guidance", 4)
    assert r.exit_code == 0, r.output
    meta = Instruction.load(tmp_path / "x.inst").meta
    assert meta.init_text == "make it night" and meta.options["guidance"] == 4.0
    assert meta.options["vocab"] == ["default"] and meta.base_model == str(tiny_model_dir)
    shutil.copytree(pairs_dir, tmp_path / "sets" / "night")
    r = run("fit-batch", tmp_path / "sets", "-o", tmp_path / "insts", "--config", config)
    assert r.exit_code == 0, r.output

    config.write_text("stepz = 3\n")
    r = run("fit", pairs_dir, "-o", tmp_path / "y.inst", "--config", config)
    assert r.exit_code == 2 and f"{config}: unknown option 'stepz'" in r.output
    config.write_text("steps = \n")
    r = run("fit", pairs_dir, "-o", tmp_path / "y.inst", "--config", config)
    assert r.exit_code == 2 and "not a readable TOML file" in r.output
