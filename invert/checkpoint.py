"""Resumable fit state: the learned parameters, the optimizer's state and the step reached, written when a fit
is stopped (a signal, a divergence) so that ``fit --resume`` continues it to the result an uninterrupted run
with the same seed gives. The fit itself is deterministic (noise and timestep order come from the seed), so
nothing else needs saving. Stored as safetensors, like the .inst: nothing is unpickled."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .errors import InvertError
from .instruction import read_verified, tensors_sha256, write_atomically

FORMAT = "invert.fit-state"
VERSION = 1
KIND = "a fit checkpoint"


class FitStopped(InvertError):
    """The fit stopped before its last step; ``state`` resumes it. ``signum``: the signal that asked for it."""

    def __init__(self, message: str, state: "FitState", signum: int | None = None):
        super().__init__(message)
        self.state, self.signum = state, signum


class FitDiverged(FitStopped):
    """The loss or a gradient became NaN or inf; ``state`` is the last good one (before that step)."""


@dataclass
class FitState:
    """Where a fit stands after ``step`` steps. ``identity`` says which fit it belongs to (filled by the caller
    that knows the method, options, exemplars and model); ``seconds``: fitting time spent so far."""

    step: int
    params: list[torch.Tensor]
    optimizer: dict[str, Any]
    history: list[float]
    scaler: dict[str, Any] = field(default_factory=dict)  # fp16 loss scale; empty when no scaler is in use
    identity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def capture(cls, step: int, params: list[torch.Tensor], opt: torch.optim.Optimizer, history: list[float],
                scaler: torch.amp.GradScaler | None = None) -> "FitState":
        state = opt.state_dict()
        state["state"] = {i: {k: v.detach().cpu().clone() for k, v in s.items()} for i, s in state["state"].items()}
        return cls(step, [p.detach().cpu().clone() for p in params], state, list(history),
                   scaler.state_dict() if scaler is not None and scaler.is_enabled() else {})

    def restore(self, params: list[torch.Tensor], opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler | None = None) -> list[float]:
        """Load the parameters, optimizer and loss-scaler state into a freshly initialized fit; return the loss
        history."""
        if [tuple(p.shape) for p in params] != [tuple(p.shape) for p in self.params]:
            raise InvertError(f"the checkpoint's parameters {[tuple(p.shape) for p in self.params]} do not fit this "
                              f"fit's {[tuple(p.shape) for p in params]}")
        with torch.no_grad():
            for p, saved in zip(params, self.params):
                p.copy_(saved)
        lrs = [group["lr"] for group in opt.param_groups]
        opt.load_state_dict(self.optimizer)
        for group, lr in zip(opt.param_groups, lrs):  # a resumed fit may lower --lr (after a divergence)
            group["lr"] = lr
        if scaler is not None and scaler.is_enabled() and self.scaler:
            scaler.load_state_dict(self.scaler)
        return list(self.history)

    def check_identity(self, identity: dict[str, Any], path: str | Path = "checkpoint") -> None:
        """Refuse to resume a different fit: other exemplars, method, model or options (except --lr)."""
        saved = json.loads(json.dumps(self.identity))  # compare JSON with JSON (tuples become lists)
        now = json.loads(json.dumps(identity))
        differ = [f"{k} ({saved.get(k)!r} there, {now.get(k)!r} here)" for k in sorted(saved.keys() | now.keys())
                  if k not in ("options", "exemplars") and saved.get(k) != now.get(k)]
        if saved.get("exemplars") != now.get("exemplars"):
            differ.append("the exemplar images")
        options, current = saved.get("options", {}), now.get("options", {})
        differ += [f"--{k.replace('_', '-')} ({options.get(k)!r} there, {current.get(k)!r} here)"
                   for k in sorted(options.keys() | current.keys()) if options.get(k) != current.get(k)]
        if differ:
            raise InvertError(f"{path}: saved by a different fit; differs in {'; '.join(differ)}. Resume with the "
                              "command that wrote it")

    def save(self, path: str | Path) -> Path:
        """Write atomically (overwriting an older checkpoint)."""
        path = Path(path)
        tensors = {f"param.{i}": p.contiguous() for i, p in enumerate(self.params)}
        for i, entries in self.optimizer["state"].items():
            tensors.update({f"optimizer.{i}.{k}": v.contiguous() for k, v in entries.items()})
        meta = {"format": FORMAT, "version": str(VERSION), "step": str(self.step), "seconds": f"{self.seconds:.3f}",
                "history": json.dumps(self.history), "identity": json.dumps(self.identity),
                "scaler": json.dumps(self.scaler),
                "param_groups": json.dumps(self.optimizer["param_groups"]), "tensor_sha256": tensors_sha256(tensors)}
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=meta), force=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FitState":
        path = Path(path)
        tensors, meta = read_verified(path, FORMAT, VERSION, KIND)
        try:
            params = [tensors[f"param.{i}"] for i in range(sum(k.startswith("param.") for k in tensors))]
            state: dict[int, dict[str, torch.Tensor]] = {}
            for name, t in tensors.items():
                if name.startswith("optimizer."):
                    _, index, key = name.split(".", 2)
                    state.setdefault(int(index), {})[key] = t
            groups = json.loads(meta["param_groups"])
            return cls(int(meta["step"]), params, {"state": state, "param_groups": groups},
                       [float(x) for x in json.loads(meta["history"])], json.loads(meta["scaler"]),
                       json.loads(meta["identity"]), float(meta["seconds"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise InvertError(f"{path}: not {KIND} (incomplete: {exc})") from None
