"""What a fit's phases cost: per phase (the init search, training, validation) its seconds and its denoiser rows,
counted where the denoiser is called (a hook on it, never an estimate), so ``fit --json`` and the ``.inst`` say
where the time went and ``python -m benchmarks speed --fit-report`` can project each phase to another model.

A row is one image of one denoiser call. Rows whose output requires grad are forward+backward rows (the loop
always calls backward on them); the others are forward-only (sampling, the guidance rows a fit runs without
autograd)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import torch

PHASES = ("init_search", "training", "validation")


@dataclass
class PhaseCost:
    seconds: float = 0.0
    forward_rows: int = 0  # rows through the denoiser without autograd
    backward_rows: int = 0  # rows with autograd: forward, then backward


class CostMeter:
    """Seconds and denoiser rows of each phase. Phases nest: the training phase scores the fit from inside its
    loop, and while a validation runs the clock and the counts are the validation's, not the training's."""

    def __init__(self, denoiser: torch.nn.Module, device: torch.device):
        self.denoiser, self.device = denoiser, device
        self.phases = {name: PhaseCost() for name in PHASES}
        self._open: list[str] = []  # the phases entered, innermost last
        self._since = 0.0  # when the innermost phase's clock last (re)started
        self._hook = None  # the denoiser's counting hook, on while a phase is open

    def _count(self, module, args, output) -> None:
        out = output[0] if isinstance(output, tuple) else output.sample
        phase = self.phases[self._open[-1]]
        if out.requires_grad:
            phase.backward_rows += out.shape[0]
        else:
            phase.forward_rows += out.shape[0]

    def _clock(self) -> float:
        # Each phase ends in a host sync of its own (a score is a float, the loop's history a list), so this wait
        # costs nothing and a phase's seconds hold its own device work, not the next one's.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the block's seconds and rows to phase ``name`` (one of PHASES); an outer phase's clock pauses."""
        now = self._clock()
        if self._open:
            self.phases[self._open[-1]].seconds += now - self._since
        else:
            self._hook = self.denoiser.register_forward_hook(self._count)
        self._open.append(name)
        self._since = now
        try:
            yield
        finally:
            now = self._clock()
            self.phases[self._open.pop()].seconds += now - self._since
            self._since = now
            if not self._open:
                self._hook.remove()

    def report(self) -> dict:
        """{phase: {"seconds", "forward_rows", "backward_rows"}}: what the .inst records under ``cost``."""
        return {name: {**asdict(cost), "seconds": round(cost.seconds, 3)} for name, cost in self.phases.items()}


__all__ = ["PHASES", "CostMeter", "PhaseCost"]
