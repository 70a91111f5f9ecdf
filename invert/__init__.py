"""invert: learn image-editing instructions from before/after pairs on a frozen InstructPix2Pix.

    import invert
    inst = invert.fit("pairs/", method="visii", model="toy", steps=200)
    inst.save("edit.inst")
    edited = invert.apply("edit.inst", image)

The names below load on first use, so that importing a light module (the CLI's option defaults, errors) does
not import torch and diffusers.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "fit": "api", "apply": "api", "installed": "api", "load_method": "api",
    "encode": "encoder", "EncoderFile": "encoder",
    "Editor": "backbones", "load_editor": "backbones",
    "InvertError": "errors",
    "FitSettings": "settings", "ApplySettings": "settings",
    "Instruction": "instruction",
    "Pair": "pairs", "find_pairs": "pairs",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    try:  # a submodule, as ``invert.backbones`` after a plain ``import invert``
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(f"module 'invert' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
