"""What a method is: a small ``nn.Module`` holding the learned state of one instruction (its parameters are
the module's), and how that state conditions the frozen UNet.

The fitting loop and the sampler are shared and never ask which method they run: they pass a method the
layout of each denoiser batch (:class:`~invert.backbones.rows.Rows`) and use the conditioning it returns. A method owns
everything else about itself: initialization, the file's tensors, hybrid text, strength, widening to more
token positions, mixing, its reverse (the edit undone) and its exports."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, ContextManager

import torch
from torch import nn

from ..backbones import Conditioning, Editor, TextEncoding
from ..backbones.rows import Rows
from ..errors import InstructionFileError, InvertError
from ..instruction.metadata import Metadata

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..clip import Clip

DEFAULT_TOKENS = 10  # learned positions for an empty init text (the paper's instructions have about 10 tokens)
REVERSE = "reverse."  # prefix of a two-way instruction's reverse tensors in the file


@dataclass(frozen=True)
class Stage:
    """Fit steps [start, stop) optimized with one optimizer over ``parameters`` (a fresh one per stage)."""

    start: int
    stop: int
    parameters: list[nn.Parameter]


class Method(nn.Module):
    name: ClassVar[str]
    init_from: ClassVar[str] = "caption"  # default init text: "caption" of the afters, "phrases" or "empty"
    conditions_all_rows: ClassVar[bool] = False  # True: the state changes every row of the guidance batch
    # True: the reverse direction is in the conditioning a call is given (visii's embedding, brush's K/V), so a
    # loss may combine both directions in one graph even when the UNet recomputes its forward in the backward.
    direction_in_conditioning: ClassVar[bool] = True
    exports: ClassVar[dict[str, str]] = {}  # export kind -> what it writes (see :meth:`export`)
    has_official_code: ClassVar[bool] = False  # --official reproduces its authors' released training code
    default_grad_clip: ClassVar[str] = "none"  # what --grad-clip auto means for the method

    def __init__(self, editor: Editor):
        super().__init__()
        self.editor = editor  # not a submodule: the frozen model is shared, never saved with the method

    # -- creating -------------------------------------------------------------------------------------------
    @classmethod
    def initialize(cls, editor: Editor, init: TextEncoding, init_text: str, settings: Any, seed: int) -> "Method":
        """The untrained instruction: from the init text's encoding (and ``seed`` where it draws anything)."""
        raise NotImplementedError

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: Metadata, editor: Editor, strength: float = 1.0
                     ) -> "Method":
        """The instruction a file's tensors and metadata hold, with its learned change scaled by ``strength``
        (0 = the initialization, 1 = as learned). Shape problems raise InstructionFileError."""
        raise NotImplementedError

    @classmethod
    def from_instruction(cls, tensors: dict[str, torch.Tensor], meta: Metadata, editor: Editor, strength: float = 1.0,
                         reverse: bool = False) -> "Method":
        """As :meth:`from_tensors`; ``reverse``: the instruction that undoes the edit (a two-way fit's reverse
        instruction by default; a method whose inverse is built in overrides this)."""
        if reverse:
            found = {k[len(REVERSE):]: v for k, v in tensors.items() if k.startswith(REVERSE)}
            back = (meta.extra or {}).get("reverse")
            if not found or not isinstance(back, dict):
                raise InstructionFileError("holds no reverse instruction (fit it with --reverse)")
            try:
                meta = dataclasses.replace(meta, init_text=back.get("init_text", ""), extra=back.get("extra"))
            except InvertError as exc:
                raise InstructionFileError(f"its reverse instruction's metadata is malformed ({exc})") from None
            tensors = found
        return cls.from_tensors({k: v for k, v in tensors.items() if not k.startswith(REVERSE)}, meta, editor,
                                strength)

    @property
    def needs_reverse_instruction(self) -> bool:
        """Whether --reverse learns a second instruction of this method, after -> before (a TwoWay); False where
        the inverse is built in."""
        return True

    @classmethod
    def needs_clip(cls, settings: Any) -> bool:
        """Whether a fit with these settings needs a CLIP model for a loss of the method's own."""
        return False

    # -- conditioning ---------------------------------------------------------------------------------------
    def changes_text_free_rows(self) -> bool:
        """Whether this state, as it is now, changes what the guidance batch's text-free rows predict (sampling
        then cannot reuse them across states, see :meth:`Editor.sample`'s ``first_step``)."""
        return self.conditions_all_rows

    def conditioning(self, rows: Rows, uncond: TextEncoding, reverse: bool = False) -> Conditioning:
        """Token sequences (in the model's dtype) and attention arguments for a denoiser batch laid out as
        ``rows``; ``uncond`` is the unconditional rows' encoding. ``reverse``: condition as the reverse
        instruction."""
        raise NotImplementedError

    def condition(self, rows: Rows, embeds: torch.Tensor, uncond: TextEncoding, attention: dict | None = None
                  ) -> Conditioning:
        """``embeds`` and the instruction's pooled vector (backbones that take one) on the conditional rows,
        ``uncond``'s on the others."""
        pooled = self.pooled_vector()
        return Conditioning(rows.embeds(embeds, uncond.embeds), attention,
                            rows.pooled(None if pooled is None else pooled.to(self.editor.dtype), uncond.pooled))

    def keep_pooled(self, init: torch.Tensor | None, learned: torch.Tensor | None = None, trainable: bool = False
                    ) -> None:
        """The init text's pooled vector (``init_pooled``), for backbones that take one (SDXL, FLUX.1); with
        ``trainable``, a learned copy (``pooled``, starting from ``learned`` or the init's) conditions instead."""
        if init is None:
            return
        device = self.editor.device
        self.register_buffer("init_pooled", init.detach().to(device, torch.float32).reshape(1, -1))
        if trainable:
            start = self.init_pooled if learned is None else learned.detach().to(device, torch.float32).reshape(1, -1)
            self.pooled = nn.Parameter(start.clone())

    def pooled_tensors(self) -> dict[str, torch.Tensor]:
        """The file's tensors of :meth:`keep_pooled`'s vectors (none for backbones without one), for a method
        whose :meth:`tensors` is not its state dict."""
        return {f"{self.name}.{k}": getattr(self, k).detach() for k in ("init_pooled", "pooled") if hasattr(self, k)}

    def pooled_vector(self) -> torch.Tensor | None:
        """The pooled vector the instruction's rows get: the learned one, else the init text's, else none."""
        return getattr(self, "pooled", getattr(self, "init_pooled", None))

    @staticmethod
    def stored_pooled(tensors: dict[str, torch.Tensor], prefix: str, strength: float = 1.0
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A file's init and learned pooled vectors (None where it has none), the learned one's change scaled by
        ``strength`` as the tokens' is."""
        init, learned = tensors.get(f"{prefix}.init_pooled"), tensors.get(f"{prefix}.pooled")
        if init is not None and learned is not None:
            learned = torch.lerp(init.float(), learned.float(), strength)
        return init, learned

    def installed(self) -> ContextManager:
        """Put what the method needs on the UNet (attention processors, an adapter) for the block."""
        return contextlib.nullcontext()

    def in_pipeline(self, pipe: DiffusionPipeline) -> ContextManager:
        """Install into a user's own diffusers IP2P pipeline for a call of theirs (which passes no attention
        arguments of ours)."""
        return self.installed()

    def direction(self, reverse: bool) -> ContextManager:
        """State a reverse UNet call needs outside its conditioning (see ``direction_in_conditioning``)."""
        return contextlib.nullcontext()

    @property
    def num_tokens(self) -> int:
        raise NotImplementedError

    # -- fitting --------------------------------------------------------------------------------------------
    def schedule(self, steps: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
        """(fit steps, rows) timesteps: each step's UNet batch. One row: every timestep once per pass."""
        from ..schedules import timestep_order

        return timestep_order(steps, num_train_timesteps, seed)[:, None]

    def stages(self, total_steps: int) -> list[Stage]:
        """The fit's stages; by default one over every step and parameter."""
        return [Stage(0, total_steps, list(self.parameters()))]

    def loss_terms(self, step: int) -> list[tuple[bool, float]]:
        """Step ``step``'s noise-loss terms as (reverse, weight): reverse terms edit the afters back into the
        befores."""
        return [(False, 1.0)]

    def extra_loss(self) -> torch.Tensor | None:
        """A loss of the method's own besides the noise loss (VISII's CLIP direction term)."""
        return None

    def official_clip_reference(self, uncond: TextEncoding) -> torch.Tensor:
        """What --grad-clip official takes the signed maximum of: the official VISII code's whole initial prompt
        batch; for other methods, their initial parameters."""
        return torch.cat([p.detach().flatten() for p in self.parameters()])

    def set_clip_direction(self, clip: Clip, direction: torch.Tensor) -> None:
        """The exemplars' CLIP direction, for a method with a CLIP loss (weighted by its own settings)."""

    # -- the file, mixing, exporting ------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """What the .inst file stores: the state dict by name."""
        return {f"{self.name}.{k}": v.detach() for k, v in self.state_dict().items()}

    def extra_meta(self) -> dict:
        """Method facts the .inst metadata records (under ``extra``)."""
        return {}

    def hybrid(self, text: str) -> "Method":
        """The same instruction with ``text``'s tokens following the learned ones."""
        raise NotImplementedError

    def widen(self, tokens: int) -> "Method":
        """The same conditioning with ``tokens`` learned positions (positions past the learned ones keep the init
        text's frozen encoding, which they read anyway), so instructions of different token counts can mix."""
        if tokens != self.num_tokens:
            raise InvertError(f"a {self.name} instruction cannot change its token count")
        return self

    def can_mix(self, other: "Method") -> bool:
        """Whether :meth:`mix` can take this instruction and ``other`` together."""
        return type(other) is type(self)

    @classmethod
    def mix(cls, methods: list["Method"], weights: list[float]) -> "Method":
        """The instructions' learned changes combined (LoRWeB's mixed basis, without its training): base +
        sum_i w_i (learned_i - init_i), what no instruction learned left at the base (see :func:`mix_base`,
        :func:`mix_learned`). Weights summing to 1 interpolate (copies of one instruction give it back; 1, 0 gives
        the first); another total scales the combined change from the base, as --strength does."""
        raise NotImplementedError

    @classmethod
    def export(cls, kind: str, tensors: dict[str, torch.Tensor], meta: Metadata, path: str | os.PathLike,
               reverse: bool = False) -> None:
        """Write an instruction of this method (its file's tensors and metadata) for use outside invert, in the
        form ``kind`` (one of :attr:`exports`) names; no model is needed."""
        raise InvertError(f"a {cls.name} instruction has no '{kind}' export"
                          + (f" (it offers: {', '.join(cls.exports)})" if cls.exports else ""))


def check_prompt_tensors(editor: Editor, init: torch.Tensor, learned: dict[str, torch.Tensor]) -> None:
    """Refuse stored tensors that do not fit this model's text encoder: ``init`` must be (1, positions, width),
    each of ``learned`` (..., m, width or any) with 1 <= m <= positions - 2 learned token positions."""
    positions, width = editor.text_positions, editor.text_width
    if tuple(init.shape) != (1, positions, width):
        raise InstructionFileError(f"its prompt embedding has shape {tuple(init.shape)}; this model's text encoder "
                                   f"gives (1, {positions}, {width})")
    for name, tensor in learned.items():
        if tensor.dim() < 2 or not 1 <= tensor.shape[-2] <= positions - 2:
            raise InstructionFileError(f"tensor '{name}' of shape {tuple(tensor.shape)} does not hold 1 to "
                                       f"{positions - 2} learned token positions")


def append_text(editor: Editor, embeds: torch.Tensor, eos: int, text: str) -> torch.Tensor:
    """Place ``text``'s encoding (BOS and tokens) after a prompt whose EOS is at ``eos``, leaving that EOS and
    one padding position between them, as VISII's official hybrid instructions do."""
    extra = editor.encode_text([text])
    start, count = eos + 2, extra.eos[0]
    count = min(count, embeds.shape[1] - start)
    out = embeds.clone()
    if count > 0:
        out[:, start:start + count] = extra.embeds[:, :count].to(out.dtype)
    return out


def base_weights(weights: list[float]) -> list[float]:
    """Each instruction's share of a mix's base: its |weight| over the sum (equal shares when every weight is 0),
    so the base is an average of the inits whatever the weights' total, and 1, 0 takes the first's."""
    total = sum(abs(w) for w in weights)
    return [abs(w) / total for w in weights] if total else [1 / len(weights)] * len(weights)


def mix_base(inits: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """The base a mix's changes are measured from: the instructions' init states (what they hold at strength 0,
    widened alike) averaged by :func:`base_weights`. An entry on which every init agrees (BOS; every entry when
    the init texts are the same) is that value exactly, never a rounded weighted sum of it."""
    mean = sum(b * t for b, t in zip(base_weights(weights), inits))
    agree = torch.stack([t == inits[0] for t in inits]).all(0)
    return torch.where(agree, inits[0], mean)


def mix_learned(learned: list[torch.Tensor], inits: list[torch.Tensor], weights: list[float],
                base: torch.Tensor | None = None) -> torch.Tensor:
    """``base`` + sum_i w_i (learned_i - inits_i): each instruction's change from its own init, added to the
    base (:func:`mix_base` of ``inits`` unless given). Summed as sum_i w_i learned_i + (base - sum_i w_i
    inits_i), so that where the inits agree and the weights sum to 1 it is the plain weighted sum of the learned
    tensors (weights 1, 0: the first's, exactly)."""
    base = mix_base(inits, weights) if base is None else base
    return sum(w * t for w, t in zip(weights, learned)) + (base - sum(w * t for w, t in zip(weights, inits)))


def check_mixable(methods: list[Method]) -> None:
    if len({type(m) for m in methods}) != 1:
        raise InvertError("cannot mix instructions of different methods: " + ", ".join(sorted({m.name for m in
                                                                                               methods})))


__all__ = ["DEFAULT_TOKENS", "Conditioning", "Method", "REVERSE", "Stage", "TextEncoding", "append_text",
           "base_weights", "check_mixable", "check_prompt_tensors", "mix_base", "mix_learned"]
