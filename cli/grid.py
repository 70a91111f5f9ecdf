"""Preview grids (``apply --grid``, ``eval --sheet``) and image writing.

Previews are for eyes: images are shown at least ``READABLE`` pixels high (small ones enlarged with
nearest-neighbour, so a 32-pixel toy image shows its pixels, not a blur), under column titles."""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from invert.instruction import Instruction
from invert.instruction.thumbnails import tensor_image
from invert.writing import write_atomically

from .parameters import EXIF_FORMATS, EXIF_IFD, KEY, UNICODE, USER_COMMENT

READABLE = 256  # the smallest row height of a preview
LARGEST = 512  # larger images are shown at this height (a sheet of 512-pixel rows is already tall)
GAP = 4
COLUMNS = ("exemplar before", "exemplar after", "input", "result")


def row_height(images: list[Image.Image]) -> int:
    """The height previews of ``images`` are shown at: the tallest one's, enlarged by a whole factor to at least
    READABLE pixels, at most LARGEST."""
    tallest = max(img.height for img in images)
    if tallest >= READABLE:
        return min(tallest, LARGEST)
    return tallest * math.ceil(READABLE / tallest)


def scaled(img: Image.Image, height: int) -> Image.Image:
    """``img`` at ``height``: enlarged with nearest-neighbour (its pixels stay sharp), reduced with Lanczos."""
    width = max(1, round(img.width * height / img.height))
    return img.convert("RGB").resize((width, height), Image.NEAREST if height >= img.height else Image.LANCZOS)


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(12, height // 14))


def contact_sheet(rows: list[list[Image.Image]], titles: list[str], row_labels: list[str] | None = None
                  ) -> Image.Image:
    """Images in rows and columns, each column under its title; ``row_labels`` (e.g. a score) on each row's
    right."""
    height = row_height([img for row in rows for img in row])
    cells = [[scaled(img, height) for img in row] for row in rows]
    font = _font(height)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str) -> int:
        return math.ceil(draw.textlength(text, font=font))

    columns = max(len(row) for row in cells)
    widths = [max([c[j].width for c in cells if j < len(c)] + [text_width(t) for t in titles[j:j + 1]])
              for j in range(columns)]
    label_width = max((text_width(line) for label in row_labels or [] for line in label.split("\n")), default=0)
    header = font.size + 2 * GAP
    width = sum(widths) + GAP * (columns + 1) + (label_width + GAP if row_labels else 0)
    out = Image.new("RGB", (width, header + len(cells) * (height + GAP)), "white")
    pen = ImageDraw.Draw(out)
    x = GAP
    for j, w in enumerate(widths):
        if j < len(titles):
            pen.text((x + (w - text_width(titles[j])) // 2, GAP), titles[j], fill="black", font=font)
        for i, row in enumerate(cells):
            if j < len(row):
                out.paste(row[j], (x, header + i * (height + GAP)))
        x += w + GAP
    for i, label in enumerate(row_labels or []):
        pen.multiline_text((x, header + i * (height + GAP) + GAP), label, fill="black", font=font)
    return out


def preview_grid(inst: Instruction, before: Image.Image, result: Image.Image) -> Image.Image:
    """exemplar before | exemplar after | input | result, titled (the exemplar columns when the file keeps
    thumbnails of them)."""
    exemplar = [tensor_image(inst.tensors[k]) for k in ("exemplar.before", "exemplar.after") if k in inst.tensors]
    return contact_sheet([exemplar + [before, result]], list(COLUMNS[2 - len(exemplar):]))


def save_image(img: Image.Image, path: Path, force: bool = False, parameters: str | None = None) -> None:
    """Write atomically in the format the suffix names; refuse to overwrite unless ``force``. ``parameters``
    (how the image was made) is stored as AUTOMATIC1111's web UI stores it: a PNG's ``parameters`` text chunk, or
    the EXIF user comment of a JPEG or WebP (other formats do not keep it)."""
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    extra: dict = {}
    if parameters is not None and fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt(KEY, parameters)  # iTXt: UTF-8, so any --text survives
        extra["pnginfo"] = info
    elif parameters is not None and fmt in EXIF_FORMATS:
        exif = Image.Exif()
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = UNICODE + parameters.encode("utf-16-be")
        extra["exif"] = exif
    write_atomically(path, lambda tmp: img.save(tmp, format=fmt, **extra), force=force)
