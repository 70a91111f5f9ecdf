"""InstructBrush (Zhao et al. 2024): the instruction learned as the keys and values of its tokens inside every
attention layer that reads them (a UNet's cross-attention; a DiT's text stream), with a separate set per time part.

Each layer's learned state is a :class:`LearnedKV` module holding its own ``k`` and ``v``, one (m, width) tensor
per time part (diffusers' Custom Diffusion processor is the precedent). What the backbone installs on its
denoiser holds nothing: every call names, in its attention arguments, the instruction and the rows it conditions
(:class:`BrushCall`), so a batch's layout is explicit, two instructions (a forward and its reverse) can share the
installed denoiser, and a forward recomputed during the backward pass (gradient checkpointing) reads the same
call."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, ContextManager, Iterator

import torch
from torch import nn

from ..backbones import Editor, TextEncoding
from ..backbones.base import KV_ARGUMENT, Conditioning, KVRoute
from ..backbones.rows import Rows
from ..errors import InstructionFileError, InvertError
from ..instruction.metadata import Metadata
from ..schedules import parts_schedule, time_part
from .base import (DEFAULT_TOKENS, Method, Stage, append_text, check_mixable, check_prompt_tensors, mix_base,
                   mix_learned)
from .settings import BrushSettings

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

def _key(name: str) -> str:
    return name.replace(".", "-")  # a ModuleDict key may not contain dots


@dataclass(frozen=True)
class BrushCall(KVRoute):
    """The route of one denoiser call: whose K/V, for which rows, at which time part per row."""

    instruction: "Brush"
    conditional: torch.Tensor  # (batch,) bool
    part: torch.Tensor  # (batch,) long

    def replace(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's projected text keys and values with the instruction's positions replaced by its learned
        ones on the conditional rows, at each row's time part."""
        k_all, v_all = self.instruction.layer(layer).stacked()
        return self._replace(key, k_all), self._replace(value, v_all)

    def _replace(self, projected: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
        start, m = self.instruction.start, learned.shape[1]
        rows = learned[self.part].to(projected.dtype)  # (batch, m, width)
        mixed = torch.where(self.conditional[:, None, None], rows, projected[:, start:start + m])
        return torch.cat([projected[:, :start], mixed, projected[:, start + m:]], dim=1)


class LearnedKV(nn.Module):
    """One attention layer's learned keys and values of the instruction's positions, per time part."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        super().__init__()
        # One parameter per part: a part that a step does not train gets no update (the sequential schedule).
        self.k = nn.ParameterList([nn.Parameter(part.detach().float().clone()) for part in k])
        self.v = nn.ParameterList([nn.Parameter(part.detach().float().clone()) for part in v])

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(parts, m, width) keys and values."""
        return torch.stack(tuple(self.k)), torch.stack(tuple(self.v))


def part_timesteps(editor: Editor, parts: int) -> torch.Tensor:
    """Each time part's middle training timestep, in the denoiser's units: where a layer whose text projection
    depends on the timestep (a DiT's modulated text stream) is projected to start that part's K/V."""
    values = editor.timestep_values(torch.arange(editor.num_train_timesteps))
    part = time_part(values, parts, editor.num_train_timesteps)
    return torch.stack([values[part == p][(part == p).sum() // 2] for p in range(parts)])


def project_kv(editor: Editor, embeds: torch.Tensor, m: int, parts: int, pooled: torch.Tensor | None = None
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's own keys and values of the instruction's first ``m`` positions of ``embeds`` (and its
    ``pooled`` vector, on backbones whose text stream it modulates), per time part:
    {layer: ((parts, m, width), (parts, m, width))}, fp32."""
    start = editor.instruction_start
    return editor.instruction_kv(TextEncoding(embeds, [start + m], pooled, start=start), m,
                                 part_timesteps(editor, parts))


class Brush(Method):
    name = "brush"
    init_from = "phrases"

    def __init__(self, editor: Editor, init: torch.Tensor, kv: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 init_text: str = "", sequential: bool = False, pooled: torch.Tensor | None = None):
        super().__init__(editor)
        self.register_buffer("init", init.detach().float())  # (1, positions, width): the text rows' conditioning
        self.keep_pooled(pooled)
        self.layer_names = list(kv)
        self.layers = nn.ModuleDict({_key(name): LearnedKV(k, v) for name, (k, v) in kv.items()})
        first = next(iter(self.layers.values()))
        self.parts, self.m = len(first.k), first.k[0].shape[0]
        self.init_text, self.sequential = init_text, sequential
        self.start = editor.instruction_start
        self.num_train_timesteps = editor.num_train_timesteps

    def layer(self, name: str) -> LearnedKV:
        return self.layers[_key(name)]

    @property
    def num_tokens(self) -> int:
        return self.m

    @classmethod
    def initialize(cls, editor: Editor, init: TextEncoding, init_text: str = "",
                   settings: BrushSettings = BrushSettings(), seed: int = 0) -> "Brush":
        """Every part of every layer starts from the init text's K/V through that layer's own to_k/to_v."""
        m = settings.tokens or (init.eos[0] - init.start) or DEFAULT_TOKENS
        kv = project_kv(editor, init.embeds, m, settings.brush_parts, init.pooled)
        return cls(editor, init.embeds, kv, init_text, settings.brush_parts_sequential, init.pooled)

    # -- conditioning ---------------------------------------------------------------------------------------
    def call(self, rows: Rows) -> BrushCall:
        return BrushCall(self, rows.conditional, time_part(rows.timesteps, self.parts, self.num_train_timesteps))

    def conditioning(self, rows: Rows, uncond: TextEncoding, reverse: bool = False) -> Conditioning:
        return self.condition(rows, self.init.to(self.editor.dtype), uncond, {KV_ARGUMENT: self.call(rows)})

    def installed(self) -> ContextManager[None]:
        return self.editor.instruction_kv_routes()

    @contextlib.contextmanager
    def in_pipeline(self, pipe: DiffusionPipeline) -> Iterator[None]:
        """A user's own diffusers pipeline calls the denoiser with its own batch layout: the backbone adds this
        instruction's route for that layout to every call."""
        with self.installed(), self.editor.call_with(pipe, lambda rows: {KV_ARGUMENT: self.call(rows)}):
            yield

    # -- fitting --------------------------------------------------------------------------------------------
    def schedule(self, steps: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
        """One timestep from each part's own range per step (default), or the paper's parts one after another
        (``parts_sequential``), each part's timesteps used once per pass in shuffled order."""
        values = self.editor.timestep_values(torch.arange(num_train_timesteps))
        return parts_schedule(steps, self.parts, num_train_timesteps, seed, self.sequential, values)

    def stages(self, total_steps: int) -> list[Stage]:
        """Sequential: part p trains alone for its steps, with an optimizer of its own, as if each part were a
        separate fit; batched: every part in every step, one optimizer."""
        if not self.sequential:
            return super().stages(total_steps)
        per = total_steps // self.parts
        return [Stage(p * per, (p + 1) * per, [x for layer in self.layers.values() for x in (layer.k[p], layer.v[p])])
                for p in range(self.parts)]

    # -- the file, mixing -----------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"brush.init": self.init.detach(), **self.pooled_tensors()}
        for name in self.layer_names:
            k, v = self.layer(name).stacked()
            out[f"brush.{name}.k"], out[f"brush.{name}.v"] = k.detach(), v.detach()
        return out

    def extra_meta(self) -> dict:
        return {"parts": self.parts, "tokens": self.m, "sequential": self.sequential}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: Metadata, editor: Editor, strength: float = 1.0
                     ) -> "Brush":
        init = tensors["brush.init"]
        widths = editor.instruction_kv_layers()
        stored = _per_layer(tensors, meta) if "brush.k" in tensors else {
            name: (tensors.get(f"brush.{name}.k"), tensors.get(f"brush.{name}.v")) for name in widths}
        first = next(iter(stored.values()))[0]
        if first is None or first.dim() != 3:
            raise InstructionFileError(f"brush K/V do not fit this model's {len(widths)} attention layers that read the instruction")
        check_prompt_tensors(editor, init, {"brush.k": first})
        parts, m = first.shape[:2]
        for name, width in widths.items():
            k, v = stored.get(name, (None, None))
            if k is None or v is None or k.shape != (parts, m, width) or v.shape != k.shape:
                raise InstructionFileError(f"brush K/V of layer {name} missing or not ({parts}, {m}, {width}): they "
                                           f"do not fit this model's {len(widths)} attention layers that read the instruction")
        init, pooled = init.to(editor.device), tensors.get("brush.init_pooled")
        projected = project_kv(editor, init, m, parts, pooled)
        kv = {}
        for name, (k0, v0) in projected.items():
            k, v = (x.to(editor.device, torch.float32) for x in stored[name])
            # lerp is exact at 0 and 1: strength 1 applies the learned K/V as they were learned.
            kv[name] = (torch.lerp(k0, k, strength), torch.lerp(v0, v, strength))
        return cls(editor, init, kv, meta.init_text, bool((meta.extra or {}).get("sequential")), pooled)

    def hybrid(self, text: str) -> "Brush":
        """Encode the init text followed by ``text``; the learned K/V still replace the instruction's first m
        positions."""
        editor, pooled = self.editor, self.pooled_vector()
        if self.init_text and editor.encode_text([self.init_text]).eos[0] - self.start == self.m:
            encoding = editor.encode_text([f"{self.init_text} {text}"])
            embeds, pooled = encoding.embeds, encoding.pooled
        else:  # learned positions beyond the init text's tokens: put the text after them
            # (append_text leaves one position after the "EOS" it is given: the text starts just past the learned ones)
            embeds = append_text(editor, self.init, self.start + self.m - 2, text)
        return Brush(editor, embeds, self._kv(), self.init_text, self.sequential, pooled)

    def _kv(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {name: tuple(x.detach() for x in self.layer(name).stacked()) for name in self.layer_names}

    def widen(self, tokens: int) -> "Brush":
        """New positions m+1..tokens get the init text's own K/V at those positions, in every part."""
        if tokens < self.m:
            raise InvertError(f"cannot narrow a brush instruction from {self.m} to {tokens} tokens")
        frozen = project_kv(self.editor, self.init, tokens, self.parts, self.pooled_vector())
        kv = {}
        for name, (k, v) in self._kv().items():
            k0, v0 = frozen[name]
            kv[name] = (torch.cat([k, k0[:, self.m:]], dim=1), torch.cat([v, v0[:, self.m:]], dim=1))
        return Brush(self.editor, self.init, kv, self.init_text, self.sequential, self.pooled_vector())

    def can_mix(self, other: Method) -> bool:
        return super().can_mix(other) and other.parts == self.parts

    @classmethod
    def mix(cls, methods: list["Brush"], weights: list[float]) -> "Brush":
        """The learned K/V's changes combined (see :meth:`Method.mix`), each measured from its own init text's
        K/V; the text rows' encoding, which no fit learns, is the base: the init encodings averaged (one init
        text: its encoding, exactly). Token counts are widened to the largest first; instructions of different
        part counts cannot mix."""
        check_mixable(methods)
        if len({m.parts for m in methods}) != 1:
            raise InvertError("cannot mix brush instructions with different numbers of time parts: "
                              + ", ".join(str(m.parts) for m in methods))
        tokens = max(m.num_tokens for m in methods)
        wide = [m.widen(tokens) for m in methods]
        kvs = [m._kv() for m in wide]
        inits = [project_kv(m.editor, m.init, tokens, m.parts, m.pooled_vector()) for m in wide]  # each one's K/V at strength 0
        kv = {name: tuple(mix_learned([kv[name][j] for kv in kvs], [init[name][j] for init in inits], weights)
                          for j in (0, 1))
              for name in wide[0].layer_names}
        texts = {m.init_text for m in methods}
        pooled = None if methods[0].pooled_vector() is None else \
            mix_base([m.pooled_vector() for m in wide], weights)
        return cls(methods[0].editor, mix_base([m.init for m in wide], weights), kv,
                   texts.pop() if len(texts) == 1 else "", methods[0].sequential, pooled)


def _per_layer(tensors: dict[str, torch.Tensor], meta: Metadata) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A version-1 file's K/V, stored as (parts, m, sum of widths) with the layers' names and widths in
    ``extra.layers``, split into each layer's own tensors."""
    layers = (meta.extra or {}).get("layers")
    k, v = tensors["brush.k"], tensors["brush.v"]
    if not isinstance(layers, list) or k.dim() != 3 or k.shape != v.shape or \
            k.shape[-1] != sum(int(w) for _, w in layers):
        raise InstructionFileError(f"brush K/V of shape {tuple(k.shape)} do not match the layers it lists")
    out, offset = {}, 0
    for name, width in layers:
        out[name] = k[..., offset:offset + int(width)], v[..., offset:offset + int(width)]
        offset += int(width)
    return out
