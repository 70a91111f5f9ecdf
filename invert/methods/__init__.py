"""The inversion methods, by name: each one's settings (importable without torch, for the CLI) and its class
(imported on first use). Adding a method is a file in this folder and a line in each table below."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable

from ..errors import InvertError
from ..settings import OFFICIAL, FitSettings, build_settings, settings_fields
from ..settings.fields import check_value, flag, keyword
from .settings import BrushSettings, LoraSettings, VisiiSettings

if TYPE_CHECKING:
    from .base import Method

SETTINGS: dict[str, type] = {"visii": VisiiSettings, "brush": BrushSettings, "lora": LoraSettings}
_CLASSES = {"visii": "visii:Visii", "brush": "brush:Brush", "lora": "lora:Lora"}
METHOD_NAMES = tuple(SETTINGS)
# Older option names, by the name each now answers to (the naming rule: see invert.methods.settings).
ALIASES = {alias: f.name for cls in (FitSettings, *SETTINGS.values()) for f in settings_fields(cls)
           for alias in f.metadata.get("aliases", ())}


def current_names(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` by their current names (an older name is its option's); one option given twice is an error."""
    named: dict[str, Any] = {}
    for name, value in options.items():
        current = ALIASES.get(name, name)
        if current in named:
            raise InvertError(f"{flag(current)} is given twice, once by its older name; give it once")
        named[current] = value
    return named


def method_class(name: str) -> type["Method"]:
    """The class of method ``name``; an unknown name is an error listing the known ones."""
    if name not in _CLASSES:
        raise InvertError(f"unknown method '{name}' (choose from {', '.join(METHOD_NAMES)})")
    module, _, cls = _CLASSES[name].partition(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def settings_for(method: str, options: dict[str, Any], where: Callable[[str], str] = keyword
                 ) -> tuple[FitSettings, Any]:
    """The loop's settings and ``method``'s own from option values by name, each checked (its type and range);
    ``where(name)`` names a value's source in an error (the flag, the file and key; default: the keyword). A name
    no method has is an error listing the options; another method's option is an error naming its method."""
    cls = method_class(method)  # an unknown method is refused first
    options = current_names(options)
    shared = {f.name for f in settings_fields(FitSettings)}
    own = {f.name for f in settings_fields(SETTINGS[method])}
    for name in options:
        if name in shared or name in own:
            continue
        owners = [m for m, cls in SETTINGS.items() if name in {f.name for f in settings_fields(cls)}]
        if owners:
            raise InvertError(f"{flag(name)} is an option of --method {' and '.join(owners)}, not of {method}")
        known = sorted(shared | own)
        raise InvertError(f"unknown option {name!r} (the {method} options: {', '.join(known)})")
    if check_value(options.get("official", False), bool, None, where("official")):
        if not cls.has_official_code:
            raise InvertError(f"--official is the official VISII code's training; {method} has no official code")
        options = {**OFFICIAL, **options}
    return (build_settings(FitSettings, {k: v for k, v in options.items() if k in shared}, where),
            build_settings(SETTINGS[method], {k: v for k, v in options.items() if k in own}, where))


__all__ = ["ALIASES", "METHOD_NAMES", "SETTINGS", "current_names", "method_class", "settings_for"]
