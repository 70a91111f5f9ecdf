"""A fit that checks itself: held-out exemplar pairs, a score of any instruction on them (the instruction applied
with few sampling steps and fixed noise, PSNR to the true afters), and the checks that say, in one line, when a
fit went wrong (its score fell below its start or collapsed, or lies below the unedited input; its loss did not
fall)
and what to try.

The loop (invert.fitting.loop) keeps the score curve and the best state; this module says how a state is scored
and judged, and the API joins the two."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from PIL import Image

from ..backbones import Editor
from ..methods.base import Method
from ..metrics import as_tensor, psnr
from ..sampling import NonFiniteResult, sample
from ..settings import FitSettings

MIN_PAIRS_TO_HOLD_OUT = 8  # below this every pair trains, and the fit is scored on them
DEFAULT_HELD_OUT = 2
SCORES_PER_FIT = 10  # --val-every's default: this many scores over a fit (besides its start)
# Below this many steps a fit is not scored unless --val-every asks: each score samples the held-out pairs, which
# would cost more than so short a fit (and such fits are previews and tests, not results).
MIN_STEPS_TO_SCORE = 20


def held_out(pairs: int, val: int | None) -> list[int]:
    """Indices of the pairs held out of training for validation: the last ``val`` (default: 2 of 8 or more pairs,
    else none); none means the fit is scored on its training pairs. At least one pair always trains."""
    count = (DEFAULT_HELD_OUT if pairs >= MIN_PAIRS_TO_HOLD_OUT else 0) if val is None else min(val, pairs - 1)
    return list(range(pairs - count, pairs))


def scoring_interval(total_steps: int, val_every: int | None) -> int:
    """Steps between scores: ``val_every``, or SCORES_PER_FIT scores over a fit of MIN_STEPS_TO_SCORE steps or
    more; 0: no validation."""
    if val_every is not None:
        return val_every
    return max(1, math.ceil(total_steps / SCORES_PER_FIT)) if total_steps >= MIN_STEPS_TO_SCORE else 0


class Validation:
    """Scores instructions on a fixed set of pairs: mean PSNR (dB) of the instruction's edits of the befores against
    the afters, sampled with ``steps`` steps and the noise stream of ``seed`` (the noise ``apply`` uses by
    default), so two states are compared on the same draws."""

    def __init__(self, editor: Editor, befores: list[Image.Image], afters: list[Image.Image], *, steps: int,
                 guidance: float, image_guidance: float, seed: int):
        self.editor, self.befores = editor, befores
        self.truth = as_tensor(afters)
        self.steps, self.guidance, self.image_guidance, self.seed = steps, guidance, image_guidance, seed
        self.no_edit = float(psnr(as_tensor(befores), self.truth).mean())  # doing nothing scores this
        # Every state is sampled from the same noise on the same pairs: the first step's text-free rows are
        # computed once (per kind of method) and reused (see Editor.sample).
        self._first_step: dict[type, dict] = {}

    @classmethod
    def of_fit(cls, editor: Editor, befores: list[Image.Image], afters: list[Image.Image], settings: FitSettings,
               steps: int | None = None) -> "Validation":
        """The score a fit with ``settings`` uses: its validation steps (or ``steps``), guidance and seed."""
        return cls(editor, befores, afters, steps=steps or settings.val_steps, guidance=settings.guidance,
                   image_guidance=settings.image_guidance, seed=settings.seed)

    def score(self, method: Method, installed: bool = False) -> float:
        """``installed``: the method is already on the UNet (inside its fit). A state whose edit is NaN or inf
        scores -inf: it is never chosen or kept."""
        psnrs = self._psnrs(method, installed)
        return float("-inf") if psnrs is None else float(psnrs.mean())

    def pair_scores(self, method: Method, installed: bool = False) -> list[float]:
        """Each pair's PSNR (dB), of which :meth:`score` is the mean (-inf for every pair of a non-finite edit)."""
        psnrs = self._psnrs(method, installed)
        return [float("-inf")] * len(self.befores) if psnrs is None else [float(v) for v in psnrs]

    def _psnrs(self, method: Method, installed: bool):
        try:
            results = sample(self.editor, method, self.befores, steps=self.steps, guidance=self.guidance,
                             image_guidance=self.image_guidance, seed=self.seed, install=not installed,
                             first_step=self._first_step.setdefault(type(method), {}))
        except NonFiniteResult:
            return None
        return psnr(as_tensor(results), self.truth)


# Score checks. A score is PSNR on 2 held-out pairs with 10 sampling steps: differences below a dB are mostly
# sampling noise, and a fit whose init text is already good (the toy night edit: 29.8 dB) wanders by about one.
FALL_MARGIN = 1.0  # dB: a score this much below the start has fallen
COLLAPSE = 3.0  # dB: a fit whose score ends this far below its best has been thrown off by its steps
# Loss checks. The loss of one step depends on its random timestep (a spike of 10x the median is common in a fit
# that goes well), so a spike is reported only as the likely cause of a fall the scores show, or when a fit has
# no scores; the stall check compares means over many steps.
SPIKE = 10.0  # a step whose loss is this many times the median of the fit's losses is a spike
STALL = 0.9  # a fit whose last quarter's mean loss is above this fraction of its first quarter's, and whose
# validation score (when it has one) never rose above its start, did not learn
MIN_STEPS_FOR_LOSS_CHECKS = 20


@dataclass
class FitCheck:
    """What the checks found in one fit: ``problems`` (each a short clause), ``advice`` (what to try) and the
    numbers behind them; ``line()`` says it in one line, or None when nothing was found."""

    problems: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    def add(self, problem: str, *advice: str) -> None:
        self.problems.append(problem)
        self.advice += [a for a in advice if a not in self.advice]

    def line(self) -> str | None:
        if not self.problems:
            return None
        return "fit check: " + "; ".join(self.problems) + ". Try " + ", or ".join(self.advice)


def check_fit(history: list[float], curve: list[tuple[int, float]], no_edit: float | None, kept_step: int | None,
              lr: float) -> FitCheck:
    """Judge a finished fit from its loss ``history`` (one per step), its validation ``curve`` ((steps done,
    score), the start first), the unedited input's score and the step whose state was kept (None: the last)."""
    check = FitCheck()
    lower_lr = f"a lower --lr ({lr / 3:.2g})"
    fell = False
    if curve:
        scores = dict(curve)
        (start_step, start), (last_step, last) = curve[0], curve[-1]
        # --keep best-mse may keep a step that was not scored: then the last score stands for it
        kept = scores.get(kept_step, last) if kept_step is not None else last
        trained = curve[1:]
        best_step, best = max(trained, key=lambda x: x[1]) if trained else (start_step, start)
        if kept < start - FALL_MARGIN:
            fell = True
            check.add(f"the state it keeps ({'step ' + str(kept_step) if kept_step is not None else 'the last'}) "
                      f"scores {kept:.2f} dB, below its start's {start:.2f} dB", "--keep last-unless-worse", lower_lr,
                      "another init text")
        elif trained and best < start + FALL_MARGIN and last < start - FALL_MARGIN:
            fell = True
            check.add(f"its training never beat its start's {start:.2f} dB (step {last_step}: {last:.2f} dB)"
                      + (", so it keeps the start" if kept_step == start_step else ""), lower_lr, "another init text")
        elif trained and last < best - COLLAPSE:
            fell = True
            check.add(f"its validation score fell from {best:.2f} dB at step {best_step} to {last:.2f} dB at step "
                      f"{last_step}" + (" (it keeps the best)" if kept_step == best_step else ""), lower_lr)
        if no_edit is not None and kept < no_edit:
            check.add(f"the kept state scores {kept:.2f} dB, below the unedited input's {no_edit:.2f} dB",
                      "another init text (--init-text, several to choose from)", "more exemplar pairs")
    if len(history) >= MIN_STEPS_FOR_LOSS_CHECKS:
        finite = [x for x in history if math.isfinite(x)]
        median = sorted(finite)[len(finite) // 2]
        peak = max(range(len(history)), key=lambda i: history[i])
        if (fell or not curve) and median > 0 and history[peak] > SPIKE * median:
            check.add(f"its loss spiked to {history[peak]:.3g} at step {peak + 1} (median {median:.3g})", lower_lr)
        quarter = len(history) // 4
        first, final = (sum(history[:quarter]) / quarter, sum(history[-quarter:]) / quarter)
        # A loss that stays flat while the held-out score rises is a fit that learns what the loss cannot show.
        rose = len(curve) > 1 and max(v for _, v in curve[1:]) > curve[0][1] + FALL_MARGIN
        if final > STALL * first and not rose:
            check.add(f"its loss did not fall (mean {first:.3g} over the first quarter, {final:.3g} over the last)",
                      "more --steps", "another init text", lower_lr)
    return check


__all__ = ["FitCheck", "Validation", "check_fit", "held_out", "scoring_interval"]
