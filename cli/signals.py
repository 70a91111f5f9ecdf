"""SIGINT (Ctrl-C) and SIGTERM during a long computation become a request to stop at the next safe point,
where the caller saves what it has; a second signal interrupts at once."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator


class StopRequest:
    """Called, says whether a stop was asked for; ``signum`` is the signal that asked."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals(notify: Callable[[int], None] | None = None,
                    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopRequest]:
    """While active, the first of ``signals`` sets the request and calls ``notify(signum)``; the next one raises
    KeyboardInterrupt (the user does not want to wait for the step to finish)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # Python delivers signals to the main thread only
        yield request
        return

    def handle(signum: int, frame) -> None:
        if request.signum is not None:
            raise KeyboardInterrupt
        request.signum = signum
        if notify is not None:
            notify(signum)

    previous = {s: signal.signal(s, handle) for s in signals}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
