"""The fit's loss on a state an encoder gives, and its gradient passed back to what gave the state: shared by the
encoder's training (the gradient reaches the encoder's networks) and the basis refinement (it reaches the basis
weights of one edit)."""
from __future__ import annotations

import torch

from ..fitting.loop import FitData, predict
from ..fitting.losses import row_mse
from ..methods.base import Method
from ..settings import FitSettings


def state_loss(method: Method, data: FitData, settings: FitSettings, t: torch.Tensor, pair: torch.Tensor, step: int,
               weight: float = 1.0, backward: bool = True) -> float:
    """The fit's loss of ``method``'s current state on ``data``'s pairs ``pair`` at training timesteps ``t`` (one
    row each; the method's loss terms and its own extra loss), times ``weight``; with ``backward``, its gradient is
    added to the method's parameters' ``.grad``. Returns the loss."""
    total = 0.0
    with torch.enable_grad() if backward else torch.no_grad():
        for reverse, term in method.loss_terms(step):
            with method.direction(reverse):
                x = data.inputs(t, pair, reverse)
                pred = predict(method, data, settings, x.noisy, x.cond, x.timesteps, reverse)
                loss = weight * term * settings.mse_weight * row_mse(pred, x.objective).mean()
                if backward:
                    loss.backward()
            total += float(loss.detach())
        extra = method.extra_loss()
        if extra is not None:
            extra = weight * extra
            if backward:
                extra.backward()
            total += float(extra.detach())
    return total


def pass_back(method: Method, state: dict[str, torch.Tensor]) -> None:
    """Continue the backward pass from the method's parameters (their ``.grad``, which this clears) into ``state``,
    the tensors by parameter name they were copied from (the chain rule in two halves: exactly the gradient of one
    graph)."""
    params = dict(method.named_parameters())
    names = [n for n in state if params[n].grad is not None]
    torch.autograd.backward([state[n] for n in names], [params[n].grad for n in names])
    method.zero_grad(set_to_none=True)


__all__ = ["pass_back", "state_loss"]
