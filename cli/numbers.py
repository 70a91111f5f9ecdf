"""Number options: the text a user typed read as the number it is, then checked as a value from any other
source is, so that the command line, a --config file and the library refuse the same values with the same words.
Importing this module imports no torch."""
from __future__ import annotations

from typing import Any, Mapping

import click

from invert.settings.fields import BadValue, convert, describe_range


class Number(click.ParamType):
    """A number option's type: the text read as the number it is, then checked as a value from any other source
    is (:func:`invert.settings.fields.convert`: whole, finite, within its range), so that the command line, a
    --config file and the library refuse the same values with the same words."""

    def __init__(self, kind: type, limits: Mapping[str, Any] | None = None):
        self.kind, self.limits = kind, dict(limits or {})
        self.name = "integer" if kind is int else "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return convert(_read_number(value) if isinstance(value, str) else value, self.kind, self.limits)
        except BadValue as exc:
            self.fail(str(exc), param, ctx)

    def check(self, value: Any) -> Any:
        """A value from a file (TOML or JSON): already typed, so the text "5" is not a number."""
        return convert(value, self.kind, self.limits)

    def describe(self) -> str:
        return describe_range(self.limits)


def _read_number(text: str) -> Any:
    """Command-line text as a number (an int when it is written as one); text that is none stays text, for the
    error to show."""
    try:
        return int(text.strip(), 10)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def number(kind: type, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None) -> Number:
    """The type of a number option that is no setting (apply's --batch-size, ui's --port): declared limits."""
    return Number(kind, {"minimum": minimum, "maximum": maximum, "above": above})


def number_option(*decls: str, kind: type, minimum: float | None = None, maximum: float | None = None,
                  above: float | None = None, help: str = "", **kwargs: Any):
    """A click option of a number that is no setting (apply's --batch-size, ui's --port), its range shown in its
    help as Click shows IntRange's."""
    kind_ = number(kind, minimum=minimum, maximum=maximum, above=above)
    return click.option(*decls, type=kind_, help=f"{help} {kind_.describe()}".strip(), **kwargs)


__all__ = ["Number", "number", "number_option"]
