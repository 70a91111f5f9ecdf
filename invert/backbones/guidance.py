"""The layout of a UNet batch, said explicitly: which rows carry the instruction and at which timestep each row
is. Fitting and sampling build it and pass it down; a method conditions exactly the rows it is told to, and
nothing infers the layout from the batch size.

InstructPix2Pix's guidance batch is [text+image, image-only, unconditional] (each n images long) when guidance
is on, and just the text rows when it is off (text guidance <= 1 or image guidance < 1, as diffusers decides)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


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
    def ip2p(cls, images: int, timestep: torch.Tensor, guided: bool, device: torch.device) -> "Rows":
        """IP2P's sampling batch for ``images`` images at one timestep: text rows first, then with guidance the
        image-only and unconditional rows."""
        groups = 3 if guided else 1
        conditional = torch.arange(groups * images, device=device) < images
        t = torch.as_tensor(timestep, device=device).reshape(-1).expand(groups * images)
        return cls(conditional, t)

    def __len__(self) -> int:
        return len(self.conditional)

    def embeds(self, text: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """Encoder hidden states for this batch: ``text`` (1, positions, width) on the conditional rows, the
        unconditional encoding on the others."""
        return torch.where(self.conditional[:, None, None], text.to(uncond.dtype), uncond)


def guided(text: torch.Tensor, image: torch.Tensor, uncond: torch.Tensor, guidance: float,
           image_guidance: float) -> torch.Tensor:
    """IP2P's guidance combination: uncond + s_T (text - image) + s_I (image - uncond)."""
    return uncond + guidance * (text - image) + image_guidance * (image - uncond)


def is_guided(guidance: float, image_guidance: float) -> bool:
    """Whether IP2P runs the three-row guidance batch (diffusers' ``do_classifier_free_guidance``)."""
    return guidance > 1.0 and image_guidance >= 1.0


__all__ = ["Rows", "guided", "is_guided"]
