"""The text tokens' keys and values inside a FLUX transformer, routed: attention processors that hand the text
part of a layer's projected keys and values to the :class:`~invert.backbones.base.KVRoute` a call names (the
instruction's positions replaced; InstructBrush) and otherwise do what the layer's own processor does, op for op.

A FLUX transformer reads the text in two kinds of block. A double-stream block projects the text stream with its
own ``add_k_proj``/``add_v_proj`` and attends over [text; image]: the route gets those projections (before the
RMS norm and the rotary embedding, as the layer's K/V parameters are). A single-stream block projects the joint
sequence [text; image] with one projection: the route gets the keys and values of the whole sequence, the text
first, so the instruction's positions are the same indices in either kind (the processor of a single-stream block
is not told where the text ends). FLUX.1's single-stream attention has separate ``to_q/to_k/to_v``; FLUX.2's fuses
them with its MLP input in ``to_qkv_mlp_proj``.

A call without a route runs the layer's own processor, so an installed route changes nothing else."""
from __future__ import annotations

from typing import Callable

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from .base import KVRoute

Projections = Callable  # (attn, hidden_states, encoder_hidden_states) -> q, k, v, text q, text k, text v


class _Route:
    def __init__(self, name: str, original, projections: Projections | None = None):
        self.name, self.original, self.projections = name, original, projections

    def attend(self, attn, query, key, value, attention_mask, image_rotary_emb) -> torch.Tensor:
        """Normed, rotated attention over the joint sequence (heads unflattened and flattened back), in the dtype
        of the queries, as diffusers' FLUX processors compute it."""
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask,
                                    backend=self.original._attention_backend,
                                    parallel_config=self.original._parallel_config)
        return out.flatten(2, 3).to(query.dtype)


def _heads(attn, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.unflatten(-1, (-1, attn.head_dim)) for t in tensors]


class DoubleStreamRoute(_Route):
    """A double-stream block's attention (FLUX.1's FluxAttnProcessor, FLUX.2's Flux2AttnProcessor): the route
    replaces the text stream's ``add_k_proj``/``add_v_proj`` outputs."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 kv_route: KVRoute | None = None):
        if kv_route is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, key, value, text_query, text_key, text_value = self.projections(attn, hidden_states,
                                                                               encoder_hidden_states)
        text_key, text_value = kv_route.replace(self.name, text_key, text_value)
        query, key, value, text_query, text_key, text_value = _heads(attn, query, key, value, text_query, text_key,
                                                                     text_value)
        query, key = attn.norm_q(query), attn.norm_k(key)
        text_query, text_key = attn.norm_added_q(text_query), attn.norm_added_k(text_key)
        out = self.attend(attn, torch.cat([text_query, query], 1), torch.cat([text_key, key], 1),
                          torch.cat([text_value, value], 1), attention_mask, image_rotary_emb)
        text, image = out.split_with_sizes([encoder_hidden_states.shape[1],
                                            out.shape[1] - encoder_hidden_states.shape[1]], dim=1)
        return attn.to_out[1](attn.to_out[0](image.contiguous())), attn.to_add_out(text.contiguous())


class SingleStreamRoute(_Route):
    """FLUX.1's single-stream attention (FluxAttnProcessor on the joint sequence, no output projection): the
    route replaces the text positions of ``to_k``/``to_v``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 kv_route: KVRoute | None = None):
        if kv_route is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, key, value, *_ = self.projections(attn, hidden_states, None)
        key, value = kv_route.replace(self.name, key, value)
        query, key, value = _heads(attn, query, key, value)
        return self.attend(attn, attn.norm_q(query), attn.norm_k(key), value, attention_mask, image_rotary_emb)


class ParallelSingleStreamRoute(_Route):
    """FLUX.2's single-stream block (Flux2ParallelSelfAttnProcessor: Q, K, V and the MLP input from one fused
    projection, attention and MLP outputs through one output projection): the route replaces the text positions
    of its K and V."""

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None,
                 kv_route: KVRoute | None = None):
        if kv_route is None:
            return self.original(attn, hidden_states, attention_mask, image_rotary_emb)
        projected = attn.to_qkv_mlp_proj(hidden_states)
        qkv_dim, mlp_dim = 3 * attn.inner_dim, attn.mlp_hidden_dim * attn.mlp_mult_factor
        local_qkv = projected.shape[-1] * qkv_dim // (qkv_dim + mlp_dim)
        qkv, mlp = torch.split(projected, [local_qkv, projected.shape[-1] - local_qkv], dim=-1)
        query, key, value = qkv.chunk(3, dim=-1)
        key, value = kv_route.replace(self.name, key, value)
        query, key, value = _heads(attn, query, key, value)
        out = self.attend(attn, attn.norm_q(query), attn.norm_k(key), value, attention_mask, image_rotary_emb)
        return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))


class Capture(KVRoute):
    """A route that changes nothing and keeps, for every layer, the keys and values of positions
    [start, start + count) (fp32): a layer's own K/V of the instruction's tokens."""

    def __init__(self, start: int, count: int):
        self.start, self.count = start, count
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def replace(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        span = slice(self.start, self.start + self.count)
        self.kv[layer] = key[:, span].float(), value[:, span].float()
        return key, value


__all__ = ["Capture", "DoubleStreamRoute", "ParallelSingleStreamRoute", "SingleStreamRoute"]
