"""What invert knows of a base model without loading it: where it comes from, the image size its configs give, and
the fit defaults its folder ships (``invert.json``). Importing this module imports no torch."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_MODEL
from ..errors import ModelLoadError

TOY_MODEL = "toy"
TOY_DIT_MODEL = "toy-dit"
# The models shipped with invert, by --model name: their folder under invert/toy/ and the command that trains it.
SHIPPED = {TOY_MODEL: ("model", "benchmarks.toy_train"), TOY_DIT_MODEL: ("dit", "benchmarks.toy_dit_train")}
DEFAULTS_FILE = "invert.json"


def toy_model_path(name: str = TOY_MODEL) -> Path:
    return Path(__file__).parent.parent / "toy" / SHIPPED[name][0]


def resolve_model_path(model: str) -> str:
    """``toy`` and ``toy-dit`` name the models shipped with invert; anything else is a hub id or a folder."""
    if model in SHIPPED:
        path = toy_model_path(model)
        if not (path / "model_index.json").exists():
            raise ModelLoadError(f"{path}: the {model} model is not in this installation "
                                 f"(train it with 'python -m {SHIPPED[model][1]} --out {path}')")
        return str(path)
    return model


def looks_like_path(model: str) -> bool:
    """A name only a folder can have (a hub id is ``owner/name``)."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or Path(model).is_absolute()


def local_folder(model: str) -> str:
    """An existing local model folder as an absolute path (what an .inst records, so that it can be applied from
    any working folder); anything else unchanged."""
    if model not in SHIPPED and not model.startswith("random") and Path(model).expanduser().is_dir():
        return os.path.abspath(Path(model).expanduser())  # not resolve(): a symlinked path stays as the user has it
    return model


def recorded_model(recorded: str | None, where: object) -> str:
    """The base model an instruction (or library) at ``where`` recorded, checked: a local folder that is not
    here is an error that says how to pass --model (the file's fingerprint still checks the weights)."""
    recorded = recorded or DEFAULT_MODEL
    if looks_like_path(recorded) and not Path(recorded).expanduser().is_dir():
        raise ModelLoadError(f"{where}: it was learned on the model folder {recorded}, which is not here; pass "
                             "--model with the folder (or hub id) of the same weights: the file's fingerprint checks "
                             "that they are")
    return recorded


def model_file(model: str, name: str) -> Path | None:
    """A file of the model: in its folder, or in the Hugging Face cache for a hub id (never downloaded)."""
    source = resolve_model_path(model)
    if Path(source).is_dir():
        path = Path(source) / name
        return path if path.is_file() else None
    if looks_like_path(source):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(source, name)
    except ValueError:  # not a valid repository id
        return None
    return Path(found) if isinstance(found, str) else None


def where(model: str) -> str:
    """Where loading ``model`` reads it from, in words."""
    if model in SHIPPED:
        return f"the {model} model shipped with invert"
    if model.startswith("random"):
        return "random weights from configs"
    if Path(model).expanduser().is_dir() or looks_like_path(model):
        return "local folder"
    if model_file(model, "model_index.json") or model_file(model, "config.json"):
        return "Hugging Face cache"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "Hugging Face cache, offline"
    return "Hugging Face hub: downloading it the first time, several GB"


def model_resolution(model: str) -> int | None:
    """The image size the model was trained at, read from its configs (a UNet's sample size times the VAE's
    downsampling; for a DiT editor, which has no UNet, its VAE's sample size); None when they are not at hand."""
    unet, vae = model_file(model, "unet/config.json"), model_file(model, "vae/config.json")
    if vae is None:
        return None
    try:
        vae_config = json.loads(vae.read_text())
        if unet is None:
            size = vae_config["sample_size"]
            return int(size[0] if isinstance(size, list) else size)
        size = json.loads(unet.read_text())["sample_size"]
        factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(size) * factor


def pipeline_settings(model: str) -> dict[str, Any]:
    """The pipeline call arguments a model folder asks for (the ``pipeline`` object of its ``invert.json``: a toy
    model's padded prompt length and text-encoder layers, where they differ from the pipeline's defaults for the
    real model); ``random:FOLDER`` reads FOLDER's."""
    folder = model.partition(":")[2] if model.startswith("random:") else None
    path = Path(folder) / DEFAULTS_FILE if folder else model_file(model, DEFAULTS_FILE)
    if path is None or not path.is_file():
        return {}
    settings = _invert_json(path, "pipeline", {})
    if not isinstance(settings, dict):
        raise ModelLoadError(f"{path}: 'pipeline' should be an object of pipeline call arguments")
    return settings


def _invert_json(path: Path, key: str, default: Any = None) -> Any:
    """The value of ``key`` in the model folder's ``invert.json`` at ``path`` (``default`` where it has none)."""
    try:
        return json.loads(path.read_text()).get(key, default)
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{path}: not a valid {DEFAULTS_FILE} ({exc})") from None


def _paired(model: str, key: str, expected: str) -> tuple[Path, str] | None:
    """The ``key`` a model folder's ``invert.json`` names (a non-empty string) and the file it came from, or None."""
    path = model_file(model, DEFAULTS_FILE)
    if path is None:
        return None
    name = _invert_json(path, key)
    if name is None:
        return None
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"{path}: '{key}' should be {expected}")
    return path, name


def paired_clip(model: str) -> str | None:
    """The CLIP model a model folder names as its own (the ``clip`` of its ``invert.json``: a hub id, or a folder,
    relative to the model's folder; the toy DiT names the toy IP2P's toy CLIP, trained on the same world), or
    None."""
    paired = _paired(model, "clip", "the name or folder of a CLIP model")
    if paired is None:
        return None
    folder = paired[0].parent / paired[1]
    return str(folder.resolve()) if folder.is_dir() else paired[1]


def paired_vocab(model: str) -> str | None:
    """The phrase vocabulary a model folder names as its own (the ``vocab`` of its ``invert.json``: a vocabulary
    name, or a file relative to the model's folder; the toy DiT names the toy world's), or None."""
    paired = _paired(model, "vocab", "a vocabulary name or a file of phrases")
    if paired is None:
        return None
    file = paired[0].parent / paired[1]
    return str(file.resolve()) if file.is_file() else paired[1]


def fit_defaults(model: str) -> dict[str, Any]:
    """The fit options a model's folder recommends for itself, from the ``fit`` object of its ``invert.json``
    (the toy model's: a higher learning rate and a lower text guidance than IP2P's)."""
    path = model_file(model, DEFAULTS_FILE)
    if path is None:
        return {}
    defaults = _invert_json(path, "fit", {})
    if not isinstance(defaults, dict):
        raise ModelLoadError(f"{path}: 'fit' should be an object of option values")
    return defaults


__all__ = ["DEFAULTS_FILE", "SHIPPED", "TOY_DIT_MODEL", "TOY_MODEL", "fit_defaults", "local_folder", "looks_like_path",
           "model_file", "model_resolution", "pipeline_settings", "recorded_model", "resolve_model_path",
           "toy_model_path", "where"]
