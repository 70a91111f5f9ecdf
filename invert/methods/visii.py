"""VISII (Nguyen & Lee 2023): the instruction learned in the text-encoder output space.

The learned state is the prompt embedding's positions between BOS and EOS (``learned``); BOS, EOS and padding
keep the init text's encoding (``init``). The CLIP direction term follows the official code: the CLIP text
projection of the mean over all 77 positions, cosine against the normalized mean-after minus mean-before image
embedding, clamped."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..backbones.editor import Editor, TextEncoding
from ..backbones.guidance import Rows
from ..clip import Clip
from ..errors import InstructionFileError, InvertError
from .base import (DEFAULT_TOKENS, Conditioning, Method, append_text, check_mixable, check_prompt_tensors, mix_base,
                   mix_learned)
from .settings import VisiiSettings

EMBEDS_FORMAT = "invert.prompt_embeds"


class Visii(Method):
    name = "visii"
    has_official_code = True
    default_grad_clip = "abs"
    exports = {"embeds": "the prompt embedding (1, 77, width) as a safetensors file for a plain diffusers "
                         "pipeline's prompt_embeds"}

    def __init__(self, editor: Editor, init: torch.Tensor, eos: int, learned: torch.Tensor | None = None,
                 settings: VisiiSettings = VisiiSettings()):
        super().__init__(editor)
        self.settings = settings
        init = init.detach().float()
        self.register_buffer("init", init)  # (1, positions, width): the init text's encoding
        self.learned = nn.Parameter((init[:, 1:eos] if learned is None else learned.detach().float()).clone())
        self.eos = eos
        self.clip_term: tuple[Clip, torch.Tensor, float, float] | None = None

    @classmethod
    def initialize(cls, editor: Editor, init: TextEncoding, init_text: str = "",
                   settings: VisiiSettings = VisiiSettings(), seed: int = 0) -> "Visii":
        """Learn the positions between BOS and EOS; an empty init text has none, so then the first ``tokens``
        positions after BOS (EOS and padding outputs, which the text rows attend to like any token) are learned."""
        eos = init.eos[0]
        return cls(editor, init.embeds, eos if eos > 1 else 1 + (settings.tokens or DEFAULT_TOKENS), settings=settings)

    @classmethod
    def needs_clip(cls, settings: VisiiSettings) -> bool:
        return bool(settings.clip_weight)

    @property
    def num_tokens(self) -> int:
        return self.eos - 1

    def prompt_embeds(self) -> torch.Tensor:
        return torch.cat([self.init[:, :1], self.learned, self.init[:, self.eos:]], dim=1)

    def conditioning(self, rows: Rows, uncond: torch.Tensor, reverse: bool = False) -> Conditioning:
        return Conditioning(rows.embeds(self.prompt_embeds().to(self.editor.dtype), uncond))

    def official_clip_reference(self, uncond: torch.Tensor) -> torch.Tensor:
        """The official code clips at the signed max of its whole (3, 77, d) parameter: the prompt's encoding and
        twice the empty prompt's."""
        return torch.cat([self.prompt_embeds().detach().flatten(), uncond.float().flatten()])

    def set_clip_direction(self, clip: Clip, direction: torch.Tensor) -> None:
        weight, clamp = self.settings.clip_weight, self.settings.clip_clamp
        if not weight:
            return
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

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict, editor: Editor, strength: float = 1.0
                     ) -> "Visii":
        init, learned = tensors["visii.init"], tensors["visii.learned"]
        check_prompt_tensors(editor, init, {"visii.learned": learned})
        if learned.dim() != 3 or learned.shape[::2] != init.shape[::2]:
            raise InstructionFileError(f"tensor 'visii.learned' of shape {tuple(learned.shape)} does not match its "
                                       f"prompt embedding's {tuple(init.shape)}")
        eos = learned.shape[1] + 1
        base = init[:, 1:eos].float()
        learned = torch.lerp(base, learned.float(), strength)  # exact at 0 and 1: as learned at strength 1
        return cls(editor, init.to(editor.device), eos, learned.to(editor.device))

    def hybrid(self, text: str) -> "Visii":
        """The learned tokens, then the init text's EOS and a padding position, then ``text``'s tokens (frozen
        context), as the official code concatenates a hybrid instruction."""
        with torch.no_grad():
            extended = append_text(self.editor, self.prompt_embeds(), self.eos, text)
        return Visii(self.editor, extended, self.eos, self.learned)

    def widen(self, tokens: int) -> "Visii":
        if tokens < self.num_tokens:
            raise InvertError(f"cannot narrow a visii instruction from {self.num_tokens} to {tokens} tokens")
        extra = self.init[:, self.eos:tokens + 1]  # the init text's own encoding at the new positions
        return Visii(self.editor, self.init, tokens + 1, torch.cat([self.learned.detach(), extra], dim=1))

    @classmethod
    def mix(cls, methods: list["Visii"], weights: list[float]) -> "Visii":
        """The learned tokens' changes combined (see :meth:`Method.mix`), token counts widened to the largest
        first; BOS, EOS and padding, which no fit learns, are the base: the init encodings averaged (one init
        text: its encoding, exactly)."""
        check_mixable(methods)
        tokens = max(m.num_tokens for m in methods)
        wide = [m.widen(tokens) for m in methods]
        init = mix_base([m.init for m in wide], weights)
        learned = mix_learned([m.learned.detach() for m in wide], [m.init[:, 1:tokens + 1] for m in wide], weights,
                              init[:, 1:tokens + 1])
        return cls(methods[0].editor, init, tokens + 1, learned)

    @classmethod
    def export(cls, kind: str, tensors: dict[str, torch.Tensor], meta: dict, path, reverse: bool = False) -> None:
        """``embeds``: the whole prompt embedding (1, 77, width) as ``prompt_embeds`` in a safetensors file, for
        ``pipe(prompt_embeds=...)`` of any IP2P pipeline of the same base model."""
        if kind != "embeds" or reverse:
            super().export(kind if not reverse else f"{kind} --reverse", tensors, meta, path)
        init, learned = tensors["visii.init"].float(), tensors["visii.learned"].float()
        embeds = torch.cat([init[:, :1], learned, init[:, learned.shape[1] + 1:]], dim=1)
        guidance = meta.get("guidance") or {}
        save_file({"prompt_embeds": embeds.contiguous()}, str(Path(path)),
                  metadata={"format": EMBEDS_FORMAT, "base_model": str(meta.get("base_model", "")),
                            "guidance_scale": str(guidance.get("text", 7.5)),
                            "image_guidance_scale": str(guidance.get("image", 1.5))})
