"""Instruction libraries: editing a new pair with no fitting (after LoRWeB's mixed basis, without its training).

A library holds fitted instructions, each keyed by the CLIP direction of its exemplars (``clip.direction``,
normalized mean after minus mean before image embedding, which every fit stores). A new before/after pair is
edited at once by the mix of the library's instructions of one method, weighted by a softmax over the cosines
between the pair's direction and the keys.

The file is a safetensors file (format ``invert.library``) checked on load like an ``.inst``: instruction i's
tensors are stored as ``i/NAME`` and its metadata strings, as an ``.inst`` holds them, in the JSON list
``instructions``."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from safetensors.torch import save_file

from .api import load_method, mix
from .backbones import Editor, load_editor
from .clip import Clip, clip_name_for, load_clip
from .defaults import BEST_LIMITS, DEFAULT_MODEL, DEFAULT_TEMPERATURE, TEMPERATURE_LIMITS
from .errors import InstructionFileError, InvertError, InvertWarning
from .fitting.losses import clip_direction
from .instruction import Instruction, read_verified, tensors_sha256
from .instruction.thumbnails import thumbnail_tensor
from .settings.fields import check_value, keyword
from .writing import write_atomically

if TYPE_CHECKING:
    from .pairs import PairsSource

FORMAT = "invert.library"
VERSION = 1
KEY = "clip.direction"


@dataclass
class Entry:
    """One instruction of a library, with its name (the file stem it was built from)."""

    name: str
    instruction: Instruction

    @property
    def method(self) -> str:
        return self.instruction.method

    @property
    def key(self) -> torch.Tensor:
        return self.instruction.tensors[KEY]


@dataclass
class Library:
    entries: list[Entry]
    path: Path | None = None

    @property
    def methods(self) -> dict[str, int]:
        """How many instructions of each method, by method name."""
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e.method] = counts.get(e.method, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def base_model(self) -> str:
        return self.entries[0].instruction.meta.base_model or DEFAULT_MODEL

    @property
    def clip_model(self) -> str:
        return self.entries[0].instruction.meta.clip_model

    def exemplar_size(self, editor: Editor) -> int:
        """The size new exemplar pairs are brought to: its instructions' fit size (the model's own if unknown)."""
        return self.entries[0].instruction.meta.resolution or editor.resolution

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write atomically; refuse to overwrite an existing file unless ``force``."""
        path = Path(path)
        tensors = {f"{i}/{name}": t.detach().to("cpu").contiguous()
                   for i, e in enumerate(self.entries) for name, t in e.instruction.tensors.items()}
        listing = [{"name": e.name, "meta": {**e.instruction.stored_metadata(), "method": e.method}}
                   for e in self.entries]
        meta = {"format": FORMAT, "version": str(VERSION), "instructions": json.dumps(listing, sort_keys=True),
                "tensor_sha256": tensors_sha256(tensors)}
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=meta), force=force)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Library":
        """Read and verify a library: format, version, header size and tensor checksum as for an ``.inst``, then
        every instruction as ``Instruction.load`` checks one, and that they can share a library."""
        path = Path(path)
        tensors, meta = read_verified(path, FORMAT, VERSION, "an instruction library")
        try:
            listing = json.loads(meta.get("instructions", ""))
            if not isinstance(listing, list) or not all(
                    isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("meta"), dict)
                    and all(isinstance(v, str) for v in item["meta"].values()) for item in listing):
                raise ValueError
        except ValueError:  # JSONDecodeError is one
            raise InstructionFileError(f"{path}: metadata 'instructions' is missing or malformed") from None
        grouped: list[dict[str, torch.Tensor]] = [{} for _ in listing]
        for full, tensor in tensors.items():
            index, _, name = full.partition("/")
            if not index.isdigit() or int(index) >= len(listing):
                raise InstructionFileError(f"{path}: tensor '{full}' belongs to no listed instruction")
            grouped[int(index)][name] = tensor
        entries = [Entry(item["name"], Instruction.from_stored(own, item["meta"], Path(f"{path}[{item['name']}]")))
                   for item, own in zip(listing, grouped)]
        check_entries(entries, str(path))
        return cls(entries, path)

    def similarities(self, direction: torch.Tensor, entries: list[Entry] | None = None) -> torch.Tensor:
        """Cosine between ``direction`` and the key of each of ``entries`` (default: all)."""
        keys = torch.stack([e.key.float().cpu() for e in (self.entries if entries is None else entries)])
        direction = direction.detach().float().cpu().reshape(-1)
        if direction.shape[0] != keys.shape[1]:
            raise InvertError(f"a CLIP direction of {direction.shape[0]} dimensions for keys of {keys.shape[1]} "
                              f"(the library's CLIP model is {self.clip_model!r})")
        return torch.nn.functional.normalize(keys, dim=-1) @ torch.nn.functional.normalize(direction, dim=0)

    def key_cosines(self) -> torch.Tensor:
        """(n, n) cosines between the keys: how distinct the library's edits look to CLIP."""
        keys = torch.nn.functional.normalize(torch.stack([e.key.float().cpu() for e in self.entries]), dim=-1)
        return keys @ keys.T

    def choose(self, direction: torch.Tensor, method: str | None = None, temperature: float = DEFAULT_TEMPERATURE,
               top: int | None = None) -> tuple[list[Entry], list[float]]:
        """The instructions of ``method`` (needed when the library holds several) and their weights, best first:
        softmax(cosine(direction, key) / temperature); ``top`` keeps the best K, their weights renormalized."""
        temperature = check_value(temperature, float, TEMPERATURE_LIMITS, keyword("temperature"))
        top = check_value(top, int | None, BEST_LIMITS, keyword("top"))
        methods = self.methods
        if method is None:
            if len(methods) > 1:
                held = ", ".join(f"{m} ({n})" for m, n in methods.items())
                raise InvertError(f"{self.path or 'the library'} holds instructions of several methods: {held}; "
                                  "choose one with --method")
            method = next(iter(methods))
        if method not in methods:
            raise InvertError(f"{self.path or 'the library'} holds no {method} instructions "
                              f"(it has {', '.join(methods)})")
        entries = [e for e in self.entries if e.method == method]
        cos = self.similarities(direction, entries).double()
        order = torch.argsort(cos, descending=True, stable=True)[:top]
        weights = torch.softmax(cos[order] / temperature, dim=0)
        return [entries[i] for i in order], weights.tolist()

    def instruction_for(self, befores: list[Image.Image], afters: list[Image.Image], *, editor: Editor,
                        clip: Clip | None = None, method: str | None = None,
                        temperature: float = DEFAULT_TEMPERATURE, top: int | None = None,
                        allow_model_mismatch: bool = False
                        ) -> tuple[Instruction, list[Entry], list[float]]:
        """The instruction this library makes for exemplar images: the chosen instructions mixed (see
        :func:`mix_entries`), keyed and previewed by the new pairs; with the chosen entries and weights.
        ``clip`` defaults to the CLIP model the library's instructions were fitted with."""
        clip = clip or load_clip(clip_name_for(self.clip_model or None, editor.model_id), editor.device)
        direction = clip_direction(clip, befores, afters).float().cpu()
        chosen, weights = self.choose(direction, method, temperature, top)
        chosen[0].instruction.check_model(editor.fingerprint, allow_model_mismatch, chosen[0].instruction.path or "")
        inst, chosen, weights = mix_entries(chosen, weights, editor)
        inst.tensors.update({KEY: direction, "exemplar.before": thumbnail_tensor(befores[0]),
                             "exemplar.after": thumbnail_tensor(afters[0])})
        inst.meta = replace(inst.meta, library=", ".join(f"{e.name} {w:.4f}" for e, w in zip(chosen, weights)))
        inst.path = self.path
        return inst, chosen, weights


def check_entries(entries: list[Entry], where: str) -> None:
    """Refuse what cannot make a library: no instructions, two of one name, one without a key, or instructions
    of different base models or CLIP models (their keys and parameters would not be comparable)."""
    if not entries:
        raise InvertError(f"{where}: no instructions")
    seen: dict[str, Entry] = {}
    first = entries[0].instruction
    for e in entries:
        inst = e.instruction
        if e.name in seen:
            raise InvertError(f"two instructions are named '{e.name}' ({seen[e.name].instruction.path} and "
                              f"{inst.path}); rename one")
        seen[e.name] = e
        key = inst.tensors.get(KEY)
        if key is None or key.dim() != 1 or not key.is_floating_point():
            raise InstructionFileError(f"{inst.path}: has no CLIP direction ('{KEY}', stored when the fit has a CLIP "
                                       "model), which is its key in a library")
        if key.shape != first.tensors[KEY].shape:
            raise InstructionFileError(f"{inst.path}: its key has {key.shape[0]} dimensions, {first.path}'s "
                                       f"{first.tensors[KEY].shape[0]}")
        if inst.meta.model_fingerprint != first.meta.model_fingerprint:
            raise InvertError(f"{inst.path} and {first.path} were learned on different base models ({_model(inst)} vs "
                              f"{_model(first)}); a library holds the instructions of one")
        if inst.meta.clip_model != first.meta.clip_model:
            raise InvertError(f"{inst.path} and {first.path} were keyed with different CLIP models "
                              f"({inst.meta.clip_model!r} vs {first.meta.clip_model!r}): their keys "
                              "cannot be compared")


def _model(inst: Instruction) -> str:
    return f"{inst.meta.base_model!r}, fingerprint {inst.meta.model_fingerprint}"


def build_library(paths: list[str | os.PathLike]) -> Library:
    """A library of the ``.inst`` files given, or found in the folders given (not recursively), named by their
    file stems."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix == ".inst" and f.is_file())
            if not found:
                raise InvertError(f"{p}: no .inst files in it")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InvertError(f"{p}: no such file or folder")
    entries = [Entry(f.stem, Instruction.load(f)) for f in files]
    check_entries(entries, ", ".join(map(str, paths)))
    return Library(entries)


def mix_entries(chosen: list[Entry], weights: list[float], editor: Editor
                ) -> tuple[Instruction, list[Entry], list[float]]:
    """The weighted mix of ``chosen`` (best first) as one instruction, mixed by its method (a weighted sum of
    the whole conditioning, token counts widened to the largest; LoRA adapters by rank concatenation). What
    cannot be mixed with the best instruction (brush: another number of time parts) is left out with a warning
    and the other weights renormalized. The metadata is the best instruction's."""
    methods = [load_method(e.instruction, editor) for e in chosen]
    keep = [n for n, m in enumerate(methods) if methods[0].can_mix(m)]
    if len(keep) < len(chosen):
        left = [chosen[n].name for n in range(len(chosen)) if n not in keep]
        warnings.warn(InvertWarning(f"left out {', '.join(left)}: they cannot be mixed with {chosen[0].name}"))
        total = sum(weights[n] for n in keep)
        chosen, methods, weights = [chosen[n] for n in keep], [methods[n] for n in keep], \
            [weights[n] / total for n in keep]
    return mix([e.instruction for e in chosen], editor, weights), chosen, weights


def apply_library(library: Library | str | os.PathLike, images: list[Image.Image], pairs: PairsSource, *,
                  editor: Editor | None = None, model: str | None = None, device: str = "auto", dtype: str = "auto",
                  clip: Clip | None = None, method: str | None = None, temperature: float = DEFAULT_TEMPERATURE,
                  top: int | None = None, allow_model_mismatch: bool = False, **apply_options: Any
                  ) -> tuple[list[Image.Image], list[tuple[str, float]]]:
    """Edit ``images`` as the exemplar ``pairs`` (a pairs folder, a ``(before, after)`` tuple of files, or a list
    of :class:`invert.Pair`) show, with the library's instructions mixed: no fitting. Returns the results and
    the chosen (name, weight), best first. ``apply_options`` go to :func:`invert.apply`.

    >>> from invert.library import apply_library                                         # doctest: +SKIP
    >>> results, chosen = apply_library("lib.safetensors", [image], ("a.png", "b.png"))  # doctest: +SKIP
    """
    from .api import apply
    from .pairs import as_pairs, load_pairs

    lib = library if isinstance(library, Library) else Library.load(library)
    editor = editor or load_editor(model or lib.base_model, device, dtype)
    befores, afters = load_pairs(as_pairs(pairs), lib.exemplar_size(editor))
    inst, chosen, weights = lib.instruction_for(befores, afters, editor=editor, clip=clip, method=method,
                                                temperature=temperature, top=top,
                                                allow_model_mismatch=allow_model_mismatch)
    results = apply(inst, images, editor=editor, allow_model_mismatch=allow_model_mismatch, **apply_options)
    return results, [(e.name, w) for e, w in zip(chosen, weights)]


__all__ = ["Library", "Entry", "build_library", "apply_library", "mix_entries", "DEFAULT_TEMPERATURE"]
