"""The layout of a denoiser batch, said explicitly: which rows carry the instruction and at which timestep each row
is. Fitting and sampling build it from the backbone's guidance groups (:class:`~invert.backbones.base.Group`) and
pass it down; a method conditions exactly the rows it is told to, and nothing infers the layout from the batch
size."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Group


@dataclass(frozen=True)
class Rows:
    conditional: torch.Tensor  # (batch,) bool: the rows that receive the instruction (text rows)
    timesteps: torch.Tensor  # (batch,) each row's timestep

    @classmethod
    def uniform(cls, timesteps: torch.Tensor, conditional: bool) -> "Rows":
        """Rows that all receive the instruction, or none of them."""
        t = torch.as_tensor(timesteps).reshape(-1)
        return cls(torch.full(t.shape, conditional, dtype=torch.bool, device=t.device), t)

    @classmethod
    def of(cls, groups: list[Group], timesteps: torch.Tensor) -> "Rows":
        """A guidance batch: ``groups`` one after another, each with a row per entry of ``timesteps``."""
        t = torch.as_tensor(timesteps).reshape(-1)
        conditional = torch.cat([torch.full(t.shape, g.text, dtype=torch.bool, device=t.device) for g in groups])
        return cls(conditional, t.repeat(len(groups)))

    def __len__(self) -> int:
        return len(self.conditional)

    def embeds(self, text: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """Token sequences for this batch: ``text`` (1, positions, width) on the conditional rows, the
        unconditional encoding on the others."""
        return torch.where(self.conditional[:, None, None], text.to(uncond.dtype), uncond)

    def pooled(self, text: torch.Tensor | None, uncond: torch.Tensor | None) -> torch.Tensor | None:
        """Pooled vectors for this batch (backbones that take one), as :meth:`embeds`."""
        if text is None:
            return None
        return torch.where(self.conditional[:, None], text.to(uncond.dtype), uncond)


__all__ = ["Rows"]
