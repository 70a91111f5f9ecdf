"""Finding exemplar pairs in the three layouts, and normalizing images."""
import pytest
from PIL import Image

from invert.errors import InvertError
from invert.pairs import find_pairs, fit_to_resolution, open_image


def img(path, size=(40, 30), mode="RGB", color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def test_before_after_subfolders_match_by_stem(tmp_path):
    for stem in ("b", "a"):
        img(tmp_path / "before" / f"{stem}.png")
        img(tmp_path / "after" / f"{stem}.jpg")
    pairs = find_pairs(tmp_path)
    assert [p.name for p in pairs] == ["a", "b"]
    assert pairs[0].after.suffix == ".jpg"


def test_suffix_layout(tmp_path):
    img(tmp_path / "cat_before.png")
    img(tmp_path / "cat_after.png")
    img(tmp_path / "notes_other.png")
    pairs = find_pairs(tmp_path)
    assert [(p.name, p.before.name, p.after.name) for p in pairs] == [("cat", "cat_before.png", "cat_after.png")]


def test_single_pair_from_two_files(tmp_path):
    a, b = img(tmp_path / "x.png"), img(tmp_path / "y.png")
    assert find_pairs(before=a, after=b)[0].after == b
    with pytest.raises(InvertError, match="no such file"):
        find_pairs(before=a, after=tmp_path / "missing.png")


@pytest.mark.parametrize("layout, missing", [("folders", "after"), ("suffixes", "after")])
def test_a_before_without_after_names_the_file(tmp_path, layout, missing):
    if layout == "folders":
        img(tmp_path / "before" / "one.png")
        img(tmp_path / "before" / "two.png")
        img(tmp_path / "after" / "one.png")
        expected = "two.png"
    else:
        img(tmp_path / "two_before.png")
        expected = "two_before.png"
    with pytest.raises(InvertError, match=expected):
        find_pairs(tmp_path)


def test_empty_folder_and_missing_side(tmp_path):
    with pytest.raises(InvertError, match="no exemplar pairs"):
        find_pairs(tmp_path)
    (tmp_path / "before").mkdir()
    with pytest.raises(InvertError, match="after/"):
        find_pairs(tmp_path)


def test_duplicate_stems_are_refused(tmp_path):
    img(tmp_path / "before" / "one.png")
    img(tmp_path / "before" / "one.jpg")
    img(tmp_path / "after" / "one.png")
    with pytest.raises(InvertError, match="stem"):
        find_pairs(tmp_path)


def test_not_an_image_names_the_file(tmp_path):
    bad = tmp_path / "fake.png"
    bad.write_text("hello")
    with pytest.raises(InvertError, match="fake.png"):
        open_image(bad)


def test_alpha_is_flattened_on_white_and_exif_applied(tmp_path):
    rgba = tmp_path / "t.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(rgba)  # 8: the smallest size open_image accepts
    assert open_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    rotated = tmp_path / "r.jpg"
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(rotated, exif=exif)
    assert open_image(rotated).size == (20, 40)


def test_resize_and_centre_crop():
    out = fit_to_resolution(Image.new("RGB", (300, 100)), 64)
    assert out.size == (64, 64)


@pytest.mark.parametrize("odd", [[], (), "tuple of 3", "tuple of 1", "list of paths", "list of tuples"])
def test_pairs_given_in_no_accepted_form_are_refused(tmp_path, odd):
    # as_pairs (invert.fit, invert.encode, apply_library): an empty list was an IndexError deep in the fit, and
    # files or tuples where Pair objects belong an AttributeError ('str' object has no attribute 'before')
    from invert.pairs import as_pairs

    before, after = img(tmp_path / "a_before.png"), img(tmp_path / "a_after.png")
    forms = {"tuple of 3": (before, after, after), "tuple of 1": (str(before),), "list of paths": [before, after],
             "list of tuples": [(before, after)]}
    with pytest.raises(InvertError, match="pairs: "):
        as_pairs(forms.get(odd, odd) if isinstance(odd, str) else odd)
    assert [p.name for p in as_pairs(iter(find_pairs(tmp_path)))] == ["a"]  # any iterable of Pair is fine
    assert [p.name for p in as_pairs((before, after))] == ["a_before"]
