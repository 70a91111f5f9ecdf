"""Typed settings: every fit option declared once, with its default, type and help.

The CLI's options (``fit`` and ``fit-batch`` alike) and the web UI's controls are generated from these
dataclasses, and ``invert.fit(**options)`` checks option names against them, so a default lives in one place
and an unknown option is an error. Importing this module imports no torch (``invert --help`` stays fast).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InvertError


def option(default: Any, help: str, *, minimum: float | None = None, metavar: str | None = None) -> Any:
    """A settings field: its default, its help text and, for numbers, the smallest value allowed."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "metavar": metavar})


@dataclass(frozen=True)
class FitSettings:
    """Settings of the fitting loop shared by every method. Defaults follow the official VISII code."""

    steps: int = option(1000, "Optimization steps (per time part for brush); 0 writes the initialization "
                              "unchanged.", minimum=0)
    lr: float = option(1e-3, "AdamW learning rate.")
    seed: int = option(0, "Seeds the noise, the timestep order and every initialization: same inputs and seed, "
                          "same file.")
    resolution: int | None = option(None, "Square size the exemplars are brought to; default: the model's own (512 "
                                          "for IP2P, 32 for toy).", minimum=8)
    loss_target: Literal["cfg", "cond"] = option("cfg", "cfg: MSE on the guidance-combined prediction, as the "
                                                        "official VISII code; cond: on the text row only.")
    guidance: float = option(7.5, "Text guidance, used by the cfg loss and stored as apply's default.")
    image_guidance: float = option(1.5, "Image guidance, likewise.")
    mse_weight: float = option(4.0, "Weight of the noise MSE (official VISII: 4).")
    init_text: str | None = option(None, "Initial instruction; default: the method's own (a CLIP caption of the "
                                         "afters for visii, InstructBrush's phrases for brush, empty for lora).")
    vocab: tuple[str, ...] = option((), "Phrase lists for the caption or phrase search (repeatable): default, toy, "
                                        "flavors, mediums, movements, artists, or a .txt file. Default: the model "
                                        "folder's vocab.txt if it has one, else 'default'.", metavar="NAME")
    reverse: bool = option(False, "Also learn the inverse edit (after -> before) with a cycle term, stored in the "
                                  "same file for 'apply --reverse' (for lora: the negated adapter).")
    cycle_weight: float = option(1.0, "--reverse: weight of the cycle term.")
    init: Literal["auto", "caption", "phrases", "pez", "empty"] = option(
        "auto", "How to find the init text when --init-text is not given: auto (the method's own: caption for visii, "
                "phrases for brush, empty for lora), a CLIP-ranked caption of the afters, InstructBrush's phrases, "
                "a PEZ hard prompt optimized against the afters (the official VISII code's), or empty.")
    pez_steps: int = option(300, "--init pez: optimization steps (the official code: 3000).", minimum=1)
    pez_tokens: int = option(10, "--init pez: prompt length in tokens (the official code: 10).", minimum=1)
    grad_clip: Literal["auto", "official", "abs", "none"] = option(
        "auto", "Gradient clipping by value. official: the official VISII code's (gradients of its fp16 loss scale "
                "65,536, never unscaled, clipped at the signed max of the initial prompt batch: nearly a sign "
                "update); abs: unscaled gradients at the initial parameters' largest |entry|; none; auto: the "
                "method's own (abs for visii, none for brush and lora).")
    optimizer: Literal["adamw", "adamw8bit"] = option(
        "adamw", "adamw: torch's, fp32 state; adamw8bit: bitsandbytes' AdamW8bit, as the official VISII code (needs "
                 "pip install bitsandbytes).")
    keep: Literal["last", "best-mse"] = option(
        "last", "Which state the file keeps: the last step's, or best-mse, the official VISII code's "
                "prompt_embeds_best: the state after the step whose noise MSE (before its update) was the lowest.")
    pair_order: Literal["cycle", "timestep"] = option(
        "cycle", "Which exemplar pair a step trains on: cycle (step s: pair s mod n) or timestep (timestep t: pair t "
                 "mod n, as the official VISII code).")
    official: bool = option(False, "visii: every setting of the official VISII code (thaoshibe/visii): --init pez "
                                   "--pez-steps 3000 --grad-clip official --optimizer adamw8bit --keep best-mse "
                                   "--pair-order timestep, 1000 steps at lr 1e-3; options you give still win.")


# What --official sets, unless given: the official VISII code's training (README: how invert differs).
OFFICIAL = {"init": "pez", "pez_steps": 3000, "pez_tokens": 10, "grad_clip": "official", "optimizer": "adamw8bit",
            "keep": "best-mse", "pair_order": "timestep", "steps": 1000, "lr": 1e-3, "loss_target": "cfg",
            "guidance": 7.5, "image_guidance": 1.5, "mse_weight": 4.0, "clip_weight": 0.1, "clip_clamp": 0.5}


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


__all__ = ["OFFICIAL", "FitSettings", "as_dict", "build_settings", "check_value", "field_type", "option", "settings_fields"]
