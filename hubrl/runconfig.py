"""Run settings as saved in a run folder, and resuming them: the saved run wins.

A run (a transfer or pretraining run folder, :mod:`hubrl.harness`) saves its resolved settings, a
dataclass such as :class:`hubrl.transfer.TransferConfig`, under ``run:`` in ``config.yaml``.
Resuming continues *that* run: :func:`resume_config` rebuilds the dataclass from the file and
lays over it only what the user asked for explicitly. A setting that would change what is being
trained (another game, method, seed, top-k ...) is refused, naming both values, before anything
is written; settings listed in the dataclass's ``RESUME_MAY_CHANGE`` (where it runs, where it
logs, the step budget) may differ. Everything here is generic over the dataclass's fields, so a
new setting is covered by adding the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import shlex
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from hubrl.errors import CheckpointError, UsageError
from hubrl.plaintypes import fits_type, type_name

__all__ = [
    "read_saved_config", "read_saved_run", "is_pretraining_run",
    "resume_conflicts", "check_resume", "resume_config", "flag_name", "check_device",
    "check_device_name", "check_finite", "check_pause_at", "tensorboard_name",
]

C = TypeVar("C")


def read_saved_config(config_path: str | Path) -> dict[str, Any]:
    """A run's whole ``config.yaml`` (``run``, ``resolved_hyperparams``, ...); a missing or corrupt
    file, or one without a ``run`` section, names itself."""
    path = Path(config_path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the run's settings are unknown, so it cannot be resumed "
                              f"(start a new run with another --out).") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested past the parser's depth
        raise CheckpointError(f"{path} is corrupt ({type(exc).__name__}): the run's settings are unknown, "
                              f"so it cannot be resumed: mend the file by hand if you know them (its "
                              f"resolved_hyperparams and run sections), or start a new run with another --out.") from exc
    run = data.get("run") if isinstance(data, dict) else None
    if not isinstance(run, dict):
        raise CheckpointError(f"{path} has no 'run' section: it was not written by a hubrl run.")
    return data


def read_saved_run(config_path: str | Path) -> dict[str, Any]:
    """The ``run`` section of a run's ``config.yaml``; a missing or corrupt file names itself."""
    return read_saved_config(config_path)["run"]


def is_pretraining_run(run: Mapping[str, Any] | None) -> bool:
    """Whether ``run`` (a saved ``run`` section) is hubrl-pretrain's: it names a ``game`` and no ``env``
    (a transfer run's), and exports its expert to a hub instead of writing a ``model.zip``."""
    return run is not None and isinstance(run.get("game"), str) and "env" not in run


def export_command(out: str | Path, games: list[str], algo: str = "ppo", hub: str | Path | None = None) -> str:
    """The ``python -m hubrl pretrain --export`` that exports the pretraining runs of ``games`` (all
    trained with ``algo``) kept in ``out``; ``hub``: where to, default the hub each run was started with."""
    return (f"python -m hubrl pretrain --export --out {shlex.quote(str(out))} --env {' '.join(map(shlex.quote, games))}"
            + ("" if algo.lower() == "ppo" else f" --algo {shlex.quote(algo.lower())}")
            + ("" if hub is None else f" --hub {shlex.quote(str(hub))}"))


def flag_name(name: str, flags: Mapping[str, str] | None = None) -> str:
    """The command-line flag of setting ``name``: ``flags[name]``, else ``--name-with-dashes``."""
    return (flags or {}).get(name) or "--" + name.replace("_", "-")


def _same(a: Any, b: Any) -> bool:
    """Equal as saved in YAML: tuples read back as lists, ``1`` equals ``1.0``."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


#: Settings that name a game: the same when they name the same game (``gopher``, ``Gopher``, ``ALE/Gopher-v5``).
GAME_FIELDS = frozenset({"env"})


def _same_setting(name: str, a: Any, b: Any) -> bool:
    """:func:`_same`, with game names compared as the games they resolve to."""
    if name in GAME_FIELDS and isinstance(a, str) and isinstance(b, str):
        from hubrl.envs import resolve_game

        try:
            return resolve_game(a) == resolve_game(b)
        except ValueError:
            pass  # an unknown name: compared as written (and refused where it is resolved)
    return _same(a, b)


#: The kinds of run folder, each told apart by a setting only it saves, and the command that resumes it:
#: the other command's folder given to ``--resume`` would otherwise read as settings of another hubrl version.
RUN_KINDS: Mapping[str, tuple[str, str]] = {
    "game": ("a pretraining run", "python -m hubrl pretrain --resume --out {parent} --env {game}"),
    "method": ("a transfer run", "python -m hubrl transfer --resume --out {folder}"),
}


def _saved_values(cls: type, saved: Mapping[str, Any], source: Path) -> dict[str, Any]:
    """``saved`` completed with the defaults of fields it predates; unknown keys are refused, and a
    run of the other command is named as such, with the command that resumes it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(saved) - set(fields))
    for key, (kind, command) in RUN_KINDS.items():
        if key in unknown:
            folder = source.parent
            resume = command.format(parent=shlex.quote(str(folder.parent)), folder=shlex.quote(str(folder)),
                                    game=shlex.quote(str(saved.get("game"))))
            raise UsageError(f"{folder} is {kind}: resume it with {resume}.")
    if unknown:
        raise CheckpointError(f"{source} has settings this version of hubrl does not know ({', '.join(unknown)}): "
                              f"resume the run with the version that started it.")
    hints = typing.get_type_hints(cls)
    for name, value in saved.items():  # a hand-edited value fails here, named, not later as a flag the user never gave
        if not fits_type(value, hints[name]):
            raise UsageError(f"{source}: the run's saved {name} is {value!r} ({type(value).__name__}), not "
                             f"{type_name(hints[name])}: mend that line of {source.name}, or start a new run with "
                             "another --out.")
    values = dict(saved)
    for name, f in fields.items():
        if name not in values:  # a run saved before the field existed ran with its default
            if f.default is not dataclasses.MISSING:
                values[name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                values[name] = f.default_factory()  # type: ignore[misc]
    return values


def resume_conflicts(
    cls: type, saved: Mapping[str, Any], wanted: Mapping[str, Any], source: Path,
    may_change: frozenset[str] | None = None,
) -> list[tuple[str, Any, Any]]:
    """``(field, wanted, saved)`` for every wanted value that would change the saved run (but the
    fields in ``may_change``, by default the class's ``RESUME_MAY_CHANGE``)."""
    if may_change is None:
        may_change = getattr(cls, "RESUME_MAY_CHANGE", frozenset())
    values = _saved_values(cls, saved, source)
    return [(name, value, values.get(name)) for name, value in wanted.items()
            if name not in may_change and not _same_setting(name, value, values.get(name))]


def _refuse(conflicts: list[tuple[str, Any, Any]], source: Path, flags: Mapping[str, str] | None) -> None:
    if conflicts:
        parts = "; ".join(f"{flag_name(n, flags)} {w!r} but the run has {s!r}" for n, w, s in conflicts)
        raise UsageError(f"Resuming {source.parent}: {parts} (saved in {source}). Drop the flag to continue the run as saved, "
                         f"or start a new run with another --out.")


def check_resume(cfg: Any, saved: Mapping[str, Any], source: Path, flags: Mapping[str, str] | None = None) -> None:
    """Refuse a resumed ``cfg`` (a full dataclass) that differs from the ``saved`` run it continues."""
    _refuse(resume_conflicts(type(cfg), saved, dataclasses.asdict(cfg), Path(source)), Path(source), flags)


def resume_config(cls: type[C], source: str | Path, given: Mapping[str, Any] | None = None,
                  flags: Mapping[str, str] | None = None) -> C:
    """The saved run of ``source`` (a ``config.yaml``) with the explicitly ``given`` settings on top.

    :param given: field -> value the user asked for (command-line flags given explicitly).
    :param flags: field -> flag name for messages (default ``--field-name``).
    :raises UsageError: when a given value contradicts the saved run (both values named).
    """
    source = Path(source)
    saved = read_saved_run(source)
    given = dict(given or {})
    _refuse(resume_conflicts(cls, saved, given, source), source, flags)
    saved_values = _saved_values(cls, saved, source)
    values = {**saved_values, **{k: v for k, v in given.items() if not (k in GAME_FIELDS and k in saved_values)}}
    try:
        return cls(**values)
    except TypeError as exc:
        raise CheckpointError(f"{source}: its run settings do not fit this version of hubrl ({exc}).") from exc


def check_device_name(text: str) -> str:
    """``text`` if it names a torch device (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...),
    whether or not this machine has it (what the command line checks when it parses: a command
    written for a GPU machine parses anywhere); else :class:`UsageError`."""
    if text == "auto":
        return text
    import torch as th

    try:
        th.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {text!r} is not a torch device: use auto, cpu, cuda, cuda:N or mps.") from None
    return text


def check_device(text: str, saved_in: str | Path | None = None) -> str:
    """``text`` if torch knows the device and this machine has it (``auto``, ``cpu``, ``cuda``,
    ``cuda:1``, ``mps`` ...); else :class:`UsageError`, in one line that says what to use instead.

    SB3 quietly runs on the CPU when ``cuda`` is asked for and no GPU is there (``get_device``),
    so a run that asked for a GPU would train for hours at CPU speed; an index past the last GPU
    would fail deep inside torch. Both are refused here, when a command starts, before anything is
    built. ``saved_in``: the ``config.yaml`` the device comes from (a resumed run), named in the message.
    """
    if check_device_name(text) == "auto":
        return text
    import torch as th

    device = th.device(text)
    name = f"--device {text!r}" + (f" (the run's, saved in {saved_in})" if saved_in else "")
    fix = "pass --device cpu or auto to continue the run here" if saved_in else "use --device cpu or auto"
    if device.type == "cuda":
        if not th.cuda.is_available():
            why = ("this torch is a CPU-only build" if th.version.cuda is None
                   else "torch sees no CUDA GPU (no driver, or CUDA_VISIBLE_DEVICES hides them)")
            raise UsageError(f"{name}: {why} (torch {th.__version__}); {fix}.")
        count = th.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"{name}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                             f"(cuda:0{f' .. cuda:{count - 1}' if count > 1 else ''}).")
    elif device.type != "cpu":
        backend = getattr(th.backends, device.type, None) if device.type == "mps" else getattr(th, device.type, None)
        available = getattr(backend, "is_available", None)
        if available is not None and not available():
            raise UsageError(f"{name}: torch has no {device.type} device on this machine; {fix}.")
    return text


def check_finite(cfg: Any, flags: Mapping[str, str] | None = None) -> None:
    """Refuse a float field of ``cfg`` that is inf or nan (a setting no run can use)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{flag_name(f.name, flags)} must be a finite number, got {value}.")


def tensorboard_name(run_folder: str | Path, tensorboard_log: str | Path | None, name: str) -> str:
    """The name SB3 gives a run's TensorBoard folder, ``<name>_N``: ``name`` in the run's own ``tb/``;
    under a ``--tensorboard-log`` that several runs share, one only this run folder has: its name
    (a grid trial's ``<game>/<arm>/s<seed>``) and a digest of its absolute path,
    ``alien-hub-pathway-ppo-s0-1f3a9c2e``. SB3 resumes into the latest ``<name>_N``, so a name two
    runs shared (``<game>-<method>``, or two seeds' ``s0``) would send one's resume into the other's
    folder and mix their curves."""
    if not tensorboard_log:
        return name
    folder = Path(os.path.abspath(run_folder))
    readable = "-".join(folder.parts[-3:]) if re.fullmatch(r"s\d+", folder.name) else folder.name
    return f"{readable}-{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}"


def check_pause_at(pause_at: int | None, budget: int, flags: Mapping[str, str] | None = None) -> None:
    """Refuse a ``pause_at`` (``--pause-at``) that is not a positive step count or lies past the run's ``budget``.

    A pause past the budget never comes: the run trains to its budget and finishes, its schedules
    (learning rate, clip range) run out over that budget, which a later ``--resume`` with a larger
    one cannot undo. Whoever typed the pause meant another number or a larger budget, so it is
    refused before anything trains. A pause at the budget is where the run ends anyway: it finishes.
    """
    if pause_at is None:
        return
    if pause_at < 1:
        raise UsageError(f"--pause-at must be a positive number of agent steps, got {pause_at}.")
    if pause_at > budget:
        timesteps = flag_name("timesteps", flags)
        raise UsageError(f"--pause-at {pause_at:,} is past the budget, {timesteps} {budget:,}: the run would train to its "
                         f"budget and finish without pausing. Give a --pause-at below {budget:,} to pause on the way, or a "
                         f"larger {timesteps} to train further (the schedules follow {timesteps}).")
