"""`invert apply` and `invert eval` as runs over many images: a progress bar, results kept as they are done and on
a stop, re-runs that continue, seeds that vary the result, and how each result was made in its metadata."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import scene
from PIL import Image

import invert
from invert.cli.parameters import parse_parameters, read_parameters


@pytest.fixture(scope="module")
def inst(tiny_model_dir, tmp_path_factory):
    """A zero-step visii instruction on the tiny model (applying it is what these tests need)."""
    from click.testing import CliRunner

    from invert.cli.main import cli

    folder = tmp_path_factory.mktemp("inst")
    scene(0).save(folder / "b.png")
    scene(0, night=True).save(folder / "a.png")
    r = CliRunner().invoke(cli, ["fit", "--before", str(folder / "b.png"), "--after", str(folder / "a.png"), "-o",
                                 str(folder / "night.inst"), "--model", str(tiny_model_dir), "--resolution", "32",
                                 "--steps", "0", "--init-text", "night", "--quiet"])
    assert r.exit_code == 0, r.output
    return folder / "night.inst"


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        scene(10 + i).save(folder / f"p{i}.png")
    return folder


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_a_progress_bar_and_each_result_written_as_it_is_done(run, inst, photos, tmp_path):
    out = tmp_path / "out"
    r = run("apply", inst, photos, "-o", out, "--steps", 3, "--batch-size", 1)
    assert r.exit_code == 0, r.output
    assert "apply: 100%" in r.stderr and "9/9" in r.stderr and "3/3 images" in r.stderr, r.stderr
    assert r.stdout.splitlines() == [f"wrote {out / f'p{i}.png'}" for i in range(3)], "the bar is on stderr"
    quiet = run("apply", inst, photos, "-o", tmp_path / "quiet", "--steps", 3, "--quiet")
    assert quiet.exit_code == 0 and "apply:" not in quiet.stderr and "loading" not in quiet.stderr


def test_sigterm_keeps_the_results_done_and_a_rerun_makes_the_rest(run, inst, photos, tmp_path):
    """As a terminal or a scheduler sends it: to a separate `invert apply` process, in the middle of its run."""
    scene(13).save(photos / "p3.png")
    out = tmp_path / "out"
    args = ["apply", str(inst), str(photos), "-o", str(out), "--steps", "40", "--batch-size", "1", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "invert", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 600  # generous: a loaded machine can take minutes to import torch
    while not (out / "p0.png").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    written = sorted(p.name for p in out.iterdir())
    assert 1 <= len(written) < 4 and not any(p.startswith(".") for p in written), written
    assert f"Error: interrupted by SIGTERM: {len(written)} of 4 results written" in stderr
    assert stdout.count("wrote ") == len(written)

    again = run(*args)
    assert again.exit_code == 0, again.output
    assert f"skipped {len(written)} result" in again.stderr and again.stdout.count("wrote ") == 4 - len(written)
    whole = tmp_path / "whole"
    assert run(*args[:4], whole, *args[5:]).exit_code == 0
    for i in range(4):
        assert np.array_equal(pixels(out / f"p{i}.png"), pixels(whole / f"p{i}.png")), i


def test_a_seed_draws_fresh_noise_and_variations_one_per_seed(run, inst, photos, tmp_path, tiny_model_dir):
    image = photos / "p0.png"
    for seed in (5, 9):
        assert run("apply", inst, image, "-o", tmp_path / f"s{seed}.png", "--steps", 2, "--seed", seed).exit_code == 0
    assert not np.array_equal(pixels(tmp_path / "s5.png"), pixels(tmp_path / "s9.png")), "a seed varies the result"
    library = invert.apply(inst, Image.open(image), model=str(tiny_model_dir), steps=2, seed=5, fresh_noise=True)
    assert np.array_equal(pixels(tmp_path / "s5.png"), np.asarray(library)), "what --fresh-noise --seed 5 gives"
    assert run("apply", inst, image, "-o", tmp_path / "fresh.png", "--steps", 2, "--seed", 5,
               "--fresh-noise").exit_code == 0, "--fresh-noise still works"
    assert np.array_equal(pixels(tmp_path / "fresh.png"), pixels(tmp_path / "s5.png"))

    r = run("apply", inst, image, "-o", tmp_path / "var", "--steps", 2, "--seed", 5, "--num-variations", 3,
            "--grid")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "var").iterdir()) == [
        f"p0_seed{s}{kind}.png" for s in (5, 6, 7) for kind in ("", "_grid")]
    assert np.array_equal(pixels(tmp_path / "var" / "p0_seed5.png"), pixels(tmp_path / "s5.png"))
    assert not np.array_equal(pixels(tmp_path / "var" / "p0_seed6.png"), pixels(tmp_path / "s5.png"))


def test_a_seed_goes_with_fresh_noise_and_is_refused_with_noise_that_ignores_it(run, inst, photos, tmp_path):
    image = photos / "p0.png"
    assert run("apply", inst, image, "-o", tmp_path / "fresh.png", "--steps", 2, "--seed", 5, "--noise",
               "fresh").exit_code == 0
    assert run("apply", inst, image, "-o", tmp_path / "s5.png", "--steps", 2, "--seed", 5).exit_code == 0
    assert np.array_equal(pixels(tmp_path / "fresh.png"), pixels(tmp_path / "s5.png")), "--seed means --noise fresh"
    assert parse_parameters(read_parameters(tmp_path / "s5.png"))["Noise"] == "fresh"
    for args, words in [
        (("--seed", 5, "--noise", "stream"), "--seed draws fresh noise, but --noise stream uses the fit's"),
        (("--num-variations", 2, "--noise", "fit"), "--num-variations draws fresh noise, but --noise fit uses"),
        (("--fresh-noise", "--noise", "fit"), "--fresh-noise and --noise fit contradict each other"),
    ]:
        r = run("apply", inst, image, "-o", tmp_path / "x.png", "--steps", 2, *args)
        assert r.exit_code == 1 and r.output.strip().startswith(f"Error: {words}"), r.output
        assert not (tmp_path / "x.png").exists()
    r = run("apply", inst, image, "-o", tmp_path / "fit.png", "--steps", 2, "--noise", "fit")
    assert r.exit_code == 0, r.output
    assert parse_parameters(read_parameters(tmp_path / "fit.png"))["Noise"] == "fit"


def test_every_result_records_how_it_was_made(run, inst, photos, tmp_path):
    out = tmp_path / "out"
    r = run("apply", inst, photos / "p1.png", "-o", out, "--steps", 2, "--seed", 4, "--text", "at night, with stars",
            "--guidance", 6, "--scheduler", "ddim", "--strength", 0.5, "--grid")
    assert r.exit_code == 0, r.output
    for path in (out / "p1.png", out / "p1_grid.png"):
        values = parse_parameters(read_parameters(path))
        assert values["Text"] == "at night, with stars"
        assert {k: values[k] for k in ("Steps", "Sampler", "CFG scale", "Image CFG scale", "Seed", "Noise",
                                       "Strength", "Method", "Instruction", "Input", "Size")} == {
            "Steps": "2", "Sampler": "ddim", "CFG scale": "6.0", "Image CFG scale": "1.5", "Seed": "4",
            "Noise": "fresh", "Strength": "0.5", "Method": "visii", "Instruction": "night.inst", "Input": "p1.png",
            "Size": "32x32"}
    jpeg = tmp_path / "p1.jpg"
    assert run("apply", inst, photos / "p1.png", "-o", jpeg, "--steps", 2).exit_code == 0
    assert parse_parameters(read_parameters(jpeg))["Noise"] == "stream", "JPEG keeps them too (EXIF user comment)"


def test_a_rerun_on_another_image_of_the_same_name_is_not_skipped(run, inst, tmp_path):
    """A result records its input's content, not only its name: before, a rerun on a changed photo (or one of
    that name from another folder) skipped the old result as 'made with these settings'."""
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    scene(1).save(folder / "p.png")
    assert run("apply", inst, folder, "-o", out, "--steps", 1).exit_code == 0
    assert "skipped 1 result" in run("apply", inst, folder, "-o", out, "--steps", 1).stderr
    scene(2).save(folder / "p.png")
    r = run("apply", inst, folder, "-o", out, "--steps", 1)
    assert r.exit_code == 1 and "made with other settings (Input hash" in r.output, r.output


def test_an_instruction_is_known_by_its_content_and_any_image_name_is_a_file(run, inst, photos, tmp_path):
    renamed = tmp_path / "night.bin"
    shutil.copy(inst, renamed)
    r = run("apply", renamed, photos / "p0.png", "-o", tmp_path / "result.tif", "--steps", 1)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "result.tif").is_file() and Image.open(tmp_path / "result.tif").format == "TIFF"
    not_inst = tmp_path / "data.bin"
    not_inst.write_bytes(b"\x00" * 64)
    r = run("apply", inst, not_inst, "-o", tmp_path / "x.png", "--steps", 1)
    assert r.exit_code == 1 and f"{not_inst}: not an image" in r.output


def test_the_library_applies_one_image_to_a_path(inst, photos, tiny_model_dir):
    result = invert.apply(str(inst), Image.open(photos / "p0.png"), model=str(tiny_model_dir), steps=1)
    assert isinstance(result, Image.Image) and result.size == (32, 32)


def test_the_library_takes_its_instructions_and_images_in_every_form_and_refuses_others(inst, photos,
                                                                                       tiny_model_dir):
    # before: a generator of instructions was one instruction ('generator' object has no attribute
    # 'check_model'), an empty list an IndexError, a path where images belong was iterated letter by letter
    # ('str' object has no attribute 'size'), settings={...} a TypeError from dataclasses.asdict
    from invert.errors import InvertError

    photo, model = Image.open(photos / "p0.png"), str(tiny_model_dir)
    two = invert.apply((i for i in (inst, inst)), photo, model=model, steps=1)
    assert np.array_equal(np.asarray(two), np.asarray(invert.apply(inst, photo, model=model, steps=1)))
    assert len(invert.apply(inst, (p for p in [photo, photo]), model=model, steps=1)) == 2
    for instruction, images, settings, words in (([], photo, None, "instruction: an empty list"),
                                                 (inst, str(photos / "p0.png"), None, "images: expected a PIL image"),
                                                 (inst, [photos / "p0.png"], None, "images: expected a PIL image"),
                                                 (inst, photo, {"steps": 1}, "settings: expected an ApplySettings")):
        with pytest.raises(InvertError, match=words):
            invert.apply(instruction, images, model=model, settings=settings)


def test_eval_reports_both_clip_direction_scores_and_its_settings(run, inst, pairs_dir, tmp_path):
    import json

    r = run("eval", inst, pairs_dir, "--json", "--steps", 2, "--seed", 3)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["settings"]["noise"] == "fresh" and out["settings"]["seed"] == 3 and out["settings"]["steps"] == 2
    column = [row["clip_direction"] for row in out["images"]]
    assert out["mean"]["clip_direction"] == pytest.approx(np.mean(column)), "the mean row is the column's mean"
    assert -1 <= out["clip_direction_of_means"] <= 1
    r = run("eval", inst, pairs_dir, "--steps", 2)
    assert "the mean row is its column's mean. TOP-Bench's score" in r.stdout and "eval: 100%" in r.stderr
    r = run("eval", inst, pairs_dir, "--steps", 2, "--seed", 3, "--noise", "fit")
    assert r.exit_code == 1 and "--seed draws fresh noise, but --noise fit uses the fit's" in r.output
