"""A procedural world of simple images and exact edits: the data the toy InstructPix2Pix is trained on.

Scenes are 1-3 coloured shapes (each kind at most once, so "the circle" is unambiguous) on a plain or gradient
background. Edits are exact: global ones act on the rendered pixels (night, sepia, a frame, ...), local ones on
the scene (recolour, remove, add, move or resize a shape, change the background). ``EDITS`` is the training
catalogue; ``HARD_EDITS`` (compositions and in-between strengths of catalogue edits) is held out for evaluation.

Pure numpy/PIL and deterministic in the seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEFAULT_SIZE = 32
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down, so edges are anti-aliased at any size

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (240, 210, 40),
    "orange": (245, 140, 30), "purple": (140, 50, 170), "white": (245, 245, 245), "black": (20, 20, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light gray": (200, 200, 200), "white": (250, 250, 250), "dark gray": (70, 70, 70), "beige": (225, 210, 170),
    "light blue": (170, 200, 240), "pale green": (190, 225, 180),
}
# Backgrounds that only local edits produce (never sampled), so "make the background blue" always applies.
EDIT_BACKGROUNDS: dict[str, tuple[int, int, int]] = {"blue": (50, 90, 200), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
SMALL, BIG = 0.15, 0.23  # shape radii (fraction of the image) below/above which captions say "small"/"big"


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    x: float  # centre, as a fraction of the image width
    y: float
    r: float  # half extent, as a fraction of the image size


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str
    gradient: bool = False  # a vertical gradient from the background colour (top) to a lighter tint (bottom)

    def find(self, kind: str) -> Shape | None:
        return next((s for s in self.shapes if s.kind == kind), None)


def _contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return float(np.abs(np.subtract(a, b)).sum())


def random_scene(rng: np.random.Generator) -> Scene:
    """1-3 shapes of distinct kinds, colours that stand out from the background, few overlaps."""
    background = str(rng.choice(list(BACKGROUNDS)))
    kinds = rng.choice(SHAPES, size=int(rng.integers(1, 4)), replace=False)
    shapes: list[Shape] = []
    for kind in kinds:
        colors = [c for c in COLORS if _contrast(COLORS[c], BACKGROUNDS[background]) > 120]
        r = float(rng.uniform(0.11, 0.27))
        for _ in range(20):  # rejection-sample a position that mostly avoids the shapes already placed
            x, y = (float(v) for v in rng.uniform(r + 0.02, 0.98 - r, size=2))
            if all(math.hypot(x - s.x, y - s.y) > 0.8 * (r + s.r) for s in shapes):
                break
        shapes.append(Shape(str(kind), str(rng.choice(colors)), x, y, r))
    return Scene(tuple(shapes), background, gradient=bool(rng.random() < 0.3))


def _background_rgb(name: str) -> tuple[int, int, int]:
    return BACKGROUNDS.get(name) or EDIT_BACKGROUNDS[name]


def _background(scene: Scene, px: int) -> np.ndarray:
    top = np.array(_background_rgb(scene.background), np.float32)
    if not scene.gradient:
        return np.broadcast_to(top, (px, px, 3)).copy()
    bottom = top + 0.55 * (255 - top)
    t = np.linspace(0, 1, px, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top * (1 - t) + bottom * t, (px, px, 3)).copy()


def _star(x: float, y: float, r: float, points: int = 5) -> list[tuple[float, float]]:
    return [(x + (r if i % 2 == 0 else 0.45 * r) * math.sin(i * math.pi / points),
             y - (r if i % 2 == 0 else 0.45 * r) * math.cos(i * math.pi / points)) for i in range(2 * points)]


def _draw(draw: ImageDraw.ImageDraw, shape: Shape, px: int) -> None:
    x, y, r, fill = shape.x * px, shape.y * px, shape.r * px, COLORS[shape.color]
    box = (x - r, y - r, x + r, y + r)
    if shape.kind == "circle":
        draw.ellipse(box, fill=fill)
    elif shape.kind == "square":
        draw.rectangle((x - 0.85 * r, y - 0.85 * r, x + 0.85 * r, y + 0.85 * r), fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([(x, y - r), (x + 0.95 * r, y + 0.75 * r), (x - 0.95 * r, y + 0.75 * r)], fill=fill)
    elif shape.kind == "star":
        draw.polygon(_star(x, y, 1.1 * r), fill=fill)
    elif shape.kind == "ring":
        draw.ellipse(box, outline=fill, width=max(1, round(0.4 * r)))
    elif shape.kind == "cross":
        w = 0.33 * r
        draw.rectangle((x - r, y - w, x + r, y + w), fill=fill)
        draw.rectangle((x - w, y - r, x + w, y + r), fill=fill)
    else:
        raise ValueError(f"unknown shape kind '{shape.kind}'")


def render(scene: Scene, size: int = DEFAULT_SIZE) -> Image.Image:
    """The scene as a ``size`` x ``size`` RGB image."""
    px = size * SUPERSAMPLE
    canvas = Image.fromarray(_background(scene, px).round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for shape in scene.shapes:
        _draw(draw, shape, px)
    return canvas.reduce(SUPERSAMPLE)


def _describe_shape(shape: Shape) -> str:
    words = f"{'small ' if shape.r < SMALL else 'big ' if shape.r > BIG else ''}{shape.color} {shape.kind}"
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def caption(scene: Scene) -> str:
    """E.g. "a red circle and a small blue square on a light gray background"."""
    parts = [_describe_shape(s) for s in scene.shapes] or ["nothing"]
    things = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    background = f"a {scene.background} gradient background" if scene.gradient else f"a {scene.background} background"
    return f"{things} on {background}"


# ---------------------------------------------------------------------------------------------- edits

PixelFn = Callable[[np.ndarray], np.ndarray]  # float32 HxWx3 in [0, 1] -> the same
SceneFn = Callable[[Scene], Scene]


@dataclass(frozen=True)
class Edit:
    name: str
    instruction: str
    kind: str  # "global" (changes pixels everywhere) or "local" (changes the scene)
    scene_fn: SceneFn | None = None
    pixel_fn: PixelFn | None = None
    requires: Callable[[Scene], bool] = lambda scene: True
    style: str = ""  # how captions describe an image after this (global) edit, e.g. "sepia"
    parts: tuple[str, ...] = ()  # a composition's catalogue edits, in order (see :func:`components`)

    def applies(self, scene: Scene) -> bool:
        return self.requires(scene)

    def edit_scene(self, scene: Scene) -> Scene:
        return self.scene_fn(scene) if self.scene_fn else scene

    def edit_pixels(self, image: Image.Image) -> Image.Image:
        if not self.pixel_fn:
            return image
        out = self.pixel_fn(np.asarray(image, np.float32) / 255)
        return Image.fromarray((np.clip(out, 0, 1) * 255).round().astype(np.uint8))


def _mix(x: np.ndarray, target: np.ndarray, strength: float) -> np.ndarray:
    return (1 - strength) * x + strength * target


def night(strength: float = 1.0) -> PixelFn:
    return lambda x: _mix(x, x * np.array([0.22, 0.27, 0.45]) + np.array([0.0, 0.02, 0.1]), strength)


def hue_rotate(degrees: float) -> PixelFn:
    def fn(x: np.ndarray) -> np.ndarray:
        hsv = np.asarray(Image.fromarray((x * 255).round().astype(np.uint8)).convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(degrees / 360 * 256)) % 256
        return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"), np.float32) / 255
    return fn


def _sepia(x: np.ndarray) -> np.ndarray:
    return x @ np.array([[0.393, 0.349, 0.272], [0.769, 0.686, 0.534], [0.189, 0.168, 0.131]])


def _gray(x: np.ndarray) -> np.ndarray:
    return np.repeat(x @ np.array([[0.299], [0.587], [0.114]]), 3, axis=2)


def _frame(x: np.ndarray) -> np.ndarray:
    w = max(1, x.shape[0] // 10)
    out = x.copy()
    out[:w], out[-w:], out[:, :w], out[:, -w:] = 0, 0, 0, 0
    return out


def _through_pil(op: Callable[[Image.Image, int], Image.Image]) -> PixelFn:
    def fn(x: np.ndarray) -> np.ndarray:
        image = Image.fromarray((x * 255).round().astype(np.uint8))
        return np.asarray(op(image, x.shape[0]), np.float32) / 255
    return fn


def _blur(image: Image.Image, size: int) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(size / 32 * 1.2))


def _pixelate(image: Image.Image, size: int) -> Image.Image:
    return image.resize((size // 8,) * 2, Image.Resampling.BOX).resize((size,) * 2, Image.Resampling.NEAREST)


def _compose(*fns: PixelFn) -> PixelFn:
    def fn(x: np.ndarray) -> np.ndarray:
        for f in fns:
            x = np.clip(f(x), 0, 1)
        return x
    return fn


def _global(name: str, instruction: str, fn: PixelFn, style: str) -> Edit:
    return Edit(name, instruction, "global", pixel_fn=fn, style=style)


GLOBAL_EDITS = [
    _global("night", "make it night", night(), "night"),
    _global("sepia", "make it sepia", _sepia, "sepia"),
    _global("invert", "invert the colors", lambda x: 1 - x, "inverted colors"),
    _global("grayscale", "make it black and white", _gray, "black and white"),
    _global("warmer", "make it warmer", lambda x: x * np.array([0.85, 0.95, 0.7]) + np.array([0.15, 0.04, 0.0]),
            "warm colors"),
    _global("cooler", "make it cooler", lambda x: x * np.array([0.7, 0.92, 0.85]) + np.array([0.0, 0.04, 0.15]),
            "cool colors"),
    _global("frame", "add a black frame", _frame, "a black frame"),
    _global("blur", "blur it", _through_pil(_blur), "blurry"),
    _global("posterize", "posterize it", lambda x: (x > 0.5).astype(np.float32) * 0.9 + 0.05, "posterized"),
    _global("brighten", "make it brighter", lambda x: 1 - (1 - x) * 0.55, "bright"),
    _global("hue60", "shift the hue by 60 degrees", hue_rotate(60), "hue shifted"),
    _global("hue120", "shift the hue by 120 degrees", hue_rotate(120), "strongly hue shifted"),
    _global("flip", "flip it horizontally", lambda x: x[:, ::-1], "mirrored"),
    _global("contrast", "increase the contrast", lambda x: (x - 0.5) * 1.8 + 0.5, "high contrast"),
    _global("pixelate", "pixelate it", _through_pil(_pixelate), "pixelated"),
]


def _with_shape(kind: str, change: Callable[[Shape], Shape]) -> SceneFn:
    return lambda scene: replace(scene, shapes=tuple(change(s) if s.kind == kind else s for s in scene.shapes))


def _has(kind: str, unless: Callable[[Shape], bool] = lambda s: False) -> Callable[[Scene], bool]:
    def requires(scene: Scene) -> bool:
        shape = scene.find(kind)
        return shape is not None and not unless(shape)
    return requires


def _recolor(name: str, kind: str, color: str) -> Edit:
    return Edit(name, f"make the {kind} {color}", "local", _with_shape(kind, lambda s: replace(s, color=color)),
                requires=_has(kind, lambda s: s.color == color))


def _remove(kind: str) -> SceneFn:
    return lambda scene: replace(scene, shapes=tuple(s for s in scene.shapes if s.kind != kind))


def _add_star(scene: Scene) -> Scene:
    # A fixed place (top right corner), so the instruction fully determines the result.
    return replace(scene, shapes=scene.shapes + (Shape("star", "yellow", 0.8, 0.2, 0.13),))


def _background_edit(color: str) -> Edit:
    return Edit(f"background_{color}", f"make the background {color}", "local",
                lambda scene: replace(scene, background=color, gradient=False),
                requires=lambda scene: scene.background != color or scene.gradient)


MOVE = 0.25  # "move the circle left" moves it by a quarter of the image

LOCAL_EDITS = [
    _recolor("circle_red", "circle", "red"),
    _recolor("star_green", "star", "green"),
    _recolor("triangle_blue", "triangle", "blue"),
    _recolor("ring_orange", "ring", "orange"),
    Edit("remove_square", "remove the square", "local", _remove("square"), requires=_has("square")),
    Edit("add_star", "add a small yellow star in the corner", "local", _add_star,
         requires=lambda scene: scene.find("star") is None and len(scene.shapes) < 3),
    Edit("bigger_triangle", "make the triangle bigger", "local",
         _with_shape("triangle", lambda s: replace(s, r=s.r * 1.5)), requires=_has("triangle")),
    Edit("smaller_square", "make the square smaller", "local",
         _with_shape("square", lambda s: replace(s, r=s.r * 0.55)), requires=_has("square")),
    Edit("circle_left", "move the circle left", "local", _with_shape("circle", lambda s: replace(s, x=s.x - MOVE)),
         requires=_has("circle", lambda s: s.x - s.r - MOVE < 0)),
    _background_edit("blue"),
    _background_edit("black"),
    Edit("square_to_circle", "turn the square into a circle", "local",
         _with_shape("square", lambda s: replace(s, kind="circle")),
         requires=lambda scene: scene.find("square") is not None and scene.find("circle") is None),
]

EDITS: dict[str, Edit] = {e.name: e for e in GLOBAL_EDITS + LOCAL_EDITS}


def _then(first: Edit, second: Edit, name: str) -> Edit:
    """``first`` and then ``second``; a composition with any global part is global."""
    pixel_fns = [f for f in (first.pixel_fn, second.pixel_fn) if f]
    changes_scene = bool(first.scene_fn or second.scene_fn)
    return Edit(
        name, f"{first.instruction} and {second.instruction}", "global" if pixel_fns else "local",
        scene_fn=(lambda scene: second.edit_scene(first.edit_scene(scene))) if changes_scene else None,
        pixel_fn=_compose(*pixel_fns) if pixel_fns else None,
        requires=lambda scene: first.applies(scene) and second.applies(first.edit_scene(scene)),
        style=", ".join(s for s in (first.style, second.style) if s), parts=components(first) + components(second))


def components(edit: Edit) -> tuple[str, ...]:
    """The edits a composition is made of, in order; an edit that is no composition is its own one."""
    return edit.parts or (edit.name,)


HARD_EDITS: dict[str, Edit] = {e.name: e for e in [
    _then(EDITS["night"], EDITS["frame"], "night_frame"),
    _then(EDITS["sepia"], EDITS["frame"], "sepia_frame"),
    _then(EDITS["remove_square"], EDITS["sepia"], "sepia_remove_square"),
    _then(EDITS["circle_red"], EDITS["invert"], "invert_circle_red"),
    _then(EDITS["background_blue"], EDITS["blur"], "blur_background_blue"),
    _global("hue90", "shift the hue by 90 degrees", hue_rotate(90), "hue shifted"),
    _global("dusk", "make it dusk", night(0.5), "dusk"),
    # Added with issue 17, one or two of each kind the issue names (3-way compositions, unusual hue angles, partial
    # strengths, local + global); the quality benchmark reports them apart from the older ones (NEW_HARD_EDITS).
    _then(_then(EDITS["remove_square"], EDITS["night"], "night_remove_square"), EDITS["frame"],
          "night_frame_remove_square"),
    _then(_then(EDITS["grayscale"], EDITS["contrast"], "gray_contrast"), EDITS["frame"], "gray_contrast_frame"),
    _global("hue30", "shift the hue by 30 degrees", hue_rotate(30), "hue shifted"),
    _global("hue200", "shift the hue by 200 degrees", hue_rotate(200), "strongly hue shifted"),
    _global("sepia_half", "make it a little sepia", lambda x: _mix(x, _sepia(x), 0.5), "sepia"),
    _global("gray_half", "make it half black and white", lambda x: _mix(x, _gray(x), 0.5), "black and white"),
    _then(EDITS["circle_red"], EDITS["cooler"], "circle_red_cooler"),
    _then(EDITS["add_star"], EDITS["night"], "add_star_night"),
]}
# The hard edits added with issue 17 (reported apart in the quality table).
NEW_HARD_EDITS = ("night_frame_remove_square", "gray_contrast_frame", "hue30", "hue200", "sepia_half", "gray_half",
                  "circle_red_cooler", "add_star_night")


# random_edit's strengths: a global edit blended with the input at these, never in between (the hard edits' half
# strengths, 0.5, stay unseen).
STRENGTHS = ((0.2, 0.4), (0.6, 1.0))


def random_edit(rng: np.random.Generator, held_out: dict[str, Edit] = HARD_EDITS) -> Edit:
    """A random edit made of the catalogue: one catalogue edit (half the time), or two or three composed, each global
    part at full strength or, a third of the time, blended with its input at a strength from ``STRENGTHS``. A
    composition holding all the parts of one of ``held_out`` (the hard edits: their compositions and half
    strengths are what a learner of the catalogue is tested on) is never drawn, nor one no scene can take."""
    forbidden = [set(components(e)) for e in held_out.values() if len(components(e)) > 1]
    names = list(EDITS)
    while True:
        count = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        chosen = [str(n) for n in rng.choice(names, size=count, replace=False)]
        if any(f <= set(chosen) for f in forbidden):
            continue
        parts = [_at_strength(EDITS[n], rng) for n in chosen]
        edit = parts[0]
        for part in parts[1:]:
            edit = _then(edit, part, f"{edit.name}+{part.name}")
        if sum(EDITS[n].kind == "local" for n in chosen) < 2:  # a global edit applies to any scene
            return edit
        try:
            scene_for(edit, np.random.default_rng(0), tries=200)
        except RuntimeError:  # e.g. removing the square and then making it smaller
            continue
        return edit


def _at_strength(edit: Edit, rng: np.random.Generator) -> Edit:
    if edit.kind != "global" or rng.random() >= 1 / 3:
        return edit
    low, high = STRENGTHS[int(rng.integers(len(STRENGTHS)))]
    strength = round(float(rng.uniform(low, high)), 2)
    fn = edit.pixel_fn
    return replace(edit, name=f"{edit.name}@{strength:g}", instruction=f"{edit.instruction} ({strength:.0%})",
                   pixel_fn=lambda x: _mix(x, fn(x), strength), parts=())


def get_edit(name: str) -> Edit:
    """A catalogue or hard edit by name."""
    if name in EDITS:
        return EDITS[name]
    if name in HARD_EDITS:
        return HARD_EDITS[name]
    raise KeyError(f"unknown edit '{name}' (known: {', '.join(list(EDITS) + list(HARD_EDITS))})")


def apply_edit(edit: Edit, scene: Scene, size: int = DEFAULT_SIZE) -> tuple[Image.Image, Image.Image]:
    """The rendered scene and the rendered result of the edit: scene part first, then pixels."""
    return render(scene, size), edit.edit_pixels(render(edit.edit_scene(scene), size))


def describe_after(edit: Edit, scene: Scene) -> str:
    """A caption of the edited image, e.g. "a red circle on a white background, sepia"."""
    text = caption(edit.edit_scene(scene))
    return f"{text}, {edit.style}" if edit.style else text


def scene_for(edit: Edit, rng: np.random.Generator, tries: int = 1000) -> Scene:
    """A random scene the edit applies to (a local edit needs its shape, room to move, ...)."""
    for _ in range(tries):
        scene = random_scene(rng)
        if edit.applies(scene):
            return scene
    raise RuntimeError(f"no scene for edit '{edit.name}' in {tries} tries")


def make_pairs(edit_name: str, n: int, seed: int, size: int = DEFAULT_SIZE) -> list[tuple[Image.Image, Image.Image]]:
    """``n`` (before, after) pairs of the edit; the same arguments always give the same images."""
    edit = get_edit(edit_name)
    rng = np.random.default_rng(seed)
    return [apply_edit(edit, scene_for(edit, rng), size) for _ in range(n)]


def write_pair_folder(folder: str | Path, edit_name: str, n_train: int = 10, n_test: int = 5, seed: int = 0,
                      size: int = DEFAULT_SIZE) -> Path:
    """``folder/{train,test}/{before,after}/NNN.png``: the before/after layout that ``invert fit`` reads."""
    folder = Path(folder)
    pairs = make_pairs(edit_name, n_train + n_test, seed, size)
    for split, chunk in (("train", pairs[:n_train]), ("test", pairs[n_train:])):
        for side in ("before", "after"):
            (folder / split / side).mkdir(parents=True, exist_ok=True)
        for i, (before, after) in enumerate(chunk):
            before.save(folder / split / "before" / f"{i:03d}.png")
            after.save(folder / split / "after" / f"{i:03d}.png")
    return folder
