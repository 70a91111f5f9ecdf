"""The frozen editing models, one module per architecture (the protocol in ``base``), and loading one: ``--model``
names a hub id, a local diffusers folder, ``toy`` (shipped) or random weights from configs, and the folder's
``model_index.json`` (its pipeline class) picks the backbone.

A backbone registers here by the diffusers pipeline classes it loads; nothing else in invert names one."""
from __future__ import annotations

import importlib
import json
import logging
import math
import time
import warnings
from pathlib import Path

import torch

from ..defaults import DEFAULT_MODEL
from ..errors import ModelLoadError
from .base import Conditioning, Editor, TextEncoding, fingerprint, resolve_device, resolve_dtype
from .model_info import local_folder, looks_like_path, resolve_model_path, where

log = logging.getLogger("invert")

# Hub ids whose model_index.json could not be had, and when: asked again within UNREACHED_SECONDS, the answer is the
# same error at once (offline, huggingface_hub retries for about 25 s, and a fit looks its model up twice: for the
# architecture's defaults, then to load it)
_UNREACHED: dict[str, float] = {}
UNREACHED_SECONDS = 60.0

# backbone name -> "module:class"; each class lists the pipeline classes it loads (Editor.pipeline_classes). In
# order of importance: the GPU benchmark (benchmarks.gpu) measures them in this order.
BACKBONES = {
    "ip2p": "ip2p:InstructPix2Pix",
    "flux2-klein": "flux2_klein:Flux2Klein",
    "sdxl-ip2p": "sdxl:SDXLInstructPix2Pix",
    "flux1-kontext": "flux_kontext:FluxKontext",
}


def backbone_class(name: str) -> type[Editor]:
    """A registered backbone by its name (what an .inst records)."""
    if name not in BACKBONES:
        raise ModelLoadError(f"unknown backbone '{name}' (this invert has: {', '.join(BACKBONES)})")
    module, cls = BACKBONES[name].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def backbone_for_pipeline(class_name: str, where_from: str) -> type[Editor]:
    """The backbone that loads the diffusers pipeline class ``class_name``."""
    for name in BACKBONES:
        cls = backbone_class(name)
        if class_name in cls.pipeline_classes:
            return cls
    supported = sorted(c for name in BACKBONES for c in backbone_class(name).pipeline_classes)
    raise ModelLoadError(f"{where_from}: a {class_name or 'pipeline without a class name'}, which invert cannot "
                         f"edit with (supported: {', '.join(supported)})")


def pipeline_class_name(source: str) -> str:
    """model_index.json's ``_class_name`` of a folder or hub id (for a hub id, read from the Hugging Face cache or
    downloaded alone, a small file)."""
    if Path(source).is_dir():
        path = Path(source) / "model_index.json"
        if not path.is_file():
            raise ModelLoadError(f"{source}: not a diffusers model folder (it has no model_index.json)")
        try:
            return str(json.loads(path.read_text()).get("_class_name", ""))
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{path}: unreadable ({exc})") from None
    if looks_like_path(source):
        raise ModelLoadError(f"{source}: no such model folder")
    from diffusers import DiffusionPipeline

    if time.monotonic() - _UNREACHED.get(source, -math.inf) < UNREACHED_SECONDS:
        raise ModelLoadError(_unreachable(source))  # a fit looks the model up twice: the hub's retries once
    try:
        with warnings.catch_warnings():  # diffusers passes huggingface_hub an argument it deprecated: not the user's
            warnings.simplefilter("ignore")
            return str(DiffusionPipeline.load_config(source).get("_class_name", ""))
    except Exception:  # hub and file errors come in many types; all end in one line for the user
        _UNREACHED[source] = time.monotonic()
        raise ModelLoadError(_unreachable(source)) from None


def _unreachable(source: str) -> str:
    return (f"cannot load '{source}': it is no local folder, not in the Hugging Face cache, and the hub cannot be "
            f"reached. Download it where there is network (hf download {source} --local-dir model) and pass "
            "--model model")


def backbone_of(model: str) -> type[Editor]:
    """The backbone that loads ``model`` (any name :func:`load_editor` takes), from its model_index.json."""
    if model.startswith("random"):
        folder = random_folder(model)
        return backbone_for_pipeline(pipeline_class_name(folder), folder)
    source = resolve_model_path(model)
    return backbone_for_pipeline(pipeline_class_name(source), source)


def random_folder(model: str) -> str:
    """The folder of configs ``random:FOLDER`` names: a folder, or the name of one shipped in
    invert/backbones/configs; ``random`` alone is the full IP2P's."""
    from .ip2p import CONFIGS, IP2P_CONFIGS

    folder = model.partition(":")[2] or str(IP2P_CONFIGS)
    return str(CONFIGS / folder) if not Path(folder).is_dir() and (CONFIGS / folder).is_dir() else folder


def architecture_defaults(model: str) -> dict:
    """The fit options ``model``'s architecture recommends (:attr:`Editor.fit_defaults`); none when the model
    cannot be looked at (loading it says why)."""
    try:
        return dict(backbone_of(model).fit_defaults)
    except ModelLoadError:
        return {}


def _load_pipeline(cls: type[Editor], source: str, dtype: torch.dtype):
    try:
        return cls.from_pretrained(source, dtype)
    except Exception as exc:  # hub and file errors come in many types; all end in one line for the user
        if Path(source).is_dir():
            raise ModelLoadError(f"{source}: not a loadable {cls.pipeline_classes[0]} folder ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        raise ModelLoadError(_unreachable(source)) from None


def load_editor(model: str = DEFAULT_MODEL, device: str | None = "auto", dtype: str | torch.dtype | None = "auto",
                ) -> Editor:
    """Load an editing model from a hub id, a local diffusers folder, ``toy`` (the shipped toy model) or
    ``random:FOLDER`` (random weights from a folder of diffusers configs, or from the shipped full-size configs
    of that name: ``random:sdxl-instructpix2pix``; ``random`` alone is the full IP2P architecture). The pipeline
    class in its ``model_index.json`` picks the backbone."""
    dev = resolve_device(device)
    resolve_dtype(dtype, dev)  # a bad dtype is refused before anything is looked up
    log.info("loading %s (%s) ...", model, where(model))
    cls = backbone_of(model)
    dt = resolve_dtype(dtype, dev, cls.half_dtype)
    # A bf16 model is loaded in fp32, fingerprinted and then cast, so that an instruction fitted in bf16 records,
    # and one fitted in any dtype is checked against, the fingerprint of fp32 and fp16 loading.
    load = torch.float32 if dt == torch.bfloat16 else dt
    if model.startswith("random"):
        folder = random_folder(model)
        cls = backbone_for_pipeline(pipeline_class_name(folder), folder)
        pipe = cls.from_configs(folder, dtype=load)
    else:
        pipe = _load_pipeline(cls, resolve_model_path(model), load)
    name = local_folder(model)
    if load == dt:
        return cls(pipe, name, dev, dt)
    taken = fingerprint(*cls.fingerprinted(pipe))
    return cls(pipe.to(dtype=dt), name, dev, dt, fingerprint=taken)


__all__ = ["BACKBONES", "Conditioning", "Editor", "TextEncoding", "architecture_defaults", "backbone_class",
           "backbone_for_pipeline", "backbone_of", "fingerprint", "load_editor", "pipeline_class_name",
           "resolve_device", "resolve_dtype"]
