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

from ..errors import InvertError
from ..instruction import read_verified, tensors_sha256
from ..writing import write_atomically

FORMAT = "invert.fit-state"
VERSION = 2  # 2: parameters and optimizer state by parameter name
KIND = "a fit checkpoint"


# Keys of an identity whose values are options by name: a difference is shown as the option's flag.
OPTION_KEYS = ("options", "settings")


def _differences(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two identities, each by its name (a nested object's keys too, so that a difference is
    not shown as the whole of what the two record): an option as its flag, the exemplars as one item."""
    differ = []
    for key in sorted(saved.keys() | now.keys()):
        a, b = saved.get(key), now.get(key)
        if a == b:
            continue
        if key == "exemplars" and not prefix:
            differ.append(f"the exemplar images{_exemplar_changes(a, b)}")
        elif key in OPTION_KEYS and isinstance(a, dict) and isinstance(b, dict):
            differ += [f"--{k.replace('_', '-')} ({a.get(k)!r} there, {b.get(k)!r} here)"
                       for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
        elif isinstance(a, dict) and isinstance(b, dict):
            differ += _differences(a, b, f"{prefix}{key}.")
        else:
            differ.append(f"{prefix}{key} ({a!r} there, {b!r} here)")
    return differ


def _exemplar_changes(saved: Any, now: Any, shown: int = 4) -> str:
    """`` (a.png added; b.png changed; c.png removed)``: the exemplar pairs that differ, by the names the identities
    record (at most ``shown``, then "and N more"); empty where they record no names to tell them by."""
    def by_name(exemplars: Any) -> dict[str, Any] | None:
        if not isinstance(exemplars, list) or not all(isinstance(e, dict) and "name" in e for e in exemplars):
            return None
        named = {str(e["name"]): e for e in exemplars}
        return named if len(named) == len(exemplars) else None

    a, b = by_name(saved), by_name(now)
    if a is None or b is None:
        return ""
    changes = ([f"{n} added" for n in sorted(b.keys() - a.keys())]
               + [f"{n} changed" for n in sorted(a.keys() & b.keys()) if a[n] != b[n]]
               + [f"{n} removed" for n in sorted(a.keys() - b.keys())])
    if not changes:  # none added, removed or changed: the same pairs in another order
        return " (the same pairs in another order)"
    more = f"; and {len(changes) - shown} more" if len(changes) > shown else ""
    return f" ({'; '.join(changes[:shown])}{more})"


class FitStopped(InvertError):
    """The fit stopped before its last step; ``state`` resumes it. ``signum``: the signal that asked for it."""

    def __init__(self, message: str, state: "FitState", signum: int | None = None):
        super().__init__(message)
        self.state, self.signum = state, signum


class FitDiverged(FitStopped):
    """The loss or a gradient became NaN or inf; ``state`` is the last good one (before that step)."""


@dataclass
class FitState:
    """Where a fit stands after ``step`` steps: the method's parameters and the optimizer's state, both by
    parameter name. ``identity`` says which fit it belongs to (filled by the caller that knows the method,
    options, exemplars and model); ``seconds``: fitting time spent so far."""

    step: int
    params: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # {"state": {name: {key: tensor}}, "param_groups": [... "params": [names]]}
    history: list[float]
    scaler: dict[str, Any] = field(default_factory=dict)  # fp16 loss scale; empty when no scaler is in use
    identity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    tracked: dict[str, torch.Tensor] = field(default_factory=dict)  # what the loop tracks (--keep best-mse)
    path: Path | None = field(default=None, compare=False)  # the file it was loaded from, for errors

    @classmethod
    def capture(cls, step: int, method: torch.nn.Module, opt: torch.optim.Optimizer, history: list[float],
                scaler: torch.amp.GradScaler | None = None, tracked: dict[str, torch.Tensor] | None = None
                ) -> "FitState":
        names = {id(p): n for n, p in method.named_parameters()}
        ordered = [p for group in opt.param_groups for p in group["params"]]
        saved = opt.state_dict()  # indexes parameters by their position in the param groups
        state = {names[id(ordered[i])]: {k: v.detach().cpu().clone() if torch.is_tensor(v) else v
                                         for k, v in entries.items()} for i, entries in saved["state"].items()}
        groups = [{**group, "params": [names[id(ordered[i])] for i in group["params"]]}
                  for group in saved["param_groups"]]
        return cls(step, {n: p.detach().cpu().clone() for n, p in method.named_parameters()},
                   {"state": state, "param_groups": groups}, list(history),
                   scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
                   tracked=dict(tracked or {}))

    def restore_parameters(self, method: torch.nn.Module) -> None:
        """Load the parameters into a freshly initialized method of the same fit."""
        own = dict(method.named_parameters())
        if {n: tuple(p.shape) for n, p in own.items()} != {n: tuple(p.shape) for n, p in self.params.items()}:
            raise InvertError("the checkpoint's parameters do not fit this fit's (another method or token count?)")
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(self.params[name])

    def restore_optimizer(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                          method: torch.nn.Module) -> None:
        """Load the optimizer's and the loss scaler's state; the learning rate stays the fresh optimizer's (a
        resumed fit may lower --lr after a divergence)."""
        names = {id(p): n for n, p in method.named_parameters()}
        ordered = [names[id(p)] for group in opt.param_groups for p in group["params"]]
        index = {n: i for i, n in enumerate(ordered)}
        saved_groups = self.optimizer["param_groups"]
        if [n for group in saved_groups for n in group["params"]] != ordered:
            raise InvertError("the checkpoint's optimizer state is for other parameters")
        lrs = [group["lr"] for group in opt.param_groups]
        opt.load_state_dict({"state": {index[n]: entries for n, entries in self.optimizer["state"].items()},
                             "param_groups": [{**group, "params": [index[n] for n in group["params"]]}
                                              for group in saved_groups]})
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr
        if scaler is not None and scaler.is_enabled() and self.scaler:
            scaler.load_state_dict(self.scaler)

    def check_identity(self, identity: dict[str, Any]) -> None:
        """Refuse to resume a different fit: other exemplars, method, model or options (except --lr)."""
        saved = json.loads(json.dumps(self.identity))  # compare JSON with JSON (tuples become lists)
        now = json.loads(json.dumps(identity))
        if saved and not saved.keys() & now.keys():  # a fit's state given to an encoder's training, or the reverse
            raise InvertError(f"{self.path or 'checkpoint'}: saved by another kind of run (it records "
                              f"{', '.join(sorted(saved))}; this one {', '.join(sorted(now))})")
        differ = _differences(saved, now)
        if differ:
            raise InvertError(f"{self.path or 'checkpoint'}: saved by a different fit; differs in {'; '.join(differ)}. "
                              "Resume with the command that wrote it")

    def save(self, path: str | Path) -> Path:
        """Write atomically (overwriting an older checkpoint)."""
        path = Path(path)
        tensors = {f"param.{n}": p.contiguous() for n, p in self.params.items()}
        for name, entries in self.optimizer["state"].items():
            tensors.update({f"optimizer.{name}.{k}": v.contiguous() for k, v in entries.items() if torch.is_tensor(v)})
        tensors.update({f"tracked.{k}": v.contiguous() for k, v in self.tracked.items()})
        meta = {"format": FORMAT, "version": str(VERSION), "step": str(self.step), "seconds": f"{self.seconds:.3f}",
                "history": json.dumps(self.history), "identity": json.dumps(self.identity),
                "scaler": json.dumps(self.scaler), "param_groups": json.dumps(self.optimizer["param_groups"]),
                "tensor_sha256": tensors_sha256(tensors)}
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=meta), force=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FitState":
        path = Path(path)
        tensors, meta = read_verified(path, FORMAT, VERSION, KIND)
        if meta.get("version") != str(VERSION):
            raise InvertError(f"{path}: {KIND} of an older invert (format {meta.get('version')}); start the fit "
                              "again")
        try:
            params = {k[len("param."):]: t for k, t in tensors.items() if k.startswith("param.")}
            state: dict[str, dict[str, torch.Tensor]] = {}
            for key, t in tensors.items():
                if key.startswith("optimizer."):
                    name, _, entry = key[len("optimizer."):].rpartition(".")
                    state.setdefault(name, {})[entry] = t
            groups = json.loads(meta["param_groups"])
            tracked = {k[len("tracked."):]: t for k, t in tensors.items() if k.startswith("tracked.")}
            return cls(int(meta["step"]), params, {"state": state, "param_groups": groups},
                       [float(x) for x in json.loads(meta["history"])], json.loads(meta["scaler"]),
                       json.loads(meta["identity"]), float(meta["seconds"]), tracked, path)
        except (KeyError, ValueError, TypeError) as exc:
            raise InvertError(f"{path}: not {KIND} (incomplete: {exc})") from None
