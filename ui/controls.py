"""The web app's setting controls, generated from the typed settings as the CLI's options are: one control per
setting, labelled and explained by its declaration, and its value read back as the setting takes it. The
library checks the values (an error names the control's label), so the page and the command line refuse the
same values with the same words."""
from __future__ import annotations

import typing
from typing import Any, Literal

import gradio as gr

from .backend import SettingRule

MULTILINE = {"init_text"}  # texts that may hold commas: one per line
LABELS = {"lr": "Learning rate", "guidance": "Text guidance"}  # where the name alone says too little


def label(name: str) -> str:
    """A setting's control label (errors name it so): its name in words."""
    return LABELS.get(name, name.replace("_", " ").capitalize())


def shown(rule: SettingRule, value: Any) -> Any:
    """A setting's value as its control shows it: several texts joined, None as an empty field."""
    if rule.is_list:
        texts = (value,) if isinstance(value, str) else value or ()
        return ("\n" if rule.name in MULTILINE else ", ").join(texts)
    if rule.kind is str and value is None:
        return ""
    return value


def read(rule: SettingRule, value: Any) -> Any:
    """A control's value as the setting takes it: texts split, an empty field None where the setting allows it."""
    if rule.is_list:
        parts = (value or "").split("\n" if rule.name in MULTILINE else ",")
        texts = tuple(p.strip() for p in parts if p.strip())
        return None if not texts and rule.optional else texts
    if rule.optional and (value is None or (isinstance(value, str) and not value.strip())):
        return None
    return value


def control(rule: SettingRule, value: Any, **kwargs: Any) -> gr.components.Component:
    """A Gradio component for one setting, showing ``value``. Numbers have no minimum or maximum here: the
    library's check refuses a value out of range, naming the control, as it does a flag's."""
    common = {"label": label(rule.name), "info": f"{rule.help} {rule.range}".strip(), **kwargs}
    value = shown(rule, value)
    if rule.kind is bool:
        return gr.Checkbox(value, **common)
    if typing.get_origin(rule.kind) is Literal:
        choices = list(typing.get_args(rule.kind))
        return gr.Dropdown(choices, value=value, **common)
    if rule.kind in (int, float):
        # No precision=0 for a whole number: Gradio would round 2.5 to 2 before the check could refuse it.
        return gr.Number(value, **common)
    return gr.Textbox(value, lines=3 if rule.name in MULTILINE else 1, **common)


__all__ = ["MULTILINE", "control", "label", "read", "shown"]
