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
DEFAULTS_FILE = "invert.json"


def toy_model_path() -> Path:
    return Path(__file__).parent.parent / "toy" / "model"


def resolve_model_path(model: str) -> str:
    """``toy`` names the model shipped with invert; anything else is a hub id or a folder."""
    if model == TOY_MODEL:
        path = toy_model_path()
        if not (path / "model_index.json").exists():
            raise ModelLoadError(f"{path}: the toy model is not in this installation "
                                 f"(train it with 'python -m benchmarks.toy_train --out {path}')")
        return str(path)
    return model


def looks_like_path(model: str) -> bool:
    """A name only a folder can have (a hub id is ``owner/name``)."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or Path(model).is_absolute()


def local_folder(model: str) -> str:
    """An existing local model folder as an absolute path (what an .inst records, so that it can be applied from
    any working folder); anything else unchanged."""
    if model != TOY_MODEL and not model.startswith("random") and Path(model).expanduser().is_dir():
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
    if model == TOY_MODEL:
        return "the toy model shipped with invert"
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
    """The image size the model was trained at (its UNet's sample size times the VAE's downsampling), read
    from its configs; None when they are not at hand."""
    unet, vae = model_file(model, "unet/config.json"), model_file(model, "vae/config.json")
    if unet is None or vae is None:
        return None
    try:
        size = json.loads(unet.read_text())["sample_size"]
        factor = 2 ** (len(json.loads(vae.read_text())["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(size) * factor


def fit_defaults(model: str) -> dict[str, Any]:
    """The fit options a model's folder recommends for itself, from the ``fit`` object of its ``invert.json``
    (the toy model's: a higher learning rate and a lower text guidance than IP2P's)."""
    path = model_file(model, DEFAULTS_FILE)
    if path is None:
        return {}
    try:
        defaults = json.loads(path.read_text()).get("fit", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{path}: not a valid {DEFAULTS_FILE} ({exc})") from None
    if not isinstance(defaults, dict):
        raise ModelLoadError(f"{path}: 'fit' should be an object of option values")
    return defaults


__all__ = ["DEFAULTS_FILE", "TOY_MODEL", "fit_defaults", "local_folder", "looks_like_path", "model_file",
           "model_resolution", "recorded_model", "resolve_model_path", "toy_model_path", "where"]
