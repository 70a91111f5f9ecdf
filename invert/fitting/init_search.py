"""The init text a fit starts from: the candidates (given with --init-text, found with CLIP for --init best, or the
method's own way), their scores on the training pairs, and the choice.

A candidate is scored as the fit's validation scores a state: the untrained instruction applied to the pairs with
few sampling steps and fixed noise, PSNR to the afters. Only the training pairs choose: the held-out pairs score
the fit, and an init chosen on them would make the start's validation score in-sample."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..backbones import Editor
from ..clip import Clip
from ..methods.base import Method
from ..settings import FitSettings
from ..settings.init import MIN_PAIRS_TO_SHORTLIST
from .phrases import PhraseChoice, init_candidates, initial_text
from .validation import Validation


@dataclass(frozen=True)
class InitChoice:
    """The chosen text, the phrase search's result (recorded in the file) and, when candidates were compared, their
    scores: ``{"no_edit": dB, "texts": {text: dB}, "steps": sampling steps of each score}``."""

    text: str
    phrases: PhraseChoice | None = None
    scores: dict | None = None


def init_mode(cls: type[Method], settings: FitSettings) -> str:
    """--init, with auto resolved to the method's own way."""
    return cls.init_from if settings.init == "auto" else settings.init


def own_init(cls: type[Method], settings: FitSettings) -> str:
    """How the init text is found without a candidate search: --init best searches among texts found with CLIP,
    and falls back to the method's own way when no CLIP model is at hand."""
    mode = init_mode(cls, settings)
    return cls.init_from if mode == "best" else mode


def choose_init(editor: Editor, cls: type[Method], settings: FitSettings, method_settings: Any, clip: Clip | None,
                befores: list[Image.Image], afters: list[Image.Image]) -> InitChoice:
    """The init text for the (training) pairs ``befores`` -> ``afters``: the one --init-text gives; the best-scoring
    of several given, or of those --init best finds with CLIP; else the one the method's own way finds."""
    texts = settings.init_texts
    if len(texts) == 1:
        return InitChoice(texts[0])
    found = None
    if not texts and init_mode(cls, settings) == "best" and clip is not None:
        texts, found = init_candidates(clip, settings.vocab, editor.model_id, befores, afters, settings)
    if texts:
        scores = score_candidates(editor, cls, settings, method_settings, texts, befores, afters)
        return InitChoice(best_text(scores["texts"], scores["no_edit"]), found, scores)
    text, found = initial_text(own_init(cls, settings), settings.vocab, clip, editor.model_id, befores, afters,
                               settings, pez_steps=settings.pez_steps, pez_tokens=settings.pez_tokens,
                               seed=settings.seed)
    return InitChoice(text, found)


def score_candidates(editor: Editor, cls: type[Method], settings: FitSettings, method_settings: Any,
                     texts: list[str] | tuple[str, ...], befores: list[Image.Image], afters: list[Image.Image]) -> dict:
    """Each candidate's score on the pairs: ``{"no_edit": dB, "texts": {text: dB}, "steps": sampling steps}``.

    With --best-shortlist K (and more than K candidates, at least MIN_PAIRS_TO_SHORTLIST pairs) in two rounds: every
    candidate on the first half of the pairs (recorded as ``"first_round"``, over ``"first_round_pairs"`` pairs),
    then the K best of them on the other half; ``"texts"`` then holds the K. A pair's edit does not depend on the
    batch it is sampled in, so their scores are the ones a single round over all pairs gives: the two rounds can
    only differ from one by leaving the one-round best off the shortlist."""
    steps = candidate_steps(settings)

    def state(text: str) -> Method:
        return cls.initialize(editor, editor.encode_text([text]), text, method_settings, settings.seed)

    keep, n = settings.best_shortlist, len(befores)
    if not keep or len(texts) <= keep or n < MIN_PAIRS_TO_SHORTLIST:
        scorer = Validation.of_fit(editor, befores, afters, settings, steps)
        return {"no_edit": scorer.no_edit, "texts": {t: scorer.score(state(t)) for t in texts}, "steps": steps}
    half = n // 2
    one = Validation.of_fit(editor, befores[:half], afters[:half], settings, steps)
    two = Validation.of_fit(editor, befores[half:], afters[half:], settings, steps)
    first = {t: one.score(state(t)) for t in texts}
    full = {t: (first[t] * half + two.score(state(t)) * (n - half)) / n for t in shortlist(first, keep)}
    return {"no_edit": (one.no_edit * half + two.no_edit * (n - half)) / n, "texts": full, "steps": steps,
            "first_round": first, "first_round_pairs": half}


def shortlist(scores: dict[str, float], keep: int) -> list[str]:
    """The ``keep`` best-scoring texts, best first (ties in the candidates' order)."""
    return sorted(scores, key=lambda t: -scores[t])[:keep]


def candidate_steps(settings: FitSettings) -> int:
    """Sampling steps of each candidate's score: --best-val-steps, else half the validation's. A ranking needs
    fewer steps than a score: on the toy world's validation scenes 5 steps rank the candidates as 10 do (Spearman
    0.98, the same pick on 6 of 6 edits); on the quality table (22 edits, 10 and 1 shots) they pick another text
    in 8 of 44 searches, those fits 1.8 dB better on average (docs/performance.md), at half the search's cost."""
    return settings.best_val_steps or -(-settings.val_steps // 2)


def best_text(scores: dict[str, float], no_edit: float) -> str:
    """The best-scoring candidate text; the empty one only when no other beats doing nothing (an empty init
    leaves all of the edit to the optimization)."""
    worded = {t: v for t, v in scores.items() if t.strip()}
    pool = worded if any(v > no_edit for v in worded.values()) else scores
    return max(pool, key=lambda t: pool[t])


__all__ = ["InitChoice", "best_text", "candidate_steps", "choose_init", "init_mode", "own_init", "score_candidates",
           "shortlist"]
