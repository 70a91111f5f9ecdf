"""How many CPU threads torch uses. Its default (one per physical core) assumes the cores are free: on a machine
that other jobs keep busy, its threads wait on each other at every operation, and a run gets many times slower
than with one thread (measured in README, "Threads"). So invert's default leaves the busy cores alone."""
from __future__ import annotations

import os

ENV = "INVERT_THREADS"


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """The cores this process may use that other work leaves free: the cores it may run on (affinity), at most
    ``cores`` (torch's physical-core count), less the one-minute load average, rounded; at least 1."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores is not None:
        usable = min(usable, cores)
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(usable, round(usable - load)))


def use_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads: ``threads`` if given, else ``default_threads()``, unless OMP_NUM_THREADS says
    otherwise (torch already follows it). Returns the number in use."""
    import torch

    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = default_threads(torch.get_num_threads())
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


__all__ = ["ENV", "default_threads", "use_threads"]
