"""The toy world's generator: deterministic, every edit visible, local edits only where they apply."""
from __future__ import annotations

import numpy as np
import pytest

from invert.pairs import find_pairs
from invert.toy import world

ALL_EDITS = list(world.EDITS) + list(world.HARD_EDITS)


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_catalogue_size_and_kinds():
    kinds = [e.kind for e in world.EDITS.values()]
    assert kinds.count("global") >= 14 and kinds.count("local") >= 11
    assert set(kinds) == {"global", "local"}


def test_render_and_caption():
    scene = world.Scene((world.Shape("circle", "red", 0.3, 0.3, 0.2), world.Shape("square", "blue", 0.7, 0.7, 0.12)),
                        "light gray")
    image = world.render(scene, 32)
    assert image.mode == "RGB" and image.size == (32, 32)
    assert world.caption(scene) == "a red circle and a small blue square on a light gray background"
    assert np.asarray(image)[int(0.3 * 32), int(0.3 * 32)].tolist() == list(world.COLORS["red"])


def test_pairs_are_deterministic_in_the_seed():
    first, again, other = (world.make_pairs("night", 3, s, 32) for s in (7, 7, 8))
    assert all(_same(a[0], b[0]) and _same(a[1], b[1]) for a, b in zip(first, again))
    assert not all(_same(a[0], b[0]) for a, b in zip(first, other))


@pytest.mark.parametrize("name", ALL_EDITS)
def test_every_edit_changes_the_image(name):
    for before, after in world.make_pairs(name, 4, seed=3, size=32):
        assert before.size == after.size == (32, 32)
        assert not _same(before, after), name


@pytest.mark.parametrize("name", [n for n, e in world.EDITS.items() if e.kind == "local"])
def test_local_edits_are_sampled_only_where_they_apply(name):
    edit = world.EDITS[name]
    rng = np.random.default_rng(0)
    for _ in range(10):
        scene = world.scene_for(edit, rng)
        assert edit.applies(scene) and edit.edit_scene(scene) != scene


def test_local_preconditions():
    circle = world.Shape("circle", "blue", 0.6, 0.5, 0.15)
    square = world.Shape("square", "green", 0.3, 0.3, 0.15)
    assert world.EDITS["circle_red"].applies(world.Scene((circle,), "white"))
    assert not world.EDITS["circle_red"].applies(world.Scene((square,), "white"))
    assert not world.EDITS["circle_red"].applies(world.Scene((world.Shape("circle", "red", 0.5, 0.5, 0.2),), "white"))
    assert not world.EDITS["circle_left"].applies(world.Scene((world.Shape("circle", "red", 0.2, 0.5, 0.15),), "white"))
    assert not world.EDITS["square_to_circle"].applies(world.Scene((circle, square), "white"))
    assert world.EDITS["square_to_circle"].applies(world.Scene((square,), "white"))
    assert not world.EDITS["remove_square"].applies(world.Scene((circle,), "white"))
    assert not world.EDITS["background_blue"].applies(world.Scene((circle,), "blue"))
    assert world.EDITS["background_blue"].applies(world.Scene((circle,), "blue", gradient=True))
    assert not world.EDITS["add_star"].applies(world.Scene((circle, square, world.Shape("ring", "red", .7, .7, .1)), "white"))


def test_local_edits_refuse_some_scenes():
    """Every local edit but the background ones (random backgrounds are never blue or black) needs something."""
    rng = np.random.default_rng(0)
    scenes = [world.random_scene(rng) for _ in range(200)]
    for name, edit in world.EDITS.items():
        if edit.kind == "local" and not name.startswith("background_"):
            assert not all(edit.applies(s) for s in scenes), name


def test_hard_edits_are_held_out():
    assert not set(world.HARD_EDITS) & set(world.EDITS)
    trained = {e.instruction for e in world.EDITS.values()}
    assert not {e.instruction for e in world.HARD_EDITS.values()} & trained
    assert world.get_edit("hue90") is world.HARD_EDITS["hue90"]
    with pytest.raises(KeyError):
        world.get_edit("no_such_edit")


def test_composition_is_both_edits():
    scene = world.scene_for(world.HARD_EDITS["sepia_remove_square"], np.random.default_rng(1))
    _, after = world.apply_edit(world.HARD_EDITS["sepia_remove_square"], scene, 32)
    expected = world.EDITS["sepia"].edit_pixels(world.render(world.EDITS["remove_square"].edit_scene(scene), 32))
    assert _same(after, expected)


def test_pair_folder_layout(tmp_path):
    folder = world.write_pair_folder(tmp_path / "night", "night", n_train=3, n_test=2, seed=5, size=32)
    for split, n in (("train", 3), ("test", 2)):
        for side in ("before", "after"):
            assert sorted(p.name for p in (folder / split / side).iterdir()) == [f"{i:03d}.png" for i in range(n)]
    pairs = find_pairs(folder / "train")
    assert [p.name for p in pairs] == ["000", "001", "002"]
