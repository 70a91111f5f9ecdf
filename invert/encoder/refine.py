"""Refining an encoder's answer by the loss it was trained with, on the exemplars, in the encoder's own coordinates:
its weights over its basis states, from the weights it gave (an edit the encoder never saw is mapped to the nearest
one it knows; the pairs' loss still prefers the states that edit them better). A short fit that checks itself as a fit
does: the refined state is kept unless it edits the pairs worse than the encoder's own answer. (On the toy model the
same refinement of the method's own parameters scored about as well: docs/encoder.md.)"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..backbones import Editor
from ..fitting.loop import FitData
from ..fitting.losses import direction_of
from ..fitting.validation import Validation
from ..methods.base import Method
from ..settings import FitSettings
from .loss import pass_back, state_loss
from .network import EditEncoder, load_state

if TYPE_CHECKING:
    from ..clip import Clip

MIN_ROWS = 2  # rows of a step's loss: a single pair is taken at two timesteps


@dataclass(frozen=True)
class Refinement:
    """What a refinement gave: the weights it kept and the pairs' scores (dB) of the encoder's own and the refined
    state."""

    weights: torch.Tensor
    scores: tuple[float, float]

    @property
    def kept_refined(self) -> bool:
        return self.scores[1] >= self.scores[0]

    def describe(self, steps: int) -> str:
        own, refined = self.scores
        if self.kept_refined:
            return f"its basis weights fitted {steps} steps ({refined:.2f} dB on the pairs, the encoder's {own:.2f})"
        return (f"its basis weights fitted {steps} steps and not kept ({refined:.2f} dB on the pairs, the encoder's "
                f"own {own:.2f})")


def fitted_weights(net: EditEncoder, method: Method, method_settings: Any, editor: Editor, clip: Clip,
                   start: torch.Tensor, before: torch.Tensor, after: torch.Tensor, befores: list, afters: list,
                   settings: FitSettings) -> torch.Tensor:
    """Basis weights from ``start`` after ``settings.encoder_refine`` Adam steps of the fit's loss on the pairs
    (CLIP features ``before``, ``after``; images ``befores``, ``afters``): ``settings``' loss target and guidance,
    the method's loss terms, the pairs' fixed noises, each step every pair at a timestep drawn from
    ``settings.seed``, the learning rate (``encoder_refine_lr``) decayed to zero on a cosine."""
    steps = settings.encoder_refine
    weights = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=settings.encoder_refine_lr)
    data = FitData(editor, befores, afters, settings.seed)
    gen = torch.Generator("cpu").manual_seed(settings.seed)
    n = len(befores)
    pair = torch.arange(n).repeat_interleave(-(-MIN_ROWS // n)).to(editor.device)
    trainable = {name: p.requires_grad for name, p in method.named_parameters()}
    method.requires_grad_(True)
    method.schedule(steps, editor.num_train_timesteps, settings.seed)
    if method.needs_clip(method_settings):
        method.set_clip_direction(clip, direction_of(before, after))
    with method.installed():
        for step in range(steps):
            optimizer.param_groups[0]["lr"] = settings.encoder_refine_lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            state = net.decode(weights)
            load_state(method, {k: v.detach() for k, v in state.items()})
            t = torch.randint(0, editor.num_train_timesteps, (len(pair),), generator=gen).to(editor.device)
            optimizer.zero_grad(set_to_none=True)
            state_loss(method, data, settings, t, pair, step)
            pass_back(method, state)
            optimizer.step()
    for name, p in method.named_parameters():  # as they were: a fit from this state trains them
        p.requires_grad_(trainable[name])
    return weights.detach()


def refine(net: EditEncoder, method: Method, method_settings: Any, editor: Editor, clip: Clip,
           before: torch.Tensor, after: torch.Tensor, befores: list, afters: list, settings: FitSettings) -> Refinement:
    """The encoder's basis weights for the pairs, fitted (:func:`fitted_weights`) and kept unless the encoder's own
    edit the pairs better (``Validation.of_fit``: the fit's validation sampling, here on the pairs themselves, as a
    fit with no held-out pairs checks itself): on the toy model a refinement from a single pair sometimes lands on a
    state that destroys the image (2.3 dB on its pair against the encoder's 10.0), and the check keeps the
    encoder's answer then."""
    with torch.no_grad():
        start = net.weights(before, after)
    refined = fitted_weights(net, method, method_settings, editor, clip, start, before, after, befores, afters,
                             settings)
    scorer = Validation.of_fit(editor, befores, afters, settings)
    scores = []
    for candidate in (start, refined):
        with torch.no_grad():
            load_state(method, net.decode(candidate))
        scores.append(scorer.score(method))
    result = Refinement(refined, (scores[0], scores[1]))
    return result if result.kept_refined else Refinement(start, result.scores)


__all__ = ["Refinement", "fitted_weights", "refine"]
