"""A forward instruction and its reverse (after -> before) learned in one run, after UIP2P's cycle edit
consistency. Both are instances of one method; the pair conditions as whichever :meth:`direction` selects.

The file stores the forward's tensors as they are and the reverse's under ``reverse.``, so an instruction
fitted with --reverse still applies forward wherever a plain one does."""
from __future__ import annotations

import contextlib

import torch

from ..editor import Editor
from .base import Method

PREFIX = "reverse."


class TwoWay(Method):
    def __init__(self, forward: Method, reverse: Method, reverse_init_text: str):
        self.forward, self.reverse, self.reverse_init_text = forward, reverse, reverse_init_text
        self.name = forward.name
        self.active = forward
        self._contexts: contextlib.ExitStack | None = None
        self._editor: Editor | None = None

    @property
    def num_tokens(self) -> int:
        return self.forward.num_tokens

    def parameters(self) -> list[torch.Tensor]:
        return self.forward.parameters() + self.reverse.parameters()

    def text_embeds(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.active.text_embeds(timesteps)

    def conditioning_rows(self, conditional: bool):
        return self.active.conditioning_rows(conditional)

    def schedule(self, steps: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
        order = self.forward.schedule(steps, num_train_timesteps, seed)
        self.reverse.schedule(steps, num_train_timesteps, seed)
        return order

    def loss_terms(self, step: int) -> list[tuple[bool, float]]:
        return [(False, 1.0), (True, 1.0)]

    def extra_loss(self) -> torch.Tensor | None:
        losses = [x for x in (self.forward.extra_loss(), self.reverse.extra_loss()) if x is not None]
        return sum(losses) if losses else None

    def set_clip_direction(self, clip, direction: torch.Tensor, weight: float, clamp: float) -> None:
        """The reverse instruction's CLIP direction is the exemplars' direction negated."""
        self.forward.set_clip_direction(clip, direction, weight, clamp)
        self.reverse.set_clip_direction(clip, -direction, weight, clamp)

    @contextlib.contextmanager
    def direction(self, reverse: bool):
        """Switch the active instruction, and with it the attention processors a method may install."""
        previous = self.active
        self._activate(self.reverse if reverse else self.forward)
        try:
            yield
        finally:
            self._activate(previous)

    def _activate(self, method: Method) -> None:
        if method is self.active:
            return
        self.active = method
        if self._contexts is not None:
            self._contexts.close()
            self._contexts.enter_context(method.sampling_context(self._editor))

    @contextlib.contextmanager
    def sampling_context(self, editor: Editor):
        with contextlib.ExitStack() as stack:
            self._contexts, self._editor = stack, editor
            stack.enter_context(self.active.sampling_context(editor))
            try:
                yield
            finally:
                self._contexts = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.forward.tensors(), **{PREFIX + k: v for k, v in self.reverse.tensors().items()}}

    def extra_meta(self) -> dict:
        return {**self.forward.extra_meta(), "reverse": {"init_text": self.reverse_init_text,
                                                         "extra": self.reverse.extra_meta()}}


def reverse_parts(tensors: dict[str, torch.Tensor], meta: dict) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The reverse instruction's tensors and metadata in a file fitted with --reverse, else None."""
    reverse = (meta.get("extra") or {}).get("reverse")
    found = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    if not found or not isinstance(reverse, dict):
        return None
    return found, {**meta, "init_text": reverse.get("init_text", ""), "extra": reverse.get("extra")}
