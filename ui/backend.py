"""Every call the web app makes into the invert library, and nothing else: the app's handlers use only these
functions and names, so that a change in the library's API is adapted here, in one place."""
from __future__ import annotations

import dataclasses
import shutil
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from PIL import Image

import invert
from invert.api import FitProgress
from invert.defaults import DEFAULT_TEMPERATURE
from invert.display import printable
from invert.errors import InvertError
from invert.fitting.checkpoint import FitState, FitStopped
from invert.instruction import Instruction
from invert.methods import method_entries, settings_classes
from invert.pairs import Pair, check_distinct_outputs, find_pairs, is_image_file, open_image
from invert.settings import ApplySettings, FitSettings, build_settings
from invert.settings.apply import MAX_VARIATIONS
from invert.settings.fields import check_value, describe_range
from invert.writing import make_folder, output_exists, write_atomically, write_failure

if TYPE_CHECKING:
    from invert.fitting.phrases import PhraseChoice

__all__ = ["APPLY_RULES", "DEFAULT_TEMPERATURE", "FIT_CHOICES", "FIT_RULES", "MAX_VARIATIONS", "ApplySettings",
           "FitProgress", "FitState", "FitStopped", "InvertError", "Instruction", "Model", "Pair", "SettingRule",
           "apply_settings", "check_distinct_outputs", "check_value", "copy_file", "describe", "find_pairs",
           "is_image_file", "load_instruction", "make_folder", "method_options", "methods", "open_image",
           "output_exists", "printable", "save_image", "save_instruction", "save_state", "write_failure"]


@dataclass(frozen=True)
class SettingRule:
    """One setting as a control shows it: its name, its type (``kind``, without None; ``optional``: None allowed;
    ``is_list``: several texts), its help and range, its library default."""

    name: str
    kind: Any
    optional: bool
    is_list: bool
    help: str
    range: str
    default: Any


def setting_rules(*classes: type) -> list[SettingRule]:
    """The settings of ``classes`` in order, a name they share once."""
    rules: dict[str, SettingRule] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            union = typing.get_origin(hint) in (typing.Union, type(int | None))
            kind = next(a for a in typing.get_args(hint) if a is not type(None)) if union else hint
            rules.setdefault(f.name, SettingRule(
                f.name, kind, union and type(None) in typing.get_args(hint), typing.get_origin(kind) is tuple,
                f.metadata.get("help", ""), describe_range(f.metadata), f.default))
    return list(rules.values())


FIT_RULES = setting_rules(FitSettings, *settings_classes().values())
# The fit settings whose values change others' defaults (official: the official code's; init 'encoder': the
# encoder's loss target), as ``invert fit`` resolves them: see invert.api.model_defaults. In this order: each may
# change the defaults of those after it (official's init is pez).
FIT_CHOICES = ("official", "init", "encoder_file")
APPLY_RULES = setting_rules(ApplySettings)


def method_options(method: str) -> set[str]:
    """The settings a fit with ``method`` takes: the loop's and the method's own."""
    return {f.name for cls in (FitSettings, settings_classes()[method]) for f in dataclasses.fields(cls)}


def _changed(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Of the settings' ``values``, those that are not their ``defaults`` (a name without one is not a setting of
    the method)."""
    # 3 is 3.0 (a number field may send either), but True is not 1.0
    return {name: value for name, value in values.items() if name in defaults and
            (value != defaults[name] or isinstance(value, bool) != isinstance(defaults[name], bool))}


def apply_settings(values: Mapping[str, Any], labels: Mapping[str, str]) -> ApplySettings:
    """Apply settings from the page's controls, checked; an error names the control's label."""
    return build_settings(ApplySettings, dict(values), lambda name: labels.get(name, name))


def methods() -> list[tuple[str, str]]:
    """Every registered method as (label, name), for the app's menus."""
    return [(f"{e.title}: {e.summary}", e.name) for e in method_entries()]


class Model:
    """The one editor (and CLIP model) the app loads at start and uses for everything. It is not safe to use
    from two threads at once: the app queues every event that touches it in one line (see app.MODEL_QUEUE)."""

    def __init__(self, name: str, device: str = "auto", dtype: str = "auto"):
        self.name = name
        self.editor = invert.load_editor(name, device, dtype)
        self._clip = None

    @property
    def clip(self):
        """The CLIP model of the base model's fits (loaded on first use: applying needs none)."""
        if self._clip is None:
            from invert.clip import clip_name_for, load_clip

            self._clip = load_clip(clip_name_for(None, self.editor.model_id), self.editor.device)
        return self._clip

    @property
    def resolution(self) -> int:
        return self.editor.resolution

    def fit_defaults(self, method: str, chosen: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The settings a fit with ``method`` starts from, resolved as ``invert fit`` resolves them: the model
        folder's own (its invert.json, per method) over the library's; ``chosen``: the values of
        :data:`FIT_CHOICES` set on the page (official: the official code's values; init 'encoder': the encoder's
        loss target). A choice's own default is the one it had before it was set (what the page compares it
        with): official's is False, and init's under official is pez."""
        from invert.api import model_defaults
        from invert.methods import settings_for

        def resolved(options: dict[str, Any]) -> dict[str, Any]:
            # invert.fit's own resolution: the options given, then --official's, the model's, the library's
            settings = settings_for(method, {**model_defaults(self.editor.model_id, method, options), **options})
            return {f.name: getattr(s, f.name) for s in settings for f in dataclasses.fields(s)}

        chosen = dict(chosen or {})
        defaults = resolved(chosen)
        for i, name in enumerate(FIT_CHOICES):
            if name in chosen:
                defaults[name] = resolved({k: v for k, v in chosen.items() if k in FIT_CHOICES[:i]})[name]
        return defaults

    def shown_defaults(self, method: str, values: Mapping[str, Any], before: Mapping[str, Any]
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
        """For the page, when the method or a choice changes: of its setting ``values``, those the user changed
        (not at ``before``, the defaults it showed), which keep their values as options given do, and the
        defaults that the others now show (:meth:`fit_defaults` with the choices among those changed)."""
        kept = _changed(values, before)
        try:
            return kept, self.fit_defaults(method, {k: v for k, v in kept.items() if k in FIT_CHOICES})
        except InvertError:  # no such encoder, Official with a method without official code: the fit says so
            return kept, self.fit_defaults(method)

    def load_pairs(self, pairs: list[Pair]) -> tuple[list[Image.Image], list[Image.Image]]:
        """Open every pair as ``invert fit`` does (its checks, its one-line errors), at the model's resolution."""
        from invert.pairs import load_pairs

        return load_pairs(pairs, self.resolution)

    def at_resolution(self, images: list[Image.Image]) -> list[Image.Image]:
        """Images resized and centre-cropped to the model's size, as exemplars are (for quick previews)."""
        from invert.pairs import fit_to_resolution

        return [fit_to_resolution(img, self.resolution) for img in images]

    def phrases(self, pairs: list[Pair]) -> PhraseChoice:
        """InstructBrush's phrase choice for these pairs (``invert phrases``): ``.text``, ``.p_x``, ``.p_y``,
        ``.candidates``."""
        from invert.fitting.phrases import unique_phrases
        from invert.vocab import load_vocab, model_vocab

        befores, afters = self.load_pairs(pairs)
        return unique_phrases(self.clip, befores, afters, load_vocab(model_vocab(self.name)))

    def fit_options(self, method: str, values: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
        """Of the page's setting values, those the user changed from :meth:`fit_defaults` (the others resolve in
        the fit as ``invert fit``'s do), checked now; an error names the control by its label."""
        from invert.methods import settings_for

        def where(name: str) -> str:
            return labels.get(name, name)

        # The choices that resolve other settings' defaults first (checked), then all against those.
        chosen = {k: v for k, v in _changed(values, self.fit_defaults(method)).items() if k in FIT_CHOICES}
        settings_for(method, chosen, where)
        given = _changed(values, self.fit_defaults(method, chosen))
        settings_for(method, given, where)
        return given

    def fit(self, pairs: list[Pair], method: str, *, progress: Callable[[FitProgress], None],
            should_stop: Callable[[], bool], checkpoint: Callable[[Instruction, int], None], save_every: int,
            resume: FitState | None, sources: Mapping[str, str] | None = None, **options) -> Instruction:
        """``invert.fit`` on this model; ``options``: the settings the user set, by name (the others resolve as
        ``invert fit``'s do); ``sources``: each one's control label, for errors. A stop raises FitStopped, whose
        ``state`` resumes the fit."""
        return invert.fit(pairs, method, editor=self.editor, clip=self.clip, quiet=True, progress=progress,
                          should_stop=should_stop, checkpoint=checkpoint, save_every=save_every, resume=resume,
                          sources=sources, **options)

    @property
    def encoder(self):
        """The edit encoder the model's folder ships (its only one), or None."""
        if not hasattr(self, "_encoder"):
            from invert.encoder import EncoderFile, shipped_encoders

            shipped = shipped_encoders(self.name)
            self._encoder = EncoderFile.load(next(iter(shipped.values()))) if len(shipped) == 1 else None
        return self._encoder

    def encode(self, pairs: list[Pair]) -> Instruction:
        """The instruction the model's own edit encoder gives for these pairs, in one forward pass
        (``invert encode``); only for a model that ships one (:attr:`encoder`)."""
        from invert.encoder import encode_images

        return encode_images(self.encoder, self.editor, self.clip, *self.load_pairs(pairs))

    def apply(self, instruction: Instruction, images: list[Image.Image], settings: ApplySettings | None = None
              ) -> list[Image.Image]:
        return invert.apply(instruction, images, editor=self.editor, settings=settings or ApplySettings())

    def mix(self, instructions: list[Instruction], weights: list[float]) -> Instruction:
        """Instructions of one method mixed by weight (``invert apply --mix``), as one instruction."""
        from invert.api import mix

        return mix(instructions, self.editor, weights)

    def library_instruction(self, library: Path, befores: list[Path], afters: list[Path], temperature: float,
                            top: int | None = None, method: str | None = None
                            ) -> tuple[Instruction, list[tuple[str, float]]]:
        """The instruction a library makes for new exemplar pairs (``invert apply --library``), with the names
        and weights of the instructions it mixed, heaviest first."""
        from invert.library import Library
        from invert.pairs import load_pairs

        lib = Library.load(library)
        pairs = [find_pairs(before=b, after=a)[0] for b, a in zip(befores, afters)]
        inst, chosen, weights = lib.instruction_for(*load_pairs(pairs, lib.exemplar_size(self.editor)), editor=self.editor,
                                                    method=method, temperature=temperature, top=top)
        return inst, [(e.name, w) for e, w in zip(chosen, weights)]


def load_instruction(path: str | Path) -> Instruction:
    """An .inst file, checked as ``invert apply`` checks it."""
    return Instruction.load(path)


def save_instruction(inst: Instruction, path: Path) -> Path:
    return inst.save(path)


def save_state(state: FitState, path: Path) -> Path:
    """A stopped fit's state, the file ``invert fit --resume`` continues from."""
    return state.save(path)


def save_image(img: Image.Image, path: Path) -> Path:
    """A PNG written as the library writes every file: atomically, a failure one InvertError naming it."""
    write_atomically(path, lambda tmp: img.save(tmp, format="PNG"), force=True)
    return path


def copy_file(source: str | Path, target: Path) -> Path:
    """``source`` copied to ``target`` (which must not exist), written as :func:`save_image` writes."""
    write_atomically(target, lambda tmp: shutil.copyfile(source, tmp))
    return target


def describe(inst: Instruction) -> str:
    """One line about an instruction: method, init text, steps and final loss."""
    meta = inst.meta
    parts = [inst.method, f"init text {meta.init_text!r}", f"{meta.steps} steps"]
    if meta.final_loss is not None:
        parts.append(f"loss {meta.final_loss}")
    return ", ".join(parts)
