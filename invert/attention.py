"""InstructBrush's attention-based instruction as diffusers attention processors.

Every cross-attention layer (``attn2``) gets a :class:`LearnedKVProcessor` that replaces the keys and values
of instruction positions 1..m with learned ones, for the text-conditioned batch rows only, choosing the set
of the time part that the current timestep falls in. The timestep reaches the processors through a UNet
forward pre-hook writing :class:`BrushState` (``cross_attention_kwargs`` would warn on every self-attention
call); no UNet code is forked."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class BrushState:
    """What the processors read during one UNet call."""

    parts: int
    num_train_timesteps: int
    layout: str = "ip2p"  # which rows are text-conditioned: "ip2p" (first third), "all" or "none"
    part: torch.Tensor | None = None  # (batch,) part index per row
    cond: torch.Tensor | None = None  # (batch,) bool
    source: Callable[[], dict[str, torch.Tensor]] = dict  # -> {"k", "v"}: (parts, m, total width), fp32
    values: dict[str, torch.Tensor] = field(default_factory=dict)  # source(), taken afresh for every UNet call

    def part_of(self, timesteps: torch.Tensor) -> torch.Tensor:
        """min(N-1, floor(t N / T)) for each timestep."""
        part = torch.floor(timesteps.float() * self.parts / self.num_train_timesteps).long()
        return part.clamp(0, self.parts - 1)

    def set_call(self, timestep, batch: int, device: torch.device) -> None:
        t = torch.as_tensor(timestep, device=device).reshape(-1)
        self.part = self.part_of(t.expand(batch) if t.numel() == 1 else t)
        self.values = self.source()
        rows = torch.arange(batch, device=device)
        if self.layout == "ip2p":
            if batch % 3:
                raise RuntimeError(f"InstructPix2Pix guidance batch of {batch} rows is not a multiple of 3")
            self.cond = rows < batch // 3
        else:
            self.cond = torch.full((batch,), self.layout == "all", device=device)


class LearnedKVProcessor:
    """Cross-attention with learned K/V at positions 1..m, sliced from the shared per-part tensors.

    Matches diffusers' AttnProcessor2_0 for the plain cross-attention of Stable Diffusion's UNet (no group
    norm, spatial norm, cross norm or residual inside the attention), which :func:`install` checks."""

    def __init__(self, state: BrushState, offset: int, width: int):
        self.state, self.offset, self.width = state, offset, width

    def _learned(self, which: str, projected: torch.Tensor) -> torch.Tensor:
        state = self.state
        learned = state.values[which][:, :, self.offset:self.offset + self.width]  # (parts, m, width)
        m = learned.shape[1]
        rows = learned[state.part].to(projected.dtype)  # (batch, m, width)
        keep = projected[:, 1:m + 1]
        mixed = torch.where(state.cond[:, None, None], rows, keep)
        return torch.cat([projected[:, :1], mixed, projected[:, m + 1:]], dim=1)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch, length, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        key = self._learned("k", attn.to_k(encoder_hidden_states))
        value = self._learned("v", attn.to_v(encoder_hidden_states))
        head_dim = key.shape[-1] // attn.heads
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        q, k, v = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


def cross_attention_layers(unet) -> list[str]:
    """Names of the UNet's cross-attention processors, in the UNet's order."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def layer_widths(unet) -> dict[str, int]:
    """Each cross-attention layer's K/V width (its ``to_k`` output features)."""
    modules = dict(unet.named_modules())
    return {name: modules[name.removesuffix(".processor")].to_k.out_features for name in cross_attention_layers(unet)}


@contextlib.contextmanager
def install(unet, state: BrushState):
    """Install learned-K/V processors on every cross-attention layer for the duration of the block."""
    modules = dict(unet.named_modules())
    original = dict(unet.attn_processors)
    processors, offset = dict(original), 0
    for name, width in layer_widths(unet).items():
        attn = modules[name.removesuffix(".processor")]
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_cross or \
                attn.residual_connection or attn.norm_k is not None:
            raise NotImplementedError(f"{name}: cross-attention with extra norms is not supported by InstructBrush")
        processors[name] = LearnedKVProcessor(state, offset, width)
        offset += width

    def pre_hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        state.set_call(timestep, sample.shape[0], sample.device)

    handle = unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    unet.set_attn_processor(dict(processors))  # set_attn_processor pops from the dict it is given
    try:
        yield state
    finally:
        handle.remove()
        unet.set_attn_processor(dict(original))
