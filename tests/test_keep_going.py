"""Batch apply over folders of untrusted files: --keep-going, a failure summary, safe output names."""
from pathlib import Path

import pytest
from conftest import scene
from PIL import Image

from invert.cli.batch import output_name


@pytest.fixture(scope="module")
def inst(tiny_model_dir, tmp_path_factory):
    """A zero-step instruction on the tiny model: applying it is all these tests need."""
    from click.testing import CliRunner

    from invert.cli.main import cli

    path = tmp_path_factory.mktemp("inst") / "night.inst"
    r = CliRunner().invoke(cli, ["fit", "--before", str(_scene_file(path.parent, "b.png", 0)), "--after",
                                 str(_scene_file(path.parent, "a.png", 0, night=True)), "-o", str(path), "--model",
                                 str(tiny_model_dir), "--resolution", "32", "--steps", "0", "--init-text", "night",
                                 "--clip-weight", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    return path


def _scene_file(folder: Path, name: str, seed: int, night: bool = False) -> Path:
    scene(seed, night=night).save(folder / name)
    return folder / name


@pytest.fixture
def mixed(tmp_path):
    """Three good images and two bad ones."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(["a.png", "b.jpg", "c.png"]):
        _scene_file(folder, name, i)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not a picture")
    return folder


def test_keep_going_edits_the_good_images_and_lists_the_bad(run, inst, mixed, tmp_path):
    out = tmp_path / "out"
    r = run("apply", inst, mixed, "-o", out, "--steps", 1, "--keep-going")
    assert r.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert f"failed: {mixed / 'empty.png'}: empty file (0 bytes)" in r.output
    assert "Error: 2 of 5 images failed:" in r.output
    assert f"  {mixed / 'notes.png'}: not an image" in r.output and "Traceback" not in r.output


def test_without_keep_going_the_first_bad_file_stops_before_any_work(run, inst, mixed, tmp_path):
    out = tmp_path / "out"
    r = run("apply", inst, mixed, "-o", out, "--steps", 1)
    assert r.exit_code == 1 and r.output.strip() == f"Error: {mixed / 'empty.png'}: empty file (0 bytes)"
    assert list(out.iterdir()) == []


def test_keep_going_skips_existing_outputs_without_force(run, inst, mixed, tmp_path):
    for bad in ("empty.png", "notes.png"):
        (mixed / bad).unlink()
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_text("keep me")
    r = run("apply", inst, mixed, "-o", out, "--steps", 1, "--keep-going")
    assert r.exit_code == 1 and f"{out / 'b.png'}: already exists (use --force" in r.output
    assert "1 of 3 images failed" in r.output
    assert (out / "b.png").read_text() == "keep me" and (out / "a.png").exists() and (out / "c.png").exists()


@pytest.mark.parametrize("stem, expected", [
    ("plain", "plain.png"),
    ("..\\..\\evil", "_.._evil.png"),
    ("line\nbreak", "line_break.png"),
    (".hidden", "hidden.png"),
    ("..", "image.png"),
    ("a:b*c?", "a_b_c_.png"),
    ("ночь 夜", "ночь 夜.png"),
])
def test_output_names_stay_in_the_output_folder(stem, expected):
    assert output_name(Path(f"{stem}.jpg")) == expected


def test_hostile_file_names_write_inside_the_output_folder(run, inst, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a\\..\\..\\evil.png", "two\nlines.png"):
        _scene_file(folder, name, 1)
    out = tmp_path / "deep" / "out"
    r = run("apply", inst, folder, "-o", out, "--steps", 1)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["a_.._.._evil.png", "two_lines.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "in"]


def test_names_equal_but_for_case_are_refused(run, inst, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _scene_file(folder, "Cat.png", 0)
    _scene_file(folder, "cat.jpg", 1)
    r = run("apply", inst, folder, "-o", tmp_path / "out", "--steps", 1)
    assert r.exit_code == 1 and "two inputs share a file stem" in r.output


def test_output_folder_that_cannot_be_created(run, inst, tmp_path):
    (tmp_path / "file").write_text("I am a file")
    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    r = run("apply", inst, tmp_path / "x.png", "-o", tmp_path / "file" / "out", "--steps", 1)
    assert r.exit_code == 1 and f"{tmp_path / 'file' / 'out'}: cannot create the output folder" in r.output
