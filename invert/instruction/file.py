"""The ``.inst`` file: a safetensors file of learned tensors plus string metadata, checked on load.

Metadata values are strings (safetensors' rule), read and written by :class:`~invert.instruction.metadata.Metadata`.
``tensor_sha256`` covers every tensor's name, dtype, shape and bytes, so a changed byte is detected on load."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file

from ..errors import InstructionFileError
from ..writing import write_atomically
from .metadata import FORMAT, VERSION, Metadata

# safetensors' own limit is 100 MB of header JSON; an .inst needs a few kB (1 MB with a huge phrase list).
MAX_HEADER_BYTES = 16 << 20


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape: a 0-dim tensor cannot be viewed as bytes (the bytes of other tensors are the same)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Instruction:
    """A learned instruction: its method, its tensors and what is needed to apply and audit it (``meta``:
    :class:`Metadata`, or its plain values by name, which are checked into one)."""

    method: str
    tensors: dict[str, torch.Tensor]
    meta: Metadata = field(default_factory=Metadata)
    path: Path | None = field(default=None, compare=False)  # the file it was loaded from, for error messages

    def __post_init__(self) -> None:
        if not isinstance(self.meta, Metadata):
            self.meta = Metadata.from_values(self.meta)

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write atomically; refuse to overwrite an existing file unless ``force``."""
        path = Path(path)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors.items()}
        meta = self.stored_metadata()
        meta.update(format=FORMAT, version=str(VERSION), method=self.method, tensor_sha256=tensors_sha256(tensors))
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=meta), force=force)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Instruction":
        """Read and verify an .inst file: its format, version, header size, tensor checksum, finite values and
        metadata types. Only safetensors is parsed; nothing is unpickled."""
        path = Path(path)
        tensors, meta = read_verified(path, FORMAT, VERSION)
        for key in ("format", "version"):
            meta.pop(key)
        return cls.from_stored(tensors, meta, path)

    def stored_metadata(self) -> dict[str, str]:
        """The metadata as the file stores it (strings; JSON where structured), without format, version, method
        and checksum."""
        return self.meta.stored()

    @classmethod
    def from_stored(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> "Instruction":
        """An instruction from stored tensors and metadata strings (``method`` among them), checked as ``load``
        checks a file: finite values, and every metadata value's type and range. Instruction libraries store them
        so too."""
        for name, t in tensors.items():
            if t.is_floating_point() and not torch.isfinite(t.float()).all():  # float() as fp8 has no isfinite
                raise InstructionFileError(f"{path}: tensor '{name}' holds NaN or inf values")
        return cls(meta.get("method"), tensors, Metadata.from_stored(meta, path), path)

    def check_model(self, fingerprint: str, allow_mismatch: bool = False, path: str | os.PathLike = "") -> None:
        """Refuse an instruction learned on other base weights unless ``allow_mismatch``."""
        expected = self.meta.model_fingerprint
        if expected and expected != fingerprint and not allow_mismatch:
            raise InstructionFileError(
                f"{path or 'instruction'}: learned on base model '{self.meta.base_model}' (fingerprint "
                f"{expected}), not on the loaded one ({fingerprint}); pass --allow-model-mismatch to use it anyway")


def read_verified(path: Path, fmt: str, version: int, kind: str = "an .inst file"
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and string metadata of a safetensors file of format ``fmt`` (up to ``version``), with its
    header size and tensor checksum verified; ``kind`` names such files in errors."""
    if not path.is_file():
        raise InstructionFileError(f"{path}: a folder, not {kind}" if path.is_dir() else f"{path}: no such file")
    check_safetensors_header(path, kind)
    try:
        tensors, meta = _read_safetensors(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InstructionFileError(f"{path}: not {kind} (unreadable safetensors: {exc})") from None
    if meta.get("format") != fmt:
        raise InstructionFileError(f"{path}: not {kind} (format is {meta.get('format')!r})")
    try:
        found = int(meta.get("version", ""))
    except ValueError:
        raise InstructionFileError(f"{path}: bad format version {meta.get('version')!r}") from None
    if found > version:
        raise InstructionFileError(f"{path}: written by a newer invert (format version {found}; this reads "
                                   f"{version}); upgrade invert")
    if meta.pop("tensor_sha256", None) != tensors_sha256(tensors):
        raise InstructionFileError(f"{path}: tensor checksum mismatch (the file is corrupted or was modified)")
    return tensors, meta


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and metadata. safetensors opens only paths that are UTF-8: a file whose name
    holds other bytes (a Latin-1 name, say) is read into memory and parsed from there."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        data = path.read_bytes()
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        return load(data), dict(header.get("__metadata__") or {})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    return load_file(str(path)), meta


def check_safetensors_header(path: Path, kind: str = "an .inst file") -> None:
    """Refuse, before any parsing, a file that is empty, truncated, a pickle, or announces a huge header."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    # torch.save's zip archive, or a raw pickle (whose protocol byte could also start a header length: a
    # safetensors header is JSON, so byte 8 tells them apart)
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[8:9] != b"{"):
        raise InstructionFileError(f"{path}: not {kind} but a PyTorch pickle; invert never unpickles files (a VISII "
                                   "prompt embedding can be converted with 'invert import-visii')")
    if len(head) < 8:
        raise InstructionFileError(f"{path}: truncated ({size} bytes; not {kind})")
    if len(head) == 9 and head[8:9] != b"{":  # a safetensors header is JSON: whatever this is, it is not one
        raise InstructionFileError(f"{path}: not {kind} ({'an image' if _is_image(path) else 'not a safetensors file'})")
    header = int.from_bytes(head[:8], "little")
    if header > MAX_HEADER_BYTES:
        raise InstructionFileError(f"{path}: header of {header} bytes is over the {MAX_HEADER_BYTES}-byte limit "
                                   f"(not {kind}, or a tampered one)")
    if 8 + header > size:
        raise InstructionFileError(f"{path}: truncated (the header needs {8 + header} bytes, the file has {size})")


def _is_image(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def is_instruction_file(path: Path) -> bool:
    """Whether ``path`` is an .inst file by its content (a safetensors header of format invert.inst), whatever
    its name: an .inst renamed (or sent as a .bin) is still one."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES or f.read(1) != b"{":
                return False
            header = json.loads(b"{" + f.read(size - 1))
    except (OSError, ValueError):  # unreadable, or not JSON (UnicodeDecodeError is a ValueError)
        return False
    return isinstance(header, dict) and isinstance(header.get("__metadata__"), dict) \
        and header["__metadata__"].get("format") == FORMAT
