"""Typed settings' building blocks: a field with its help and limits, and building a settings object from values
checked against them. Importing this module imports no torch (``invert --help`` stays fast)."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from typing import Any, Literal

from ..errors import InvertError


def option(default: Any, help: str, *, minimum: float | None = None, metavar: str | None = None,
           split_commas: bool = True) -> Any:
    """A settings field: its default, its help text and, for numbers, the smallest value allowed; a repeatable
    option also takes comma-separated values unless ``split_commas`` is off (values that may hold commas)."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "metavar": metavar,
                                            "split_commas": split_commas})


def settings_fields(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def field_type(f: dataclasses.Field, owner: type) -> Any:
    """The field's annotation as a type (the module uses postponed annotations)."""
    return typing.get_type_hints(owner)[f.name]


def build_settings(cls: type, values: dict[str, Any], what: str = "option") -> Any:
    """``cls`` from ``values``: unknown names are an error naming the known ones; numbers below their minimum
    and values outside a Literal's choices are errors too."""
    known = {f.name: f for f in settings_fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvertError(f"unknown {what} {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        check_value(name, value, hints[name], known[name].metadata.get("minimum"))
    return cls(**values)


def check_value(name: str, value: Any, kind: Any, minimum: float | None) -> None:
    flag = "--" + name.replace("_", "-")
    if typing.get_origin(kind) is Literal and value not in typing.get_args(kind):
        raise InvertError(f"{flag} {value!r}: choose from {', '.join(map(str, typing.get_args(kind)))}")
    if minimum is not None and value is not None and value < minimum:
        raise InvertError(f"{flag} must be at least {minimum:g}, not {value}")


def as_dict(settings: Any) -> dict[str, Any]:
    """JSON-ready values (tuples as lists), as the .inst metadata records them."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items()}


__all__ = ["as_dict", "build_settings", "check_value", "field_type", "option", "settings_fields"]
