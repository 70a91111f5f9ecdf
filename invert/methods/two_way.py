"""A forward instruction and its reverse (after -> before) learned in one run, after UIP2P's cycle edit
consistency. Both are instances of one method; a UNet call conditions as whichever its ``reverse`` flag names.

The file stores the forward's tensors as they are and the reverse's under ``reverse.``, so an instruction
fitted with --reverse still applies forward wherever a plain one does."""
from __future__ import annotations

from typing import TYPE_CHECKING, ContextManager

import torch

from ..backbones.rows import Rows
from .base import REVERSE, Conditioning, Method, Stage

if TYPE_CHECKING:
    from ..clip import Clip


class TwoWay(Method):
    def __init__(self, forward: Method, reverse: Method, reverse_init_text: str):
        super().__init__(forward.editor)
        # Not named forward/reverse: nn.Module.forward is a method, and a submodule of that name would be hidden.
        self.edit, self.undo, self.reverse_init_text = forward, reverse, reverse_init_text
        self.name = forward.name  # a two-way fit is its method's
        self.init_from = forward.init_from
        self.conditions_all_rows = forward.conditions_all_rows
        self.direction_in_conditioning = forward.direction_in_conditioning
        self.default_grad_clip = forward.default_grad_clip

    @property
    def num_tokens(self) -> int:
        return self.edit.num_tokens

    def conditioning(self, rows: Rows, uncond: torch.Tensor, reverse: bool = False) -> Conditioning:
        return (self.undo if reverse else self.edit).conditioning(rows, uncond)

    def installed(self) -> ContextManager:
        return self.edit.installed()  # one installation serves both: the conditioning names the instruction

    def schedule(self, steps: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
        self.undo.schedule(steps, num_train_timesteps, seed)
        return self.edit.schedule(steps, num_train_timesteps, seed)

    def stages(self, total_steps: int) -> list[Stage]:
        return [Stage(f.start, f.stop, f.parameters + r.parameters)
                for f, r in zip(self.edit.stages(total_steps), self.undo.stages(total_steps))]

    def loss_terms(self, step: int) -> list[tuple[bool, float]]:
        return [(False, 1.0), (True, 1.0)]

    def extra_loss(self) -> torch.Tensor | None:
        losses = [x for x in (self.edit.extra_loss(), self.undo.extra_loss()) if x is not None]
        return sum(losses) if losses else None

    def set_clip_direction(self, clip: Clip, direction: torch.Tensor) -> None:
        """The reverse instruction's CLIP direction is the exemplars' direction negated."""
        self.edit.set_clip_direction(clip, direction)
        self.undo.set_clip_direction(clip, -direction)

    def official_clip_reference(self, uncond: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.edit.official_clip_reference(uncond), self.undo.official_clip_reference(uncond)])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.edit.tensors(), **{REVERSE + k: v for k, v in self.undo.tensors().items()}}

    def extra_meta(self) -> dict:
        return {**self.edit.extra_meta(), "reverse": {"init_text": self.reverse_init_text,
                                                         "extra": self.undo.extra_meta()}}
