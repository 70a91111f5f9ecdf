"""Typed settings: every fit and apply option declared once, with its default, type, limits and help.

The CLI's options (``fit``, ``fit-batch``, ``apply`` and ``eval``) and the web UI's controls are generated from
these dataclasses, and ``invert.fit(**options)`` and ``invert.apply(**options)`` check names and values against
them, so a default and a limit live in one place and a bad value is an error wherever it comes from. Importing
this module imports no torch (``invert --help`` stays fast).
"""
from __future__ import annotations

from .apply import ApplySettings
from .fields import as_dict, build_settings, check_value, field_type, option, settings_fields
from .fit import OFFICIAL, FitSettings
from .init import InitSettings

__all__ = ["OFFICIAL", "ApplySettings", "FitSettings", "InitSettings", "as_dict", "build_settings", "check_value",
           "field_type", "option", "settings_fields"]
