"""Runs over many input files: output names that cannot escape the output folder, and per-file failures
collected (``--keep-going``) instead of ending the run."""
from __future__ import annotations

import contextlib
import unicodedata
from pathlib import Path
from typing import Callable, Iterator

from invert.errors import InvertError

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


def parse_shard(spec: str | None, env: dict[str, str]) -> tuple[int, int]:
    """``K/N`` -> (K, N); without a spec, the process's rank under torchrun / accelerate launch (``RANK`` and
    ``WORLD_SIZE``), else (0, 1). Shard K takes every N-th set starting at K."""
    if spec is None:
        return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    try:
        k, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise InvertError(f"--shard {spec!r}: expected K/N such as 0/4") from None
    if not 0 <= k < n:
        raise InvertError(f"--shard {spec!r}: K must be in 0..N-1")
    return k, n


def fitted_otherwise(path: Path, method: str, settings, method_settings) -> str | None:
    """What differs between the fit that wrote the .inst at ``path`` and one with this method and these settings
    (every one of them), or None when it was fitted alike. An unreadable file differs."""
    from dataclasses import asdict

    from invert.instruction import Instruction
    from invert.methods import current_names

    try:
        inst = Instruction.load(path)
    except InvertError as exc:
        return f"unreadable: {exc}"
    if inst.method != method:
        return f"--method {inst.method} there, {method} here"
    stored = current_names(inst.meta.options or {})  # a file of an older invert: its option names as now
    wanted = {**asdict(settings), **asdict(method_settings)}
    differ = []
    for name, value in wanted.items():
        value = list(value) if isinstance(value, tuple) else value
        if name == "resolution" and value is None:  # the model's own: the file records the size it resolved to
            continue
        if stored.get(name) != value:
            differ.append(f"--{name.replace('_', '-')} {stored.get(name)!r} there, {value!r} here")
    return "; ".join(differ) or None
