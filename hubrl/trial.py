"""One trial of a benchmark grid: the transfer run it is, and the record it leaves.

A trial is a plain ``dict``, the *spec* (:func:`hubrl.benchmark.make_specs`: game, arm, seed,
budget, folder, the grid's settings), so that process pools and Ray can pickle it and the trial
function by reference. :func:`run_trial` is the real trial (one :func:`hubrl.transfer.run_transfer`
in the trial's folder, fresh or resumed); :func:`execute_trial` runs any trial function, times it,
catches its failure and writes ``status.json``, the record of its last attempt, which the grid
(:mod:`hubrl.benchmark`) journals and the report (:mod:`hubrl.grid`) reads back.

This module imports the standard library and numpy (:mod:`hubrl.grid`) at import time: torch loads
inside the trials.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from hubrl.atomic import atomic_write
from hubrl.errors import GridError
from hubrl.grid import count_parameters, has_checkpoint
from hubrl.provenance import system_info

__all__ = [
    "HISTORY_FIELDS", "attempt_summary",
    "TrialSpec",
    "TrialFn",
    "trial_settings",
    "trial_config",
    "run_trial",
    "execute_trial",
    "make_record",
    "failure_fields",
    "save_status",
    "write_json",
    "now",
]

TrialSpec = dict[str, Any]
TrialFn = Callable[[TrialSpec], dict[str, Any]]

#: Files a hubrl run leaves in its folder; only these are cleared before a fresh attempt.
_RUN_ARTIFACTS = frozenset({"status.json", "config.yaml", "evaluations.json", "gates.jsonl", "model.zip", "tb",
                            "checkpoint.prev.pt", "learning_curve.png"})
_TRACEBACK_TAIL = 3000  # characters of the traceback kept in the records


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write: a killed process never leaves a torn file."""
    atomic_write(path, lambda handle: json.dump(data, handle, indent=1, default=str), mode="w")


def now() -> str:
    """The time now, UTC, to the second (ISO 8601): when an attempt started or finished."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def trial_settings(method: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The grid-wide ``settings`` (``--hub``, ``--sources``, ``--set``) a trial of ``method`` runs with: all
    of them but those only other methods take, which ``method`` would refuse
    (:data:`hubrl.transfer.METHOD_ONLY_SETTINGS`): ``--hub`` serves the grid's hub methods, not scratch;
    ``--set source=NAME`` the finetune arm, not hub-pathway. A method's own ``NAME:KEY=VALUE`` is never dropped."""
    from hubrl.transfer import METHOD_ONLY_SETTINGS

    return {key: value for key, value in settings.items() if method in METHOD_ONLY_SETTINGS.get(key, (method,))}


def clear_leftovers(folder: Path) -> None:
    """Remove what an attempt that died before its first checkpoint left, so run_transfer can start.

    A run still working in the folder (started by hand, or a trial whose grid runner was killed
    outright: no checkpoint yet, so the grid reads the folder as fresh) holds its lock
    (:data:`hubrl.harness.RUN_LOCK_NAME`): then nothing is deleted and the trial is refused, naming
    that process. The lock file itself is never deleted (a second lock on a new file would let two
    processes train one folder)."""
    from hubrl.harness import RUN_LOCK_NAME
    from hubrl.locks import LockHeld, exclusive_lock

    if not folder.exists():
        return
    try:
        with exclusive_lock(folder / RUN_LOCK_NAME):
            _clear_unlocked(folder, keep=RUN_LOCK_NAME)
    except LockHeld as exc:
        raise GridError(f"Trial folder {folder} is in use by another process ({exc.holder or 'pid unknown'}): wait for it "
                        "to end or stop it, then run the grid again.") from None


def _clear_unlocked(folder: Path, keep: str) -> None:
    """:func:`clear_leftovers`' checks and deletions, the folder's lock held (``keep``: its file)."""
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in _RUN_ARTIFACTS and not p.name.startswith("."))
    if foreign:
        raise GridError(f"Trial folder {folder} holds files that are not a hubrl run's ({', '.join(foreign)}): "
                        "move them away.")
    if (folder / "model.zip").exists():  # trial_state refuses such a folder; never delete a model on any other path
        raise GridError(f"Trial folder {folder} holds a model.zip but no checkpoint: a fresh start would delete that "
                        "model; move it away, or delete the folder to train this trial again.")
    for path in folder.iterdir():
        if path.name != keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def trial_config(spec: TrialSpec) -> Any:
    """The :class:`~hubrl.transfer.TransferConfig` a trial runs with: its game, method, seed, budget
    and folder, the grid's threads, the grid-wide settings its method takes and its arm's own."""
    from hubrl.transfer import TransferConfig

    method = spec.get("base_method", spec["method"])
    return TransferConfig(
        env=spec["game"], method=method, seed=spec["seed"], timesteps=spec["budget"], out=str(spec["folder"]),
        **{**({"threads": int(spec["threads"])} if spec.get("threads") else {}),
           **trial_settings(method, spec["settings"]), **spec.get("overrides", {})},
    )


def run_trial(spec: TrialSpec) -> dict[str, Any]:
    """The real trial: ``run_transfer`` of ``spec`` (fresh or resumed); returns the step counters.

    ``spec["settings"]`` holds the extra :class:`~hubrl.transfer.TransferConfig` fields (hub,
    sources, algo, n_envs, device, eval_freq, eval_episodes, hyperparams, ...).
    """
    from stable_baselines3.common.utils import get_device

    from hubrl.checkpoint import CheckpointError, load_resume_checkpoint
    from hubrl.transfer import run_transfer

    folder = Path(spec["folder"])
    cfg = trial_config(spec)
    resume = has_checkpoint(folder)
    # a torn checkpoint: the previous one kept beside it; both torn: the trial is restarted, not --resume'd by hand
    again = f"delete {folder} and run the grid again, which trains this trial from the start"
    start = int(load_resume_checkpoint(folder / "checkpoint.pt", again)["num_timesteps"]) if resume else 0
    if not resume:
        clear_leftovers(folder)
    try:
        result = run_transfer(cfg, resume=resume, progress_bar=False, verbose=int(spec.get("verbose", 0)),
                              pause_at=spec.get("pause_at"))
    except CheckpointError as exc:  # its advice is a command's ("another --out"): a grid's trial has none
        if not resume:
            raise
        raise CheckpointError(f"{exc} For this grid's trial: {again}.") from None
    outcome, out = result.outcome, result.folder
    return {
        "num_timesteps": outcome.num_timesteps,
        "paused": outcome.paused,
        "steps": outcome.num_timesteps - start,
        "resumed": resume,
        "completed": outcome.completed,
        "interrupted_by": outcome.interrupted_by,
        "train_seconds": outcome.seconds,
        "device": str(get_device(cfg.device)),
        "inference_steps_per_s": (_measure("inference speed", out, lambda: _saved_model_inference(out, cfg))
                                  if outcome.completed else None),
        "rollout_score": outcome.rollout_score,
        "params": _measure("parameter count", out, lambda: count_parameters(out / "model.zip")) if outcome.completed else None,
    }


def _measure(what: str, folder: Path, measure: Callable[[], Any]) -> Any:
    """``measure()`` of a finished trial's saved model (its inference speed, its parameter count),
    or ``None`` when it fails, said on stderr: the trial trained, evaluated and saved everything
    before it, so one failing measure of its compute costs is recorded as missing, not as a failed
    trial (whose scores the archive and the report would leave out, and which the next run of the
    grid would train again)."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - whatever a measure meets, the trained trial stands
        print(f"warning: the {what} of {folder / 'model.zip'} could not be measured ({type(exc).__name__}: {exc}); "
              "recorded as missing", file=sys.stderr)
        return None


def _saved_model_inference(folder: Path, cfg: Any) -> float | None:
    """Agent steps/s of ``policy.predict`` of the trial's ``model.zip`` (what a user deploys) on a
    vector step of real observations of the game (median of 5 rounds of 100 calls).

    The policy is rebuilt from the zip as weights only (:func:`hubrl.saved_model.load_saved_policy`),
    as ``hubrl-enjoy`` plays it. Measured here, in the trial's process, rather than by the report,
    which reads only the records a trial writes.
    """
    from hubrl.envs import make_atari_vec_env, resolve_game
    from hubrl.evaluation import inference_steps_per_second
    from hubrl.saved_model import load_saved_policy

    path = folder / "model.zip"
    if not path.is_file():
        return None
    saved = load_saved_policy(path, device=cfg.device)
    env = make_atari_vec_env(resolve_game(cfg.env), saved.n_envs or 8, seed=cfg.seed)
    try:
        obs = env.reset()
    finally:
        env.close()
    return round(inference_steps_per_second(saved.policy, obs, calls=100, rounds=5), 1)


def make_record(spec: TrialSpec, status: str, **fields: Any) -> dict[str, Any]:
    """A trial's record: who it is (from ``spec``), its ``status`` and the attempt's ``fields``."""
    base = {k: spec[k] for k in ("trial", "game", "method", "seed", "budget", "folder")}
    return {**base, "status": status, **fields}


def failure_fields(exc: BaseException) -> dict[str, Any]:
    """A failure's record fields: the exception in one line and the tail of its traceback."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": tb[-_TRACEBACK_TAIL:]}


#: What ``status.json``'s ``history`` keeps of an earlier attempt (``num_timesteps``: where it stopped,
#: which places it in a stage's report, :func:`hubrl.grid.attempt_ends`).
HISTORY_FIELDS = ("status", "steps", "num_timesteps", "seconds", "peak_rss_mb", "rss_isolated", "finished", "system")


def attempt_summary(record: dict[str, Any]) -> dict[str, Any]:
    """An attempt's record as ``status.json``'s ``history`` keeps it (:data:`HISTORY_FIELDS`)."""
    return {key: record.get(key) for key in HISTORY_FIELDS}


def save_status(spec: TrialSpec, record: dict[str, Any]) -> None:
    """``status.json`` = this attempt's record + a summary of the earlier attempts (for totals)."""
    history = list(spec.get("history") or [])
    write_json(Path(spec["folder"]) / "status.json", {**record, "history": history})


def execute_trial(spec: TrialSpec, trial_fn: TrialFn = run_trial) -> dict[str, Any]:
    """Run ``trial_fn(spec)``, time it, catch its exception, measure memory; write ``status.json``.

    Returns the trial's record (status ``ok``, ``failed`` or ``interrupted``). Never raises for
    a failing trial: that is what lets the rest of the grid run; nor for one stopped at once by a
    second signal (``interrupted``), whose record would otherwise be lost.
    """
    started, t0 = now(), time.perf_counter()
    Path(spec["folder"]).mkdir(parents=True, exist_ok=True)
    try:
        out = dict(trial_fn(spec) or {})
        status = "interrupted" if out.get("interrupted_by") is not None else "paused" if out.get("paused") else "ok"
        extra: dict[str, Any] = {"error": None, "traceback": None}
    except Exception as exc:  # noqa: BLE001 - any trial failure is recorded, not raised
        out, status, extra = {}, "failed", failure_fields(exc)
    except KeyboardInterrupt:  # a second Ctrl-C/SIGTERM in training: it stopped at once, checkpointing on the way out
        out, status = {}, "interrupted"
        extra = {"error": "KeyboardInterrupt: stopped at once by a second signal (it resumes from its last checkpoint)",
                 "traceback": None}
    seconds = time.perf_counter() - t0
    steps = int(out.get("steps", 0) or 0)
    fields = {**extra, **out}
    fields.update(
        seconds=round(seconds, 3),
        steps=steps,
        steps_per_s=round(steps / seconds, 2) if seconds > 0 and steps else None,
        peak_rss_mb=round(peak_rss_mb(), 1),
        rss_isolated=bool(spec.get("isolated", False)),
        host=socket.gethostname(),
        pid=os.getpid(),
        started=started,
        finished=now(),
        system=system_info(),
    )
    record = make_record(spec, status, **fields)
    save_status(spec, record)
    return record
