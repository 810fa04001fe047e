"""How a run uses the machine: torch's CPU threads, said in one line at the start of a run.

On a CPU that other processes share (a grid's workers, the env's own C++ threads, anyone else's
jobs), torch's default of one OpenMP thread per core stalls whenever one of its threads is
descheduled: a batch-8 ``predict`` went from 6 ms to 329 ms with 2 threads on 2 busy cores
(issue 18). One thread per process is therefore the default; ``--threads N`` asks for more on a
machine you have to yourself.
"""

from __future__ import annotations

import torch as th

__all__ = ["DEFAULT_THREADS", "configure_threads", "runtime_line"]

DEFAULT_THREADS = 1


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads (``None``: :data:`DEFAULT_THREADS`); return the number set."""
    n = DEFAULT_THREADS if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"--threads must be at least 1, got {n}.")
    if th.get_num_threads() != n:
        th.set_num_threads(n)
    return n


def runtime_line(device: str | th.device) -> str:
    """``device cpu, 1 torch thread, float32``: what a run prints at its start."""
    n = th.get_num_threads()
    return f"device {device}, {n} torch thread{'s' if n != 1 else ''}, float32"
