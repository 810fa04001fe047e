"""Layout of a benchmark grid and the readers of its records: what the runner and the report share.

A grid folder ``<root>/`` made by :mod:`hubrl.benchmark` holds:

* ``grid.json``: the grid as launched (every game, method and seed launched into it, its budget
  and settings, the last launch's ``pause_at``), the commit and the machine (:func:`read_grid`);
* ``trials.jsonl``: the runner's journal, one JSON line per trial and attempt;
* ``<Game>/<method>/s<seed>/`` (:func:`trial_folder`, :func:`iter_trial_folders`): one trial, a
  transfer run folder (``config.yaml``, ``evaluations.json``, ``gates.jsonl``, ``model.zip``,
  ``checkpoint.pt``, ``tb/``) plus ``status.json``, the record of its last attempt, with the
  earlier ones under ``history`` (:func:`read_status`).

The runner asks :func:`trial_state` what to do with a trial folder; the report reads each trial
back as a :class:`TrialResult` (:func:`load_trials`). Both read the same files through the same
functions here, so they agree on what a trial is, and neither imports the other.

Every reader is defensive: a grid can be damaged (a killed process, a partial copy), foreign or
hostile. A missing or unreadable file reads as empty; a trial whose records are not what a hubrl
run writes is refused with :class:`TrialUnreadable`; a ``model.zip`` is only ever read as
weights (:func:`count_parameters`), never unpickled. This module imports the standard library and
numpy at import time; torch, PyYAML, TensorBoard and the game registry load where they are used.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from hubrl.plaintypes import fits_type
from hubrl.stats import learning_curve_auc

__all__ = [
    "align_aucs",
    "trial_folder",
    "iter_trial_folders",
    "read_json_object",
    "read_yaml_object",
    "read_grid",
    "grid_json_damage",
    "read_status",
    "read_evaluations",
    "has_checkpoint",
    "TrialRecords",
    "read_trial_records",
    "sound_status",
    "trial_state",
    "refusal_reason",
    "binding_budget",
    "count_parameters",
    "tensorboard_series",
    "tensorboard_scalars",
    "final_score",
    "attempt_ends",
    "TrialResult",
    "TrialUnreadable",
    "load_trials",
]


# ----------------------------------------------------------------------------- layout and files


def trial_folder(root: str | Path, game: str, method: str, seed: int) -> Path:
    """``<root>/<Game>/<method>/s<seed>`` (``game`` as given: pass the display name, e.g. ``Alien``)."""
    return Path(root) / game / method / f"s{int(seed)}"


def iter_trial_folders(root: str | Path) -> Iterable[Path]:
    """Every ``<root>/<Game>/<method>/s<seed>`` folder (whatever its state)."""
    yield from sorted(p for p in Path(root).glob("*/*/s*") if p.is_dir() and p.name[1:].isdigit())


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return None
    return data if isinstance(data, dict) else None


def read_yaml_object(path: str | Path) -> dict[str, Any] | None:
    """The YAML mapping in ``path`` (``yaml.safe_load``), or None when it is missing, unreadable or not a mapping."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_grid(root: str | Path) -> dict[str, Any]:
    """``<root>/grid.json`` (``{}`` when it is missing or damaged: :func:`grid_json_damage` tells which)."""
    return read_json_object(Path(root) / "grid.json") or {}


def grid_json_damage(root: str | Path) -> str | None:
    """Why ``<root>/grid.json`` is there but cannot be read as a grid's record, e.g. ``"not JSON (...)"``;
    ``None`` when it is missing or sound (a missing one is a grid not launched, or no grid)."""
    path = Path(root) / "grid.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        return f"{path} is damaged ({type(exc).__name__}: {exc})"
    return None if isinstance(data, dict) else f"{path} is damaged (not a JSON object)"


def read_status(folder: str | Path) -> dict[str, Any]:
    """A trial's ``status.json``: its last attempt's record (``{}`` when it has none or it is damaged)."""
    return read_json_object(Path(folder) / "status.json") or {}


def read_evaluations(folder: str | Path, strict: bool = False) -> list[dict[str, Any]]:
    """Points of ``<folder>/evaluations.json`` (``[]`` when it is missing or unreadable).

    ``strict`` (a report): a file that is there but unreadable, or holds no list of points, raises
    :class:`TrialUnreadable` saying so, instead of passing for a trial with no evaluation yet.
    """
    path = Path(folder) / "evaluations.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        if strict:
            raise TrialUnreadable(f"evaluations.json is unreadable ({type(exc).__name__}: {exc})") from None
        return []
    points = data.get("points") if isinstance(data, dict) else None
    if strict and not isinstance(points, list):
        raise TrialUnreadable("evaluations.json holds no list of points")
    return points if isinstance(points, list) else []


# ----------------------------------------------------------------------------- state of a trial folder


#: A run's checkpoint and the previous one kept beside it (hubrl.harness.CHECKPOINT_NAME and
#: hubrl.checkpoint.previous_checkpoint of it; named here so this module stays free of torch).
_CHECKPOINT_FILES = ("checkpoint.pt", "checkpoint.prev.pt")


def has_checkpoint(folder: str | Path) -> bool:
    """Whether a trial can resume: a ``checkpoint.pt``, or the previous one kept beside it
    (``checkpoint.prev.pt``, which a resume falls back to when ``checkpoint.pt`` is gone or
    damaged: :func:`hubrl.checkpoint.load_resume_checkpoint`). Such a trial is never started afresh,
    which would delete its checkpoint and records; ``--resume`` of such a run folder is accepted
    (:func:`hubrl.harness.check_resumable`)."""
    return any((Path(folder) / name).is_file() for name in _CHECKPOINT_FILES)


@dataclass(frozen=True)
class TrialRecords:
    """A trial's ``status.json`` and ``evaluations.json`` as one read found them (each file read
    once, so the status and the points come from the same moment of a running trial)."""

    status: dict[str, Any]  # {} when missing or damaged
    points: list[dict[str, Any]]  # [] when missing or damaged
    damaged: dict[str, str]  # file name -> what is wrong with it (empty when each is missing or sound)


def _status_damage(data: dict[str, Any]) -> str | None:
    wrong = [key for key in ("num_timesteps", "budget") if data.get(key) is not None and not fits_type(data[key], int)]
    wrong += ["status"] * (data.get("status") is not None and not isinstance(data["status"], str))
    wrong += ["history"] * ("history" in data and not isinstance(data["history"], list))
    return f"status.json has a {wrong[0]!r} of the wrong type ({data[wrong[0]]!r})" if wrong else None


def _points_damage(data: dict[str, Any]) -> str | None:
    points = data.get("points")
    if not isinstance(points, list) or not all(isinstance(p, dict) and fits_type(p.get("step"), int) for p in points):
        return "evaluations.json holds no list of points with whole-number steps"
    return None


def read_trial_records(folder: str | Path) -> TrialRecords:
    """Read a trial's records, each file once, and say what is wrong with a damaged one:
    unreadable, not the mapping it should be, or a field of the wrong type (a step that is not a
    whole number, a history that is not a list). A grid never reads its way past such a file:
    without a checkpoint the trial is refused rather than counted as leftovers and cleared, which
    would delete what the damaged file hid (a finished run, its model.zip); the other, sound file
    is still read."""
    folder = Path(folder)
    found: dict[str, dict[str, Any]] = {}
    damaged: dict[str, str] = {}
    for name, damage in (("status.json", _status_damage), ("evaluations.json", _points_damage)):
        try:
            data = json.loads((folder / name).read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            damaged[name] = f"{name} is unreadable ({type(exc).__name__}: {exc})"
            continue
        wrong = f"{name} holds no JSON object" if not isinstance(data, dict) else damage(data)
        if wrong:
            damaged[name] = wrong
        else:
            found[name] = data
    return TrialRecords(status=found.get("status.json", {}), points=found.get("evaluations.json", {}).get("points", []),
                        damaged=damaged)


def sound_status(folder: str | Path) -> dict[str, Any]:
    """The trial's ``status.json`` when it is sound (:func:`read_trial_records`), else ``{}``."""
    return read_trial_records(folder).status


def trial_state(folder: str | Path, budget: int, pause_at: int | None = None, records: TrialRecords | None = None) -> str:
    """What a trial folder's records say about training it to ``budget`` (pausing at ``pause_at``):

    * ``finished``: its last evaluation reached the budget, and it has a ``model.zip`` or a
      ``status.json`` recording the completed run (a grid archived without its weights stays done);
    * ``paused``: its ``status.json`` records a pause at or past ``pause_at``, and it has a ``checkpoint.pt``;
    * ``resume``: it has a ``checkpoint.pt`` (which rewrites damaged records as it goes on);
    * ``refused``: it must not be trained to ``budget`` (:func:`refusal_reason` says why);
    * ``fresh``: none of these (nothing, or the leftovers of an attempt that died before its first
      checkpoint: no ``model.zip``, and records that are sound and show no result: no attempt, the
      last or an earlier one in its ``history``, paused or finished it).

    ``records``: the folder's (:func:`read_trial_records`) when the caller has read them already.
    """
    folder = Path(folder)
    records = read_trial_records(folder) if records is None else records
    points, status = records.points, records.status
    if points and points[-1]["step"] >= budget:
        recorded = status.get("status") == "ok" and status.get("completed") and int(status.get("num_timesteps") or 0) >= budget
        if (folder / "model.zip").is_file() or recorded:
            return "finished"
    if refusal_reason(folder, budget, records) is not None:
        return "refused"
    if has_checkpoint(folder):
        reached = int(status.get("num_timesteps") or 0)
        if pause_at is not None and status.get("status") == "paused" and reached >= pause_at:
            return "paused"
        return "resume"
    return "fresh"


def _is_done(status: dict[str, Any]) -> bool:
    return status.get("status") in ("ok", "paused") and bool(status.get("completed") or status.get("status") == "paused")


def _earlier_result(status: dict[str, Any]) -> tuple[str, int] | None:
    """``(status, steps)`` of the furthest earlier attempt in ``status.json``'s ``history`` that paused
    or finished the trial (None: none did). A later attempt interrupted or failed does not undo it:
    ``evaluations.json`` still holds that stage's scores, and only the checkpoint continues from it."""
    history = status.get("history")
    attempts = history if isinstance(history, list) else []
    held = [(int(a["num_timesteps"]) if fits_type(a.get("num_timesteps"), int) else 0, str(a["status"]))
            for a in attempts if isinstance(a, dict) and a.get("status") in ("ok", "paused")]
    if not held:
        return None
    steps, attempt = max(held)
    return attempt, steps


def binding_budget(folder: str | Path, status: dict[str, Any] | None = None) -> int | None:
    """The budget a trial was started with when it binds its continuation (it finished, paused, an
    earlier attempt of it did, or it has a checkpoint: its schedules run over that budget); None for
    a trial that may start afresh. ``status``: the folder's ``status.json`` when the caller has read it already."""
    folder = Path(folder)
    status = sound_status(folder) if status is None else status
    started_with = status.get("budget") or (status.get("num_timesteps") if status.get("completed") else None)
    if started_with is None or not (_is_done(status) or _earlier_result(status) or has_checkpoint(folder)):
        return None
    return int(started_with)


def refusal_reason(folder: str | Path, budget: int, records: TrialRecords | None = None) -> str | None:
    """Why the trial in ``folder`` must not be trained to ``budget`` (None: it may).

    A trial's schedules (learning rate, clip range) run over the budget it was started with, so it
    continues only to that budget (:func:`binding_budget`); and a finished or paused trial is never
    restarted from scratch, which would delete its recorded results, nor is one an earlier attempt
    paused or finished, then a later one was interrupted or failed. ``records``: the folder's
    (:func:`read_trial_records`) when the caller has read them already.
    """
    folder = Path(folder)
    records = read_trial_records(folder) if records is None else records
    if records.damaged and not has_checkpoint(folder):
        return (f"{'; '.join(records.damaged.values())}: mend or restore it (from the grid's archive, say), or delete "
                f"{folder} to train this trial again from the start")
    status = records.status
    done = _is_done(status)
    started_with = binding_budget(folder, status)
    if started_with is not None and started_with != int(budget):
        return (f"it was started with a {started_with:,}-step budget (its schedules run over that), not {int(budget):,}: "
                f"rerun with --timesteps {started_with}, or use another --root for the new budget")
    if done and not has_checkpoint(folder) and not status.get("completed"):
        return ("it was paused at {:,} steps but its checkpoint.pt is gone (archived?): restore the checkpoint to continue; "
                "a fresh start would discard the recorded stage").format(int(status.get("num_timesteps") or 0))
    earlier = None if done else _earlier_result(status)
    if earlier and not has_checkpoint(folder):  # paused at a stage, then stopped later, archived: not leftovers
        attempt, steps = earlier
        stopped = int(status.get("num_timesteps") or 0)  # a failed attempt records none
        last = f"its last attempt: {status.get('status') or 'unrecorded'}{f' at {stopped:,} steps' if stopped else ''}"
        return (f"an earlier attempt {'paused' if attempt == 'paused' else 'finished'} it at {steps:,} steps ({last}) but its "
                "checkpoint.pt is gone (archived?): restore the checkpoint to continue; a fresh start would discard the "
                "recorded stage")
    if not has_checkpoint(folder) and (done or (folder / "model.zip").is_file()):  # not leftovers: a result
        held = "a model.zip" if (folder / "model.zip").is_file() else "a status.json recording a finished run"
        return (f"it holds {held} but no checkpoint, and its evaluations do not reach {int(budget):,} steps: a "
                f"fresh start would delete that result; move it away, or delete {folder} to train this trial again "
                "from the start")
    return None


# ----------------------------------------------------------------------------- weights and logs


def count_parameters(model_zip: str | Path) -> int | None:
    """Parameters of the policy in an SB3 ``model.zip``: tensor elements of ``policy.pth``
    (trainable and frozen alike), each storage counted once — SB3 >= 1.7 lists a shared features
    extractor three times (``features_extractor``, ``pi_``/``vf_features_extractor``).

    Only that member is read, at most :data:`hubrl.hub.MAX_MEMBER_BYTES` of it
    (:func:`hubrl.hub.read_policy_state`, ``weights_only=True``): the zip's ``data`` entry (which can
    hold pickled code) is never touched. An unreadable or hostile file gives None.
    """
    import torch as th

    from hubrl.hub import read_policy_state

    try:
        with zipfile.ZipFile(model_zip) as archive:
            state = read_policy_state(archive, model_zip)
    except (OSError, KeyError, EOFError, zipfile.BadZipFile, RuntimeError, ValueError):  # HubError is a ValueError
        return None
    if not isinstance(state, dict):
        return None
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    total = 0
    for tensor in state.values():
        if not isinstance(tensor, th.Tensor):
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            total += tensor.numel()
    return int(total)


def tensorboard_series(folders: Sequence[Path], keep: Callable[[str], bool]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag that ``keep`` accepts, from the event files under ``folders``, by step.

    Files are read in name order (SB3 numbers a run's sessions ``_1``, ``_2``, ...), so where a
    resumed session logs a step again its value wins over the interrupted session's.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[str, dict[int, float]] = {}
    for events in sorted(e for folder in folders for e in Path(folder).rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if keep(tag):
                points.setdefault(tag, {}).update({int(e.step): float(e.value) for e in acc.Scalars(tag)})
    series = {}
    for tag, by_step in sorted(points.items()):
        steps = np.array(sorted(by_step), dtype=np.int64)
        series[tag] = (steps, np.array([by_step[k] for k in steps], dtype=np.float64))
    return series


def tensorboard_scalars(folder: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """All ``tag`` points of the TensorBoard event files under ``folder`` (several runs = resumes), by step."""
    return tensorboard_series([folder], lambda t: t == tag).get(tag, (np.array([], dtype=np.int64), np.array([])))


# ----------------------------------------------------------------------------- trials read back


def final_score(point: dict[str, Any]) -> float:
    """Mean raw score of one evaluation point (its ``scores`` when recorded, else its ``mean``)."""
    scores = point.get("scores")
    return float(np.mean(scores)) if scores else float(point["mean"])


def attempt_ends(attempts: Sequence[dict[str, Any]]) -> list[int]:
    """The agent step count at which each attempt (oldest first) stopped.

    An attempt records it as ``num_timesteps``; the earlier attempts of grids made before
    ``status.json``'s ``history`` kept it do not, and their end is the start of the next attempt
    (``num_timesteps - steps``: each resumes from the checkpoint its predecessor saved on
    stopping), or else the sum of the ``steps`` so far.
    """
    known: list[int | None] = []  # from the recorded ends, last attempt first
    following: int | None = None  # where the next attempt started
    for attempt in reversed(attempts):
        recorded = attempt.get("num_timesteps")
        end = int(recorded) if recorded is not None else following
        known.append(end)
        following = None if end is None else end - int(attempt.get("steps") or 0)
    ends, total = [], 0
    for end, attempt in zip(reversed(known), attempts):
        total = end if end is not None else total + int(attempt.get("steps") or 0)
        ends.append(total)
    return ends


@dataclass
class TrialResult:
    """One trial folder of a grid, read back (at ``stage`` agent steps, see :func:`load_trials`)."""

    game: str
    method: str
    seed: int
    folder: Path
    steps: np.ndarray
    means: np.ndarray
    budget: int | None
    final: float | None = None
    hns: float | None = None
    auc: float | None = None
    status: dict[str, Any] = field(default_factory=dict)
    #: The trial as it stood at this many agent steps (None: as it stands): :attr:`attempts` leaves out the later ones.
    stage: int | None = None
    #: Agent steps per rollout (``n_steps × n_envs``): a pause at ``stage`` stops at the first rollout
    #: boundary at or after it, so an attempt that paused there ends up to one rollout past it (0: unknown).
    rollout: int = 0

    @property
    def finished(self) -> bool:
        """Reached the budget (any trial with evaluations counts when the budget is unknown)."""
        return bool(self.steps.size) and (self.budget is None or self.steps[-1] >= self.budget)

    @property
    def all_attempts(self) -> list[dict[str, Any]]:
        """Every attempt's record, oldest first: ``status.json``'s ``history``, then its last attempt."""
        return [*self.status.get("history", []), self.status] if self.status else []

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """The attempts behind this trial's figures (steps/s, time windows, peak memory, systems):
        all of them, or at a ``stage`` those that stopped by it (within one :attr:`rollout` past it),
        so that a stage's compute does not count the training done after the stage."""
        attempts = self.all_attempts
        last = self._last_step
        return attempts if last is None else [a for a, end in zip(attempts, attempt_ends(attempts)) if end <= last]

    @property
    def _last_step(self) -> int | None:
        """The last agent step of training that counts at the stage (None: no stage)."""
        return None if self.stage is None else self.stage + max(self.rollout - 1, 0)

    @property
    def steps_per_s(self) -> float | None:
        """Agent steps per wall-clock second over its :attr:`attempts` (env setup and evaluations included)."""
        steps = sum(a.get("steps") or 0 for a in self.attempts)
        seconds = sum(a.get("seconds") or 0 for a in self.attempts if a.get("steps"))
        return steps / seconds if steps and seconds else None

    @property
    def time_windows(self) -> list[tuple[float, float]]:
        """(start, end) in POSIX seconds of each attempt that trained: when it ran, so that speeds
        of trials can be compared only where they shared the machine (:func:`hubrl.tables.compute_table`)."""
        from datetime import datetime

        windows = []
        for attempt in self.attempts:
            if not attempt.get("steps") or not attempt.get("seconds") or not attempt.get("finished"):
                continue
            try:
                end = datetime.fromisoformat(str(attempt["finished"])).timestamp()
            except ValueError:
                continue
            windows.append((end - float(attempt["seconds"]), end))
        return windows

    @property
    def params(self) -> int | None:
        """Parameters of the saved policy: counted in ``model.zip``, else as the trial recorded them
        (a grid archived without its weights). Training does not change them: at a stage too."""
        if (self.folder / "model.zip").is_file():
            return count_parameters(self.folder / "model.zip")
        recorded = [a["params"] for a in self.all_attempts if a.get("params")]
        return int(recorded[-1]) if recorded else None

    @property
    def inference_steps_per_s(self) -> float | None:
        """Inference speed of the saved policy, as measured by the attempt that finished the trial
        (the same network at every stage: a stage reports it too once the trial has finished)."""
        rates = [a["inference_steps_per_s"] for a in self.all_attempts if a.get("inference_steps_per_s")]
        return float(rates[-1]) if rates else None

    @property
    def peak_rss_mb(self) -> float | None:
        peaks = [a["peak_rss_mb"] for a in self.attempts if a.get("peak_rss_mb") and a.get("status") != "skipped"]
        return max(peaks) if peaks else None

    @property
    def rollout_score(self) -> float | None:
        """Mean raw score of the last (up to 100) training games when the trial last stopped (by the
        stage), as the trial recorded it, else the last ``rollout/ep_rew_mean`` of its TensorBoard logs
        (if kept) up to the stage."""
        recorded = [a["rollout_score"] for a in self.attempts if a.get("rollout_score") is not None]
        if recorded:
            return float(recorded[-1])
        if (self.folder / "tb").is_dir():
            steps, values = tensorboard_scalars(self.folder / "tb", "rollout/ep_rew_mean")
            if self._last_step is not None:
                values = values[steps <= self._last_step]
            return float(values[-1]) if values.size else None
        return None


def _hns(game: str, score: float) -> float | None:
    from hubrl.envs.games import human_normalized_score

    try:
        return float(human_normalized_score(game, score))
    except KeyError:
        return None


class TrialUnreadable(ValueError):
    """A trial folder whose records cannot be read (corrupt, foreign or hostile files)."""


def _number_or_none(value: Any, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)):
        raise TrialUnreadable(f"{what} is {value!r}, not a number")


def _check_points(points: list[Any]) -> None:
    """Refuse evaluation points that are not what a hubrl run writes (objects with a numeric step
    and a numeric mean or a list of numeric scores)."""
    for point in points:
        if not isinstance(point, dict):
            raise TrialUnreadable(f"evaluations.json holds {type(point).__name__} points, not objects")
        if point.get("step") is None:
            raise TrialUnreadable("evaluations.json: a point has no step")
        _number_or_none(point["step"], "evaluations.json: a point's step")
        scores = point.get("scores")
        if scores is not None and (not isinstance(scores, list)
                                   or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in scores)):
            raise TrialUnreadable("evaluations.json: a point's scores are not a list of numbers")
        if not scores:
            _number_or_none(point.get("mean"), "evaluations.json: a point's mean")


def _check_trial(trial: TrialResult) -> None:
    """Refuse a trial whose records are not what a hubrl run writes, before any table reads them.

    Each attempt's counters in ``status.json`` are checked, the figures computed from them are
    computed once here, and a ``model.zip`` must be readable as weights: a damaged or hostile
    trial is then listed as skipped instead of failing the report.
    """
    history = trial.status.get("history", [])
    if not isinstance(history, list) or not all(isinstance(a, dict) for a in history):
        raise TrialUnreadable("status.json: history is not a list of attempts")
    for attempt in trial.all_attempts:
        for key in ("steps", "num_timesteps", "seconds", "peak_rss_mb", "params", "inference_steps_per_s"):
            _number_or_none(attempt.get(key), f"status.json: {key}")
        if attempt.get("system") is not None and not isinstance(attempt["system"], dict):
            raise TrialUnreadable("status.json: system is not an object")
    if not np.all(np.isfinite(trial.means)):
        raise TrialUnreadable("evaluations.json: scores are not finite")
    trial.steps_per_s, trial.peak_rss_mb, trial.inference_steps_per_s  # noqa: B018  (computed once: any error shows here)
    if (trial.folder / "model.zip").is_file() and count_parameters(trial.folder / "model.zip") is None:
        raise TrialUnreadable("model.zip is not a readable SB3 policy (damaged, foreign or hostile)")


def _rollout_steps(config: dict[str, Any]) -> int:
    """Agent steps per rollout of a trial's ``config.yaml`` (``n_steps × n_envs`` of its
    ``resolved_hyperparams``; 0 when they are not recorded as positive integers)."""
    hyperparams = config.get("resolved_hyperparams")
    if not isinstance(hyperparams, dict):
        return 0
    n_steps, n_envs = hyperparams.get("n_steps"), hyperparams.get("n_envs")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (n_steps, n_envs)):
        return 0
    return int(n_steps) * int(n_envs)


def evaluations_around(step: int, every: int) -> tuple[int, int]:
    """The evaluation steps of a run evaluated every ``every`` agent steps that are nearest below and
    above ``step`` (``(200_000, 300_000)`` for 250k every 100k; the first is 0 when none is before it),
    the stages a pause or a stage report can take instead of ``step``."""
    below = step // every * every
    return below, below + every


def points_at_stage(points: list[dict[str, Any]], stage: int, rollout: int) -> list[dict[str, Any]]:
    """A trial's evaluation points (sorted by step) as it stood at ``stage`` agent steps: those up
    to the stage and, when none is at the stage itself, the first within one rollout past it.

    A run paused at the stage records its evaluation there at the stage's step, but a run that
    ends at its budget evaluates at its final step, the end of the rollout that crossed the budget
    (1,000,448 for a 1M budget and rollouts of 1,024): that evaluation is the stage's too.
    ``rollout`` is ``n_steps × n_envs`` (0 when unknown: nothing past the stage counts).
    """
    kept = [p for p in points if p["step"] <= stage]
    if rollout > 0 and (not kept or kept[-1]["step"] < stage):
        kept += [p for p in points if stage < p["step"] < stage + rollout][:1]
    return kept


def load_trials(root: str | Path, budget: int | None = None, stage: int | None = None,
                skipped: dict[str, str] | None = None) -> list[TrialResult]:
    """Every trial folder under ``root`` that has at least one evaluation point.

    Game and seed come from ``config.yaml`` (the folder names otherwise); the method is the grid's
    label, i.e. the folder name (``hub-pathway-heads`` for ``hub-pathway:aggregation=heads``); the budget from
    ``budget``, else ``grid.json``, else the trial's configured ``timesteps``.

    ``stage`` reads the grid as it stood at that many agent steps: evaluation points after it are
    dropped (:func:`points_at_stage`: but for a run's final one, taken up to a rollout past its
    budget), a trial counts as finished once it was evaluated at ``stage``, and its compute figures
    (steps/s, time windows, peak memory) come from the attempts that stopped by ``stage``
    (:attr:`TrialResult.attempts`): a grid trained with a 1M budget and ``--pause-at 250k`` reports
    its 250k stage this way, from the same runs, after they went on to 500k.

    A trial whose files cannot be read (:func:`_check_trial`) is left out; ``skipped``, when
    given, receives its folder (relative to ``root``) and the reason.
    """
    root = Path(root)
    if budget is None:
        budget = read_grid(root).get("budget")
    if stage is not None:
        budget = int(stage)
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))):
        budget = None  # a damaged grid.json: each trial's own budget
    trials = []
    for folder in iter_trial_folders(root):
        try:
            trials.append(_load_trial(folder, budget, stage))
        except (TrialUnreadable, TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            if skipped is not None:
                skipped[str(folder.relative_to(root))] = (
                    str(exc) if isinstance(exc, TrialUnreadable) else f"unreadable records ({type(exc).__name__}: {exc})")
    return trials


def align_aucs(trials: Sequence[TrialResult]) -> dict[str, tuple[float, float] | None]:
    """Average every finished trial's AUC of a game over the same steps, where the game's finished
    trials were evaluated over different ranges (an arm given its own ``eval_freq`` or
    ``early_eval``): from the latest first evaluation to the earliest last one, each curve
    interpolated at those ends (:func:`hubrl.stats.learning_curve_auc`). A trial's own AUC, from
    its first evaluation to its last, would otherwise average an arm evaluated early over more of
    the low start of learning than the others, and their AUC differences would not be like for like.

    Ranges within a rollout of each other count as the same (the step a run stops at depends on its
    rollout). Unfinished trials keep their own AUC (they are in ``runs.csv`` only).

    :returns: ``{game: (start, end)}`` for each game whose AUCs were put on a common range, and
        ``{game: None}`` for one whose trials' ranges differ but share no span (one arm evaluated
        only after another's last evaluation, say): their own AUCs are kept, and they do not compare.
    """
    by_game: dict[str, list[TrialResult]] = {}
    for t in trials:
        if t.finished:
            by_game.setdefault(t.game, []).append(t)
    ranges: dict[str, tuple[float, float] | None] = {}
    for game, group in sorted(by_game.items()):
        tolerance = max(t.rollout for t in group)
        firsts, lasts = [float(t.steps[0]) for t in group], [float(t.steps[-1]) for t in group]
        start, end = max(firsts), min(lasts)
        if max(firsts) - min(firsts) <= tolerance and max(lasts) - min(lasts) <= tolerance:
            continue
        if start >= end:
            ranges[game] = None
            continue
        for t in group:
            t.auc = learning_curve_auc(t.steps, t.means, start, end)
        ranges[game] = (start, end)
    return ranges


def _load_trial(folder: Path, budget: int | None, stage: int | None = None) -> TrialResult:
    """One trial folder read back (its points at ``stage``); :class:`TrialUnreadable` (or a
    type error) when its records are damaged."""
    from hubrl.envs.games import display_name

    points = read_evaluations(folder, strict=True)
    _check_points(points)
    points = sorted(points, key=lambda p: p["step"])
    config = read_yaml_object(folder / "config.yaml") or {}
    rollout = _rollout_steps(config)
    if stage is not None:
        points = points_at_stage(points, stage, rollout)
    run = config.get("run", {})
    if not isinstance(run, dict):
        raise TrialUnreadable("config.yaml: run is not a mapping")
    _number_or_none(run.get("timesteps"), "config.yaml: timesteps")
    game = folder.parent.parent.name
    if run.get("env"):
        try:
            game = display_name(run["env"])
        except (ValueError, TypeError):
            pass
    trial = TrialResult(
        game=game, method=folder.parent.name, seed=int(run.get("seed", folder.name[1:])),
        folder=folder, steps=np.array([p["step"] for p in points], dtype=np.float64),
        means=np.array([final_score(p) for p in points], dtype=np.float64),
        budget=budget if budget is not None else run.get("timesteps"), status=read_status(folder),
        stage=stage, rollout=rollout,
    )
    _check_trial(trial)  # a status.json of the wrong shape, named field by field
    damaged = read_trial_records(folder).damaged.get("status.json")
    if damaged:  # unreadable, or no JSON object: read as {} above, it would pass for a trial without attempts
        raise TrialUnreadable(damaged)
    if points:
        trial.final = float(trial.means[-1])
        trial.hns = _hns(game, trial.final)
        trial.auc = learning_curve_auc(trial.steps, trial.means)
    return trial
