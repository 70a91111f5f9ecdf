"""The fitting loop's settings, shared by every method: every fit option declared once, with its default, type and
help. Importing this module imports no torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .fields import option


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
    init_text: tuple[str, ...] | str | None = option(
        None, "Initial instruction; repeat it to give several, and the fit starts from the one that scores best on the "
              "exemplars. Default: as --init says.", metavar="TEXT", split_commas=False)
    vocab: tuple[str, ...] = option((), "Phrase lists for the caption or phrase search (repeatable): default, toy, "
                                        "flavors, mediums, movements, artists, or a .txt file. Default: the model "
                                        "folder's vocab.txt if it has one, else 'default'.", metavar="NAME")
    reverse: bool = option(False, "Also learn the inverse edit (after -> before) with a cycle term, stored in the "
                                  "same file for 'apply --reverse' (for lora: the negated adapter).")
    cycle_weight: float = option(1.0, "--reverse: weight of the cycle term.")
    init: Literal["best", "auto", "caption", "phrases", "pez", "empty"] = option(
        "best", "How to find the init text when --init-text is not given: best, the candidate texts (the caption, "
                "InstructBrush's phrases, the most changed phrases in instruction templates, empty) applied to the "
                "exemplars and the best-scoring one taken; auto, the method's own (caption for visii, phrases for "
                "brush, empty for lora); a CLIP-ranked caption of the afters; InstructBrush's phrases; a PEZ hard "
                "prompt optimized against the afters (the official VISII code's); or empty.")
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
    keep: Literal["last-unless-worse", "best", "last", "best-mse"] = option(
        "last-unless-worse", "Which state the file keeps. last-unless-worse: the last, unless an earlier one (the "
        "start included) scored more than 1 dB higher on the held-out pairs (--val), then that one: a fit never ends "
        "clearly below its init, and two pairs' noise does not pick a lucky state (toy world, 18 fits: its states "
        "scored 23.26 dB on new scenes, best's 23.06, last's 23.10). best: the highest-scoring state; last: the last "
        "step's; best-mse: the official VISII code's prompt_embeds_best, the state after the step whose noise MSE "
        "(before its update) was the lowest. Without validation: the last. Only complete states are candidates: "
        "with --parts-sequential, those after every time part has begun training (and the start).")
    val: int | None = option(None, "Exemplar pairs held out of training to score the fit on (the last ones by name); "
                                   "0 scores it on the training pairs themselves. Default: 2 of 8 or more pairs, "
                                   "else 0.", minimum=0)
    val_every: int | None = option(None, "Score the fit every N steps (and before the first and after the last); "
                                         "0 turns validation off. Default: 10 times per fit.", minimum=0)
    val_steps: int = option(10, "Sampling steps of each validation (fixed noise: the fit's seed).", minimum=1)
    pair_order: Literal["cycle", "timestep"] = option(
        "cycle", "Which exemplar pair a step trains on: cycle (step s: pair s mod n) or timestep (timestep t: pair t "
                 "mod n, as the official VISII code).")
    official: bool = option(False, "visii: every setting of the official VISII code (thaoshibe/visii): --init pez "
                                   "--pez-steps 3000 --grad-clip official --optimizer adamw8bit --keep best-mse "
                                   "--pair-order timestep --val 0, 1000 steps at lr 1e-3; options you give still win.")

    def __post_init__(self) -> None:
        # One --init-text is kept as a string (as files have always recorded it), several as a tuple, none as None.
        if isinstance(self.init_text, (tuple, list)):
            texts = tuple(self.init_text)
            object.__setattr__(self, "init_text", None if not texts else texts[0] if len(texts) == 1 else texts)

    @property
    def init_texts(self) -> tuple[str, ...]:
        """The --init-text candidates (none: found as --init says)."""
        return (self.init_text,) if isinstance(self.init_text, str) else self.init_text or ()


# What --official sets, unless given: the official VISII code's training (README: how invert differs).
OFFICIAL = {"init": "pez", "pez_steps": 3000, "pez_tokens": 10, "grad_clip": "official", "optimizer": "adamw8bit",
            "keep": "best-mse", "pair_order": "timestep", "val": 0, "steps": 1000, "lr": 1e-3, "loss_target": "cfg",
            "guidance": 7.5, "image_guidance": 1.5, "mse_weight": 4.0, "clip_weight": 0.1, "clip_clamp": 0.5}


__all__ = ["OFFICIAL", "FitSettings"]
