"""The init's settings: how a fit finds the text it starts from, whatever its method (--init and its candidates,
the phrase search's options, PEZ's). Every method's fit takes them. Importing this module imports no torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import InvertError
from .fields import Checked, option
from .limits import MAX_FIT_STEPS, MAX_SAMPLING_STEPS, MAX_TOKENS

DEFAULT_TEMPLATE = "turn {p_x} into {p_y}"
# Below this many training pairs the init search scores every candidate on every pair: on the toy world's validation
# scenes a first round on 2 of 4 pairs leaves the one-round pick off a shortlist of 4 in 5 of 110 searches (up to
# 1.04 dB), on 3 of 6 in 1 of 66 (0.17 dB), on 4 of 8 in none of 22 (benchmarks/init_shortlist.py).
MIN_PAIRS_TO_SHORTLIST = 6


@dataclass(frozen=True)
class InitSettings(Checked):
    """How the init text is found. Options of one --init mode are prefixed with its name (``phrases_``,
    ``pez_``), as a method's own options are with the method's."""

    init_text: tuple[str, ...] | str | None = option(
        None, "Initial instruction; repeat it to give several, and the fit starts from the one that scores best on the "
              "exemplars. Default: as --init says.", metavar="TEXT", split_commas=False)
    vocab: tuple[str, ...] = option((), "Phrase lists for the caption or phrase search (repeatable): default, toy, "
                                        "flavors, mediums, movements, artists, or a .txt file. Default: the model "
                                        "folder's vocab.txt if it has one, else 'default'.", metavar="NAME")
    init: Literal["best", "auto", "caption", "phrases", "pez", "empty", "encoder"] = option(
        "best", "How to find the init text when --init-text is not given: best, the candidate texts (the caption, "
                "InstructBrush's phrases, the most changed phrases in instruction templates, empty) applied to the "
                "exemplars and the best-scoring one taken; auto, the method's own (caption for visii, phrases for "
                "brush, empty for lora); a CLIP-ranked caption of the afters; InstructBrush's phrases; a PEZ hard "
                "prompt optimized against the afters (the official VISII code's); empty; or encoder, the state an "
                "edit encoder ('invert encoder train', see --encoder-file) gives for the exemplars, the fit starting "
                "from it.")
    encoder_file: str = option("", "--init encoder: the edit encoder file; empty: the one the model's folder ships "
                                   "for the method.", metavar="FILE")
    encoder_refine: int = option(
        0, "--init encoder (and 'invert encode'): then fit the encoder's weights over its basis states (not the "
           "method's parameters) for this many steps of the loss the encoder was trained with, on the exemplars, "
           "each pair at one timestep a step (a single pair at two), and keep them unless the encoder's own answer "
           "edits the exemplars better; 0: the encoder's state as it gives it, in one forward pass.",
        minimum=0, maximum=MAX_FIT_STEPS)
    encoder_refine_lr: float = option(1e-2, "--encoder-refine: Adam's learning rate on the basis weights.", above=0,
                                      maximum=1.0)
    best_val_steps: int | None = option(
        None, "--init best (and several --init-text): sampling steps of each candidate's score on the exemplars "
              "(fixed noise: the fit's seed). Default: half of --val-steps, rounded up (5).", minimum=1, maximum=MAX_SAMPLING_STEPS)
    best_shortlist: int = option(
        4, f"--init best (and several --init-text): with {MIN_PAIRS_TO_SHORTLIST} or more training pairs, every "
           "candidate is scored on half of them first, and only this many of the best go on to the other half; 0: "
           "every candidate on every pair.",
        minimum=0, maximum=1000)
    phrases_top: int = option(5, "--init phrases (and best): phrases kept per image.", minimum=1, maximum=1000,
                              aliases=("top",))
    phrases_threshold: float = option(0.15, "--init phrases (and best): drop a side whose |sensitivity| is below "
                                            "this.", minimum=0.0, maximum=100.0, aliases=("threshold",))
    phrases_relative_threshold: bool = option(False, "--init phrases (and best): --phrases-threshold in units of the "
                                                     "similarities' spread over the vocabulary.",
                                              aliases=("relative_threshold",))
    phrases_template: str = option(DEFAULT_TEMPLATE, "--init phrases (and best): the instruction template.",
                                   aliases=("template",))
    pez_steps: int = option(300, "--init pez: optimization steps (the official code: 3000).",
                            minimum=1, maximum=MAX_FIT_STEPS)
    pez_tokens: int = option(10, "--init pez: prompt length in tokens (the official code: 10); at most the text "
                                 "encoder's positions less BOS and EOS (75).", minimum=1, maximum=MAX_TOKENS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder_file and self.init != "encoder":
            raise InvertError(f"--encoder-file {self.encoder_file}: only with --init encoder (here --init {self.init})")
        if self.encoder_refine and self.init != "encoder":
            raise InvertError(f"--encoder-refine {self.encoder_refine}: only with --init encoder (here --init "
                              f"{self.init})")
        # One --init-text is kept as a string (as files have always recorded it), several as a tuple, none as None.
        if isinstance(self.init_text, (tuple, list)):
            texts = tuple(self.init_text)
            object.__setattr__(self, "init_text", None if not texts else texts[0] if len(texts) == 1 else texts)

    @property
    def init_texts(self) -> tuple[str, ...]:
        """The --init-text candidates (none: found as --init says)."""
        return (self.init_text,) if isinstance(self.init_text, str) else self.init_text or ()


__all__ = ["DEFAULT_TEMPLATE", "MIN_PAIRS_TO_SHORTLIST", "InitSettings"]
