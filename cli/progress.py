"""Sampling many images (``apply``, ``eval``): a progress bar over every image's sampling steps, and Ctrl-C or
SIGTERM turned into a stop after the current sampling step, keeping the results already done."""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator

import click

from .signals import StopRequest, stop_on_signals


class Interrupted(Exception):
    """Raised from a sampling callback: stop now."""


class Sampling:
    """The callbacks ``invert.apply`` takes (``on_step``; ``finished`` after a batch's results are kept) and the
    bar they move. ``sizes``: the images of each sampling batch, in the order they run."""

    def __init__(self, sizes: list[int], steps: int, quiet: bool, stop: StopRequest, desc: str):
        self.sizes, self.steps, self.quiet, self.stop, self.desc = sizes, steps, quiet, stop, desc
        self.total = sum(sizes)
        self.done = 0  # images finished
        self.batch = 0
        self.signum: int | None = None  # the signal that stopped the run
        self.bar = None

    def on_step(self, step: int) -> None:
        if self.bar is None:  # made at the first step: the model's loading messages come before it
            from tqdm import tqdm

            self.bar = tqdm(total=self.total * self.steps, unit="step", desc=self.desc, disable=self.quiet,
                            dynamic_ncols=True)
            self.bar.set_postfix_str(f"0/{self.total} images")
        self.bar.update(self.sizes[self.batch])
        if self.stop() and step < self.steps:  # the batch's last step: let it finish and be kept
            raise Interrupted

    def finished(self, count: int) -> None:
        self.done += count
        self.batch += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.done}/{self.total} images")
        if self.stop():
            raise Interrupted

    def echo(self, line: str, err: bool = False) -> None:
        """A line of output that does not break the bar."""
        from tqdm import tqdm

        with tqdm.external_write_mode():
            click.echo(line, err=err)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def interrupted(self, what: str) -> click.ClickException:
        """The error a stopped run ends with: what was kept, and the exit status 128 + the signal's number."""
        error = click.ClickException(f"interrupted by {signal.Signals(self.signum).name}: {what}")
        error.exit_code = 128 + self.signum
        return error


def _announce(signum: int) -> None:
    click.echo(f"\n{signal.Signals(signum).name}: stopping after this sampling step, keeping the results done "
               "(again: stop at once)", err=True)


@contextlib.contextmanager
def sampling(sizes: list[int], steps: int, quiet: bool, desc: str) -> Iterator[Sampling]:
    """A :class:`Sampling` for the block; a stop (a signal, or a second one's KeyboardInterrupt) ends the block
    quietly with ``signum`` set, for the caller to report what it kept."""
    with stop_on_signals(_announce) as stop:
        progress = Sampling(sizes, steps, quiet, stop, desc)
        try:
            yield progress
        except (Interrupted, KeyboardInterrupt):
            progress.signum = stop.signum or signal.SIGINT
        finally:
            progress.close()
