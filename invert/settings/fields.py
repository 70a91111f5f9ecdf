"""Typed settings' building blocks: a field with its help and limits, and the one check of a value against them.

Every value, wherever it comes from (a flag, a ``--config`` file, a model folder's ``invert.json``, an ``.inst``
file's metadata, the web app, a Python call), goes through :func:`check_value`: its type, its range, finite for a
float, a whole number for an int (never a bool), one of a Literal's choices. The error names the value's source.
Importing this module imports no torch (``invert --help`` stays fast)."""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import field
from typing import Any, Callable, Literal, Mapping

from ..errors import InvertError

# The largest whole number any setting takes: what a 64-bit integer holds (torch's int64; a seed: torch.Generator's
# manual_seed takes up to 2^64 - 1, and the few seeds derived from one add less than 2^63 to it).
INT_MAX = 2**63 - 1
INT_MIN = -(2**63)


def option(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, metavar: str | None = None, split_commas: bool = True,
           aliases: tuple[str, ...] = ()) -> Any:
    """A settings field: its default, its help text and, for numbers, the range allowed: ``minimum`` and
    ``maximum`` included, ``above`` excluded (a learning rate is above 0); a whole number's range is always within
    64 bits. A repeatable option also takes comma-separated values unless ``split_commas`` is off (values that may
    hold commas). ``aliases``: older names it still answers to (as a flag, a config key or a keyword)."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum, "above": above,
                                            "metavar": metavar, "split_commas": split_commas, "aliases": aliases})


def settings_fields(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def field_type(f: dataclasses.Field, owner: type) -> Any:
    """The field's annotation as a type (the module uses postponed annotations)."""
    return typing.get_type_hints(owner)[f.name]


def flag(name: str) -> str:
    """The command-line flag of a setting: ``lora_rank`` is ``--lora-rank``."""
    return "--" + name.replace("_", "-")


def keyword(name: str) -> str:
    """How an error names a setting given to a Python call (``invert.fit(steps=...)``)."""
    return f"option '{name}'"


class BadValue(ValueError):
    """What is wrong with a value, without where it came from (:func:`check_value` adds that)."""


def convert(value: Any, kind: Any, limits: Mapping[str, Any] | None = None) -> Any:
    """``value`` as a setting of type ``kind`` within ``limits`` (a field's metadata: minimum, maximum, above):
    ints and floats as themselves (a whole float as an int), a list as a tuple; anything else raises BadValue
    saying what is wrong."""
    limits = limits or {}
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        problems = []
        for alternative in alternatives:
            try:
                return convert(value, alternative, limits)
            except BadValue as exc:
                problems.append(str(exc))
        raise BadValue(problems[0] if len(problems) == 1 else f"expected {' or '.join(map(_name, alternatives))}, "
                                                              f"not {_shown(value)}")
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise BadValue(f"choose from {', '.join(map(str, args))}; not {_shown(value)}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise BadValue(f"expected true or false, not {_shown(value)}")
    if kind is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # 300.0, as JSON and number fields may give it
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadValue(f"expected a whole number, not {_shown(value)}")
        return _in_range(value, limits, INT_MIN, INT_MAX)
    if kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BadValue(f"expected a number, not {_shown(value)}")
        try:
            number = float(value)  # an int past a float's range overflows
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise BadValue(f"must be a finite number, not {_shown(value)}")
        return _in_range(number, limits, None, None)
    if kind is str:
        if isinstance(value, str):
            return value
        raise BadValue(f"expected text, not {_shown(value)}")
    if kind in (dict, list):  # a record kept as JSON (an .inst file's options, exemplars ...)
        if isinstance(value, kind):
            return value
        raise BadValue(f"expected a JSON {'object' if kind is dict else 'list'}, not {_shown(value)}")
    if origin is tuple:
        item = args[0]
        if isinstance(value, str):  # one value where several may be given, as on the command line
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise BadValue(f"expected a list of {_name(item)}, not {_shown(value)}")
        return tuple(convert(v, item, limits) for v in value)
    raise TypeError(f"no rule for settings of type {kind}")  # a settings class declared a type this module lacks


def _in_range(value: float, limits: Mapping[str, Any], lowest: float | None, highest: float | None) -> Any:
    minimum = limits.get("minimum") if limits.get("minimum") is not None else lowest
    maximum = limits.get("maximum") if limits.get("maximum") is not None else highest
    above = limits.get("above")
    if minimum is not None and value < minimum:
        raise BadValue(f"must be at least {_number(minimum)}, not {_shown(value)}")
    if above is not None and not value > above:
        raise BadValue(f"must be above {_number(above)}, not {_shown(value)}")
    if maximum is not None and value > maximum:
        raise BadValue(f"must be at most {_number(maximum)}, not {_shown(value)}")
    return value


def describe_range(limits: Mapping[str, Any]) -> str:
    """A number's range as Click shows IntRange's: [1<=x<=75]; empty when it has none."""
    low, above, high = (limits.get(k) for k in ("minimum", "above", "maximum"))
    left = f"{_number(low)}<=" if low is not None else f"{_number(above)}<" if above is not None else ""
    right = f"<={_number(high)}" if high is not None else ""
    return f"[{left}x{right}]" if left or right else ""


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _name(kind: Any) -> str:
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(kind)))
    return {bool: "true or false", int: "whole numbers", float: "numbers", str: "text"}.get(kind, "a list")


def _shown(value: Any) -> str:
    """A value as an error shows it: short, on one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_value(value: Any, kind: Any, limits: Mapping[str, Any] | None, where: str) -> Any:
    """:func:`convert`, with an error that names where the value came from (``where``: the flag, the file and
    key, the keyword)."""
    try:
        return convert(value, kind, limits)
    except BadValue as exc:
        raise InvertError(f"{where}: {exc}") from None


@functools.cache
def _rules(cls: type) -> list[tuple[str, Any, Mapping[str, Any]]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f.metadata) for f in dataclasses.fields(cls)]


class Checked:
    """The base of a settings dataclass: every field is checked (:func:`check_value`) whenever an object is made,
    by a Python call, :func:`build_settings` or ``dataclasses.replace``, so that no unchecked value reaches the
    code that uses it."""

    def __post_init__(self) -> None:
        for name, kind, limits in _rules(type(self)):
            object.__setattr__(self, name, check_value(getattr(self, name), kind, limits, keyword(name)))


def build_settings(cls: type, values: dict[str, Any], where: Callable[[str], str] = keyword) -> Any:
    """``cls`` from ``values``, each checked (:func:`check_value`) and named in an error as ``where(name)`` says;
    an unknown name is an error naming the known ones."""
    known = {f.name: f for f in settings_fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvertError(f"unknown option {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls)
    return cls(**{name: check_value(value, hints[name], known[name].metadata, where(name))
                  for name, value in values.items()})


def as_dict(settings: Any) -> dict[str, Any]:
    """JSON-ready values (tuples as lists), as the .inst metadata records them."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items()}


__all__ = ["INT_MAX", "BadValue", "Checked", "as_dict", "build_settings", "check_value", "convert", "describe_range",
           "field_type", "flag", "keyword", "option", "settings_fields"]
