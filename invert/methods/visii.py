"""VISII (Nguyen & Lee 2023): the instruction learned in the text-encoder output space.

The learned state is the encoded instruction's own token positions (``learned``; for CLIP those between BOS and
EOS); the positions before them, EOS and padding keep the init text's encoding (``init``). The CLIP direction term follows the official code: the CLIP text
projection of the mean over all 77 positions, cosine against the normalized mean-after minus mean-before image
embedding, clamped."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..backbones import Editor, TextEncoding, backbone_class
from ..backbones.rows import Rows
from ..clip import Clip
from ..errors import InstructionFileError, InvertError
from ..instruction.metadata import Metadata
from .base import (DEFAULT_TOKENS, Conditioning, Method, append_text, check_mixable, check_prompt_tensors, mix_base,
                   mix_learned)
from .settings import VisiiSettings

EMBEDS_FORMAT = "invert.prompt_embeds"


class Visii(Method):
    name = "visii"
    has_official_code = True
    default_grad_clip = "abs"
    exports = {"embeds": "the prompt embedding (1, positions, width), and the pooled vector where the model takes "
                         "one, as a safetensors file of a plain diffusers pipeline call's keyword arguments"}

    def __init__(self, editor: Editor, init: torch.Tensor, eos: int, learned: torch.Tensor | None = None,
                 settings: VisiiSettings = VisiiSettings(), pooled: torch.Tensor | None = None,
                 learned_pooled: torch.Tensor | None = None):
        super().__init__(editor)
        self.settings = settings
        init = init.detach().float()
        self.register_buffer("init", init)  # (1, positions, width): the init text's encoding
        self.start = editor.instruction_start  # the first learned position (CLIP: after BOS)
        self.learned = nn.Parameter((init[:, self.start:eos] if learned is None else learned.detach().float()).clone())
        self.eos = eos
        self.keep_pooled(pooled, learned_pooled, trainable=editor.learns_pooled)
        self.clip_term: tuple[Clip, torch.Tensor, float, float, slice] | None = None

    @classmethod
    def initialize(cls, editor: Editor, init: TextEncoding, init_text: str = "",
                   settings: VisiiSettings = VisiiSettings(), seed: int = 0) -> "Visii":
        """Learn the instruction's token positions (CLIP: between BOS and EOS); an empty init text has none, so then
        the first ``tokens`` positions from where they would start (CLIP: EOS and padding outputs, which the text
        rows attend to like any token) are learned."""
        eos = init.eos[0]
        return cls(editor, init.embeds, eos if eos > init.start else init.start + (settings.tokens or DEFAULT_TOKENS),
                   settings=settings, pooled=init.pooled)

    @classmethod
    def needs_clip(cls, settings: VisiiSettings) -> bool:
        return bool(settings.visii_clip_weight)

    @property
    def num_tokens(self) -> int:
        return self.eos - self.start

    def extra_meta(self) -> dict:
        """Where the learned tokens start (klein's depends on its tokenizer), so that an export needs no model."""
        return {"start": self.start}

    def prompt_embeds(self) -> torch.Tensor:
        return torch.cat([self.init[:, :self.start], self.learned, self.init[:, self.eos:]], dim=1)

    def conditioning(self, rows: Rows, uncond: TextEncoding, reverse: bool = False) -> Conditioning:
        return self.condition(rows, self.prompt_embeds().to(self.editor.dtype), uncond)

    def official_clip_reference(self, uncond: TextEncoding) -> torch.Tensor:
        """The official code clips at the signed max of its whole (3, 77, d) parameter: the prompt's encoding and
        twice the empty prompt's."""
        return torch.cat([self.prompt_embeds().detach().flatten(), uncond.embeds.float().flatten()])

    def set_clip_direction(self, clip: Clip, direction: torch.Tensor) -> None:
        weight, clamp = self.settings.visii_clip_weight, self.settings.visii_clip_clamp
        if not weight:
            return
        widths = self.editor.text_segments
        if clip.text_width not in widths:
            raise InvertError(f"CLIP model '{clip.name}' has text width {clip.text_width}, this model's text "
                              f"encoder{'s' if len(widths) > 1 else ''} {', '.join(map(str, widths))}: the direction "
                              "loss needs one equal (or --visii-clip-weight 0)")
        start = sum(widths[:widths.index(clip.text_width)])  # the first encoder of the CLIP model's width
        self.clip_term = (clip, direction, weight, clamp, slice(start, start + clip.text_width))

    def extra_loss(self) -> torch.Tensor | None:
        if self.clip_term is None:
            return None
        clip, direction, weight, clamp, part = self.clip_term
        hidden = self.prompt_embeds()[0, :, part].mean(0, keepdim=True)
        text = torch.nn.functional.normalize(clip.project_text(hidden).float(), dim=-1)
        cos = (text * direction.to(text.device)).sum(-1).clamp(max=clamp)
        return -weight * cos.mean()

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: Metadata, editor: Editor, strength: float = 1.0
                     ) -> "Visii":
        init, learned = tensors["visii.init"], tensors["visii.learned"]
        check_prompt_tensors(editor, init, {"visii.learned": learned})
        if learned.dim() != 3 or learned.shape[::2] != init.shape[::2]:
            raise InstructionFileError(f"tensor 'visii.learned' of shape {tuple(learned.shape)} does not match its "
                                       f"prompt embedding's {tuple(init.shape)}")
        start = editor.instruction_start
        eos = learned.shape[1] + start
        base = init[:, start:eos].float()
        learned = torch.lerp(base, learned.float(), strength)  # exact at 0 and 1: as learned at strength 1
        pooled, learned_pooled = cls.stored_pooled(tensors, "visii", strength)
        return cls(editor, init.to(editor.device), eos, learned.to(editor.device), pooled=pooled,
                   learned_pooled=learned_pooled)

    def hybrid(self, text: str) -> "Visii":
        """The learned tokens, then the init text's EOS and a padding position, then ``text``'s tokens (frozen
        context), as the official code concatenates a hybrid instruction."""
        with torch.no_grad():
            extended = append_text(self.editor, self.prompt_embeds(), self.eos, text)
        return Visii(self.editor, extended, self.eos, self.learned, self.settings, *self._pooled())

    def widen(self, tokens: int) -> "Visii":
        if tokens < self.num_tokens:
            raise InvertError(f"cannot narrow a visii instruction from {self.num_tokens} to {tokens} tokens")
        extra = self.init[:, self.eos:tokens + self.start]  # the init text's own encoding at the new positions
        return Visii(self.editor, self.init, tokens + self.start, torch.cat([self.learned.detach(), extra], dim=1),
                     self.settings, *self._pooled())

    @classmethod
    def mix(cls, methods: list["Visii"], weights: list[float]) -> "Visii":
        """The learned tokens' changes combined (see :meth:`Method.mix`), token counts widened to the largest
        first; BOS, EOS and padding, which no fit learns, are the base: the init encodings averaged (one init
        text: its encoding, exactly)."""
        check_mixable(methods)
        tokens = max(m.num_tokens for m in methods)
        wide = [m.widen(tokens) for m in methods]
        s = methods[0].start
        init = mix_base([m.init for m in wide], weights)
        learned = mix_learned([m.learned.detach() for m in wide], [m.init[:, s:tokens + s] for m in wide], weights,
                              init[:, s:tokens + s])
        init_pooled, learned_pooled = zip(*(m._pooled() for m in wide))
        base_pooled = None if init_pooled[0] is None else mix_base(list(init_pooled), weights)
        mixed_pooled = None if learned_pooled[0] is None else \
            mix_learned(list(learned_pooled), list(init_pooled), weights, base_pooled)
        return cls(methods[0].editor, init, tokens + s, learned, methods[0].settings, base_pooled, mixed_pooled)

    def _pooled(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The init and learned pooled vectors (None where there are none), to build a changed copy."""
        learned = getattr(self, "pooled", None)
        return getattr(self, "init_pooled", None), None if learned is None else learned.detach()

    @classmethod
    def export(cls, kind: str, tensors: dict[str, torch.Tensor], meta: Metadata, path: str | os.PathLike,
               reverse: bool = False) -> None:
        """``embeds``: the whole prompt embedding (1, positions, width), and the pooled vector where the model
        takes one (SDXL, FLUX.1 Kontext), as the pipeline call's keyword arguments (the backbone's
        :meth:`~invert.backbones.Editor.pipeline_arguments`) in a safetensors file, for
        ``pipe(**load_file(path), image=...)`` of any pipeline of the same base model; its metadata: the fit's
        guidance as the pipeline's arguments."""
        if kind != "embeds" or reverse:
            super().export(kind if not reverse else f"{kind} --reverse", tensors, meta, path)
        backbone = backbone_class(meta.backbone)
        init, learned = tensors["visii.init"].float(), tensors["visii.learned"].float()
        start = (meta.extra or {}).get("start", backbone.instruction_start)
        if not isinstance(start, int):  # a file from before instructions recorded it, of a model whose start varies
            raise InvertError(f"this {meta.backbone} instruction does not record where its learned tokens start "
                              "(fitted by an older invert): use invert.installed(instruction, pipe) instead")
        embeds = torch.cat([init[:, :start], learned, init[:, learned.shape[1] + start:]], dim=1)
        pooled = tensors.get("visii.pooled", tensors.get("visii.init_pooled"))
        arguments = backbone.pipeline_arguments(embeds, None if pooled is None else pooled.float())
        guidance = backbone.pipeline_guidance(meta.text_guidance, meta.image_guidance)
        save_file({k: v.contiguous() for k, v in arguments.items()}, str(Path(path)),
                  metadata={"format": EMBEDS_FORMAT, "base_model": meta.base_model,
                            **{k: str(v) for k, v in guidance.items()}})
