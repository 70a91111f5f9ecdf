"""Bad or unusual input images and pair folders: a one-line error naming the file, or a stated conversion."""
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import messages, scene
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from invert.errors import InvertError, InvertWarning
from invert.pairs import find_pairs, load_pairs, open_image


def noisy(size=(48, 40), mode="RGB"):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def png_header_only(width, height):
    """A PNG that announces width x height and holds no pixels: what a decompression bomb looks like to open()."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def truncated(fmt):
    def write(path):
        noisy().save(path, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    return write


def float_tiff(path, high):
    """A 32-bit float (mode F) TIFF rising from 0 to ``high`` along its rows."""
    values = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16) * np.float32(high)
    Image.fromarray(values, "F").save(path)


BAD = {  # name -> (writer, expected words in the message)
    "empty.png": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "truncated.jpg": (truncated("JPEG"), "damaged or truncated"),
    "truncated.png": (truncated("PNG"), "damaged or truncated"),
    "text.png": (lambda p: p.write_text("hello, I am not a picture"), "not an image"),
    "bomb.png": (lambda p: p.write_bytes(png_header_only(20000, 20000)), "too large to decode safely"),
    "one.png": (lambda p: Image.new("RGB", (1, 1)).save(p), "too small (1x1"),
    "thin.png": (lambda p: Image.new("RGB", (400, 12)).save(p), "extreme aspect ratio (400x12"),
    "tall.png": (lambda p: Image.new("RGB", (9, 200)).save(p), "extreme aspect ratio (9x200"),
    "folder.png": (lambda p: p.mkdir(), "cannot read"),
    "float-nan.tif": (lambda p: float_tiff(p, np.nan), "float image holds NaN or inf"),
    "float-65535.tif": (lambda p: float_tiff(p, 65535.0), "float image with values 0..65535; expected 0..1"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_image_is_one_line_error_naming_the_file(tmp_path, name):
    write, expected = BAD[name]
    path = tmp_path / name
    write(path)
    with pytest.raises(InvertError) as caught:
        open_image(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


def sixteen_bit_gray(path):
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)).save(path)


def palette_with_transparency(path):
    img = Image.new("P", (16, 16), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (8, 0, 16, 16))
    img.save(path, transparency=0)


def animated_gif(path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


CONVERTED = {  # name -> (writer, pixel (0, 0) after conversion, warning words or None)
    "gray16.png": (sixteen_bit_gray, (0, 0, 0), None),
    "gray.png": (lambda p: Image.new("L", (16, 16), 90).save(p), (90, 90, 90), None),
    "gray-alpha.png": (lambda p: Image.new("LA", (16, 16), (0, 0)).save(p), (255, 255, 255), None),
    "palette.png": (palette_with_transparency, (255, 255, 255), None),
    "cmyk.jpg": (lambda p: Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=100), (255, 0, 0), None),
    "anim.gif": (animated_gif, (250, 0, 0), "has 3 frames; using the first"),
}


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_unusual_images_are_converted_to_rgb(tmp_path, name):
    write, pixel, warning = CONVERTED[name]
    path = tmp_path / name
    write(path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        img = open_image(path)
    assert img.mode == "RGB"
    assert np.abs(np.subtract(img.getpixel((0, 0)), pixel)).max() <= 3
    said = [str(w.message) for w in seen if issubclass(w.category, InvertWarning)]
    assert said == ([f"{path}: {warning}"] if warning else [])


def test_sixteen_bit_keeps_its_tones_instead_of_clipping_to_white(tmp_path):
    sixteen_bit_gray(tmp_path / "g.png")
    values = np.asarray(open_image(tmp_path / "g.png"))[..., 0]
    assert values.min() == 0 and 250 <= values.max() <= 255 and 100 < values.mean() < 155


@pytest.mark.parametrize("high", [1.0, 255.0])
def test_a_float_image_keeps_its_tones(tmp_path, high):
    """Float TIFFs hold 0..1: Pillow's conversion took them as 0..255, a black picture fitted without a word."""
    float_tiff(tmp_path / "f.tif", high)
    values = np.asarray(open_image(tmp_path / "f.tif"))[..., 0]
    assert values.min() == 0 and values.max() == 255 and 120 < values.mean() < 135


def test_after_of_another_size_is_resized_to_its_before_and_said_so(tmp_path):
    noisy((64, 48)).save(tmp_path / "x_before.png")
    noisy((32, 32)).save(tmp_path / "x_after.png")
    with pytest.warns(InvertWarning, match=r"x_after.png: 32x32 but its before is 64x48; resized to match"):
        befores, afters = load_pairs(find_pairs(tmp_path), 16)
    assert befores[0].size == afters[0].size == (16, 16)


@pytest.mark.parametrize("layout", ["folders", "suffixes"])
def test_an_after_without_before_names_the_file(tmp_path, layout):
    if layout == "folders":
        for side in ("before", "after"):
            (tmp_path / side).mkdir()
        scene(0).save(tmp_path / "before" / "one.png")
        scene(0).save(tmp_path / "after" / "one.png")
        scene(1).save(tmp_path / "after" / "lonely.png")
    else:
        scene(1).save(tmp_path / "lonely_after.png")
    with pytest.raises(InvertError, match="lonely.*no matching"):
        find_pairs(tmp_path)


def test_duplicate_stems_in_the_suffix_layout(tmp_path):
    for name in ("cat_before.png", "cat_before.jpg", "cat_after.png"):
        scene(0).save(tmp_path / name)
    with pytest.raises(InvertError, match="cat_before.* share the stem"):
        find_pairs(tmp_path)


def test_hidden_files_are_ignored(tmp_path):
    scene(0).save(tmp_path / "a_before.png")
    scene(0).save(tmp_path / "a_after.png")
    (tmp_path / "._a_before.png").write_bytes(b"\x00\x05\x16\x07 macOS metadata")
    assert [p.before.name for p in find_pairs(tmp_path)] == ["a_before.png"]


def test_unicode_and_spaces_in_paths(run, tiny_model_dir, tmp_path):
    folder = tmp_path / "mes paires été" / "ночь 夜"
    for side in ("before", "after"):
        (folder / side).mkdir(parents=True)
        scene(2, night=side == "after").save(folder / side / "café au lait.png")
    out = tmp_path / "sortie à écrire" / "nuit 夜.inst"
    out.parent.mkdir()
    r = run("fit", folder, "-o", out, "--model", tiny_model_dir, "--resolution", 32, "--steps", 1, "--init-text",
            "night", "--clip-weight", 0, "--quiet")
    assert r.exit_code == 0, r.output
    assert out.is_file()


def test_cli_fit_on_a_damaged_exemplar_is_one_line(run, tiny_model_dir, pairs_dir, tmp_path):
    truncated("PNG")(pairs_dir / "after" / "1.png")
    out = tmp_path / "x.inst"
    r = run("fit", pairs_dir, "-o", out, "--model", tiny_model_dir, "--resolution", 32, "--init-text", "x")
    assert r.exit_code == 1 and not out.exists()
    assert len(messages(r.output)) == 1 and "1.png: damaged or truncated" in r.output


def test_cli_prints_conversions_as_warning_lines(run, tiny_model_dir, tmp_path):
    animated_gif(tmp_path / "a_before.gif")
    noisy((20, 20)).save(tmp_path / "a_after.png")
    r = run("fit", tmp_path, "-o", tmp_path / "x.inst", "--model", tiny_model_dir, "--resolution", 32, "--steps", 0,
            "--init-text", "x", "--clip-weight", 0, "--quiet")
    assert r.exit_code == 0, r.output
    assert f"warning: {tmp_path / 'a_before.gif'}: has 3 frames; using the first" in r.output
    assert f"warning: {tmp_path / 'a_after.png'}: 20x20 but its before is 16x16; resized to match" in r.output


def test_unwritable_output_folder(run, tiny_model_dir, pairs_dir, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # Tests may run as root, whom permission bits do not stop: make the folder read-only as access() sees it.
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    r = run("fit", pairs_dir, "-o", locked / "x.inst", "--model", tiny_model_dir, "--init-text", "x")
    assert r.exit_code == 1 and f"{locked / 'x.inst'}: cannot write (its folder {locked} is not writable)" in r.output


def test_a_failed_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from invert.writing import write_atomically

    def refuse(**_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(InvertError, match=r"a.inst: cannot write \(Permission denied\)"):
        write_atomically(tmp_path / "a.inst", lambda tmp: None)
    monkeypatch.undo()

    def disk_full(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(InvertError, match=r"a.inst: cannot write \(No space left on device\)"):
        write_atomically(tmp_path / "a.inst", disk_full)
    assert list(tmp_path.iterdir()) == []


SIDE = st.sampled_from(["before", "after"])
STEM = st.text(alphabet="ab é_夜", min_size=1, max_size=4).filter(lambda s: s.strip() == s)
EXT = st.sampled_from([".png", ".jpg", ".PNG", ".txt"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.tuples(SIDE, STEM, EXT), max_size=6), layout=st.sampled_from(["folders", "suffixes"]))
def test_pair_discovery_pairs_exactly_or_names_a_file(files, layout):
    """Every image is in exactly one pair, or discovery fails with an error naming a path that exists."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        written = set()
        for side, stem, ext in files:
            path = root / side / f"{stem}{ext}" if layout == "folders" else root / f"{stem}_{side}{ext}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"")  # discovery goes by names only
            written.add(path)
        images = {p for p in written if p.suffix.lower() != ".txt"}
        try:
            pairs = find_pairs(root)
        except InvertError as exc:
            named = str(exc).split(":")[0]
            assert Path(named).exists(), str(exc)
            return
        used = [p.before for p in pairs] + [p.after for p in pairs]
        assert len(used) == len(set(used)) and set(used) == images
        assert [p.name for p in pairs] == sorted(p.name for p in pairs)
        for p in pairs:
            assert "before" in str(p.before.relative_to(root)) and "after" in str(p.after.relative_to(root))
