"""Edit without fitting: an edit encoder turns exemplar pairs into an ordinary instruction in one forward pass, and
gives a fit (``--init encoder:FILE``) its starting state."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..backbones import Editor, load_editor
from ..backbones.model_info import model_file, recorded_model
from ..clip import Clip, clip_name_for, load_clip
from ..errors import EncoderFileError, InvertError
from ..fitting.assembly import make_instruction
from ..fitting.losses import clip_direction
from ..instruction import Instruction
from ..instruction.thumbnails import thumbnail_tensor
from ..methods import method_class, settings_for
from ..methods.base import Method
from ..methods.two_way import TwoWay
from ..pairs import PairsSource, as_pairs, file_sha256, load_pairs
from ..settings import FitSettings, build_settings
from ..settings.fields import keyword
from .file import EncoderFile
from .network import load_state
from .refine import Refinement
from .refine import refine as refine_weights

ENCODER_FOLDER = "encoder"  # a model folder's own encoders: encoder/<method>.safetensors
ENCODER_INIT = "encoder"  # the --init mode that starts a fit from an encoder's state


def shipped_encoders(model: str) -> dict[str, Path]:
    """The encoders a model's folder ships, by method (the toy model's: encoder/visii.safetensors)."""
    from ..methods import method_names

    found = {m: model_file(model, f"{ENCODER_FOLDER}/{m}.safetensors") for m in method_names()}
    return {m: p for m, p in found.items() if p is not None}


def find_encoder(spec: str | os.PathLike | None, model: str, method: str | None = None) -> Path:
    """The encoder file ``spec`` names, or (``spec`` empty) the one the model's folder ships for ``method`` (any
    method: its only one)."""
    if spec:
        return Path(spec)
    shipped = shipped_encoders(model)
    if method is not None:
        if method not in shipped:
            raise EncoderFileError(f"the model '{model}' ships no {method} encoder ({_listed(shipped)}); train one "
                                   "with 'invert encoder train' and pass its file")
        return shipped[method]
    if len(shipped) != 1:
        raise EncoderFileError(f"the model '{model}' ships {_listed(shipped)}; pass --encoder FILE")
    return next(iter(shipped.values()))


def encoder_loss_target(path: Path) -> str:
    """The loss target the encoder file at ``path`` was trained with: a fit under ``--init encoder`` takes it unless
    given (:func:`invert.api.model_defaults`)."""
    encoder = EncoderFile.load(path)
    return settings_for(encoder.method, encoder.info["options"])[0].loss_target


def _listed(shipped: dict[str, Path]) -> str:
    return f"encoders for {', '.join(shipped)}" if shipped else "no encoder"


def encoded_method(encoder: EncoderFile, editor: Editor, clip: Clip, befores: list[Image.Image],
                   afters: list[Image.Image], method_settings: Any = None, allow_model_mismatch: bool = False,
                   refine: FitSettings | None = None) -> Method:
    """The method state ``encoder`` gives for the pairs: the method initialized at the encoder's base init text
    (with ``method_settings``, default the encoder's own) and its parameters set to the encoder's output; with
    ``refine`` (its ``encoder_refine`` steps, ``encoder_refine_lr`` and ``seed``), the encoder's basis weights then
    fitted to the pairs by the loss the encoder was trained with (:mod:`invert.encoder.refine`)."""
    return encoded_state(encoder, editor, clip, befores, afters, method_settings, allow_model_mismatch, refine)[0]


def encoded_state(encoder: EncoderFile, editor: Editor, clip: Clip, befores: list[Image.Image],
                  afters: list[Image.Image], method_settings: Any = None, allow_model_mismatch: bool = False,
                  refine: FitSettings | None = None) -> tuple[Method, Refinement | None]:
    """:func:`encoded_method`, and what its refinement gave (None without one)."""
    info = encoder.info
    own_settings, own_method_settings = settings_for(info["method"], info["options"])
    if method_settings is None:
        method_settings = own_method_settings
    text = info["init_text"]
    cls = method_class(info["method"])
    method = cls.initialize(editor, editor.encode_text([text]), text, method_settings, 0)
    encoder.check(editor, clip, method, allow_model_mismatch, method_settings)
    net = encoder.encoder.to(editor.device)
    before, after = clip.image_features(befores).to(editor.device), clip.image_features(afters).to(editor.device)
    refinement = None
    if refine is not None and refine.encoder_refine:
        refinement = refine_weights(net, method, method_settings, editor, clip, before, after, befores, afters,
                                    refine_settings(own_settings, refine.encoder_refine, refine.encoder_refine_lr,
                                                    refine.seed))
        weights = refinement.weights
    else:
        with torch.no_grad():
            weights = net.weights(before, after)
    with torch.no_grad():
        load_state(method, net.decode(weights))
    return method, refinement


def refine_settings(own: FitSettings, steps: int, lr: float, seed: int) -> FitSettings:
    """The encoder's own loss settings (``own``: those it was trained with) with a refinement's steps, learning rate
    and seed: recorded as a fit from the encoder."""
    return dataclasses.replace(own, init=ENCODER_INIT, encoder_file="", encoder_refine=steps, encoder_refine_lr=lr,
                               seed=seed)


def encoder_start(editor: Editor, method: str, settings: FitSettings, method_settings: Any, clip: Clip | None,
                  befores: list[Image.Image], afters: list[Image.Image]) -> tuple[Method, str] | None:
    """A fit's untrained instruction and init text under ``--init encoder`` (the encoder: ``--encoder-file``, else the
    model folder's own for the method): the state the encoder gives for the (training) pairs, at the encoder's base
    init text; with --reverse, its reverse instruction the state it gives for the pairs the other way round. None
    for any other --init."""
    if settings.init != ENCODER_INIT:
        return None
    if settings.init_texts:
        raise InvertError("--init-text and --init encoder both give the fit's start; give one")
    if clip is None:
        raise InvertError("--init encoder needs the encoder's CLIP model (see --clip-model)")
    encoder = EncoderFile.load(find_encoder(settings.encoder_file, editor.model_id, method))
    if encoder.method != method:
        raise EncoderFileError(f"{encoder.where}: encodes {encoder.method} instructions; this fit is --method {method}")
    learned = encoded_method(encoder, editor, clip, befores, afters, method_settings, refine=settings)
    text = encoder.info["init_text"]
    if settings.reverse and learned.needs_reverse_instruction:
        learned = TwoWay(learned, encoded_method(encoder, editor, clip, afters, befores, method_settings,
                                                 refine=settings), text)
    return learned, text


def refinement(encoder: EncoderFile, steps: int, lr: float | None = None, seed: int = 0) -> FitSettings:
    """The settings of ``steps`` refinement steps (``lr``: default the option's) of ``encoder``'s answer."""
    own = settings_for(encoder.method, encoder.info["options"])[0]
    return refine_settings(own, steps, own.encoder_refine_lr if lr is None else lr, seed)


def encode_images(encoder: EncoderFile, editor: Editor, clip: Clip, befores: list[Image.Image],
                  afters: list[Image.Image], exemplars: list[dict] | None = None,
                  allow_model_mismatch: bool = False, refine: int = 0, refine_lr: float | None = None,
                  seed: int = 0) -> Instruction:
    """The instruction ``encoder`` gives for already-opened pairs (at the model's resolution): an ordinary
    instruction, as a fit of 0 steps from the encoder's state would record it; with ``refine`` steps, the encoder's
    basis weights then fitted to the pairs (``refine_lr``, default the option's; ``seed``)."""
    start = time.perf_counter()
    settings = refinement(encoder, refine, refine_lr, seed)
    method_settings = settings_for(encoder.method, encoder.info["options"])[1]
    method, refined = encoded_state(encoder, editor, clip, befores, afters,
                                    allow_model_mismatch=allow_model_mismatch, refine=settings)
    stored = {"exemplar.before": thumbnail_tensor(befores[0]), "exemplar.after": thumbnail_tensor(afters[0]),
              "clip.direction": clip_direction(clip, befores, afters).detach().float().cpu()}
    source = encoder.path.name if encoder.path is not None else "encoder"
    sha = f", sha256 {file_sha256(encoder.path)}" if encoder.path is not None else ""
    note = "" if refined is None else f"; {refined.describe(refine)}"  # the CLI shows what follows "; "
    return make_instruction(method, editor, settings, method_settings, clip_name=clip.name,
                            init_text=encoder.info["init_text"], seconds=time.perf_counter() - start,
                            exemplars=exemplars, stored=stored, steps_done=refine,
                            extra_meta={"encoded_by": f"edit encoder {source} ({len(befores)} pairs{sha}){note}"})


def encode(pairs: PairsSource, encoder: str | os.PathLike | EncoderFile | None = None, *, model: str | None = None,
           editor: Editor | None = None, clip_model: str | None = None, clip: Clip | None = None,
           device: str = "auto", dtype: str = "auto", allow_model_mismatch: bool = False, refine: int = 0,
           refine_lr: float | None = None, seed: int = 0) -> Instruction:
    """The instruction an edit encoder gives for exemplar pairs, in one forward pass (no fitting); with ``refine``
    steps, its weights over its basis states are then fitted to the pairs (a short fit in the encoder's own
    coordinates, ``refine_lr``; ``seed`` draws its noises and timesteps).

    ``pairs``: a pairs folder, a ``(before, after)`` tuple of files, or a list of :class:`Pair`. ``encoder``: its
    file (default: the one the model's folder ships); ``model``: default the one it was trained on.

    >>> inst = invert.encode("examples/toy/night/train", model="toy")    # doctest: +SKIP
    >>> inst.save("night.inst")                                         # doctest: +SKIP
    """
    # checked as encode's --encoder-refine, --encoder-refine-lr and --seed are, before any work, named by keyword
    named = {"encoder_refine": "refine", "encoder_refine_lr": "refine_lr", "seed": "seed"}
    build_settings(FitSettings, {"init": ENCODER_INIT, "encoder_refine": refine, "seed": seed,
                                 **({"encoder_refine_lr": refine_lr} if refine_lr is not None else {})},
                   lambda name: keyword(named.get(name, name)))
    found = as_pairs(pairs)
    if not isinstance(encoder, EncoderFile):
        if editor is None and model is None and not encoder:
            raise InvertError("give the encoder file or the model whose own encoder to use")
        encoder = EncoderFile.load(find_encoder(encoder, editor.model_id if editor is not None else model))
    if editor is None:
        editor = load_editor(model or recorded_model(encoder.info["base_model"], encoder.where), device, dtype)
    if clip is None:
        clip = load_clip(clip_name_for(clip_model, editor.model_id), editor.device)
    resolution = int(encoder.info["options"].get("resolution") or editor.resolution)
    befores, afters = load_pairs(found, resolution)
    exemplars = [{"name": p.name, "before": file_sha256(p.before), "after": file_sha256(p.after)} for p in found]
    return encode_images(encoder, editor, clip, befores, afters, exemplars, allow_model_mismatch, refine, refine_lr,
                         seed)


__all__ = ["ENCODER_FOLDER", "encode", "encode_images", "encoded_method", "encoded_state", "encoder_loss_target",
           "encoder_start", "find_encoder", "refinement", "shipped_encoders"]
