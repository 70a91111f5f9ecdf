"""The edit encoder's training settings (``invert encoder train``), declared once as the fit's are. Importing this
module imports no torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .fields import Checked, option
from .limits import MAX_FIT_STEPS, MAX_SEED

# Sizes of the encoder's networks and basis, and of a step's episodes: far past what a CPU or one GPU trains, and
# small enough that a typo (1e9) is refused before any memory is taken.
MAX_WIDTH = 8192
MAX_EPISODE = 1000


@dataclass(frozen=True)
class EncoderSettings(Checked):
    steps: int = option(3000, "Training steps; each encodes --edits-per-step edits and makes one update.", minimum=1,
                        maximum=MAX_FIT_STEPS)
    lr: float = option(3e-4, "AdamW learning rate of the encoder's networks and keys (a 5% warm-up, then a cosine "
                             "decay); at most 1, as the fit's.", above=0, maximum=1.0)
    basis_lr: float | None = option(None, "Learning rate of the basis states; default: a tenth of the method's fit "
                                          "--lr (the model folder's invert.json, else the library's): every state is "
                                          "updated at every step, whatever its weight, and at the fit's own rate the "
                                          "rarely chosen ones drift.", above=0, maximum=1.0)
    basis: int = option(32, "Basis states the encoder mixes that start at zero (LoRWeB's basis size); --basis-vocab "
                             "adds more.", minimum=0, maximum=MAX_WIDTH)
    basis_vocab: tuple[str, ...] = option(
        (), "Phrase lists (as fit's --vocab: toy, default, a .txt file ...): one more basis state per phrase, "
            "starting at the instruction 'make it PHRASE' (its change from the base instruction) and keyed by the "
            "phrase's CLIP text feature, so that a softmax encoder starts by mixing the phrases whose features the "
            "pairs' CLIP direction points at (InstructBrush's phrase choice, soft). Phrases of more tokens than "
            "the base has positions are left out (visii: give --tokens 75 to learn every position).",
        metavar="NAME")
    hidden: int = option(256, "Width of the encoder's networks.", minimum=1, maximum=MAX_WIDTH)
    mixture: Literal["linear", "softmax"] = option(
        "softmax", "How the basis is mixed: softmax, a convex mix (LoRWeB's) by the pairs' CLIP direction against "
                   "each state's key, corrected by the network and scaled by a gain it gives (so that an edit made "
                   "of two can add their states); linear, free coefficients from the network.")
    edits_per_step: int = option(4, "Edits per step (their gradients are summed).", minimum=1,
                                 maximum=MAX_EPISODE)
    max_pairs: int = option(10, "Each edit is encoded from 1 to this many of its pairs, drawn at random.", minimum=1,
                            maximum=MAX_EPISODE)
    loss_pairs: int = option(2, "Other pairs of the same edit the loss is taken on (never the encoded ones), so the "
                                "encoder learns the edit, not the pairs.", minimum=1, maximum=MAX_EPISODE)
    timesteps: int = option(2, "Training timesteps per loss pair and step.", minimum=1, maximum=MAX_EPISODE)
    seed: int = option(0, "Seeds the edits and scenes drawn, the noise and the networks' initialization.",
                        minimum=0, maximum=MAX_SEED)
    init_text: str = option("", "The base instruction: the untrained state of the method the basis is added to "
                                "(empty: the method's default token count).", metavar="TEXT")
    val_every: int = option(100, "Every N steps, the loss on fixed validation edits (0: never).", minimum=0,
                            maximum=MAX_FIT_STEPS)
    save_every: int = option(250, "Write the encoder and a resumable state every N steps (0: only at the end or "
                                  "when stopped).", minimum=0, maximum=MAX_FIT_STEPS)


# The fit settings an encoder trains with unless given: the MSE on the instruction's own prediction. On the toy
# model the guidance-combined one (the library's fit default, the official VISII code's) is lowest for the empty
# text and rises for the right one ('make it night' on night pairs, guidance 3: 1.46 against 0.77 for the empty
# text; on the text row alone 0.15 against 0.52): a fit escapes it by starting from a good text and keeping its
# best-scoring state, an encoder trained on it learns to edit less.
ENCODER_FIT_DEFAULTS = {"loss_target": "cond"}

__all__ = ["ENCODER_FIT_DEFAULTS", "EncoderSettings"]
