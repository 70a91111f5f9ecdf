"""Typed settings: every fit option declared once, with its default, type and help.

The CLI's options (``fit`` and ``fit-batch`` alike) and the web UI's controls are generated from these
dataclasses, and ``invert.fit(**options)`` checks option names against them, so a default lives in one place
and an unknown option is an error. Importing this module imports no torch (``invert --help`` stays fast).
"""
from __future__ import annotations

from .fields import as_dict, build_settings, check_value, field_type, option, settings_fields
from .fit import ENCODER_INIT, INIT_MODES, OFFICIAL, FitSettings, encoder_init

__all__ = ["ENCODER_INIT", "INIT_MODES", "OFFICIAL", "FitSettings", "as_dict", "build_settings", "check_value",
           "encoder_init", "field_type", "option", "settings_fields"]
