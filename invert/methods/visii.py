"""VISII (Nguyen & Lee 2023): the instruction learned in the text-encoder output space.

Only the token positions between BOS and EOS are parameters; BOS, EOS and padding keep the init text's
encoding. The CLIP direction term follows the official code: the CLIP text projection of the mean over all
77 positions, cosine against the normalized mean-after minus mean-before image embedding, clamped."""
from __future__ import annotations

import torch

from ..clip import Clip
from ..editor import Editor, TextEncoding
from ..errors import InstructionFileError, InvertError
from .base import DEFAULT_TOKENS, Method, append_text, check_prompt_tensors


class Visii(Method):
    name = "visii"
    learned_tensors = ("visii.learned",)

    def __init__(self, init: torch.Tensor, eos: int, learned: torch.Tensor | None = None, dtype=torch.float32):
        self.init = init.detach().float()  # (1, 77, d)
        self.eos = eos
        self.learned = (self.init[:, 1:eos] if learned is None else learned.float()).clone().requires_grad_(True)
        self.dtype = dtype
        self.clip_term = None

    @classmethod
    def initialize(cls, editor: Editor, init: TextEncoding, tokens: int | None = None, **_) -> "Visii":
        """Learn the positions between BOS and EOS; an empty init text has none, so then the first ``tokens``
        positions after BOS (EOS and padding outputs, which the text rows attend to like any token) are learned."""
        eos = init.eos[0]
        return cls(init.embeds, eos if eos > 1 else 1 + (tokens or DEFAULT_TOKENS), dtype=editor.dtype)

    @property
    def num_tokens(self) -> int:
        return self.eos - 1

    def parameters(self) -> list[torch.Tensor]:
        return [self.learned]

    def prompt_embeds(self) -> torch.Tensor:
        return torch.cat([self.init[:, :1], self.learned, self.init[:, self.eos:]], dim=1)

    def text_embeds(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.prompt_embeds().to(self.dtype).expand(len(timesteps), -1, -1)

    def set_clip_direction(self, clip: Clip, direction: torch.Tensor, weight: float, clamp: float) -> None:
        if clip.text_width != self.init.shape[-1]:
            raise InvertError(f"CLIP model '{clip.name}' has text width {clip.text_width}, the IP2P text encoder "
                              f"{self.init.shape[-1]}: the direction loss needs them equal (or --clip-weight 0)")
        self.clip_term = (clip, direction, weight, clamp)

    def extra_loss(self) -> torch.Tensor | None:
        if self.clip_term is None:
            return None
        clip, direction, weight, clamp = self.clip_term
        text = torch.nn.functional.normalize(clip.project_text(self.prompt_embeds()[0].mean(0, keepdim=True)).float(),
                                             dim=-1)
        cos = (text * direction.to(text.device)).sum(-1).clamp(max=clamp)
        return -weight * cos.mean()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"visii.learned": self.learned.detach(), "visii.init": self.init}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict, editor: Editor, strength: float = 1.0
                     ) -> "Visii":
        init, learned = tensors["visii.init"], tensors["visii.learned"]
        check_prompt_tensors(editor, init, {"visii.learned": learned})
        if learned.dim() != 3 or learned.shape[::2] != init.shape[::2]:
            raise InstructionFileError(f"tensor 'visii.learned' of shape {tuple(learned.shape)} does not match its "
                                       f"prompt embedding's {tuple(init.shape)}")
        eos = learned.shape[1] + 1
        base = init[:, 1:eos]
        with torch.no_grad():
            learned = base + strength * (learned - base)
        return cls(init.to(editor.device), eos, learned.to(editor.device), dtype=editor.dtype)

    def hybrid(self, editor: Editor, text: str) -> "Visii":
        with torch.no_grad():
            extended = append_text(editor, self.prompt_embeds(), self.eos, text)
        # The appended tokens are frozen context; the learned positions stay where they were.
        return Visii(extended, self.eos, self.learned.detach(), dtype=self.dtype)
