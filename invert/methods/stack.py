"""Several instructions of one method in one denoiser batch: a fit's init search scores its candidate texts on
the same pairs, and stacked, every sampling step of all of them is one denoiser call instead of one per candidate.

Each row is conditioned by its own instruction exactly as that instruction conditions it alone (its token
sequence, pooled vector and attention route), so the results equal the instructions sampled one by one, up to
the float rounding of a larger batch. Sampling only: a stack is never fitted or saved."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones import TextEncoding
from ..backbones.base import KV_ARGUMENT, Conditioning, KVRoute
from ..backbones.rows import Rows
from ..errors import InvertError
from .base import Method


class Stack(Method):
    """``members`` in one batch: item i of every guidance group (sampling: image i) is conditioned by member
    ``owners[i]``. The members must share one installation on the denoiser (:meth:`Method.installs_as`)."""

    name = "stack"

    def __init__(self, members: list[Method], owners: torch.Tensor):
        first = members[0]
        if not self.stackable(members):
            raise InvertError(f"these {first.name} instructions cannot share one installation on the denoiser")
        super().__init__(first.editor)
        self.members = nn.ModuleList(members)
        self.owners = owners.long()
        self.conditions_all_rows = first.conditions_all_rows

    @staticmethod
    def stackable(members: list[Method]) -> bool:
        """Whether ``members`` can be stacked: they share one installation."""
        return all(members[0].installs_as(m) for m in members[1:])

    @property
    def num_tokens(self) -> int:
        return max(m.num_tokens for m in self.members)

    def installed(self):
        return self.members[0].installed()  # one installation serves all (installs_as)

    def conditioning(self, rows: Rows, uncond: TextEncoding, reverse: bool = False) -> Conditioning:
        owner = self.owners.to(rows.conditional.device)[rows.item_of_row()]
        parts = []
        for k, member in enumerate(self.members):
            index = (owner == k).nonzero().flatten()
            if len(index):
                parts.append((index, member.conditioning(rows.select(index), uncond, reverse)))
        return _joined(parts, len(rows))


def _joined(parts: list[tuple[torch.Tensor, Conditioning]], batch: int) -> Conditioning:
    """One conditioning of ``batch`` rows from each part's conditioning of its rows (``index``)."""
    def rows_of(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        if tensors[0] is None:
            return None
        out = tensors[0].new_empty((batch, *tensors[0].shape[1:]))
        for (index, _), t in zip(parts, tensors):
            out[index] = t
        return out

    attention = [c.attention for _, c in parts]
    if any(a is not None and set(a) != {KV_ARGUMENT} for a in attention):
        raise InvertError("instructions whose attention arguments are not a K/V route cannot be stacked")
    routes = [(index, a[KV_ARGUMENT]) for (index, _), a in zip(parts, attention) if a is not None]
    return Conditioning(rows_of([c.embeds for _, c in parts]), {KV_ARGUMENT: _Routes(routes)} if routes else None,
                        rows_of([c.pooled for _, c in parts]))


@dataclass(frozen=True)
class _Routes(KVRoute):
    """Each member's K/V route on its own rows."""

    routes: list[tuple[torch.Tensor, KVRoute]]

    def replace(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key_out, value_out = key.clone(), value.clone()
        for index, route in self.routes:
            k, v = route.replace(layer, key[index], value[index])
            key_out[index], value_out[index] = k, v
        return key_out, value_out


__all__ = ["Stack"]
