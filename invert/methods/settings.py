"""Each method's own options, declared once (see invert.settings); importable without torch.

Field names are the option names (``--lora-rank`` is ``lora_rank``), so every option name is unique across
methods except where two methods share a meaning (``tokens``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..settings import option
from ..settings.fields import Checked
from ..settings.limits import MAX_TOKENS, MAX_WEIGHT

DEFAULT_TEMPLATE = "turn {p_x} into {p_y}"
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # every attention projection, as diffusers' LoRA scripts


def tokens_option():
    """One option of visii and brush alike."""
    return option(None, "Token positions learned when the init text is empty (default 10); brush: also overrides "
                        "the init text's token count. At most the text encoder's positions less BOS and EOS (75).",
                  minimum=1, maximum=MAX_TOKENS)


@dataclass(frozen=True)
class VisiiSettings(Checked):
    clip_weight: float = option(0.1, "visii: weight of the CLIP direction loss; 0 turns it off.",
                                minimum=0, maximum=MAX_WEIGHT)
    clip_clamp: float = option(0.5, "visii: the CLIP direction cosine is clamped at this (official: "
                                                "0.5).", minimum=-1.0, maximum=1.0)
    tokens: int | None = tokens_option()


@dataclass(frozen=True)
class PhraseSettings(Checked):
    """InstructBrush's phrase initialization (also the 'invert phrases' command's options)."""

    top: int = option(5, "brush init: phrases kept per image.", minimum=1,
                      maximum=1000)
    threshold: float = option(0.15, "brush init: drop a side whose |sensitivity| is below this.",
                              minimum=0.0, maximum=100.0)
    relative_threshold: bool = option(False, "brush init: --threshold in units of the similarities' spread over "
                                             "the vocabulary.")
    template: str = option(DEFAULT_TEMPLATE, "brush init: the instruction template.")


@dataclass(frozen=True)
class BrushSettings(PhraseSettings):
    parts: int = option(5, "brush: time parts, each with its own K/V (every part trains at "
                                 "every step: at most 100).", minimum=1, maximum=100)
    parts_sequential: bool = option(False, "brush: train the parts one after another (the paper's schedule) "
                                           "instead of in one batch.")
    tokens: int | None = tokens_option()


@dataclass(frozen=True)
class LoraSettings(Checked):
    lora_rank: int = option(4, "lora: adapter rank.", minimum=1, maximum=1024)
    lora_alpha: float | None = option(None, "lora: scale numerator (scale = alpha / rank); default: the "
                                                             "rank.", above=0, maximum=1024.0)
    lora_targets: tuple[str, ...] = option(DEFAULT_LORA_TARGETS, "lora: UNet module names the adapter goes on "
                                                                 "(comma-separated).", metavar="NAMES")
    lora_reverse: Literal["swap", "both", "off"] = option(
        "swap", "lora: LoRA Reverse, -Delta editing after -> before: the pair order exchanged at random each step "
                "(swap), both directions every step, or off.")
