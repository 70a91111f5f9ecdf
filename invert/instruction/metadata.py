"""An ``.inst`` file's metadata, typed: what was fitted, on which model, from which exemplars, with which settings,
read (every field checked: its type and its range, as settings are) and written in one place.

safetensors stores metadata as strings: a number as its text, a structured value as JSON (``guidance``,
``exemplars``, ``options`` ...). Every format version reads into this one class; keys it does not know are
ignored. Importing this module imports no torch."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..defaults import IP2P_GUIDANCE, IP2P_IMAGE_GUIDANCE
from ..errors import InstructionFileError, InvertError
from ..settings.fields import Checked, build_settings, option
from ..settings.limits import MAX_FIT_STEPS, MAX_GUIDANCE, MAX_RESOLUTION, MAX_SEED, MAX_TOKENS, MIN_RESOLUTION

FORMAT = "invert.inst"
# 2: InstructBrush's K/V stored per cross-attention layer by name (brush.<processor>.k), where version 1 stored
# one (parts, m, sum of widths) tensor with the widths in extra.layers; version 1 files still load.
VERSION = 2
# The file's own keys, read and written by the file, not the metadata.
FILE_KEYS = ("format", "version", "method", "tensor_sha256")
GUIDANCE = "guidance"  # stored as one JSON object {"text": ..., "image": ...}: the text_guidance and image_guidance


@dataclass(frozen=True)
class Metadata(Checked):
    """What an .inst file records besides its tensors. Made from a fit (``invert.fitting.assembly``), read from a
    file (:meth:`from_stored`) or from plain values (:meth:`from_values`, as ``invert inspect --json`` shows them)."""

    base_model: str = option("", "The base model it was learned on: hub id, local folder, or 'toy'.")
    # Files written before invert had backbones were all learned on SD1.5 InstructPix2Pix.
    backbone: str = option("ip2p", "The architecture it was learned on (its backbone's name): apply refuses another.")
    clip_model: str = option("", "The CLIP model of its fit (its CLIP direction's).")
    model_fingerprint: str = option("", "The base model's weights, hashed: apply checks them.")
    init_text: str = option("", "The text the fit started from.")
    num_tokens: int = option(0, "Learned token positions.", minimum=0, maximum=MAX_TOKENS)
    # A file that records no guidance was learned with IP2P's: the fallback lives here and nowhere else.
    text_guidance: float = option(IP2P_GUIDANCE, "The fit's text guidance: apply's default.", minimum=0,
                                  maximum=MAX_GUIDANCE)
    image_guidance: float = option(IP2P_IMAGE_GUIDANCE, "The fit's image guidance: apply's default.", minimum=0,
                                   maximum=MAX_GUIDANCE)
    resolution: int | None = option(None, "The image size it was fitted at.", minimum=MIN_RESOLUTION,
                                    maximum=MAX_RESOLUTION)
    seed: int | None = option(None, "The fit's seed.", minimum=0, maximum=MAX_SEED)
    noise_seed: int = option(0, "The seed of apply's default noise stream (the fit's).", minimum=0, maximum=MAX_SEED)
    steps: int = option(0, "Fit steps done.", minimum=0, maximum=MAX_FIT_STEPS)
    final_loss: float | None = option(None, "The last step's loss.")
    fit_seconds: float | None = option(None, "How long the fit took.", minimum=0)
    exemplars: list | None = option(None, "Each exemplar pair: name and the files' sha256.")
    invert_version: str = option("", "The invert that wrote it.")
    options: dict | None = option(None, "Every fit setting, by name.")
    extra: dict | None = option(None, "The method's own facts (brush's layers, lora's rank ...).")
    phrases: dict | None = option(None, "InstructBrush's phrase choice, when it made the init text.")
    model_defaults: dict | None = option(None, "The settings that came from the model: its folder's invert.json, and "
                                                "under --init encoder the encoder's loss target.")
    validation: dict | None = option(None, "The held-out pairs and the validation curve.")
    init_scores: dict | None = option(None, "Each init candidate's validation score.")
    cost: dict | None = option(None, "Per phase of the fit (init_search, training, validation): seconds and denoiser "
                                     "rows, forward-only and forward+backward (a resumed fit's: since it resumed).")
    kept_step: int | None = option(None, "The step whose state the file keeps.", minimum=0)
    fit_check: str | None = option(None, "The fit's self-check warning, if it gave one.")
    imported_from: str | None = option(None, "The official VISII file it was imported from.")
    library: str | None = option(None, "The library entries it mixes, with their weights.")
    encoded_by: str | None = option(None, "The edit encoder that gave it ('invert encode'), with its sha256.")

    @property
    def guidance(self) -> tuple[float, float]:
        """(text, image) guidance: apply's defaults."""
        return self.text_guidance, self.image_guidance

    @classmethod
    def from_values(cls, values: Mapping[str, Any], where: str = "metadata") -> "Metadata":
        """Metadata from plain values by their stored names (``guidance`` as {"text", "image"}); each checked, an
        error naming ``where`` and the key. Unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = dict(values)
        guidance = values.pop(GUIDANCE, None)
        if guidance is not None:
            if not isinstance(guidance, dict):
                raise InvertError(f"{where} '{GUIDANCE}': expected a JSON object, not {guidance!r}"[:200])
            values.update({f"{k}_guidance": v for k, v in guidance.items() if k in ("text", "image")})
        return build_settings(cls, {k: v for k, v in values.items() if k in known},
                              lambda name: f"{where} '{GUIDANCE if name.endswith('_guidance') else name}'")

    @classmethod
    def from_stored(cls, stored: Mapping[str, str], path: str | Path) -> "Metadata":
        """Metadata from a file's strings (without its own keys: format, version, method, checksum); a value of
        the wrong type or out of range is an error naming the file and the key."""
        kinds = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for key, text in stored.items():
            kind = dict if key == GUIDANCE else _plain(kinds.get(key))
            if kind is None or key in FILE_KEYS:
                continue
            try:
                values[key] = _parse(text, kind)
            except ValueError:
                what = "valid JSON" if kind in (dict, list) else f"{_article(kind)}"
                raise InstructionFileError(f"{path}: metadata '{key}' is not {what}: {text!r}"[:300]) from None
        try:
            return cls.from_values(values, f"{path}: metadata")
        except InvertError as exc:
            raise InstructionFileError(str(exc)) from None

    def values(self) -> dict[str, Any]:
        """The plain values by their stored names, None left out: what ``invert inspect --json`` shows."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        out[GUIDANCE] = {"text": out.pop("text_guidance"), "image": out.pop("image_guidance")}
        return out

    def stored(self) -> dict[str, str]:
        """The metadata as the file stores it: strings, JSON where structured."""
        return {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)
                for k, v in self.values().items()}


def _plain(kind: Any) -> Any:
    """A field's type without its None."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if args else kind


def _parse(text: str, kind: Any) -> Any:
    """A stored string as the value it holds; ValueError when it holds none of its kind."""
    if kind in (dict, list):
        return json.loads(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return text


def _article(kind: Any) -> str:
    return {int: "a whole number", float: "a number"}.get(kind, "text")


__all__ = ["FILE_KEYS", "FORMAT", "Metadata", "VERSION"]
