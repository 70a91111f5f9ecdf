"""The inversion methods, registered once each (as peft's ``register_peft_method``): its name, its class, its
settings class and the prefixes of its state in an .inst file. The CLI's options and choices, the web app's menus,
the benchmarks and the tests' parametrizations all come from this registry, so a new method is a file in this
folder and one :func:`register_method` call (here for the built-in ones).

Settings classes are importable without torch (for the CLI); a built-in class is named "module:Class" and imported
on first use."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import InvertError
from ..settings import OFFICIAL, FitSettings, build_settings, settings_fields
from ..settings.fields import check_value, flag, keyword
from .settings import BrushSettings, LoraSettings, VisiiSettings

if TYPE_CHECKING:
    from .base import Method

# Tensor names of an .inst file that belong to no method's state: the exemplar thumbnails, the CLIP key, and a
# two-way fit's reverse instruction (its method's own names after this prefix).
RESERVED_PREFIXES = ("exemplar.", "clip.", "reverse.")


@dataclass(frozen=True)
class MethodEntry:
    name: str  # --method NAME, and the .inst metadata's method
    location: str | type  # the class, or "module:Class" in this package, imported on first use
    settings: type  # the method's own options (a settings dataclass, see invert.settings)
    prefixes: tuple[str, ...]  # every tensor of its state in an .inst file is named with one of these
    title: str  # its name for people (the web app's menus)
    summary: str  # what it learns, in a few words (--method's help, the web app)


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(name: str, location: str | type, settings: type, prefixes: tuple[str, ...], title: str,
                    summary: str) -> None:
    """Register method ``name``: its class (or "module:Class" within invert.methods), its settings dataclass, the
    prefixes its state tensors are named with (taken by no other method, and none of RESERVED_PREFIXES), a title
    and a summary. A name registered twice, or a prefix another method or the file already uses, is an error."""
    if name in _REGISTRY:
        raise InvertError(f"method '{name}' is registered already")
    taken = {p: e.name for e in _REGISTRY.values() for p in e.prefixes} | {p: "the file" for p in RESERVED_PREFIXES}
    for prefix in prefixes:
        clash = [owner for other, owner in taken.items() if prefix.startswith(other) or other.startswith(prefix)]
        if clash:
            raise InvertError(f"method '{name}': state prefix '{prefix}' collides with {clash[0]}'s")
    _REGISTRY[name] = MethodEntry(name, location, settings, tuple(prefixes), title, summary)


register_method("visii", "visii:Visii", VisiiSettings, ("visii.",), "VISII", "a learned prompt embedding")
register_method("brush", "brush:Brush", BrushSettings, ("brush.",), "InstructBrush",
                "learned cross-attention K/V per time part")
register_method("lora", "lora:Lora", LoraSettings, ("unet.", "lora."), "LoRA of change",
                "a LoRA on the UNet's attention projections")


def method_names() -> tuple[str, ...]:
    """Every registered method's name, in registration order."""
    return tuple(_REGISTRY)


def method_entry(name: str) -> MethodEntry:
    """The registration of method ``name``; an unknown name is an error listing the known ones."""
    if name not in _REGISTRY:
        raise InvertError(f"unknown method '{name}' (choose from {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def method_entries() -> tuple[MethodEntry, ...]:
    """Every registration, in registration order."""
    return tuple(_REGISTRY.values())


def settings_classes() -> dict[str, type]:
    """Each method's settings class by name."""
    return {name: entry.settings for name, entry in _REGISTRY.items()}


def aliases() -> dict[str, str]:
    """Older option names, by the name each now answers to (the naming rule: see invert.methods.settings)."""
    return {alias: f.name for cls in (FitSettings, *settings_classes().values()) for f in settings_fields(cls)
            for alias in f.metadata.get("aliases", ())}


def current_names(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` by their current names (an older name is its option's); one option given twice is an error."""
    older = aliases()
    named: dict[str, Any] = {}
    for name, value in options.items():
        current = older.get(name, name)
        if current in named:
            raise InvertError(f"{flag(current)} is given twice, once by its older name; give it once")
        named[current] = value
    return named


def method_class(name: str) -> type["Method"]:
    """The class of method ``name``; an unknown name is an error listing the known ones."""
    location = method_entry(name).location
    if isinstance(location, type):
        return location
    module, _, cls = location.partition(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def settings_for(method: str, options: dict[str, Any], where: Callable[[str], str] = keyword
                 ) -> tuple[FitSettings, Any]:
    """The loop's settings and ``method``'s own from option values by name, each checked (its type and range);
    ``where(name)`` names a value's source in an error (the flag, the file and key; default: the keyword). A name
    no method has is an error listing the options; another method's option is an error naming its method."""
    cls = method_class(method)  # an unknown method is refused first
    options = current_names(options)
    own_class = method_entry(method).settings
    shared = {f.name for f in settings_fields(FitSettings)}
    own = {f.name for f in settings_fields(own_class)}
    for name in options:
        if name in shared or name in own:
            continue
        owners = [m for m, s in settings_classes().items() if name in {f.name for f in settings_fields(s)}]
        if owners:
            raise InvertError(f"{flag(name)} is an option of --method {' and '.join(owners)}, not of {method}")
        known = sorted(shared | own)
        raise InvertError(f"unknown option {name!r} (the {method} options: {', '.join(known)})")
    if check_value(options.get("official", False), bool, None, where("official")):
        if not cls.has_official_code:
            raise InvertError(f"--official is the official VISII code's training; {method} has no official code")
        options = {**OFFICIAL, **options}
    return (build_settings(FitSettings, {k: v for k, v in options.items() if k in shared}, where),
            build_settings(own_class, {k: v for k, v in options.items() if k in own}, where))


__all__ = ["MethodEntry", "RESERVED_PREFIXES", "aliases", "current_names", "method_class", "method_entries",
           "method_entry", "method_names", "register_method", "settings_classes", "settings_for"]
