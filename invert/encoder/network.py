"""The edit encoder's network: exemplar pairs' CLIP image features in, a method's learned state out.

Each pair is read as [f(after) - f(before), f(before)] (its CLIP direction and where it starts from), standardized
with statistics of the training data, and mapped by a small MLP; the pairs' codes are averaged (so any number of
pairs, in any order, gives one code), and a second MLP turns the code into weights over a learned basis, as LoRWeB
mixes a basis of LoRAs (a softmax over keys, scaled by a gain the code gives). The basis has one tensor per
parameter of the method (visii's tokens, brush's K/V, a LoRA's A and B): the state is the method's untrained state
at the encoder's base init text plus the weighted sum of the basis (a linear decoder from the weights to every
parameter). Nothing here knows which method it serves: only the names and shapes of its parameters."""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ..fitting.losses import direction_of

Mixture = Literal["linear", "softmax"]
MIXTURES: tuple[str, ...] = ("linear", "softmax")
# The softmax mix's starting temperature: a key whose cosine with the pairs' direction clearly leads (on the toy
# world the right phrase's text feature leads the next by about 0.3) takes most of the weight.
TEMPERATURE = 0.05


def _key(name: str) -> str:
    return name.replace(".", "-")  # a ParameterDict key may not contain dots


class EditEncoder(nn.Module):
    """Pairs' features -> basis weights -> each parameter of the method's state.

    ``base``: the method's untrained state by parameter name; ``features``: the CLIP feature width; ``basis``:
    how many basis states; ``mixture``: ``linear`` (free coefficients from the network) or ``softmax`` (a convex
    mix, LoRWeB's: each basis state has a key, a CLIP direction, and the pairs' own direction, by the temperature,
    is the query; the network adds to the logits and scales the mix by a gain); ``start``: the first basis states'
    starting values by parameter name (k, ...), the others start at zero; ``keys``: their keys (k, features), the
    others' are random."""

    def __init__(self, base: dict[str, torch.Tensor], features: int, hidden: int = 256, basis: int = 32,
                 mixture: Mixture = "linear", start: dict[str, torch.Tensor] | None = None,
                 keys: torch.Tensor | None = None):
        super().__init__()
        self.names, self.mixture = list(base), mixture
        self.features, self.hidden, self.size = features, hidden, basis
        # Standardization of the pair inputs, from the training data (see :meth:`set_input_statistics`). Frozen
        # parameters rather than buffers, so that a training checkpoint (a FitState: the parameters) holds them.
        self.input_mean = nn.Parameter(torch.zeros(2 * features), requires_grad=False)
        self.input_std = nn.Parameter(torch.ones(2 * features), requires_grad=False)
        self.pairs = nn.Sequential(nn.Linear(2 * features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, basis))
        # The softmax mix's gain, from the pairs' code: a convex mix alone can only average states, and an edit made
        # of two (night, then a frame) is nearer their sum (on the toy model, 'make it night' + 'add a black frame'
        # as changes of the empty instruction scored 13.57 dB on night_frame, their average 9.25). It starts at 1.
        self.gain = nn.Linear(hidden, 1) if mixture == "softmax" else None
        # The network's share of the weights starts near zero: an untrained linear encoder gives nearly the base
        # state, a softmax one the mix its keys choose (with fitted states and their directions: an instruction
        # library's mix by CLIP direction, which training then improves).
        with torch.no_grad():
            self.head[-1].weight.mul_(0.01)
            self.head[-1].bias.zero_()
            if self.gain is not None:
                self.gain.weight.zero_()
                self.gain.bias.fill_(math.log(math.e - 1))  # softplus(b) = 1
        key_start = nn.functional.normalize(torch.randn(basis, features), dim=-1)
        if keys is not None:
            key_start[:len(keys)] = nn.functional.normalize(keys.float(), dim=-1)
        self.keys = nn.Parameter(key_start)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(TEMPERATURE)))
        self.base = nn.ParameterDict({_key(n): nn.Parameter(t.detach().float().clone(), requires_grad=False)
                                      for n, t in base.items()})
        self.basis = nn.ParameterDict()
        for n, t in base.items():
            states = torch.zeros(basis, *t.shape)
            if start is not None:
                states[:len(start[n])] = start[n]
            self.basis[_key(n)] = nn.Parameter(states)

    @staticmethod
    def pair_inputs(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """(pairs, 2 x features): each pair's normalized CLIP direction and normalized before."""
        b = nn.functional.normalize(before.float(), dim=-1)
        a = nn.functional.normalize(after.float(), dim=-1)
        return torch.cat([a - b, b], dim=-1)

    def set_input_statistics(self, inputs: torch.Tensor) -> None:
        """Standardize pair inputs with the mean and spread of ``inputs`` (pairs, 2 x features) of training data."""
        with torch.no_grad():
            self.input_mean.copy_(inputs.mean(0))
            self.input_std.copy_(inputs.std(0).clamp_min(1e-6) if len(inputs) > 1 else torch.ones_like(self.input_std))

    def weights(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """(basis,) weights for one edit's pairs, given their CLIP image features (pairs, features): from the mean
        of the pairs' codes and the pairs' mean direction, so the order of the pairs does not matter."""
        x = (self.pair_inputs(before, after) - self.input_mean) / self.input_std
        code = self.pairs(x).mean(0)
        out = self.head(code)
        if self.mixture == "linear":
            return out
        query = direction_of(before.float(), after.float())
        similarity = nn.functional.normalize(self.keys, dim=-1) @ query
        gain = nn.functional.softplus(self.gain(code))
        return (out + similarity / self.log_temperature.exp()).softmax(-1) * gain

    def decode(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """The method's state for basis ``weights``: base + sum_k w_k basis_k for every parameter, by name."""
        return {n: self.base[_key(n)] + torch.tensordot(weights, self.basis[_key(n)], dims=1) for n in self.names}

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.decode(self.weights(before, after))

    def trainable(self) -> list[nn.Parameter]:
        """Everything that learns but the basis: the networks, the keys and the temperature (the base is fixed)."""
        gain = [] if self.gain is None else list(self.gain.parameters())
        return [*self.pairs.parameters(), *self.head.parameters(), *gain, self.keys, self.log_temperature]

    def basis_parameters(self) -> list[nn.Parameter]:
        return list(self.basis.values())

def load_state(method: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (by parameter name) into ``method``'s parameters."""
    with torch.no_grad():
        for name, p in method.named_parameters():
            p.copy_(state[name].to(p.device, p.dtype))


__all__ = ["EditEncoder", "MIXTURES", "Mixture", "load_state"]
