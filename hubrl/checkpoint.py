"""Crash-safe training checkpoints that hold data only (tensors and numbers, never pickled code).

A checkpoint is one file written to a temporary name in the same folder, flushed to disk and
renamed over the old one (``os.replace`` is atomic on POSIX and Windows), so killing the process
at any moment leaves either the previous checkpoint or the new one, never a torn file. The one it
replaces is kept as ``checkpoint.prev.pt`` (:func:`previous_checkpoint`), so a checkpoint
damaged later (a bad disk, a partial copy) still has a fallback: :func:`load_resume_checkpoint`
names the damaged file and continues from the previous one. It is read back with
``torch.load(weights_only=True)``: a checkpoint cannot run code when loaded. torch does not check
the CRC-32 its zip stores for each member, so they are checked first: damage that keeps the file's
size (a flipped bit, a bad sector) is refused as corrupt instead of loading as changed weights.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

from hubrl.agents.routing import unfuse_where_unsupported
from hubrl.atomic import atomic_write
from hubrl.errors import CheckpointError
from hubrl.hub import load_weights_only

__all__ = [
    "CheckpointError",
    "DivergedWeights",
    "save_training_checkpoint",
    "load_training_checkpoint",
    "load_resume_checkpoint",
    "previous_checkpoint",
    "restore_training_state",
]

FORMAT = "hubrl-training-checkpoint"
FORMAT_VERSION = 1


class DivergedWeights(CheckpointError):
    """The weights to checkpoint are not finite (NaN or inf): training diverged. Nothing is written,
    so the run's last checkpoint (the last sound state) stays as it was."""


def non_finite_tensor(tensors: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor in ``tensors`` holding a NaN or an infinity, else ``None``."""
    for name, value in tensors.items():
        if isinstance(value, th.Tensor) and value.is_floating_point() and not bool(th.isfinite(value).all()):
            return name
    return None


def save_training_checkpoint(model: BaseAlgorithm, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically save what resuming ``model`` needs: weights, optimizer state, counters.

    The learning-rate and clip-range schedules are functions of ``num_timesteps`` and the run's
    total budget, so restoring the counter restores the schedules.

    Weights that are not finite are never written (:class:`DivergedWeights`): a diverged run would
    otherwise replace its last sound checkpoint, and on resume its ``checkpoint.prev.pt`` too. The
    checkpoint it replaces is kept as ``checkpoint.prev.pt`` only when it is sound itself: a damaged
    one (a run resumed from ``checkpoint.prev.pt`` because ``checkpoint.pt`` was torn or diverged)
    is replaced without taking the sound previous one's place.
    """
    policy = model.policy.state_dict()
    bad = non_finite_tensor(policy)
    if bad is not None:
        raise DivergedWeights(f"Training diverged by step {int(model.num_timesteps):,}: the weights hold NaN or inf "
                              f"({bad}). No checkpoint is written over the last sound one ({Path(path).name}); "
                              "resume from it with a lower learning rate, or train again.")
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algo": type(model).__name__,
        "policy": policy,
        "optimizer": model.policy.optimizer.state_dict(),
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "episode_returns": [float(ep["r"]) for ep in (model.ep_info_buffer or [])],
        "episode_lengths": [int(ep.get("l", 0)) for ep in (model.ep_info_buffer or [])],
        "extra": extra or {},
    }
    # Serialise in memory first: torch's zip writer turns a full disk into an opaque
    # "unexpected pos" RuntimeError, while a plain write raises OSError(ENOSPC) naming the cause.
    buffer = io.BytesIO()
    th.save(state, buffer)
    data = buffer.getbuffer()
    keep = previous_checkpoint(path) if _is_sound(Path(path)) else None
    return atomic_write(path, lambda handle: handle.write(data), keep_previous=keep)


def _is_sound(path: Path) -> bool:
    """Whether ``path`` is a checkpoint :func:`load_training_checkpoint` accepts (not missing, torn or diverged)."""
    try:
        load_training_checkpoint(path)
    except (CheckpointError, OSError):
        return False
    return True


def previous_checkpoint(path: str | Path) -> Path:
    """Where the checkpoint that ``path`` replaced is kept: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_checkpoint` (weights only, no code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}.")
    try:
        data = path.read_bytes()  # read once: the CRC check and torch.load use the same bytes
    except (PermissionError, IsADirectoryError):
        raise
    except OSError as exc:  # a bad sector (EIO): damaged as a torn file is, so the previous checkpoint is used
        raise CheckpointError(f"Checkpoint {path} is corrupt (unreadable: {exc}).") from exc
    try:
        damaged = _crc_mismatch(data)
        state = None if damaged is not None else load_weights_only(io.BytesIO(data))
    except Exception as exc:  # zipfile and torch raise several types for truncated / empty / foreign files
        raise CheckpointError(f"Checkpoint {path} is corrupt ({'torn or not a torch file' if data else 'empty'}, "
                              f"{len(data):,} bytes: {type(exc).__name__}).") from exc
    if damaged is not None:
        raise CheckpointError(f"Checkpoint {path} is corrupt (CRC mismatch in {damaged}): its bytes changed after it was "
                              "written (a bad disk or copy).")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a hubrl training checkpoint.")
    if (not isinstance(state.get("policy"), dict) or not isinstance(state.get("num_timesteps"), int)
            or state["num_timesteps"] < 0):
        raise CheckpointError(f"Checkpoint {path} is corrupt (no policy weights or step counter).")
    bad = non_finite_tensor(state["policy"])
    if bad is not None:  # written by a diverged run (hubrl before it refused to save them): nothing to resume
        raise CheckpointError(f"Checkpoint {path} holds weights that are not finite (NaN or inf in {bad}): its run "
                              "had diverged.")
    return state


def _crc_mismatch(data: bytes) -> str | None:
    """The first member of the zip ``data`` (a ``torch.save`` file) whose bytes do not match the CRC-32 stored
    for them, else ``None``: ``torch.load`` does not check them, so a checkpoint damaged in place would load.

    :raises zipfile.BadZipFile: when ``data`` is no zip (torn, empty or foreign).
    """
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.testzip()


#: What a run whose checkpoints are all damaged can do (:func:`load_resume_checkpoint`'s default).
START_AGAIN = "start the run again without --resume (in a new --out)"


def load_resume_checkpoint(path: str | Path, start_again: str = START_AGAIN) -> dict[str, Any]:
    """The checkpoint to resume from: ``path``, or the previous one kept beside it when ``path``
    is missing or damaged (saying so on stderr, with the steps that are trained again).
    ``start_again``: what the error advises when neither can be used (a grid's trial is restarted otherwise)."""
    path = Path(path)
    previous = previous_checkpoint(path)
    try:
        return load_training_checkpoint(path)
    except CheckpointError as exc:
        if not previous.is_file():
            raise CheckpointError(f"{exc} No previous checkpoint ({previous.name}) is kept beside it: "
                                  f"{start_again}.") from exc
        try:
            state = load_training_checkpoint(previous)
        except CheckpointError as older:
            raise CheckpointError(f"{exc} The previous one is damaged too: {older} So {start_again}.") from exc
        print(f"warning: {exc} Using the previous checkpoint {previous} "
              f"({int(state['num_timesteps']):,} steps) instead.", file=sys.stderr)
        return state


def restore_training_state(model: BaseAlgorithm, state: dict[str, Any]) -> None:
    """Load weights, optimizer state and counters of a checkpoint into a freshly built ``model``.

    A checkpoint of another agent or method (copied between run folders, say) is refused in one
    line that says which, rather than with torch's list of every mismatched tensor.
    """
    from collections import deque

    fix = ("it is not this run's own (copied from another run folder?): put the run's own checkpoint.pt back, or train "
           "again from the start in a new run folder")
    saved_algo, algo = state.get("algo"), type(model).__name__
    if isinstance(saved_algo, str) and saved_algo != algo:
        raise CheckpointError(f"Checkpoint was saved by {saved_algo}, not {algo}: {fix}.")
    saved, wanted = set(state.get("policy") or {}), set(model.policy.state_dict())
    if saved != wanted:
        missing, foreign = sorted(wanted - saved), sorted(saved - wanted)
        raise CheckpointError(
            f"Checkpoint holds another model's weights than this {type(model.policy).__name__}'s: {len(missing)} of its "
            f"tensors missing{f' (e.g. {missing[0]})' if missing else ''}, {len(foreign)} not its own"
            f"{f' (e.g. {foreign[0]})' if foreign else ''} (another method or expert count?): {fix}.")
    try:
        model.policy.load_state_dict(state["policy"])
        model.policy.optimizer.load_state_dict(state["optimizer"])
        unfuse_where_unsupported(model.policy.optimizer)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"Checkpoint does not fit this model ({exc}).") from exc
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state.get("n_updates", 0))
    # SB3 recreates this buffer in learn() only when it is None, so pre-filling it keeps
    # rollout/ep_rew_mean and rollout/ep_len_mean continuous across a resume (lengths: checkpoints
    # since they were saved; 0 before, as then).
    returns = state.get("episode_returns", [])
    lengths = state.get("episode_lengths")
    if not isinstance(lengths, list) or len(lengths) != len(returns):
        lengths = [0] * len(returns)
    model.ep_info_buffer = deque(({"r": r, "l": n} for r, n in zip(returns, lengths)), maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(maxlen=model._stats_window_size)
