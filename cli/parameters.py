"""Generation parameters stored in every result image, as AUTOMATIC1111's web UI stores them (a ``parameters``
text: the prompt on the first line, then ``Key: value`` pairs on the last), so that image viewers, prompt readers
and people recognize them, and so that a re-run can tell a result it made with the same settings (and skip it)
from one made otherwise. Importing this module imports no torch."""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

KEY = "parameters"  # the PNG text chunk A1111 writes
# JPEG and WebP keep the same text as A1111 does: the EXIF UserComment, in UTF-16 after its charset code.
EXIF_FORMATS = ("JPEG", "WEBP")
EXIF_IFD, USER_COMMENT, UNICODE = 0x8769, 0x9286, b"UNICODE\0"
# Recorded for people, not compared when deciding whether a result was made with the same settings: the size
# follows from the input, and another invert version makes the same image from the same settings.
NOT_COMPARED = {"Size", "invert"}
_PAIR = re.compile(r'\s*([^:,]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def format_parameters(prompt: str, values: dict[str, object]) -> str:
    """``prompt`` on the first line, then ``Key: value, ...``; a value holding a comma, a colon or a quote is
    written as a JSON string, as A1111 quotes it."""
    def quoted(value: object) -> str:
        text = str(value)
        return json.dumps(text) if any(c in text for c in ',:"\n') else text

    pairs = ", ".join(f"{key}: {quoted(value)}" for key, value in values.items() if value is not None)
    return f"{prompt}\n{pairs}"


def parse_parameters(text: str) -> dict[str, str]:
    """The pairs of a ``parameters`` text, and its prompt (invert's --text) under ``Text``."""
    prompt, _, last = text.rpartition("\n")
    values = {"Text": prompt}
    for key, value in _PAIR.findall(last):
        values[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    return values


def read_parameters(path: Path) -> str | None:
    """The ``parameters`` text stored in an image file, or None (not an image, or none stored)."""
    try:
        with Image.open(path) as img:
            text = img.info.get(KEY)
            comment = img.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    except (OSError, ValueError, SyntaxError):  # not an image, or a damaged one
        return None
    if text is None and isinstance(comment, bytes) and comment.startswith(UNICODE):
        text = comment[len(UNICODE):].decode("utf-16-be", errors="replace")
    return text if isinstance(text, str) else None


def differences(stored: str, wanted: str) -> list[str]:
    """What differs between two ``parameters`` texts, one ``Key: theirs there, ours here`` per key (sizes and the
    invert version aside)."""
    a, b = parse_parameters(stored), parse_parameters(wanted)
    return [f"{key} {a.get(key)!r} there, {b.get(key)!r} here" for key in dict.fromkeys([*a, *b])
            if key not in NOT_COMPARED and a.get(key) != b.get(key)]


__all__ = ["KEY", "differences", "format_parameters", "parse_parameters", "read_parameters"]
