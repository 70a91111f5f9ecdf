"""InstructBrush (Zhao et al. 2024): the instruction learned as the keys and values of its tokens inside every
cross-attention layer, with a separate set per time part.

Each cross-attention layer's learned state is a :class:`LearnedKV` module holding its own ``k`` and ``v``, one
(m, width) tensor per time part (diffusers' Custom Diffusion processor is the precedent). What is installed on
the UNet is a :class:`BrushRoute` per layer that holds nothing: every UNet call names, in its attention
arguments, the instruction and the rows it conditions (:class:`BrushCall`), so a batch's layout is explicit,
two instructions (a forward and its reverse) can share the installed UNet, and a forward recomputed during the
backward pass (gradient checkpointing) reads the same call."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.editor import Editor, TextEncoding
from ..backbones.guidance import Rows
from ..errors import InstructionFileError, InvertError
from ..schedules import parts_schedule, time_part
from .base import (DEFAULT_TOKENS, Conditioning, Method, Stage, append_text, check_mixable, check_prompt_tensors,
                   mix_base, mix_learned)
from .settings import BrushSettings

ARGUMENT = "brush"  # the cross_attention_kwargs key of a BrushCall


def cross_attention_layers(unet) -> list[str]:
    """Names of the UNet's cross-attention processors (``...attn2.processor``), in the UNet's order."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def layer_widths(unet) -> dict[str, int]:
    """Each cross-attention layer's K/V width (its ``to_k`` output features)."""
    return {name: unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
            for name in cross_attention_layers(unet)}


def _key(name: str) -> str:
    return name.replace(".", "-")  # a ModuleDict key may not contain dots


@dataclass(frozen=True)
class BrushCall:
    """The attention argument of one UNet call: whose K/V, for which rows, at which time part per row."""

    instruction: "Brush"
    conditional: torch.Tensor  # (batch,) bool
    part: torch.Tensor  # (batch,) long


class LearnedKV(nn.Module):
    """One cross-attention layer's learned keys and values of instruction positions 1..m, per time part."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        super().__init__()
        # One parameter per part: a part that a step does not train gets no update (the sequential schedule).
        self.k = nn.ParameterList([nn.Parameter(part.detach().float().clone()) for part in k])
        self.v = nn.ParameterList([nn.Parameter(part.detach().float().clone()) for part in v])

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(parts, m, width) keys and values."""
        return torch.stack(tuple(self.k)), torch.stack(tuple(self.v))

    def attention(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                  attention_mask: torch.Tensor | None, call: BrushCall) -> torch.Tensor:
        """Diffusers' AttnProcessor2_0 for SD's plain cross-attention, with positions 1..m of the keys and values
        replaced by this layer's learned ones on the call's conditional rows, at each row's time part."""
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        k_all, v_all = self.stacked()
        key = self._replace(attn.to_k(encoder_hidden_states), k_all, call)
        value = self._replace(attn.to_v(encoder_hidden_states), v_all, call)
        head_dim = key.shape[-1] // attn.heads
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        q, k, v = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor

    @staticmethod
    def _replace(projected: torch.Tensor, learned: torch.Tensor, call: BrushCall) -> torch.Tensor:
        m = learned.shape[1]
        rows = learned[call.part].to(projected.dtype)  # (batch, m, width)
        mixed = torch.where(call.conditional[:, None, None], rows, projected[:, 1:m + 1])
        return torch.cat([projected[:, :1], mixed, projected[:, m + 1:]], dim=1)


class BrushRoute:
    """Installed on one cross-attention layer: the learned K/V of the instruction that the call's ``brush``
    argument names, or the layer's own processor for a call without one."""

    def __init__(self, name: str, original):
        self.name, self.original = name, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 brush: BrushCall | None = None, **kwargs):
        if brush is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        return brush.instruction.layer(self.name).attention(attn, hidden_states, encoder_hidden_states,
                                                            attention_mask, brush)


class _PassBrushArgument:
    """Wraps a self-attention processor so that the ``brush`` argument, which the UNet hands to every attention
    layer, is taken and dropped here instead of warned about on every call."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 brush: BrushCall | None = None, **kwargs):
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


def project_kv(editor: Editor, embeds: torch.Tensor, m: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's own to_k/to_v of positions 1..m of ``embeds``: {layer: ((m, width), (m, width))}, fp32."""
    tokens = embeds[0, 1:m + 1].to(editor.device, editor.dtype)
    out = {}
    with torch.no_grad():
        for name in cross_attention_layers(editor.unet):
            attn = editor.unet.get_submodule(name.removesuffix(".processor"))
            out[name] = attn.to_k(tokens).float(), attn.to_v(tokens).float()
    return out


@contextlib.contextmanager
def install_routes(unet):
    """Every cross-attention layer gets a BrushRoute (every self-attention layer passes the argument through),
    for the block; the UNet's own processors afterwards."""
    for name in cross_attention_layers(unet):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_cross or \
                attn.residual_connection or attn.norm_k is not None:
            raise NotImplementedError(f"{name}: cross-attention with extra norms is not supported by InstructBrush")
    original = dict(unet.attn_processors)
    routes = {name: BrushRoute(name, processor) if name.endswith("attn2.processor") else _PassBrushArgument(processor)
              for name, processor in original.items()}
    unet.set_attn_processor(routes)  # set_attn_processor pops from the dict it is given: a fresh one each time
    try:
        yield
    finally:
        unet.set_attn_processor(dict(original))


class Brush(Method):
    name = "brush"
    init_from = "phrases"

    def __init__(self, editor: Editor, init: torch.Tensor, kv: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 init_text: str = "", sequential: bool = False):
        super().__init__(editor)
        self.register_buffer("init", init.detach().float())  # (1, positions, width): the text rows' conditioning
        self.layer_names = list(kv)
        self.layers = nn.ModuleDict({_key(name): LearnedKV(k, v) for name, (k, v) in kv.items()})
        first = next(iter(self.layers.values()))
        self.parts, self.m = len(first.k), first.k[0].shape[0]
        self.init_text, self.sequential = init_text, sequential
        self.num_train_timesteps = editor.scheduler.config.num_train_timesteps

    def layer(self, name: str) -> LearnedKV:
        return self.layers[_key(name)]

    @property
    def num_tokens(self) -> int:
        return self.m

    @classmethod
    def initialize(cls, editor: Editor, init: TextEncoding, init_text: str = "",
                   settings: BrushSettings = BrushSettings(), seed: int = 0) -> "Brush":
        """Every part of every layer starts from the init text's K/V through that layer's own to_k/to_v."""
        m = settings.tokens or (init.eos[0] - 1) or DEFAULT_TOKENS
        projected = project_kv(editor, init.embeds, m)
        kv = {name: (k.expand(settings.parts, -1, -1), v.expand(settings.parts, -1, -1))
              for name, (k, v) in projected.items()}
        return cls(editor, init.embeds, kv, init_text, settings.parts_sequential)

    # -- conditioning ---------------------------------------------------------------------------------------
    def call(self, rows: Rows) -> BrushCall:
        return BrushCall(self, rows.conditional, time_part(rows.timesteps, self.parts, self.num_train_timesteps))

    def conditioning(self, rows: Rows, uncond: torch.Tensor, reverse: bool = False) -> Conditioning:
        return Conditioning(rows.embeds(self.init.to(self.editor.dtype), uncond), {ARGUMENT: self.call(rows)})

    def installed(self):
        return install_routes(self.editor.unet)

    @contextlib.contextmanager
    def in_pipeline(self, pipe):
        """A diffusers IP2P pipeline calls the UNet with its own batch layout, [text, image-only, unconditional]
        when ``pipe.do_classifier_free_guidance`` and the text rows alone otherwise: a pre-hook adds this
        instruction's call for that layout and the call's timestep to the UNet's arguments."""
        def add_call(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            guided = bool(pipe.do_classifier_free_guidance)
            if guided and sample.shape[0] % 3:
                raise InvertError(f"a guided IP2P batch of {sample.shape[0]} rows is not three groups")
            rows = Rows.ip2p(sample.shape[0] // 3 if guided else sample.shape[0], timestep, guided, sample.device)
            kwargs["cross_attention_kwargs"] = {**(kwargs.get("cross_attention_kwargs") or {}),
                                                ARGUMENT: self.call(rows)}
            return args, kwargs

        with self.installed():
            handle = self.editor.unet.register_forward_pre_hook(add_call, with_kwargs=True)
            try:
                yield
            finally:
                handle.remove()

    # -- fitting --------------------------------------------------------------------------------------------
    def schedule(self, steps: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
        """One timestep from each part's own range per step (default), or the paper's parts one after another
        (``parts_sequential``), each part's timesteps used once per pass in shuffled order."""
        return parts_schedule(steps, self.parts, num_train_timesteps, seed, self.sequential)

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
        out = {"brush.init": self.init.detach()}
        for name in self.layer_names:
            k, v = self.layer(name).stacked()
            out[f"brush.{name}.k"], out[f"brush.{name}.v"] = k.detach(), v.detach()
        return out

    def extra_meta(self) -> dict:
        return {"parts": self.parts, "tokens": self.m, "sequential": self.sequential}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict, editor: Editor, strength: float = 1.0
                     ) -> "Brush":
        init = tensors["brush.init"]
        widths = layer_widths(editor.unet)
        stored = _per_layer(tensors, meta) if "brush.k" in tensors else {
            name: (tensors.get(f"brush.{name}.k"), tensors.get(f"brush.{name}.v")) for name in widths}
        first = next(iter(stored.values()))[0]
        if first is None or first.dim() != 3:
            raise InstructionFileError(f"brush K/V do not fit this UNet's {len(widths)} cross-attention layers")
        check_prompt_tensors(editor, init, {"brush.k": first})
        parts, m = first.shape[:2]
        for name, width in widths.items():
            k, v = stored.get(name, (None, None))
            if k is None or v is None or k.shape != (parts, m, width) or v.shape != k.shape:
                raise InstructionFileError(f"brush K/V of layer {name} missing or not ({parts}, {m}, {width}): they "
                                           f"do not fit this UNet's {len(widths)} cross-attention layers")
        init = init.to(editor.device)
        projected = project_kv(editor, init, m)
        kv = {}
        for name, (k0, v0) in projected.items():
            k, v = (x.to(editor.device, torch.float32) for x in stored[name])
            # lerp is exact at 0 and 1: strength 1 applies the learned K/V as they were learned.
            kv[name] = (torch.lerp(k0, k, strength), torch.lerp(v0, v, strength))
        return cls(editor, init, kv, meta.get("init_text", ""), bool((meta.get("extra") or {}).get("sequential")))

    def hybrid(self, text: str) -> "Brush":
        """Encode the init text followed by ``text``; the learned K/V still replace positions 1..m."""
        editor = self.editor
        if self.init_text and editor.encode_text([self.init_text]).eos[0] - 1 == self.m:
            embeds = editor.encode_text([f"{self.init_text} {text}"]).embeds
        else:  # learned positions beyond the init text's tokens: put the text after them
            embeds = append_text(editor, self.init, self.m - 1, text)
        return Brush(editor, embeds, self._kv(), self.init_text, self.sequential)

    def _kv(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {name: tuple(x.detach() for x in self.layer(name).stacked()) for name in self.layer_names}

    def widen(self, tokens: int) -> "Brush":
        """New positions m+1..tokens get the init text's own K/V at those positions, in every part."""
        if tokens < self.m:
            raise InvertError(f"cannot narrow a brush instruction from {self.m} to {tokens} tokens")
        frozen = project_kv(self.editor, self.init, tokens)
        kv = {}
        for name, (k, v) in self._kv().items():
            k0, v0 = frozen[name]
            kv[name] = (torch.cat([k, k0[self.m:].expand(self.parts, -1, -1)], dim=1),
                        torch.cat([v, v0[self.m:].expand(self.parts, -1, -1)], dim=1))
        return Brush(self.editor, self.init, kv, self.init_text, self.sequential)

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
        inits = [project_kv(m.editor, m.init, tokens) for m in wide]  # each one's K/V at strength 0
        kv = {name: tuple(mix_learned([kv[name][j] for kv in kvs], [init[name][j] for init in inits], weights)
                          for j in (0, 1))
              for name in wide[0].layer_names}
        texts = {m.init_text for m in methods}
        return cls(methods[0].editor, mix_base([m.init for m in wide], weights), kv,
                   texts.pop() if len(texts) == 1 else "", methods[0].sequential)


def _per_layer(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A version-1 file's K/V, stored as (parts, m, sum of widths) with the layers' names and widths in
    ``extra.layers``, split into each layer's own tensors."""
    layers = (meta.get("extra") or {}).get("layers")
    k, v = tensors["brush.k"], tensors["brush.v"]
    if not isinstance(layers, list) or k.dim() != 3 or k.shape != v.shape or \
            k.shape[-1] != sum(int(w) for _, w in layers):
        raise InstructionFileError(f"brush K/V of shape {tuple(k.shape)} do not match the layers it lists")
    out, offset = {}, 0
    for name, width in layers:
        out[name] = k[..., offset:offset + int(width)], v[..., offset:offset + int(width)]
        offset += int(width)
    return out
