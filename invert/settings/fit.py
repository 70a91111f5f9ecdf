"""The fitting loop's settings, shared by every method: every fit option declared once, with its default, type and
help. Importing this module imports no torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..defaults import IP2P_GUIDANCE, IP2P_IMAGE_GUIDANCE
from ..errors import InvertError
from .fields import option
from .init import InitSettings
from .limits import (GUIDANCE_WHY, MAX_FIT_STEPS, MAX_GUIDANCE, MAX_RESOLUTION, MAX_SAMPLING_STEPS, MAX_SEED, MAX_WEIGHT,
                     MIN_RESOLUTION)


@dataclass(frozen=True)
class FitSettings(InitSettings):
    """Settings of the fitting loop shared by every method, and the init's (:class:`InitSettings`). Defaults follow
    the official VISII code."""

    steps: int = option(1000, "Optimization steps (per time part for brush); 0 writes the initialization "
                              "unchanged.", minimum=0, maximum=MAX_FIT_STEPS)
    lr: float = option(1e-3, "AdamW learning rate; at most 1: Adam moves each learned entry by about lr per step, "
                             "past 1 further than the entries themselves.", above=0, maximum=1.0)
    seed: int = option(0, "Seeds the noise, the timestep order and every initialization: same inputs and seed, "
                          "same file.", minimum=0, maximum=MAX_SEED)
    resolution: int | None = option(None, "Square size the exemplars are brought to; default: the model's own (512 "
                                          "for IP2P, 32 for toy). A multiple of the model's VAE factor (8 "
                                          "for IP2P).", minimum=MIN_RESOLUTION, maximum=MAX_RESOLUTION)
    loss_target: Literal["cfg", "cond"] = option("cfg", "cfg: MSE on the guidance-combined prediction, as the "
                                                        "official VISII code; cond: on the text row only (the toy "
                                                        "model's visii default). With --init encoder the default is "
                                                        "the encoder's own.")
    guidance: float = option(IP2P_GUIDANCE, f"Text guidance, used by the cfg loss and stored as apply's default; "
                                  f"{GUIDANCE_WHY}.", minimum=0, maximum=MAX_GUIDANCE)
    image_guidance: float = option(IP2P_IMAGE_GUIDANCE, "Image guidance, likewise.", minimum=0, maximum=MAX_GUIDANCE)
    mse_weight: float = option(4.0, "Weight of the noise MSE (official VISII: 4).", minimum=0,
                               maximum=MAX_WEIGHT)
    reverse: bool = option(False, "Also learn the inverse edit (after -> before) with a cycle term, stored in the "
                                  "same file for 'apply --reverse' (for lora: the negated adapter).")
    cycle_weight: float = option(1.0, "--reverse: weight of the cycle term.", minimum=0,
                                 maximum=MAX_WEIGHT)
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
    val_steps: int = option(10, "Sampling steps of each validation (fixed noise: the fit's seed); at most the "
                                   "model's training timesteps (1000).", minimum=1, maximum=MAX_SAMPLING_STEPS)
    patience: int = option(0, "Stop the fit early once this many validation scores in a row have not beaten the best "
                              "so far (the start's included); --keep then chooses among the states scored. 0: never "
                              "(a fit that is not scored is never stopped).", minimum=0, maximum=MAX_FIT_STEPS)
    pair_order: Literal["cycle", "timestep"] = option(
        "cycle", "Which exemplar pair a step trains on: cycle (step s: pair s mod n) or timestep (timestep t: pair t "
                 "mod n, as the official VISII code).")
    official: bool = option(False, "visii: every setting of the official VISII code (thaoshibe/visii): --init pez "
                                   "--pez-steps 3000 --grad-clip official --optimizer adamw8bit --keep best-mse "
                                   "--pair-order timestep --val 0, 1000 steps at lr 1e-3, the cfg loss at guidance "
                                   "7.5 / 1.5, over a model folder's own defaults; options you give still win.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patience and self.val_every == 0:
            raise InvertError(f"--patience {self.patience} stops a fit by its validation scores, and --val-every 0 "
                              "turns them off")


# fit's --save-every (invert.fit's save_every): a checkpoint every N steps, 0 none.
SAVE_EVERY_LIMITS = {"minimum": 0}


# What --official sets, unless given: the official VISII code's training (README: how invert differs).
OFFICIAL = {"init": "pez", "pez_steps": 3000, "pez_tokens": 10, "grad_clip": "official", "optimizer": "adamw8bit",
            "keep": "best-mse", "pair_order": "timestep", "val": 0, "steps": 1000, "lr": 1e-3, "loss_target": "cfg",
            "guidance": IP2P_GUIDANCE, "image_guidance": IP2P_IMAGE_GUIDANCE, "mse_weight": 4.0, "visii_clip_weight": 0.1,
            "visii_clip_clamp": 0.5}


__all__ = ["OFFICIAL", "SAVE_EVERY_LIMITS", "FitSettings"]
