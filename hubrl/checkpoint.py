"""Crash-safe training checkpoints that hold data only (tensors and numbers, never pickled code).

A checkpoint is one file written to a temporary name in the same folder, flushed to disk and
renamed over the old one (``os.replace`` is atomic on POSIX and Windows), so killing the process
at any moment leaves either the previous checkpoint or the new one, never a torn file. It is read
back with ``torch.load(weights_only=True)``: a checkpoint cannot run code when loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

from hubrl.atomic import atomic_write, atomic_write_bytes, sha256_file  # noqa: F401  (re-exported)

__all__ = [
    "CheckpointError",
    "atomic_write",
    "atomic_write_bytes",
    "save_training_checkpoint",
    "load_training_checkpoint",
    "restore_training_state",
    "sha256_file",
]

FORMAT = "hubrl-training-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or was not written by hubrl."""


def save_training_checkpoint(model: BaseAlgorithm, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically save what resuming ``model`` needs: weights, optimizer state, counters.

    The learning-rate and clip-range schedules are functions of ``num_timesteps`` and the run's
    total budget, so restoring the counter restores the schedules.
    """
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algo": type(model).__name__,
        "policy": model.policy.state_dict(),
        "optimizer": model.policy.optimizer.state_dict(),
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "episode_returns": [float(ep["r"]) for ep in (model.ep_info_buffer or [])],
        "extra": extra or {},
    }
    return atomic_write(path, lambda handle: th.save(state, handle))


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_checkpoint` (weights only, no code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}.")
    try:
        state = th.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"Checkpoint {path} is corrupt or not a hubrl checkpoint ({type(exc).__name__}).") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a hubrl training checkpoint.")
    return state


def restore_training_state(model: BaseAlgorithm, state: dict[str, Any]) -> None:
    """Load weights, optimizer state and counters of a checkpoint into a freshly built ``model``."""
    from collections import deque

    try:
        model.policy.load_state_dict(state["policy"])
        model.policy.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"Checkpoint does not fit this model ({exc}).") from exc
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state.get("n_updates", 0))
    # SB3 recreates this buffer in learn() only when it is None, so pre-filling it keeps
    # rollout/ep_rew_mean continuous across a resume.
    model.ep_info_buffer = deque(({"r": r, "l": 0} for r in state.get("episode_returns", [])), maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(maxlen=model._stats_window_size)
