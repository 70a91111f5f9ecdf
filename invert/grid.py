"""Preview grids and image writing."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .instruction import Instruction, write_atomically

THUMBNAIL = 128


def thumbnail_tensor(img: Image.Image) -> torch.Tensor:
    """A small uint8 HWC copy of an exemplar image, stored in the .inst for preview grids."""
    img = img.copy()
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(img.height, img.width, 3)


def tensor_image(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(t.numpy())


def hstack(images: list[Image.Image], height: int) -> Image.Image:
    scaled = [img.resize((max(1, round(img.width * height / img.height)), height)) for img in images]
    out = Image.new("RGB", (sum(i.width for i in scaled), height), "white")
    x = 0
    for img in scaled:
        out.paste(img, (x, 0))
        x += img.width
    return out


def preview_grid(inst: Instruction, before: Image.Image, result: Image.Image) -> Image.Image:
    """exemplar before | exemplar after | input | result, at the result's height."""
    exemplar = [tensor_image(inst.tensors[k]) for k in ("exemplar.before", "exemplar.after") if k in inst.tensors]
    return hstack(exemplar + [before, result], result.height)


def save_image(img: Image.Image, path: Path, force: bool = False) -> None:
    """Write atomically in the format the suffix names; refuse to overwrite unless ``force``."""
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    write_atomically(path, lambda tmp: img.save(tmp, format=fmt), force=force)


def contact_sheet(rows: list[list[Image.Image]], height: int = THUMBNAIL) -> Image.Image:
    """One row per list (e.g. before | truth | result), each scaled to ``height``, stacked top to bottom."""
    strips = [hstack(row, height) for row in rows]
    out = Image.new("RGB", (max(s.width for s in strips), height * len(strips)), "white")
    for i, strip in enumerate(strips):
        out.paste(strip, (0, i * height))
    return out
