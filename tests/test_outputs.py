"""What the commands write, and where: file modes from the umask, folders made for any output, readable and titled
previews, JSON on stdout, and the options every long command shares."""
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import scene
from PIL import Image

from invert.cli.main import cli

TOY = Path(__file__).resolve().parent.parent / "examples" / "toy" / "night"


@pytest.fixture
def umask():
    """Set the process umask for a test; restored after."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_mode_the_umask_gives(run, tiny_model_dir, pairs_dir, tmp_path, umask, mask, expected):
    umask(mask)
    inst, out, sheet = tmp_path / "new" / "x.inst", tmp_path / "out", tmp_path / "sheet.png"
    r = run("fit", pairs_dir, "-o", inst, "--model", tiny_model_dir, "--resolution", 32, "--steps", 0,
            "--init-text", "night", "--quiet")
    assert r.exit_code == 0, r.output
    assert run("apply", inst, pairs_dir / "before" / "0.png", "-o", out, "--steps", 1, "--grid").exit_code == 0
    assert run("eval", inst, pairs_dir, "--steps", 1, "--no-clip", "--sheet", sheet).exit_code == 0
    assert run("export-embeds", inst, "-o", tmp_path / "e.safetensors").exit_code == 0
    for path in (inst, out / "0.png", out / "0_grid.png", sheet, tmp_path / "e.safetensors"):
        assert mode(path) == expected, f"{path}: {oct(mode(path))}"


def test_fit_creates_its_output_folder_as_apply_does(run, tiny_model_dir, pairs_dir, tmp_path):
    inst = tmp_path / "new" / "deeper" / "x.inst"
    r = run("fit", pairs_dir, "-o", inst, "--model", tiny_model_dir, "--resolution", 32, "--steps", 0,
            "--init-text", "night", "--quiet")
    assert r.exit_code == 0 and inst.is_file(), r.output
    (tmp_path / "file").write_text("a file")
    r = run("fit", pairs_dir, "-o", tmp_path / "file" / "x.inst", "--model", tiny_model_dir, "--init-text", "x")
    assert r.exit_code == 1 and \
        f"{tmp_path / 'file' / 'x.inst'}: cannot write ({tmp_path / 'file'} is a file, not a folder)" in r.output


def test_inspect_of_an_image_says_it_is_not_an_instruction(run, tmp_path):
    photo = tmp_path / "photo.jpg"
    scene(1).save(photo)
    r = run("inspect", photo)
    assert r.exit_code == 1 and r.output.strip() == f"Error: {photo}: not an .inst file (an image)"
    (tmp_path / "notes.txt").write_text("hello, this is not an instruction at all")
    r = run("inspect", tmp_path / "notes.txt")
    assert r.output.strip() == f"Error: {tmp_path / 'notes.txt'}: not an .inst file (not a safetensors file)"


def test_previews_are_readable_and_titled(run, tiny_model_dir, pairs_dir, tmp_path):
    from invert.cli.grid import COLUMNS, GAP, READABLE

    inst, out = tmp_path / "x.inst", tmp_path / "out"
    assert run("fit", pairs_dir, "-o", inst, "--model", tiny_model_dir, "--resolution", 32, "--steps", 0,
               "--init-text", "night", "--quiet").exit_code == 0
    source = pairs_dir / "before" / "1.png"
    assert run("apply", inst, source, "-o", out, "--steps", 1, "--grid").exit_code == 0
    grid = np.asarray(Image.open(out / "1_grid.png").convert("RGB"))
    scale = READABLE // 32
    height = 32 * scale
    title = grid.shape[0] - height - GAP  # one row, a margin under it
    assert 16 <= title <= 60 and grid.shape[1] >= 4 * height, grid.shape
    assert (grid[:title] < 128).any(), "titles above the columns"
    # the input column (the third) is the input enlarged with nearest-neighbour: every pixel a sharp square
    columns = [x for x in range(grid.shape[1]) if (grid[title:title + height, x] != 255).any()]
    starts = [x for i, x in enumerate(columns) if i == 0 or columns[i - 1] != x - 1]
    x = starts[2]
    enlarged = np.asarray(Image.open(source).convert("RGB").resize((height, height), Image.NEAREST))
    assert np.array_equal(grid[title:title + height, x:x + height], enlarged)
    assert len(starts) == len(COLUMNS)

    sheet = tmp_path / "sheet.png"
    r = run("eval", inst, pairs_dir, "--steps", 1, "--no-clip", "--sheet", sheet, "--json")
    assert r.exit_code == 0, r.output
    image = np.asarray(Image.open(sheet).convert("RGB"))
    rows = json.loads(r.stdout)["images"]
    assert image.shape[0] >= len(rows) * height and image.shape[1] > 3 * height
    assert (image[:, 3 * height + 16:] < 128).any(), "each row's name and PSNR beside it"


def test_bench_quality_prints_json_to_stdout_and_writes_it_with_output(tmp_path):
    from click.testing import CliRunner

    from benchmarks.cli import bench

    run = lambda *args: CliRunner().invoke(bench, [str(a) for a in args], catch_exceptions=False)  # noqa: E731
    args = ("quality", "--edits", "night", "--shots", 1, "--n-test", 1, "--rows", "no_edit", "--apply-steps",
            1, "--device", "cpu")
    r = run(*args, "--json", "-o", tmp_path / "q.json")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["edits"]["night"] and json.loads((tmp_path / "q.json").read_text()) == shown


def test_every_long_command_has_quiet_and_apply_top_is_now_best():
    long = {"fit", "fit-batch", "apply", "eval", "phrases", "import-visii"}
    assert all("quiet" in {p.name for p in cli.commands[c].params} for c in long)
    from benchmarks.cli import bench

    assert all("quiet" in {p.name for p in bench.commands[c].params} for c in ("speed", "quality"))
    apply_flags = {o for p in cli.commands["apply"].params for o in p.opts}
    assert "--best" in apply_flags and "--top" not in apply_flags, "--top is fit's phrases per image"


def test_phrases_resolution_is_the_models_own(run, tiny_model_dir, pairs_dir, monkeypatch):
    import invert.pairs

    sizes = []
    original = invert.pairs.load_pairs
    monkeypatch.setattr(invert.pairs, "load_pairs", lambda pairs, size: sizes.append(size) or original(pairs, size))
    r = run("phrases", pairs_dir, "--model", tiny_model_dir, "--threshold", 0, "--json")
    assert r.exit_code == 0, r.output
    assert sizes == [32], "the tiny model's size, as fit uses"
