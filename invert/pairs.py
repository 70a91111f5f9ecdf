"""Find before/after exemplar pairs and open them as checked, normalized RGB images.

Three layouts are accepted:

* a folder with ``before/`` and ``after/`` subfolders whose files are matched by stem;
* a folder of ``NAME_before.EXT`` / ``NAME_after.EXT`` files;
* a single pair given as two files.
"""
from __future__ import annotations

import errno
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvertError, InvertWarning

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Smaller images hold no edit worth learning and round down to nothing at IP2P's VAE factor of 8.
MIN_SIDE = 8
# Beyond this the centre crop of a fit keeps under a tenth of the picture.
MAX_ASPECT = 10


def broken_link(path: Path) -> str | None:
    """Why ``path`` is a symbolic link that cannot be followed ("a link to nowhere", "a link that loops"); None for
    anything else."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a link that loops"
        if exc.errno == errno.ENOENT:
            return "a link to nowhere"
        return f"a link that cannot be followed ({exc.strerror})"
    return None


def _not_a_folder(path: Path, what: str) -> str:
    why = broken_link(path)
    return f"{path}: not a folder of {what}" + (f" ({why})" if why else "")


def is_image_file(path: Path) -> bool:
    """An image by its extension; hidden files are skipped (macOS leaves '._NAME.png' metadata files around)."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


@dataclass(frozen=True)
class Pair:
    name: str
    before: Path
    after: Path


# What the entry points take as exemplar pairs (see as_pairs): a pairs folder, a (before, after) tuple of files, or
# the pairs themselves.
PairsSource = str | os.PathLike | tuple[str | Path, str | Path] | Iterable[Pair]


def _images_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if is_image_file(path):
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
        raise InvertError(_not_a_folder(folder, "exemplar pairs"))
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


def exemplar_sets(root: Path) -> list[tuple[str, Path]]:
    """``(name, pairs folder)`` for each subfolder of ``root``, sorted by name; a set with a ``train/`` subfolder
    (the layout of ``examples/toy``) is fitted on that. A link that cannot be followed (to nowhere, or looping) is
    listed too, as itself: fitting or reading it fails naming the link, where leaving it out said nothing."""
    if not root.is_dir():
        raise InvertError(_not_a_folder(root, "exemplar sets"))
    sets = [(d.name, d / "train" if (d / "train").is_dir() else d) for d in sorted(root.iterdir())
            if (d.is_dir() or broken_link(d)) and not d.name.startswith(".")]
    if not sets:
        raise InvertError(f"{root}: no exemplar set folders in it")
    return sets


def as_pairs(pairs: PairsSource) -> list[Pair]:
    """A pairs folder, a ``(before, after)`` tuple of files, or a list of :class:`Pair`, as the list of pairs."""
    if isinstance(pairs, (str, os.PathLike)):
        return find_pairs(pairs)
    if isinstance(pairs, tuple) and len(pairs) == 2 and not isinstance(pairs[0], Pair):
        return find_pairs(before=pairs[0], after=pairs[1])
    found = list(pairs)
    odd = next((p for p in found if not isinstance(p, Pair)), None)
    if odd is not None:  # a tuple of one or three files, a list of paths or of (before, after) tuples ...
        raise InvertError(f"pairs: expected a pairs folder, a (before, after) tuple of files or a list of Pair, "
                          f"not {type(pairs).__name__} holding {odd!r}")
    if not found:
        raise InvertError("pairs: no exemplar pairs given (an empty list)")
    return found


def open_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB: EXIF orientation applied, transparency flattened on white, 16-bit and float
    scaled to 8-bit, CMYK and palettes converted, the first frame of an animation (with a warning). Empty, damaged,
    oversized (Pillow's decompression-bomb limit), tiny or extremely elongated images are errors."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InvertError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            img.load()
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:
        raise InvertError(f"{path}: image too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise InvertError(f"{path}: not an image (Pillow does not recognize its contents)") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system's error (permissions, a folder), not the decoder's
            raise InvertError(f"{path}: cannot read ({exc.strerror})") from None
        raise InvertError(f"{path}: damaged or truncated image ({exc})") from None
    except (SyntaxError, ValueError) as exc:
        raise InvertError(f"{path}: damaged image ({exc})") from None
    if frames > 1:
        warnings.warn(InvertWarning(f"{path}: has {frames} frames; using the first"))
    _check_size(path, img.size)
    if img.mode == "I" or img.mode.startswith("I;16"):
        img = _sixteen_to_eight_bit(img)
    if img.mode == "F":
        img = _float_to_eight_bit(path, img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, img)
    return img.convert("RGB")


def _check_size(path: Path, size: tuple[int, int]) -> None:
    w, h = size
    if min(w, h) < MIN_SIDE:
        raise InvertError(f"{path}: too small ({w}x{h}; at least {MIN_SIDE} pixels a side)")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise InvertError(f"{path}: extreme aspect ratio ({w}x{h}, over {MAX_ASPECT}:1); crop it first")


def _sixteen_to_eight_bit(img: Image.Image) -> Image.Image:
    """Pillow opens 16-bit grayscale as an integer mode whose conversion to RGB clips at 255 (nearly all
    white); scale the 0..65535 range instead."""
    values = np.asarray(img, dtype=np.float64) / 257
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))  # 2-D uint8: mode L


def _float_to_eight_bit(path: Path, img: Image.Image) -> Image.Image:
    """A 32-bit float image (a float TIFF) holds 0..1 by the convention of the tools that write them, which
    Pillow's conversion takes as 0..255 (nearly black); one whose values reach past 1 is read as 0..255, as Pillow
    writes its own. NaN or inf, or values outside both ranges, are errors: there is no picture to guess."""
    values = np.asarray(img, dtype=np.float64)
    if not np.isfinite(values).all():
        raise InvertError(f"{path}: float image holds NaN or inf")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise InvertError(f"{path}: float image with values {low:g}..{high:g}; expected 0..1 (or 0..255): convert "
                          "it to 8 or 16 bits first")
    scale = 255 if high <= 1 else 1
    return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8))  # 2-D uint8: mode L


def check_distinct_outputs(names: list[str]) -> None:
    """Refuse a run whose results would overwrite each other: two output file names equal up to case (macOS and
    Windows ignore it), as two inputs of one stem give."""
    folded = [n.casefold() for n in names]
    if len(set(folded)) != len(folded):
        raise InvertError("two inputs share a file stem; their results would overwrite each other")


def fit_to_resolution(img: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to ``resolution`` and centre-crop to a square."""
    return ImageOps.fit(img, (resolution, resolution), method=Image.Resampling.LANCZOS)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_pairs(pairs: list[Pair], resolution: int) -> tuple[list[Image.Image], list[Image.Image]]:
    """Open every pair at ``resolution`` x ``resolution``: (befores, afters). An after whose size differs from
    its before's is first resized to it (with a warning), so that both crops cover the same content."""
    befores, afters = [], []
    for pair in pairs:
        before, after = open_image(pair.before), open_image(pair.after)
        if after.size != before.size:
            warnings.warn(InvertWarning(f"{pair.after}: {after.width}x{after.height} but its before is "
                                        f"{before.width}x{before.height}; resized to match"))
            after = after.resize(before.size, Image.Resampling.LANCZOS)
        befores.append(fit_to_resolution(before, resolution))
        afters.append(fit_to_resolution(after, resolution))
    return befores, afters
