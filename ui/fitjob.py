"""A fit as the Learn tab runs it: the library's fit in a worker thread, its progress kept for the page to show.

Preview edits need the UNet, which the running fit holds (InstructBrush's processors or a LoRA adapter sit on it
while it fits), so every N steps the fit is stopped, the preview sampled, and the fit resumed from the state it
stopped with: the library's resume continues to the result an uninterrupted fit gives. Stop and Resume on the
page use the same mechanism."""
from __future__ import annotations

import sys
import threading
import traceback
from typing import Iterator

from PIL import Image

from .backend import FitProgress, FitState, FitStopped, Instruction, InvertError, Model, Pair


class FitJob:
    def __init__(self, model: Model, pairs: list[Pair], method: str, options: dict, previews: list[Image.Image],
                 preview_every: int, state: FitState | None = None, losses: list[float] | None = None,
                 sources: dict[str, str] | None = None):
        self.model, self.pairs, self.method, self.options, self.sources = model, pairs, method, options, sources
        self.previews, self.preview_every = previews, preview_every
        # What the page shows; written by the worker thread, read by the page's generator.
        self.step = state.step if state is not None else 0
        self.total = 0  # known from the fit's first progress
        self.losses: list[float] = list(losses or [])
        self.score: float | None = None  # the latest validation score (dB), once the fit has one
        self.preview: tuple[int, list[Image.Image]] | None = None  # (step, edited preview images)
        self.outcome: str | None = None  # "done", "stopped" or "failed" once the worker has ended
        self.message = ""
        self.instruction: Instruction | None = None
        self.state = state  # where a stopped fit stands: Resume continues from it
        self.version = 0  # bumped on every change, so that the page sends only news
        self._stop = threading.Event()
        self._snapshot: tuple[Instruction, int] | None = None
        self._thread = threading.Thread(target=self._run, name="invert-ui-fit", daemon=True)

    def start(self) -> "FitJob":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current step, keeping the state (see ``resumed``)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def resumed(self) -> "FitJob":
        """A new job that continues this stopped one, with the same pairs and settings."""
        if self.state is None:
            raise InvertError("there is no stopped fit to resume")
        job = FitJob(self.model, self.pairs, self.method, self.options, self.previews, self.preview_every,
                     self.state, self.losses, self.sources)
        job.preview = self.preview
        return job

    def watch(self, every: float = 0.25) -> Iterator[None]:
        """Yield whenever the page has something new to show (at most every ``every`` seconds), until the worker
        has ended; a consumer that stops early (the page was closed) stops the fit."""
        seen = -1
        try:
            while True:
                ended = not self._thread.is_alive()  # read before the version: its last changes are then seen
                if self.version != seen:
                    seen = self.version
                    yield
                if ended:
                    return
                self._thread.join(every)
        finally:
            if self._thread.is_alive():
                self.stop()
                self.join()

    def _changed(self) -> None:
        self.version += 1

    def _progress(self, p: FitProgress) -> None:
        self.step, self.total = p.step, p.total
        self.losses.append(p.loss)
        if p.score is not None:
            self.score = p.score
        self._changed()

    def _checkpoint(self, inst: Instruction, step: int) -> None:
        self._snapshot = (inst, step)

    def _should_stop(self) -> bool:
        return self._stop.is_set() or self._snapshot is not None

    def _show_preview(self, inst: Instruction, step: int) -> None:
        if self.previews and self.preview_every:
            self.preview = (step, self.model.apply(inst, self.previews))
            self._changed()

    def _run(self) -> None:
        try:
            self._fit()
        except InvertError as exc:
            self.outcome, self.message = "failed", str(exc)
        except Exception as exc:  # shown as one line on the page; the traceback goes to the terminal
            traceback.print_exc(file=sys.stderr)
            self.outcome, self.message = "failed", f"internal error: {type(exc).__name__}: {exc}"
        self._changed()

    def _fit(self) -> None:
        while True:
            self._snapshot = None
            try:
                inst = self.model.fit(self.pairs, self.method, progress=self._progress,
                                      should_stop=self._should_stop, checkpoint=self._checkpoint,
                                      save_every=self.preview_every, resume=self.state, sources=self.sources,
                                      **self.options)
            except FitStopped as stopped:
                self.state = stopped.state
                if self._snapshot is not None:
                    self._show_preview(*self._snapshot)
                if self._snapshot is None or self._stop.is_set():  # Stop was pressed, or the fit diverged
                    self.outcome, self.message = "stopped", str(stopped)
                    return
                continue  # paused for the preview only
            self.state, self.instruction = None, inst
            self._show_preview(inst, self.total)
            self.outcome = "done"
            return
