"""Each method's own options, declared once (see invert.settings); importable without torch.

Field names are the option names (``--lora-rank`` is ``lora_rank``). The naming rule, for every option: an option
that belongs to one choice, a method (``--method``) or an init (``--init``), is prefixed with that choice's name
(``lora_rank``, ``brush_parts``, ``visii_clip_weight``, ``phrases_threshold``, ``pez_steps``); an option of the
whole fit, or one that several methods share with one meaning (``tokens``), is not. A renamed option keeps its
older name as an alias (``parts`` for ``brush_parts``), accepted wherever options are given."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..settings import option
from ..settings.fields import Checked
from ..settings.limits import MAX_TOKENS, MAX_WEIGHT


def tokens_option() -> Any:
    """One option of visii and brush alike."""
    return option(None, "Token positions learned when the init text is empty (default 10); brush: also overrides "
                        "the init text's token count. At most the text encoder's positions less BOS and EOS (75).",
                  minimum=1, maximum=MAX_TOKENS)


@dataclass(frozen=True)
class VisiiSettings(Checked):
    visii_clip_weight: float = option(0.1, "visii: weight of the CLIP direction loss; 0 turns it off.", minimum=0,
                                      maximum=MAX_WEIGHT, aliases=("clip_weight",))
    visii_clip_clamp: float = option(0.5, "visii: the CLIP direction cosine is clamped at this (official: 0.5).",
                                     minimum=-1.0, maximum=1.0, aliases=("clip_clamp",))
    tokens: int | None = tokens_option()


@dataclass(frozen=True)
class BrushSettings(Checked):
    brush_parts: int = option(5, "brush: time parts, each with its own K/V (every part trains at every step: at "
                                 "most 100).", minimum=1, maximum=100, aliases=("parts",))
    brush_parts_sequential: bool = option(False, "brush: train the parts one after another (the paper's schedule) "
                                                 "instead of in one batch.", aliases=("parts_sequential",))
    tokens: int | None = tokens_option()


@dataclass(frozen=True)
class LoraSettings(Checked):
    lora_rank: int = option(4, "lora: adapter rank.", minimum=1, maximum=1024)
    lora_alpha: float | None = option(None, "lora: scale numerator (scale = alpha / rank); default: the rank.",
                                      above=0, maximum=1024.0)
    lora_targets: tuple[str, ...] = option((), "lora: the denoiser's module names the adapter goes on (peft's "
                                               "matching); default: the model's attention projections (IP2P, SDXL: "
                                               "to_q, to_k, to_v, to_out.0; FLUX also the text stream's add_*_proj "
                                               "and to_add_out, and klein's fused single-stream ones).",
                                           metavar="NAMES")
    lora_reverse: Literal["swap", "both", "off"] = option(
        "swap", "lora: LoRA Reverse, -Delta editing after -> before: the pair order exchanged at random each step "
                "(swap), both directions every step, or off.")
