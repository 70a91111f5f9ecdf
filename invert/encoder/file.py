"""The edit encoder file: a safetensors file of the encoder's tensors (its networks, the method's base state and the
basis) and JSON metadata saying what it encodes for (method and its options, backbone, base model fingerprint, CLIP
model and fingerprint, base init text, network sizes) and how it was trained. Read and checked as ``.inst`` files
are: the format, version, header and tensor checksum first, then the metadata, then the tensors against it, and
against the loaded models before use; every problem is one line naming the file."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..backbones import Editor
from ..backbones.base import fingerprint
from ..clip import Clip
from ..errors import EncoderFileError, InvertError
from ..instruction import read_verified, tensors_sha256
from ..writing import write_atomically
from ..methods import method_names, settings_for
from ..settings import as_dict
from ..settings.fields import flag
from .network import MIXTURES, EditEncoder, _key

FORMAT = "invert.encoder"
VERSION = 1
KIND = "an edit encoder file"
INFO = "info"  # the one metadata key besides the file's own: every fact as a JSON object
_REQUIRED = {"method": str, "backbone": str, "base_model": str, "model_fingerprint": str, "clip_model": str,
             "clip_fingerprint": str, "init_text": str, "parameters": list, "options": dict, "features": int,
             "hidden": int, "basis": int, "mixture": str}


def clip_fingerprint(clip: Clip) -> str:
    """The CLIP model's weights, hashed as a base model's are."""
    return fingerprint(clip.model)


@dataclass
class EncoderFile:
    """An edit encoder and what it was made for (``info``; see ``_REQUIRED`` for its keys, plus ``training``)."""

    encoder: EditEncoder
    info: dict[str, Any]
    path: Path | None = field(default=None, compare=False)

    @property
    def method(self) -> str:
        return self.info["method"]

    @property
    def where(self) -> str:
        return str(self.path or "encoder")

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write atomically; refuse to overwrite an existing file unless ``force``."""
        path = Path(path)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.encoder.state_dict().items()}
        meta = {"format": FORMAT, "version": str(VERSION), INFO: json.dumps(self.info, sort_keys=True),
                "tensor_sha256": tensors_sha256(tensors)}
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=meta), force=force)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EncoderFile":
        """Read and verify an encoder file; nothing is unpickled."""
        path = Path(path)
        tensors, meta = read_verified(path, FORMAT, VERSION, KIND)
        try:
            info = json.loads(meta.get(INFO, ""))
        except json.JSONDecodeError:
            raise EncoderFileError(f"{path}: metadata '{INFO}' is not valid JSON") from None
        if not isinstance(info, dict):
            raise EncoderFileError(f"{path}: metadata '{INFO}' should be a JSON object")
        for key, kind in _REQUIRED.items():
            if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
                raise EncoderFileError(f"{path}: metadata '{key}' missing or not a JSON {kind.__name__}")
        if info["method"] not in method_names():
            raise EncoderFileError(f"{path}: unknown method '{info['method']}' (this invert knows "
                                   f"{', '.join(method_names())})")
        if info["mixture"] not in MIXTURES:
            raise EncoderFileError(f"{path}: unknown mixture '{info['mixture']}' (known: {', '.join(MIXTURES)})")
        try:  # the options it trained with are a fit's (its loss, the size its pairs are read at): checked as such
            settings_for(info["method"], info["options"])
        except InvertError as exc:
            raise EncoderFileError(f"{path}: metadata 'options': {exc}") from None
        if min(info["features"], info["hidden"], info["basis"]) < 1:
            raise EncoderFileError(f"{path}: features, hidden and basis must be positive")
        names = info["parameters"]
        if not names or not all(isinstance(n, str) for n in names):
            raise EncoderFileError(f"{path}: metadata 'parameters' should name the method's parameters")
        base = {}
        for name in names:
            if f"base.{_key(name)}" not in tensors:
                raise EncoderFileError(f"{path}: missing tensor 'base.{_key(name)}'")
            base[name] = tensors[f"base.{_key(name)}"]
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise EncoderFileError(f"{path}: tensor '{name}' holds NaN or inf values")
        sizes = (info["features"], info["hidden"], info["basis"], info["mixture"])
        with torch.device("meta"):  # the metadata's shapes without their memory: checked against the tensors first
            expected = EditEncoder(base, *sizes).state_dict()
        for name, tensor in expected.items():
            if name not in tensors:
                raise EncoderFileError(f"{path}: missing tensor '{name}'")
            if tensors[name].shape != tensor.shape:
                raise EncoderFileError(f"{path}: tensor '{name}' has shape {tuple(tensors[name].shape)}; its metadata "
                                       f"makes it {tuple(tensor.shape)}")
        unknown = sorted(set(tensors) - set(expected))
        if unknown:
            raise EncoderFileError(f"{path}: unexpected tensor '{unknown[0]}'")
        encoder = EditEncoder(base, *sizes)  # now no larger than the file's own tensors
        encoder.load_state_dict({k: v.float() for k, v in tensors.items()})
        return cls(encoder.requires_grad_(False).eval(), info, path)

    def check(self, editor: Editor, clip: Clip, method: torch.nn.Module, allow_model_mismatch: bool = False,
              method_settings: Any = None) -> None:
        """Refuse to encode for a model, CLIP or method state other than those it was trained for; a state made
        with ``method_settings`` (the method's options, when not the encoder's own) that does not fit names them."""
        info, where = self.info, self.where
        if info["backbone"] != editor.name:
            raise EncoderFileError(f"{where}: trained for a {info['backbone']} model; this model is {editor.name} "
                                   f"({editor.model_id})")
        if info["model_fingerprint"] != editor.fingerprint and not allow_model_mismatch:
            raise EncoderFileError(f"{where}: trained on base model '{info['base_model']}' (fingerprint "
                                   f"{info['model_fingerprint']}), not on the loaded one ({editor.fingerprint}); "
                                   "'invert encode --allow-model-mismatch' uses it anyway")  # fit has no such flag
        if info["clip_fingerprint"] != clip_fingerprint(clip):
            raise EncoderFileError(f"{where}: reads the CLIP model '{info['clip_model']}' (fingerprint "
                                   f"{info['clip_fingerprint']}), not the loaded '{clip.name}' "
                                   f"({clip_fingerprint(clip)}); pass --clip-model with that one")
        own = {n: tuple(p.shape) for n, p in method.named_parameters()}
        stored = {n: tuple(self.encoder.base[_key(n)].shape) for n in self.encoder.names}
        if own != stored:
            # the model was checked above: on it, a state of another shape comes of the method's options
            trained = as_dict(settings_for(info["method"], info["options"])[1])
            given = trained if method_settings is None else as_dict(method_settings)
            differ = [f"{flag(k)} {v!r}, here {given.get(k)!r}" for k, v in trained.items() if given.get(k) != v]
            whose = f"this fit's options (trained with {'; '.join(differ)}; " if differ else "this model's ("
            raise EncoderFileError(f"{where}: its {info['method']} state does not fit {whose}the encoder's parameters "
                                   f"{_summary(stored)}; here {_summary(own)})")


def _summary(shapes: dict[str, tuple]) -> str:
    total = sum(int(torch.Size(s).numel()) for s in shapes.values())
    return f"{len(shapes)} tensors, {total} values"


def encoder_info(editor: Editor, clip: Clip, method: str, method_state: torch.nn.Module, init_text: str,
                 options: dict[str, Any], encoder: EditEncoder) -> dict[str, Any]:
    """The metadata of an encoder trained for ``method`` on ``editor`` reading ``clip``'s features."""
    from .. import __version__

    return {"method": method, "backbone": editor.name, "base_model": editor.model_id,
            "model_fingerprint": editor.fingerprint, "clip_model": clip.name,
            "clip_fingerprint": clip_fingerprint(clip),
            "init_text": init_text, "parameters": [n for n, _ in method_state.named_parameters()], "options": options,
            "features": encoder.features, "hidden": encoder.hidden, "basis": encoder.size, "mixture": encoder.mixture,
            "invert_version": __version__}


__all__ = ["EncoderFile", "FORMAT", "KIND", "VERSION", "clip_fingerprint", "encoder_info"]
