"""The invert command end to end on the tiny model (CliRunner)."""
import json

import click
import pytest
from click.testing import CliRunner
from conftest import scene
from PIL import Image

from invert.cli.main import cli


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def fit_args(model, pairs, out, *extra):
    return ("fit", pairs, "-o", out, "--model", model, "--resolution", 32, "--quiet", *extra)


def test_fit_inspect_apply(run, tiny_model_dir, pairs_dir, tmp_path):
    inst = tmp_path / "night.inst"
    r = run(*fit_args(tiny_model_dir, pairs_dir, inst, "--steps", 4, "--init-text", "make it night"))
    assert r.exit_code == 0, r.output
    info = json.loads(run("inspect", inst, "--json").output)
    meta = info["meta"]
    assert info["method"] == "visii"
    assert meta["init_text"] == "make it night" and meta["steps"] == 4 and meta["num_tokens"] == 3
    assert meta["base_model"] == str(tiny_model_dir) and meta["clip_model"] == str(tiny_model_dir / "clip")
    assert len(meta["exemplars"]) == 3 and len(meta["exemplars"][0]["before"]) == 64
    assert info["tensors"]["visii.learned"]["shape"] == [1, 3, 32]
    assert "init_text: make it night" in run("inspect", inst).output

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    scene(20, size=40).save(inputs / "a photo.png")
    Image.new("RGB", (37, 29), (9, 9, 9)).save(inputs / "small.jpg")
    out = tmp_path / "out"
    r = run("apply", inst, inputs, "-o", out, "--steps", 2, "--text", "with stars", "--grid")
    assert r.exit_code == 0, r.output
    assert Image.open(out / "a photo.png").size == (40, 40)
    assert Image.open(out / "small.png").size == (36, 28), "rounded down to a multiple of the VAE factor"
    assert (out / "small_grid.png").exists()

    r = run("apply", inst, inputs, "-o", out, "--steps", 2, "--text", "with stars", "--grid")
    assert r.exit_code == 0 and "skipped 2 results made with these settings" in r.output, "a re-run continues"
    r = run("apply", inst, inputs, "-o", out, "--steps", 2)
    assert r.exit_code == 1 and "made with other settings (Text 'with stars' there, '' here)" in r.output
    assert "--force" in r.output
    assert run("apply", inst, inputs, "-o", out, "--steps", 2, "--force").exit_code == 0


def test_fit_refuses_to_overwrite_before_doing_work(run, tiny_model_dir, pairs_dir, tmp_path):
    inst = tmp_path / "exists.inst"
    inst.write_text("keep me")
    r = run(*fit_args(tiny_model_dir, pairs_dir, inst, "--steps", 1, "--init-text", "x"))
    assert r.exit_code == 1 and "already exists" in r.output
    assert inst.read_text() == "keep me"


def test_steps_zero_and_caption_init(run, tiny_model_dir, pairs_dir, tmp_path):
    inst = tmp_path / "init.inst"
    r = run(*fit_args(tiny_model_dir, pairs_dir, inst, "--steps", 0, "--init", "caption"))
    assert r.exit_code == 0, r.output
    meta = json.loads(run("inspect", inst, "--json").output)["meta"]
    assert meta["init_text"], "a CLIP-ranked caption from the default vocabulary"
    assert meta["steps"] == 0


def test_single_pair_and_bad_inputs(run, tiny_model_dir, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    scene(1).save(a)
    scene(1, night=True).save(b)
    r = run("fit", "--before", a, "--after", b, "-o", tmp_path / "x.inst", "--model", tiny_model_dir,
            "--resolution", 32, "--steps", 1, "--init-text", "night", "--quiet")
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    r = run("fit", "--before", a, "--after", bad, "-o", tmp_path / "y.inst", "--model", tiny_model_dir,
            "--resolution", 32, "--init-text", "night", "--quiet")
    assert r.exit_code == 1 and "bad.png" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "y.inst").exists()
    r = run("inspect", bad)
    assert r.exit_code == 1 and "bad.png" in r.output


def test_unreachable_hub_model_is_one_line(run, tmp_path, monkeypatch, pairs_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    r = run("fit", pairs_dir, "-o", tmp_path / "x.inst", "--model", "someone/not-cached-model", "--init-text", "x")
    assert r.exit_code == 1
    loading, error = r.stderr.strip().split("\n")
    assert loading == "loading someone/not-cached-model (Hugging Face cache, offline) ..."
    assert "someone/not-cached-model" in error and "--model" in error
    assert "hf download someone/not-cached-model --local-dir model" in error, "huggingface_hub 2 has no huggingface-cli"


def test_missing_local_folder(run, tmp_path, pairs_dir):
    r = run("fit", pairs_dir, "-o", tmp_path / "x.inst", "--model", tmp_path / "nope", "--init-text", "x")
    assert r.exit_code == 1 and "no such model folder" in r.output


def test_version_and_help(run):
    assert "invert" in run("--version").output
    assert "invert fit pairs/" in run("--help").output


def test_help_and_completion_do_not_import_torch():
    """`invert --help` and shell completion build every option without torch or diffusers (seconds to import)."""
    import subprocess
    import sys

    code = ("import sys, invert.cli.main; from invert.cli.main import cli; "
            "cli.to_info_dict(cli.make_context('invert', ['--help'], resilient_parsing=True)); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_brush_fit_phrases_and_mixed_apply(run, tiny_model_dir, pairs_dir, tmp_path):
    a, b = tmp_path / "a.inst", tmp_path / "b.inst"
    for out, seed in ((a, 0), (b, 1)):
        # --init auto: brush's own phrase initialization (the default, --init best, may choose another text)
        r = run(*fit_args(tiny_model_dir, pairs_dir, out, "--method", "brush", "--steps", 2, "--parts", 3,
                          "--seed", seed, "--threshold", 0.0, "--init", "auto"))
        assert r.exit_code == 0, r.output
    info = json.loads(run("inspect", a, "--json").output)
    k = next(v for name, v in info["tensors"].items() if name.startswith("brush.") and name.endswith(".k"))
    assert k["shape"][0] == 3
    phrases = info["meta"]["phrases"]  # with the random tiny CLIP either side may be the one above threshold
    assert phrases["candidates"] and (phrases["p_x"] or phrases["p_y"])
    assert info["meta"]["init_text"].startswith(("turn ", "remove "))
    assert info["meta"]["extra"]["parts"] == 3

    r = run("phrases", pairs_dir, "--model", tiny_model_dir, "--resolution", 32, "--threshold", 0.0, "--json")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["init_text"] == info["meta"]["init_text"]

    image = tmp_path / "x.png"
    scene(3).save(image)
    r = run("apply", a, b, image, "-o", tmp_path / "mixed.png", "--mix", "0.5,0.5", "--steps", 2)
    assert r.exit_code == 0, r.output
    r = run("apply", a, b, image, "-o", tmp_path / "bad.png", "--mix", "0.5", "--steps", 2)
    assert r.exit_code == 1 and "2 instructions" in r.output


def test_fit_batch_takes_every_option_of_fit():
    """Options are declared once (generated from the typed settings): fit-batch has fit's, with the same
    defaults, but for those that mean nothing for a folder of sets."""
    from invert.cli.main import cli

    def options(name):
        command = cli.commands[name]
        return {p.name: (p.default, p.help) for p in command.params if isinstance(p, click.Option)}

    fit, batch = options("fit"), options("fit-batch")
    only_fit = {"before", "after", "resume"}  # a set is a folder; fit-batch resumes by skipping finished sets
    assert set(fit) - set(batch) == only_fit
    per_set = {"output", "force", "save_every", "quiet", "as_json"}  # these say what they do per set
    for name in set(fit) - only_fit - per_set:
        assert batch[name] == fit[name], name
    assert len(fit) > 35


def test_an_unknown_or_foreign_option_is_an_error(run, pairs_dir, tmp_path, tiny_model_dir):
    import invert
    from invert.errors import InvertError

    with pytest.raises(InvertError, match="unknown option 'stepz'"):
        invert.fit(pairs_dir, "visii", model=str(tiny_model_dir), stepz=3)
    with pytest.raises(InvertError, match="--lora-rank is an option of --method lora, not of brush"):
        invert.fit(pairs_dir, "brush", model=str(tiny_model_dir), lora_rank=3)
