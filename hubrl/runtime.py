"""How a run uses the machine: torch's CPU threads and the encoders' precision, said in one line
at the start of a run.

A single run takes torch's own default (one thread per core, or ``OMP_NUM_THREADS``): on an idle
2-core VM, PPO trained at 303 agent steps/s with 2 threads against 172 with 1 (BENCHMARKS.md).
When processes share the cores (a grid's workers, anyone else's jobs) torch's OpenMP threads
stall whenever one of them is descheduled: a batch-8 ``predict`` went from 6 ms to 329 ms with 2
threads on 2 busy cores (issue 18). A grid therefore gives each worker ``cores // workers``
threads, and ``--threads N`` sets the number for any command.

``--precision bf16`` runs the NatureCNN encoders (experts and scratch's CNN) under bfloat16
autocast: on a CPU with AVX512-BF16 their forward+backward ran 2.24x faster than float32 at one
thread (issue 18), with the loss within 4e-5 relative but conv gradients 3-6% off, so it stays an
option until learning curves show it learns as well. The gate, the heads, the losses and the
optimizer state stay float32, and ``model.zip`` holds float32 weights (a loaded model runs float32).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch as th
from stable_baselines3.common.torch_layers import NatureCNN
from torch import nn

__all__ = ["DEFAULT_THREADS", "PRECISIONS", "configure_threads", "apply_precision", "runtime_line"]

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
    changes nothing.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "fp32":
        return 0
    changed = 0
    for module in policy.modules():
        if isinstance(module, NatureCNN) and not isinstance(module.forward, functools.partial):
            module.forward = functools.partial(_autocast_forward, module.forward)  # type: ignore[method-assign]
            changed += 1
    return changed


def runtime_line(device: str | th.device, precision: str = "fp32") -> str:
    """``device cpu, 1 torch thread, fp32 encoders``: what a run prints at its start."""
    n = th.get_num_threads()
    return f"device {device}, {n} torch thread{'s' if n != 1 else ''}, {precision} encoders"
