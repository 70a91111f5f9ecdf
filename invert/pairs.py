"""Find before/after exemplar pairs and open them as checked, normalized RGB images.

Three layouts are accepted:

* a folder with ``before/`` and ``after/`` subfolders whose files are matched by stem;
* a folder of ``NAME_before.EXT`` / ``NAME_after.EXT`` files;
* a single pair given as two files.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvertError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class Pair:
    name: str
    before: Path
    after: Path


def _images_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in found:
                raise InvertError(f"{path}: two images share the stem '{path.stem}' ({found[path.stem].name})")
            found[path.stem] = path
    return found


def _pairs_from_subfolders(folder: Path) -> list[Pair]:
    before, after = _images_by_stem(folder / "before"), _images_by_stem(folder / "after")
    for stem, path in before.items():
        if stem not in after:
            raise InvertError(f"{path}: no matching image named '{stem}.*' in {folder / 'after'}")
    for stem, path in after.items():
        if stem not in before:
            raise InvertError(f"{path}: no matching image named '{stem}.*' in {folder / 'before'}")
    return [Pair(stem, before[stem], after[stem]) for stem in sorted(before)]


def _pairs_from_suffixes(folder: Path) -> list[Pair]:
    sides: dict[str, dict[str, Path]] = {"before": {}, "after": {}}
    for stem, path in _images_by_stem(folder).items():
        name, sep, side = stem.rpartition("_")
        if sep and side.lower() in sides:
            if name in sides[side.lower()]:
                raise InvertError(f"{path}: duplicate {side.lower()} image for '{name}'")
            sides[side.lower()][name] = path
    before, after = sides["before"], sides["after"]
    for name, path in before.items():
        if name not in after:
            raise InvertError(f"{path}: no matching '{name}_after.*' in {folder}")
    for name, path in after.items():
        if name not in before:
            raise InvertError(f"{path}: no matching '{name}_before.*' in {folder}")
    return [Pair(name, before[name], after[name]) for name in sorted(before)]


def find_pairs(folder: str | Path | None = None, before: str | Path | None = None,
               after: str | Path | None = None) -> list[Pair]:
    """The exemplar pairs of ``folder``, or the single pair ``before``/``after``; at least one pair."""
    if before is not None or after is not None:
        if folder is not None or before is None or after is None:
            raise InvertError("give either a pairs folder or both --before and --after")
        pair = Pair(Path(before).stem, Path(before), Path(after))
        for path in (pair.before, pair.after):
            if not path.is_file():
                raise InvertError(f"{path}: no such file")
        return [pair]
    if folder is None:
        raise InvertError("no exemplar pairs given: pass a folder or --before/--after")
    folder = Path(folder)
    if not folder.is_dir():
        raise InvertError(f"{folder}: not a folder of exemplar pairs")
    if (folder / "before").is_dir() or (folder / "after").is_dir():
        for side in ("before", "after"):
            if not (folder / side).is_dir():
                raise InvertError(f"{folder}: has no '{side}/' subfolder to match")
        pairs = _pairs_from_subfolders(folder)
    else:
        pairs = _pairs_from_suffixes(folder)
    if not pairs:
        raise InvertError(f"{folder}: no exemplar pairs found (expected before/ and after/ subfolders, "
                          "or NAME_before.EXT / NAME_after.EXT files)")
    return pairs


def open_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB: EXIF orientation applied, transparency flattened on white."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvertError(f"{path}: not a readable image ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise InvertError(f"{path}: image too large to decode safely ({exc})") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, img)
    return img.convert("RGB")


def fit_to_resolution(img: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to ``resolution`` and centre-crop to a square."""
    return ImageOps.fit(img, (resolution, resolution), method=Image.Resampling.LANCZOS)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_pairs(pairs: list[Pair], resolution: int) -> tuple[list[Image.Image], list[Image.Image]]:
    """Open every pair at ``resolution`` x ``resolution``: (befores, afters)."""
    befores = [fit_to_resolution(open_image(p.before), resolution) for p in pairs]
    afters = [fit_to_resolution(open_image(p.after), resolution) for p in pairs]
    return befores, afters
