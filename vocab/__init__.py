"""Phrase vocabularies for captions and unique-phrase initialization.

Names: the project's own lists in this folder (``default``, ``toy``), the lists that clip-interrogator ships
(``flavors`` with ~100k phrases, ``mediums``, ``movements``, ``artists``; read from its files, never by running
it: its Interrogator downloads BLIP), or a path to a text file with one phrase per line."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

from invert.errors import InvertError

HERE = Path(__file__).parent
CLIP_INTERROGATOR_LISTS = ("flavors", "mediums", "movements", "artists")


def _clip_interrogator_file(name: str) -> Path:
    try:
        files = importlib.metadata.files("clip-interrogator") or []
    except importlib.metadata.PackageNotFoundError:
        raise InvertError(f"vocabulary '{name}' needs the clip-interrogator package (pip install clip-interrogator)") \
            from None
    for f in files:
        if str(f).replace("\\", "/").endswith(f"clip_interrogator/data/{name}.txt"):
            return Path(f.locate())
    raise InvertError(f"vocabulary '{name}': clip-interrogator is installed without data/{name}.txt")


def vocab_path(name: str) -> Path:
    """The file behind a vocabulary name."""
    own = HERE / f"{name}.txt"
    if own.is_file():
        return own
    if name in CLIP_INTERROGATOR_LISTS:
        return _clip_interrogator_file(name)
    path = Path(name)
    if path.is_file():
        return path
    known = sorted(p.stem for p in HERE.glob("*.txt")) + list(CLIP_INTERROGATOR_LISTS)
    raise InvertError(f"unknown vocabulary '{name}' (known: {', '.join(known)}; or give a .txt file)")


def read_phrases(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def model_vocab(model: str | None) -> tuple[str, ...]:
    """The default vocabulary for a base model: its folder's own ``vocab.txt`` (the toy model ships one, as the
    default list describes photos, not its world), else the one its ``invert.json`` names (the toy DiT: ``toy``),
    else ``default``."""
    if model:
        from ..backbones.model_info import paired_vocab, resolve_model_path

        own = Path(resolve_model_path(model)) / "vocab.txt"
        if own.is_file():
            return (str(own),)
        named = paired_vocab(model)
        if named:
            return (named,)
    return ("default",)


def load_vocab(names: list[str] | tuple[str, ...] = ("default",)) -> list[str]:
    """The phrases of the named vocabularies, in order, without duplicates."""
    seen: dict[str, None] = {}
    for name in names:
        for phrase in read_phrases(vocab_path(name)):
            seen.setdefault(phrase, None)
    if not seen:
        raise InvertError(f"vocabulary {', '.join(names)} holds no phrases")
    return list(seen)
