"""How a run uses the machine: torch's CPU threads and the encoders' precision, said in one line
at the start of a run.

A single run takes torch's own default (one thread per core, or ``OMP_NUM_THREADS``): on an idle
2-core VM, PPO trained at 303 agent steps/s with 2 threads against 172 with 1 (BENCHMARKS.md).
When processes share the cores (a grid's workers, anyone else's jobs) torch's OpenMP threads
stall whenever one of them is descheduled: a batch-8 ``predict`` went from 6 ms to 329 ms with 2
threads on 2 busy cores (issue 18), and a PPO training process beside two grid trials on 2 cores
ran at 57-58 agent steps/s with 2 threads against 134-151 with 1 (BENCHMARKS.md). A grid
therefore gives each worker ``cores // workers`` threads, ``--threads N`` sets the number for any
command, and a run left at torch's default on a machine already busy says so
(:func:`busy_cores_warning`), without changing it: the thread count changes a run's floating-point
sums, so a seed gives the same run only at the same count.

``--precision bf16`` runs the NatureCNN encoders (experts and scratch's CNN) under bfloat16
autocast: on a CPU with AVX512-BF16 their forward+backward ran 2.24x faster than float32 at one
thread (issue 18), with the loss within 4e-5 relative but conv gradients 3-6% off, so it stays an
option until learning curves show it learns as well. The gate, the heads, the losses and the
optimizer state stay float32, and ``model.zip`` holds float32 weights (a loaded model runs float32).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import torch as th
from stable_baselines3.common.torch_layers import NatureCNN
from torch import nn

__all__ = ["DEFAULT_THREADS", "PRECISIONS", "configure_threads", "busy_cores_warning", "apply_precision", "runtime_line"]

DEFAULT_THREADS = None  # torch's own default: one thread per core, or OMP_NUM_THREADS
PRECISIONS = ("fp32", "bf16")


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads to ``threads``; ``None`` (:data:`DEFAULT_THREADS`) leaves
    torch's setting as it is. Return the number in use."""
    if threads is None:
        return th.get_num_threads()
    n = int(threads)
    if n < 1:
        raise ValueError(f"--threads must be at least 1, got {n}.")
    if th.get_num_threads() != n:
        th.set_num_threads(n)
    return n


def busy_cores_warning(threads: int | None, device: str | th.device, load: float | None = None,
                       cores: int | None = None) -> str | None:
    """The warning for a CPU run at torch's default threads (``threads`` None) on a machine whose
    other work already keeps its cores busy (``load``: the 1-minute load average, before this run
    trains, its own start included; ``cores``: the machine's) that leaves fewer idle cores than its
    threads by a whole core or more, so that its threads would share cores and stall; ``None`` when
    the run chose its threads, runs on a GPU, or there are cores enough."""
    if threads is not None or th.device(device).type != "cpu":
        return None
    n = th.get_num_threads()
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # not on this platform
            return None
    if n < 2 or load < max(1.0, cores - n + 1):  # other work takes at least a core that the threads would need
        return None
    return (f"this machine is busy (load {load:.1f} on {cores} cores), so torch's {n} threads would share cores and "
            f"stall (PPO beside two grid trials on 2 cores: 57-58 agent steps/s with 2 threads, 134-151 with 1, "
            f"BENCHMARKS.md): pass --threads 1, or a number up to the idle cores.")


def _autocast_forward(forward: Callable[..., th.Tensor], observations: th.Tensor, *args: Any, **kwargs: Any) -> th.Tensor:
    # The device type is the input's, read at each call: an encoder wrapped before the policy moved
    # to the GPU (or a policy moved later) still autocasts where it computes. ``th.autocast("cpu")``
    # around CUDA kernels would silently leave them in float32.
    with th.autocast(observations.device.type, dtype=th.bfloat16):
        out = forward(observations, *args, **kwargs)
    return out.float()


def apply_precision(policy: nn.Module, precision: str = "fp32") -> int:
    """Run every NatureCNN encoder inside ``policy`` in ``precision``; return how many were changed.

    ``bf16`` wraps each encoder's ``forward`` (on this instance only, so nothing of it is saved)
    in bfloat16 autocast on the device its input is on, and hands float32 features on. ``fp32``
    removes such a wrapper (the class's own ``forward`` runs again): a policy trained in bf16 is
    scored as its float32 weights run wherever they are loaded; one never wrapped is left as it is.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    changed = 0
    for module in policy.modules():
        wrapped = isinstance(vars(module).get("forward"), functools.partial)
        if isinstance(module, NatureCNN) and wrapped != (precision == "bf16"):
            if wrapped:
                del module.forward
            else:
                module.forward = functools.partial(_autocast_forward, module.forward)  # type: ignore[method-assign]
            changed += 1
    return changed


def runtime_line(device: str | th.device, precision: str = "fp32") -> str:
    """``device cpu, 1 torch thread, fp32 encoders``: what a run prints at its start."""
    n = th.get_num_threads()
    return f"device {device}, {n} torch thread{'s' if n != 1 else ''}, {precision} encoders"
