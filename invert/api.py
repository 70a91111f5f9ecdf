"""The library's entry points: fit an instruction to exemplar pairs, and apply instructions to images (alone,
mixed, with extra text, or inside a user's own diffusers pipeline)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import torch
from PIL import Image

from .backbones import Editor, architecture_defaults, backbone_for_pipeline, load_editor
from .backbones.model_info import DEFAULTS_FILE, fit_defaults, model_file, recorded_model
from .clip import Clip, clip_name_for, load_clip
from .defaults import DEFAULT_MODEL
from .encoder.encode import ENCODER_INIT, encoder_loss_target, encoder_start, find_encoder
from .errors import InstructionFileError, InvertError, InvertWarning
from .fitting.assembly import make_instruction
from .fitting.checkpoint import FitState, FitStopped
from .fitting.cost import CostMeter
from .fitting.init_search import InitChoice, choose_init, own_init
from .fitting.loop import FitData, FitProgress, Scoring, Trainer
from .fitting.losses import clip_direction
from .fitting.validation import Validation, check_fit, held_out, scoring_interval
from .instruction import Instruction
from .instruction.thumbnails import thumbnail_tensor
from .methods import aliases, method_class, settings_classes, settings_for
from .methods.base import Method
from .methods.two_way import TwoWay
from .pairs import PairsSource, as_pairs, file_sha256, load_pairs
from .sampling import sample
from .settings import FitSettings, as_dict, build_settings
from .settings.fit import SAVE_EVERY_LIMITS
from .settings.apply import (APPLY_MODEL_LIMITED, BATCH_SIZE, BATCH_SIZE_LIMITS, MIX_WEIGHT, ApplySettings,
                             with_fresh_noise_flag)
from .settings.fields import check_value, keyword

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def fit(pairs: PairsSource, method: str = "visii", *, model: str = DEFAULT_MODEL, editor: Editor | None = None,
        clip_model: str | None = None, clip: Clip | None = None, device: str = "auto", dtype: str = "auto",
        quiet: bool = False, progress: Callable[[FitProgress], None] | None = None, save_every: int = 0,
        checkpoint: Callable[[Instruction, int], None] | None = None, resume: FitState | str | os.PathLike | None = None,
        should_stop: Callable[[], bool] | None = None, low_memory: bool = False,
        sources: Mapping[str, str] | None = None, **options: Any) -> Instruction:
    """Learn an instruction from before/after exemplars.

    ``pairs``: a pairs folder, a ``(before, after)`` tuple of files, or a list of :class:`Pair`.
    ``options``: settings by name, the loop's (:class:`invert.settings.FitSettings`: steps, lr, seed, ...) and
    the method's (:mod:`invert.methods.settings`: parts, lora_rank, clip_weight, ...); an unknown name is an
    error. ``progress`` receives a :class:`FitProgress` (step, total, loss) at every refresh; ``checkpoint(inst,
    step)`` every ``save_every`` steps. ``resume``: a :class:`FitState` (or its file) of a stopped fit with the
    same inputs. ``should_stop``: asked after every step; when it says yes, or the fit diverges,
    ``invert.fitting.checkpoint.FitStopped`` holds the state to resume. ``sources``: how an error names an option
    that is out of range (the CLI: its flag or its config file's key); default: by its keyword. Options the base
    model's folder recommends (its ``invert.json``) are named by that file and key.

    >>> inst = invert.fit("examples/toy/night/train", model="toy", steps=100)   # doctest: +SKIP
    >>> inst.save("night.inst")                                                 # doctest: +SKIP
    """
    from_model, places = _model_defaults(editor.model_id if editor is not None else model, method, options)
    places = {**places, **(sources or {})}

    def where(name: str) -> str:
        return places.get(name) or keyword(name)

    settings, method_settings = settings_for(method, {**from_model, **options}, where)
    save_every = check_value(save_every, int, SAVE_EVERY_LIMITS, where("save_every"))
    if isinstance(resume, (str, os.PathLike)):
        resume = FitState.load(resume)
    found = as_pairs(pairs)
    editor = editor or load_editor(model, device, dtype)
    if low_memory:  # see Editor.set_low_memory; it stays on for an editor passed in
        editor.set_low_memory(True)
    resolution = settings.resolution or editor.resolution
    befores, afters = load_pairs(found, resolution)
    if clip is None:
        cls = method_class(method)
        clip = _fit_clip(clip_model, editor, cls.needs_clip(method_settings),
                         not settings.init_texts and own_init(cls, settings) != "empty")
    exemplars = [{"name": p.name, "before": file_sha256(p.before), "after": file_sha256(p.after)} for p in found]
    return fit_images(editor, befores, afters, method, settings, method_settings, clip=clip, exemplars=exemplars,
                      quiet=quiet, progress=progress, checkpoint=checkpoint, save_every=save_every, resume=resume,
                      should_stop=should_stop, model_defaults=from_model, where=where)


def model_defaults(model: str, method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The fit options the base model recommends: its architecture's (``Editor.fit_defaults``), then its folder's
    own (its ``invert.json``, see :func:`invert.backbones.model_info.fit_defaults`; values for every method, and an
    object per method whose values win for that method), then, under ``--init encoder``, the encoder's loss target,
    that ``options`` does not set and ``method`` has: they come between the options given and the library's
    defaults. Each is checked as an option given is; an error names the file and the key."""
    return _model_defaults(model, method, options)[0]


def _model_defaults(model: str, method: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`model_defaults`, and where each came from (the file and the key), for errors."""
    from .settings import OFFICIAL

    known = {f.name for cls in (FitSettings, settings_classes().get(method)) if cls is not None
             for f in dataclasses.fields(cls)}
    # --official asks for the official code's values: a model's own preference does not override them
    older = aliases()
    taken = {*(older.get(k, k) for k in options), *(OFFICIAL if options.get("official") else ())}
    chosen: dict[str, tuple[Any, str]] = {}
    # the architecture's recommendations first, then the folder's own (invert.json), each the shared values and
    # then an object named after the method, whose own values win over the shared ones
    for recommended, where in ((architecture_defaults(model), "the architecture's defaults"),
                               (fit_defaults(model), str(model_file(model, DEFAULTS_FILE)))):
        _check_names(recommended, where)
        own = recommended.get(method, {})
        chosen.update({older.get(k, k): (v, f"{where}: key 'fit.{k}'") for k, v in recommended.items()
                       if k not in settings_classes()})
        chosen.update({older.get(k, k): (v, f"{where}: key 'fit.{method}.{k}'") for k, v in own.items()})
    # --init encoder starts from a state the encoder's own loss made; the other loss target pulls the fit away from
    # it (toy model, a fit from the refined encoder: 20.85 dB on the catalogue with cfg, 23.04 with the encoder's
    # cond; docs/encoder.md), so the encoder's comes before the folder's
    effective = {**{k: v for k, (v, _) in chosen.items()}, **{older.get(k, k): v for k, v in options.items()}}
    if effective.get("init") == ENCODER_INIT and "loss_target" not in taken:
        path = find_encoder(effective.get("encoder_file"), model, method)
        chosen["loss_target"] = (encoder_loss_target(path), f"{path}: the encoder's loss target")
    chosen = {k: vk for k, vk in chosen.items() if k in known and k not in taken}
    places = {k: place for k, (_, place) in chosen.items()}
    settings = settings_for(method, {k: v for k, (v, _) in chosen.items()}, lambda n: places.get(n) or keyword(n))
    values = {k: getattr(s, k) for s in settings for k in chosen if hasattr(s, k)}
    return values, places


def _check_names(recommended: dict[str, Any], where: str) -> None:
    """Refuse a key of a model's fit defaults that names no option (a misspelt one would leave the default it meant
    to set as it was, without a word; a --config file's is refused alike), and an option in a method's object that
    is neither that method's nor shared. Another method's option among the shared values is not unknown: it applies
    to that method's fits."""
    older, classes = aliases(), settings_classes()
    shared = {f.name for f in dataclasses.fields(FitSettings)}
    every = shared | {f.name for cls in classes.values() for f in dataclasses.fields(cls)}
    for key, value in recommended.items():
        if key in classes:
            if not isinstance(value, dict):
                raise InvertError(f"{where}: key 'fit.{key}': expected an object of {key}'s option values")
            own = shared | {f.name for f in dataclasses.fields(classes[key])}
            for name in value:
                if older.get(name, name) not in own:
                    raise InvertError(f"{where}: key 'fit.{key}.{name}': not an option of {key}")
        elif older.get(key, key) not in every:
            raise InvertError(f"{where}: key 'fit.{key}': unknown option (the options of 'invert fit' are its flags "
                              "without the dashes; an object named after a method holds its own)")


def _fit_clip(name: str | None, editor: Editor, needs_clip: bool, for_init: bool) -> Clip | None:
    """The CLIP model of a fit. Needed for a CLIP loss or an init text to find; otherwise wanted only for the
    exemplars' CLIP direction that the file keeps (libraries and eval use it), so a model that cannot be loaded
    then costs a warning, not the fit."""
    import warnings

    from .errors import InvertWarning

    try:
        return load_clip(clip_name_for(name, editor.model_id), editor.device)
    except InvertError as exc:
        if for_init or needs_clip:
            raise
        warnings.warn(InvertWarning(f"{exc}; fitting without it: the instruction will have no CLIP direction "
                                    "(used by libraries and eval)"))
        return None


def fit_images(editor: Editor, befores: list[Image.Image], afters: list[Image.Image], method: str = "visii",
               settings: FitSettings | None = None, method_settings: Any = None, *, clip: Clip | None = None,
               exemplars: list[dict] | None = None, quiet: bool = False,
               progress: Callable[[FitProgress], None] | None = None,
               checkpoint: Callable[[Instruction, int], None] | None = None, save_every: int = 0,
               resume: FitState | None = None, should_stop: Callable[[], bool] | None = None,
               model_defaults: dict[str, Any] | None = None, where: Callable[[str], str] = keyword) -> Instruction:
    """Fit an instruction to already-opened exemplar images (all at the fit's resolution).

    ``resume``: a state saved from a stopped fit of the same exemplars, method, model and settings (``lr`` may
    differ). A fit stopped by ``should_stop`` or by divergence raises FitStopped / FitDiverged whose ``state``
    (with this fit's identity) can be saved and resumed. ``model_defaults``: the settings that came from the
    model's own defaults, recorded in the file. Settings this model cannot take (more learned tokens than its text
    encoder has positions, an image size its VAE cannot divide) are refused, named in the error as ``where``
    says."""
    # 1. The settings: the method's defaults where none are given, the model's resolution, a usable lr.
    started = time.perf_counter()
    cls = method_class(method)
    settings, method_settings = _complete(editor, method, settings, method_settings, where)
    # 2. The pairs: those held out of training score the fit (without any, it is scored on those it trains on).
    held = held_out(len(befores), settings.val)
    train = [i for i in range(len(befores)) if i not in held]
    train_b, train_a = [befores[i] for i in train], [afters[i] for i in train]
    val_b, val_a = ([befores[i] for i in held], [afters[i] for i in held]) if held else (befores, afters)
    # 3. The init text, chosen on the training pairs, and the untrained instruction (--reverse: and its reverse);
    # under --init encoder, the state an edit encoder gives for the training pairs. Each phase's seconds and
    # denoiser rows are counted (see invert.fitting.cost).
    meter = CostMeter(editor.denoiser, editor.device)
    with meter.phase("init_search"):
        encoded = encoder_start(editor, method, settings, method_settings, clip, train_b, train_a)
        if encoded is not None:
            learned, init = encoded[0], InitChoice(encoded[1])
        else:
            init = choose_init(editor, cls, settings, method_settings, clip, train_b, train_a)
            learned = cls.initialize(editor, editor.encode_text([init.text]), init.text, method_settings,
                                     settings.seed)
        if encoded is None and settings.reverse and learned.needs_reverse_instruction:
            back = choose_init(editor, cls, settings, method_settings, clip, train_a, train_b).text  # reversed pairs
            learned = TwoWay(learned, cls.initialize(editor, editor.encode_text([back]), back, method_settings,
                                                     settings.seed), back)
    # 4. What the file keeps besides the learned state: thumbnails and the exemplars' CLIP direction (the key of
    # libraries and eval); the method's CLIP loss, if any, takes the training pairs' direction.
    stored = {"exemplar.before": thumbnail_tensor(befores[0]), "exemplar.after": thumbnail_tensor(afters[0])}
    if clip is not None:
        direction = clip_direction(clip, befores, afters)
        stored["clip.direction"] = direction.detach().float().cpu()
        learned.set_clip_direction(clip, clip_direction(clip, train_b, train_a) if held else direction)
    record = _Recorder(learned, editor, settings, method_settings, clip, init, exemplars, stored, model_defaults,
                       started - (resume.seconds if resume is not None else 0.0))
    # 5. The loop, scored on the held-out pairs; a resumed fit must be the one that stopped.
    identity = {"method": method, "model": editor.fingerprint, "init_text": init.text, "exemplars": exemplars or [],
                "options": {k: v for k, v in {**as_dict(settings), **as_dict(method_settings)}.items() if k != "lr"}}
    if resume is not None:
        resume.check_identity(identity)
    trainer = Trainer(learned, FitData(editor, train_b, train_a, settings.seed), settings)
    validation = Validation.of_fit(editor, val_b, val_a, settings)
    every = scoring_interval(trainer.total - trainer.complete_from, settings.val_every)  # over the complete states

    def score() -> float:
        with meter.phase("validation"):
            return validation.score(learned, installed=True)

    scoring = Scoring(score, every) if every else None
    try:
        with meter.phase("training"):
            history = trainer.run(quiet=quiet, progress=_Progress(progress, checkpoint, save_every, record),
                                  resume=resume, should_stop=should_stop, scoring=scoring,
                                  sync_at=(lambda done: done % save_every == 0) if save_every else None)
    except FitStopped as stopped:
        stopped.state.identity, stopped.state.seconds = identity, record.seconds()
        raise
    # 6. The result: the kept state judged (one warning line when the check finds a problem) and recorded.
    curve = trainer.scores.curve if trainer.scores is not None else []
    kept_step = trainer.best_step if settings.keep == "best-mse" else trainer.kept_step
    check = check_fit(history, curve, validation.no_edit, kept_step, settings.lr)
    if check.line():
        warnings.warn(InvertWarning(check.line()))
    names = [e["name"] for e in exemplars] if exemplars else list(range(len(befores)))
    report = {"kept_step": kept_step, "fit_check": check.line(), "init_scores": init.scores,
              "validation": {"pairs": [names[i] for i in held] if held else "train", "steps": settings.val_steps,
                             "every": every, "no_edit": validation.no_edit, "curve": [list(x) for x in curve],
                             **({"stopped_at": trainer.stopped_at} if trainer.stopped_at is not None else {})},
              "cost": meter.report()}
    return record(history[-1] if history else None, trainer.stopped_at or settings.steps, report)


def _complete(editor: Editor, method: str, settings: FitSettings | None, method_settings: Any,
              where: Callable[[str], str]) -> tuple[FitSettings, Any]:
    """The fit's settings with the library's defaults where none are given and the model's resolution where none
    is; settings this model cannot take are refused (each value was checked when its settings were made)."""
    settings = settings or FitSettings()
    method_settings = method_settings if method_settings is not None else settings_for(method, {})[1]
    editor.limits.check({**as_dict(settings), **as_dict(method_settings)}, where)
    if settings.resolution is None:
        settings = dataclasses.replace(settings, resolution=editor.resolution)
    return settings, method_settings


@dataclasses.dataclass(frozen=True)
class _Recorder:
    """Makes the fit's instruction from its method's current state: a checkpoint mid-fit or the result."""

    learned: Method
    editor: Editor
    settings: FitSettings
    method_settings: Any
    clip: Clip | None
    init: InitChoice
    exemplars: list[dict] | None
    stored: dict[str, torch.Tensor]
    model_defaults: dict[str, Any] | None
    origin: float  # time.perf_counter() when the fit began, less the seconds a resumed fit had spent before

    def seconds(self) -> float:
        return time.perf_counter() - self.origin

    def __call__(self, loss: float | None, steps_done: int, report: dict | None = None) -> Instruction:
        return make_instruction(self.learned, self.editor, self.settings, self.method_settings,
                                clip_name=self.clip.name if self.clip else "", init_text=self.init.text,
                                final_loss=loss, seconds=self.seconds(), exemplars=self.exemplars,
                                steps_done=steps_done, stored=self.stored, phrases=self.init.phrases,
                                extra_meta={"model_defaults": self.model_defaults or None, **(report or {})})


@dataclasses.dataclass(frozen=True)
class _Progress:
    """The loop's progress callback: the caller's, and a checkpoint instruction every ``save_every`` steps."""

    progress: Callable[[FitProgress], None] | None
    checkpoint: Callable[[Instruction, int], None] | None
    save_every: int
    record: _Recorder

    def __call__(self, p: FitProgress) -> None:
        if self.progress is not None:
            self.progress(p)
        if self.checkpoint is not None and self.save_every and p.step % self.save_every == 0 and p.step < p.total:
            self.checkpoint(self.record(p.loss, p.step), p.step)


def load_method(instruction: Instruction, editor: Editor, strength: float = 1.0, text: str | None = None,
                reverse: bool = False) -> Method:
    """The method object that applies ``instruction`` on ``editor``'s model, its change scaled by ``strength``,
    followed by ``text`` (a hybrid instruction); ``reverse``: the edit undone (the reverse instruction of a fit
    with --reverse; a LoRA's negated adapter)."""
    where = instruction.path or "instruction"
    recorded = instruction.meta.backbone
    if recorded != editor.name:
        raise InstructionFileError(f"{where}: learned on a {recorded} model; this model is {editor.name} "
                                   f"({editor.model_id}): an instruction applies on the architecture it was learned on")
    try:
        cls = method_class(instruction.method)
    except InvertError:
        raise InstructionFileError(f"{where}: unknown method '{instruction.method}'") from None
    try:
        method = cls.from_instruction(instruction.tensors, instruction.meta, editor, strength, reverse)
    except KeyError as exc:
        raise InstructionFileError(f"{where}: missing tensor {exc}") from None
    except InstructionFileError as exc:  # the method's own checks do not know the file's name
        raise InstructionFileError(f"{where}: {exc}") from None
    return method.hybrid(text) if text else method


def mixed_method(instructions: Sequence[Instruction], editor: Editor, weights: Sequence[float] | None = None,
                 strength: float = 1.0, text: str | None = None, reverse: bool = False) -> Method:
    """One method conditioning as the mix of ``instructions`` (same method and base model) by ``weights`` (equal
    by default), followed by ``text``: what each learned, its change from its init, weighted and added to a base
    that averages their inits (see :meth:`Method.mix`). Weights summing to 1 interpolate: copies of one file give
    that file, 1, 0 the first; another total scales the combined change from the base, as ``strength`` does (one
    instruction: its weight is a strength)."""
    weights = [check_value(w, float, MIX_WEIGHT, "a --mix weight") for w in weights] if weights is not None \
        else [1 / len(instructions)] * len(instructions)
    if len(weights) != len(instructions):
        raise InvertError(f"--mix has {len(weights)} weights for {len(instructions)} instructions")
    first = instructions[0]
    for other in instructions[1:]:
        if other.method != first.method:
            raise InvertError(f"cannot mix a {first.method} instruction with a {other.method} one")
        if other.meta.model_fingerprint != first.meta.model_fingerprint:
            raise InvertError("cannot mix instructions learned on different base models")
    instructions, weights = _taking_part(list(instructions), weights)
    if len(instructions) == 1:
        return load_method(instructions[0], editor, weights[0] * strength, text, reverse)
    methods = [load_method(inst, editor, strength, reverse=reverse) for inst in instructions]
    method = type(methods[0]).mix(methods, weights)
    return method.hybrid(text) if text else method


def _taking_part(instructions: list[Instruction], weights: list[float]) -> tuple[list[Instruction], list[float]]:
    """The instructions a mix is made of, each once: copies (the same tensors and metadata) are one with their
    weights summed, and an instruction of weight 0 takes no part (it has no share of the base either) unless every
    weight is 0. So a mix that is one instruction at heart is that instruction at that strength, exactly."""
    kept: list[Instruction] = []
    summed: list[float] = []
    for inst, weight in zip(instructions, weights):
        same = next((i for i, k in enumerate(kept) if _same(k, inst)), None)
        if same is None:
            kept.append(inst)
            summed.append(weight)
        else:
            summed[same] += weight
    if any(summed):
        kept, summed = [k for k, w in zip(kept, summed) if w], [w for w in summed if w]
    return kept, summed


def _same(a: Instruction, b: Instruction) -> bool:
    return a.meta == b.meta and a.tensors.keys() == b.tensors.keys() and \
        all(torch.equal(v, b.tensors[k]) for k, v in a.tensors.items())


def mix(instructions: Sequence[Instruction], editor: Editor, weights: Sequence[float] | None = None) -> Instruction:
    """The weighted mix of ``instructions`` as one instruction (one can save it): the learned state mixed by
    the method (see :func:`mixed_method`); metadata, preview thumbnails and CLIP key from the first."""
    method = mixed_method(instructions, editor, weights)
    first = instructions[0]
    kept = {k: v for k, v in first.tensors.items() if k.startswith(("exemplar.", "clip."))}
    meta = dataclasses.replace(first.meta, num_tokens=method.num_tokens, extra=method.extra_meta() or None)
    return Instruction(first.method, {**kept, **method.tensors()}, meta, first.path)


def _load(instruction: Instruction | str | os.PathLike) -> Instruction:
    return Instruction.load(instruction) if isinstance(instruction, (str, os.PathLike)) else instruction


def _editor(inst: Instruction, editor: Editor | None, pipe: DiffusionPipeline | None, model: str | None, device: str,
            dtype: str) -> Editor:
    if editor is not None:
        return editor
    if pipe is not None:
        return editor_of(pipe, inst.meta.base_model)
    return load_editor(model or recorded_model(inst.meta.base_model, inst.path or "instruction"), device, dtype)


def apply(instruction: Instruction | str | os.PathLike | Sequence[Instruction | str | os.PathLike],
          images: Image.Image | Sequence[Image.Image], *, weights: Sequence[float] | None = None,
          editor: Editor | None = None, pipe: DiffusionPipeline | None = None, model: str | None = None,
          device: str = "auto", dtype: str = "auto", settings: ApplySettings | None = None,
          allow_model_mismatch: bool = False, batch_size: int | None = BATCH_SIZE, low_memory: bool = False,
          on_images: Callable[[list[Image.Image]], None] | None = None,
          on_step: Callable[[int], None] | None = None, **options: Any) -> list[Image.Image] | Image.Image:
    """Edit ``images`` (one PIL image, or a list) with a learned instruction, alone or followed by ``text`` (a
    hybrid instruction); a list of instructions is mixed with ``weights`` (equal by default).

    ``options``: the sampling settings by name (:class:`invert.settings.ApplySettings`: steps, guidance,
    image_guidance, seed, noise, scheduler, strength, reverse, text), or ``settings`` made already; each is
    checked. Guidance scales default to those stored in the file. ``seed``: fresh noise drawn from it exactly as
    diffusers' pipeline does with ``generator=torch.Generator().manual_seed(seed)``; without one, the noise stream
    of the fit's seed (stored in the file). ``noise="fit"`` reuses the noise the fit drew for each timestep (the
    VISII paper's fixed noise). ``reverse`` undoes the edit. ``editor``: an editor already loaded; ``pipe``: your
    own diffusers pipeline of the instruction's architecture to edit with. Images of one size go through the model
    together, ``batch_size`` at most (4, as ``invert apply``'s; None: all of them); ``on_images`` receives each
    batch's results as soon as they are done, ``on_step`` each sampling step."""
    settings = apply_settings(settings, options)
    batch_size = check_value(batch_size, int | None, BATCH_SIZE_LIMITS, keyword("batch_size"))
    single = isinstance(images, Image.Image)
    images = _images(images)
    many = not isinstance(instruction, (str, os.PathLike, Instruction))  # a list, a tuple, a generator ...
    insts = [_load(i) for i in (instruction if many else [instruction])]
    if not insts:
        raise InvertError("instruction: an empty list; give an instruction, or several to mix")
    inst = insts[0]
    editor = _editor(inst, editor, pipe, model, device, dtype)
    editor.limits.check(as_dict(settings), keyword, APPLY_MODEL_LIMITED)
    if low_memory:
        editor.set_low_memory(True)
    for i in insts:
        i.check_model(editor.fingerprint, allow_model_mismatch, i.path or "")
    method = mixed_method(insts, editor, weights, settings.strength, settings.text, settings.reverse)
    guidance, image_guidance = settings.guidance_for(inst.meta.guidance)
    noise = settings.noise_mode(where=keyword)
    noise_seed = settings.seeds(inst.meta.noise_seed, where=keyword)[0]
    results: list[Image.Image] = []
    # Every image has its own noise generator, so its result does not depend on the batch it is in.
    for group in same_size_batches(images, batch_size):
        done = sample(editor, method, group, steps=settings.steps, guidance=guidance, image_guidance=image_guidance,
                      seed=noise_seed, noise=noise, scheduler=settings.scheduler, on_step=on_step)
        results += done
        if on_images is not None:
            on_images(done)
    return results[0] if single else results


def _images(images: Image.Image | Sequence[Image.Image]) -> list[Image.Image]:
    """``apply``'s images as a list, each a PIL image (a path, or a list of paths, is refused by name: a str
    would otherwise be taken letter by letter)."""
    found = [images] if isinstance(images, (Image.Image, str, os.PathLike)) else list(images)
    odd = next((i for i in found if not isinstance(i, Image.Image)), None)
    if odd is not None:
        raise InvertError(f"images: expected a PIL image or a list of them (invert.pairs.open_image opens a file), "
                          f"not {odd!r}")
    return found


def apply_settings(settings: ApplySettings | None, options: dict[str, Any]) -> ApplySettings:
    """``settings``, or the settings ``options`` name (``fresh_noise=True``, as older scripts say it, is
    ``noise="fresh"``), checked."""
    if settings is not None:
        if not isinstance(settings, ApplySettings):
            raise InvertError(f"settings: expected an ApplySettings, not {type(settings).__name__} (options by name "
                              "go as keyword arguments: steps=30, seed=1 ...)")
        if options:
            raise InvertError(f"give settings= or options by name ({', '.join(options)}), not both")
        return settings
    options = dict(options)
    fresh = options.pop("fresh_noise", False)
    options["noise"] = with_fresh_noise_flag(options.get("noise"), check_value(fresh, bool, {}, keyword("fresh_noise")),
                                             keyword)
    return build_settings(ApplySettings, options)


def same_size_batches(images: list[Image.Image], batch_size: int | None = None) -> list[list[Image.Image]]:
    """Consecutive images of one size, at most ``batch_size`` together."""
    runs: list[list[Image.Image]] = []
    for img in images:
        if runs and runs[-1][0].size == img.size and len(runs[-1]) != batch_size:
            runs[-1].append(img)
        else:
            runs.append([img])
    return runs


@contextlib.contextmanager
def installed(instruction: Instruction | str | os.PathLike, pipe: DiffusionPipeline, *, text: str | None = None,
              strength: float = 1.0, reverse: bool = False, allow_model_mismatch: bool = False
              ) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, your own diffusers ``pipe`` (of the architecture the instruction was learned on) edits
    with this instruction: call it with the yielded keyword arguments, the instruction's ``prompt_embeds`` (and
    ``pooled_prompt_embeds`` on SDXL and FLUX.1 Kontext, whose pipelines need it), and any arguments of your own.
    An InstructBrush instruction's attention processors or a LoRA's adapter are on the pipeline's denoiser for the
    block only.

    >>> with invert.installed("sketch.inst", pipe) as instruction:                        # doctest: +SKIP
    ...     image = pipe(**instruction, image=photo, num_inference_steps=30).images[0]
    """
    inst = _load(instruction)
    editor = editor_of(pipe, inst.meta.base_model)
    inst.check_model(editor.fingerprint, allow_model_mismatch, inst.path or "")
    method = load_method(inst, editor, strength, text, reverse)
    from .backbones.rows import Rows

    with method.in_pipeline(pipe):
        c = method.conditioning(Rows.uniform(torch.zeros(1, dtype=torch.long), True), editor.uncond)
        yield editor.pipeline_arguments(c.embeds.detach(), None if c.pooled is None else c.pooled.detach())


def editor_of(pipe: DiffusionPipeline, model_id: str) -> Editor:
    """A user's own diffusers pipeline as an editor of its architecture."""
    cls = backbone_for_pipeline(type(pipe).__name__, "pipe")
    return cls(pipe, model_id, pipe.device, cls.fingerprinted(pipe)[0].dtype)


__all__ = ["apply", "apply_settings", "editor_of", "fit", "fit_images", "installed", "load_method", "mix",
           "mixed_method", "model_defaults",
           "same_size_batches"]
