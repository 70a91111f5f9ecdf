"""Runs over many input files: output names that cannot escape the output folder, and per-file failures
collected (``--keep-going``) instead of ending the run."""
from __future__ import annotations

import contextlib
import unicodedata
from pathlib import Path
from typing import Callable, Iterator

from .errors import InvertError

# Separators of any platform the outputs may be copied to, and characters Windows refuses in names.
_UNSAFE = set('/\\:*?"<>|')


def output_name(path: Path, suffix: str = ".png") -> str:
    """``STEM.png`` for an input file, whatever it is called: separators and control characters (a newline
    would forge lines of output) become '_', and leading dots go (no hidden files, no '..')."""
    stem = "".join("_" if ch in _UNSAFE or unicodedata.category(ch).startswith("C") else ch for ch in path.stem)
    return (stem.lstrip(".") or "image") + suffix


class Failures:
    """With ``keep_going`` a file's error is reported through ``echo`` and recorded, and the run goes on;
    without, the first error ends it."""

    def __init__(self, keep_going: bool, echo: Callable[[str], None]):
        self.keep_going, self.echo = keep_going, echo
        self.messages: list[str] = []

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        try:
            yield
        except InvertError as exc:
            if not self.keep_going:
                raise
            self.messages.append(str(exc))
            self.echo(f"failed: {exc}")

    def summary(self, total: int) -> str | None:
        """None when nothing failed; else how many of ``total`` failed, and why, one line each."""
        if not self.messages:
            return None
        return f"{len(self.messages)} of {total} images failed:\n" + "\n".join(f"  {m}" for m in self.messages)
