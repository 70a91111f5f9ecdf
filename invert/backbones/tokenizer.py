"""The real CLIP BPE tokenizer, built offline from the vocabulary file that open_clip bundles.

Stable Diffusion's tokenizer (openai/clip-vit-large-patch14) is the 49,408-token CLIP BPE. open_clip ships the
same merges as ``bpe_simple_vocab_16e6.txt.gz``, so the tokenizer can be rebuilt without a hub: the vocabulary
is the 256 byte-level characters, the same with ``</w>``, the first 48,894 merges joined, then the two
special tokens.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer

from ..errors import InvertError
from ..writing import make_folder, write_failure

_NUM_MERGES = 49152 - 256 - 2  # as open_clip's SimpleTokenizer


def _bytes_to_unicode() -> dict[int, str]:
    # The byte -> printable-character table shared by GPT-2, CLIP and open_clip.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe_file() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer_files(folder: str | os.PathLike) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs of the CLIP BPE into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_bpe_file()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : _NUM_MERGES + 1]]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77).save_pretrained(folder)
    return folder


def clip_tokenizer(cache_dir: str | os.PathLike | None = None) -> CLIPTokenizer:
    """The CLIP tokenizer of Stable Diffusion, built once into ``cache_dir`` (default: invert's cache folder)."""
    from ..cache import cache_dir as default_cache

    folder = Path(cache_dir) if cache_dir else default_cache() / "clip-tokenizer"
    if not (folder / "merges.txt").exists():
        _build(folder)
    return CLIPTokenizer.from_pretrained(folder)


def _build(folder: Path) -> None:
    """Write the tokenizer's files into a temporary folder beside ``folder``, then rename it into place: a failed
    write (a full disk) leaves no half-written tokenizer for the next run to load, and is one InvertError."""
    try:
        make_folder(folder.parent, folder)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        except OSError as exc:
            raise write_failure(folder, exc) from None
        try:
            write_clip_tokenizer_files(tmp)
            if folder.is_dir() and not (folder / "merges.txt").exists():  # left incomplete by an older invert
                shutil.rmtree(folder)
            os.rename(tmp, folder)
        except OSError as exc:
            if not (folder / "merges.txt").exists():  # else another process has just built it
                raise write_failure(folder, exc) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except InvertError as exc:
        raise InvertError(f"{exc}: the CLIP tokenizer is built there once; set INVERT_CACHE to a writable folder") \
            from None
