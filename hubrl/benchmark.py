"""Benchmark grid: every game × method × seed trained to one step budget, resumably, in parallel.

Each trial is one :func:`hubrl.transfer.run_transfer` call in its own folder
``<root>/<Game>/<method>/s<seed>/`` (the usual run folder: ``model.zip``, ``config.yaml``,
``checkpoint.pt``, ``evaluations.json``, ``tb/``) plus ``status.json``, the record of its last
attempt (the layout and its readers are :mod:`hubrl.grid`, shared with the report). Rerunning the
same command continues the grid where it stopped, by the state of each trial folder
(:func:`hubrl.grid.trial_state`):

* **finished** (``evaluations.json`` whose last point reached the budget, and ``model.zip`` or a
  ``status.json`` recording the completed run): skipped. A grid archived without its weights
  (``model.zip``, ``checkpoint.pt`` deleted to keep a repository small) therefore still counts
  as done, and the report reads the parameter count and inference speed each trial recorded;
* **paused** (``--pause-at``: its ``status.json`` records a pause at or past this call's
  ``pause_at``, and a ``checkpoint.pt``): skipped until a later stage is asked for;
* **started** (a ``checkpoint.pt``): resumed from the checkpoint, with the same curves;
* **refused**: a finished or paused trial whose checkpoint is gone (or one an earlier attempt
  paused, then a later one was interrupted or failed) is never retrained or deleted: the grid says
  why (``trials.jsonl``, the log, exit code 1) and leaves its folder as it is. A grid has one
  budget: a launch with a budget other than the one the grid's started trials run their schedules
  over, this launch's or any other arm's, game's or seed's in the root, is refused as a whole
  before anything is written (one line, exit code 2), so ``grid.json`` keeps the budget the report
  reads; so is a launch whose grid-wide settings (``--eval-episodes``, ``--set``) differ from those
  ``grid.json`` records while trials it does not train were started with them and would be given them (an
  arm's own ``METHOD:KEY=VALUE`` options may differ), and one whose hub (``--hub``, ``--sources``)
  holds other experts than a started trial's (a hub moved elsewhere, holding the same experts, is taken);
* **fresh** otherwise: started (leftovers of an attempt that failed before its first checkpoint are
  cleared first).

**Stages.** ``--timesteps 1M --pause-at 250k`` trains every trial with schedules over 1M and pauses
it at 250k; the same command with ``--pause-at 500k`` (or none) continues each trial from its
checkpoint. Evaluations at the pause points exist in every trial, so the report can read the grid
at each stage (``benchmark.py report --stages 250k 500k 1M``).

A failing trial never stops the grid: its exception (message and the tail of the traceback) goes to
its ``status.json`` and to ``<root>/trials.jsonl``, one JSON line per trial and attempt, along with
the wall time, agent steps per second, peak resident memory (``resource.getrusage``) and the
system it ran on (:func:`hubrl.provenance.system_info`: commit, CPU, package versions; earlier
attempts keep theirs in ``history``). The next rerun retries it. ``<root>/grid.json`` records the
grid, the code commit and the machine that launched it: every game, arm and seed launched into the
root (each launch adds its own, so ``--continue`` continues them all), the budget, the settings and
the last launch's ``pause_at``.

Where trials run:

* ``workers=0``: in this process, one after another (debugging; peak memory is then the
  process's high-water mark so far, not the trial's: ``rss_isolated`` is false);
* ``workers=1`` (default) .. N: a pool of N spawned processes, each trial in a fresh process
  (``max_tasks_per_child=1``), so peak memory is the trial's own and a crash costs one trial;
  torch gets ``cpus // N`` threads per worker unless ``threads`` says otherwise (the CPUs this
  process may run on: its affinity mask, which ``taskset``, Slurm or a container's cpuset narrow);
* ``ray_address`` (``"auto"``, ``"ray://host:10001"`` ...): each trial is a Ray task asking for
  ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs, in a fresh worker process (``max_calls=1``).
  The grid root must be on a file system that every node sees. Needs ``pip install "hubrl[ray]"``.

**Method variants.** A grid method is ``NAME`` or ``NAME:KEY=VALUE[,KEY=VALUE]`` with
:class:`~hubrl.transfer.TransferConfig` fields, e.g. ``hub-pathway:aggregation=heads``,
``zoo-tuning:lite`` (a bare key means ``true``) or ``finetune:source=seaquest-ppo``; its folder
and its name in the report are a label such as ``hub-pathway-heads`` or ``zoo-tuning-lite``, or
the one given before ``=``: ``hp-2026=hub-pathway`` runs hub-pathway's current defaults as the arm
``hp-2026``, beside older ``hub-pathway`` trials of the same grid.
A bare ``finetune`` in a grid of real trials becomes one variant per hub expert (single-source
fine-tuning from each source), unless a ``source`` setting names one.

The trial function is a plain top-level function taking a plain ``dict`` (the *spec*), so that both
pools can pickle it by reference; :func:`run_trial` is the real one and tests inject fakes.
This module imports only the standard library and numpy (:mod:`hubrl.grid`) at import time: torch
loads inside the trials.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from hubrl.errors import CheckpointError, GridError, UsageError
from hubrl.grid import (
    binding_budget,
    evaluations_around,
    grid_json_damage,
    has_checkpoint,
    iter_trial_folders,
    read_grid,
    read_status,
    read_trial_records,
    refusal_reason,
    trial_folder,
    trial_state,
)
from hubrl.locks import LockHeld, exclusive_lock
from hubrl.provenance import git_commit, machine_info
from hubrl.runconfig import check_pause_at, flag_name
from hubrl.trial import (
    TrialFn,
    TrialSpec,
    attempt_summary,
    execute_trial,
    make_record,
    now,
    run_trial,
    trial_config,
    trial_settings,
    write_json,
)
from hubrl.trial_runners import run_in_pool, run_in_process, run_on_ray
from hubrl.units import format_steps

__all__ = [
    "GridError",
    "TrialSpec",
    "GridSummary",
    "make_specs",
    "parse_method",
    "run_trial",  # hubrl.trial's, the grid's default trial function
    "trial_settings",
    "execute_trial",
    "run_grid",
]


# ----------------------------------------------------------------------------- trials


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_method(token: str) -> tuple[str, str, dict[str, Any]]:
    """``[LABEL=]NAME[:KEY=VALUE,...]`` -> ``(label, method, overrides)``.

    ``"hub-pathway:aggregation=heads"`` -> ``("hub-pathway-heads", "hub-pathway", {"aggregation": "heads"})``;
    ``"zoo-tuning:lite"`` -> ``("zoo-tuning-lite", "zoo-tuning", {"lite": True})``;
    ``"hp-2026=hub-pathway"`` -> ``("hp-2026", "hub-pathway", {})``: an explicit label names the arm
    (its folder and report row), e.g. to run a method's new defaults beside its old trials in a grid.
    """
    head, _, options = token.partition(":")
    custom, has_label, method = head.rpartition("=")
    if has_label and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", custom.strip()):
        raise GridError(f"Method label {custom!r} in {token!r} must be a folder name: letters, digits, '.', '_' or '-'.")
    method = method.strip()
    if not method:
        raise GridError(f"{token!r} names no method: write [LABEL=]NAME[:KEY=VALUE,...], e.g. hub-pathway:top_k=2.")
    overrides: dict[str, Any] = {}
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, sep, value = item.partition("=")
        if not key.strip():
            raise GridError(f"The option {item!r} in {token!r} has no name: write KEY=VALUE, e.g. {method}:top_k=2.")
        overrides[key.strip().replace("-", "_")] = _parse_value(value.strip()) if sep else True
    if has_label:
        return custom.strip(), method, overrides
    parts = [method] + [key if value is True else str(value) for key, value in overrides.items() if value is not False]
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))
    return label, method, overrides


def make_specs(
    root: str | Path,
    games: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    budget: int,
    settings: dict[str, Any] | None = None,
    threads: int | None = None,
    pause_at: int | None = None,
) -> list[TrialSpec]:
    """One spec per trial, seed-major (all of seed 0 first, so a stopped grid has whole seeds).

    :raises GridError: when two arms get the same label (``hub-pathway:top_k=2`` and
        ``hub-pathway:noise=2`` are both ``hub-pathway-2``): their trials would share one folder, the
        second taking the first's results as its own.
    """
    arms: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for token in methods:
        label, method, overrides = parse_method(token)
        first = arms.setdefault(label, (token, method, overrides))
        if first[1:] != (method, overrides):
            raise GridError(f"{first[0]!r} and {token!r} are both the arm {label!r}, whose trials would share one folder: "
                            f"give one its own label, e.g. {label}-b={token}. Nothing was written.")
    specs = []
    for seed in seeds:
        for game in games:
            for token in methods:
                label, method, overrides = parse_method(token)
                specs.append(
                    {
                        "trial": f"{game}/{label}/s{int(seed)}",
                        "game": game,
                        "method": label,
                        "base_method": method,
                        "overrides": overrides,
                        "seed": int(seed),
                        "budget": int(budget),
                        "folder": str(trial_folder(root, game, label, seed)),
                        "settings": dict(settings or {}),
                        "threads": threads,
                        "pause_at": pause_at,
                    }
                )
    return specs


# ----------------------------------------------------------------------------- the grid


@dataclass
class GridSummary:
    """What one :func:`run_grid` call did: a record per trial (skipped ones included)."""

    root: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    #: The signal that stopped the grid before its last trial (Ctrl-C, SIGTERM, a hang-up); None when none did.
    stopped_by: int | None = None

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Trials that failed, or that the grid refused to train (their ``error`` says why)."""
        return [r for r in self.records if r["status"] in ("failed", "refused")]

    def __str__(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in ("ok", "paused", "skipped", "failed", "refused", "interrupted")
                 if self.count(s)]
        return f"{len(self.records)} trials: {', '.join(parts) or 'none'}"


def _game_names(games: Sequence[str]) -> list[str]:
    """The display names of ``games`` (``Alien``), each game once however it was spelled: ``Alien alien``
    would be two trials of one folder, trained at once by two workers."""
    from hubrl.envs.games import display_name, resolve_games

    try:
        return [display_name(game) for game in resolve_games(games)]
    except ValueError as exc:
        raise GridError(str(exc)) from None


def _validate(games: Sequence[str], methods: Sequence[str], settings: dict[str, Any], check_methods: bool) -> list[str]:
    """Resolve game names to display names; check methods and settings against hubrl.transfer."""
    from dataclasses import fields

    from hubrl.transfer import METHODS, TransferConfig

    if not games or not methods:
        raise GridError("A grid needs at least one game and one method.")
    names = _game_names(games)
    parsed = [parse_method(m) for m in methods]
    labels = [label for label, _, _ in parsed]
    clashes = sorted({label for label in labels if labels.count(label) > 1})
    if clashes:
        raise GridError(f"Two methods share the label {', '.join(clashes)}: name one with LABEL=METHOD:... .")
    if check_methods:
        unknown = [m for _, m, _ in parsed if m not in METHODS]
        if unknown:
            raise GridError(f"Unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}.")
    reserved = {"env", "method", "seed", "timesteps", "out"}
    known = {f.name for f in fields(TransferConfig)} - reserved
    bad = sorted((set(settings) | {k for _, _, o in parsed for k in o}) - known)
    if bad:
        raise GridError(f"Unknown transfer setting(s) {', '.join(bad)}: the grid sets env/method/seed/timesteps/out itself; "
                        f"others are {', '.join(sorted(known))}.")
    _check_setting_types(settings)  # before anything reads them: the hub of finetune's arms, each arm's config
    return names


def _check_setting_types(values: dict[str, Any], token: str | None = None) -> None:
    """Refuse a setting whose value is not of its :class:`~hubrl.transfer.TransferConfig` field's type
    (``--set hyperparams=5``, ``--set sources=a.zip``, ``hub-pathway:hub=5``), as a run's saved
    ``config.yaml`` is checked (:func:`hubrl.plaintypes.fits_type`), in one line naming it and what
    to write: the flags' parsers never give one, and each trial would fail on it as it starts.
    ``token``: the method whose options ``values`` are; None: the grid's settings, of which only
    ``--set`` (any YAML) can give another type."""
    import typing

    from hubrl.plaintypes import fits_type, type_name
    from hubrl.transfer import TransferConfig

    hints = typing.get_type_hints(TransferConfig)
    for name, value in values.items():
        hint = hints[name]
        if fits_type(value, hint):
            continue
        kinds = [k for k in typing.get_args(hint) or (hint,) if k is not type(None)]
        if token is not None and typing.get_origin(hint) in (list, dict):  # METHOD:KEY=VALUE gives one plain value
            instead = f"name a hub folder instead ({parse_method(token)[1]}:hub=DIR), or " if name == "sources" else ""
            shape = "[a, b]" if typing.get_origin(hint) is list else "{n_steps: 128}"
            fix = (f"a method's option takes one plain value, not a {'list' if shape[0] == '[' else 'mapping'}: {instead}"
                   f"give it to every arm with --set {name}={shape}")
        elif typing.get_origin(hint) is list:
            fix = f"write a YAML list, e.g. --set {name}=[{value if isinstance(value, str) else 'a, b'}]"
        elif typing.get_origin(hint) is dict:
            fix = f"write a YAML mapping, e.g. --set {name}={{n_steps: 128}}"
        elif str in kinds and token is None and isinstance(value, (int, float)):  # YAML read the text as a number
            fix = f"quote it to keep it text, e.g. --set {name}=\"'{value}'\""
        else:
            kind = kinds[0] if len(kinds) == 1 else hint
            fix = "give " + {bool: "true or false", int: "a whole number", float: "a number"}.get(kind, f"a {type_name(kind)}")
        given = f"--set {name}" if token is None else name  # an option: the caller names its method
        raise GridError(f"{given}: {value!r} ({type(value).__name__}) is not {type_name(hint)}: {fix}.")


def _refuse_settings_no_arm_reads(methods: Sequence[str], settings: dict[str, Any]) -> None:
    """Refuse a grid-wide setting (``--hub``, ``--set top_k=2``) that only methods absent from the grid read
    (:data:`hubrl.transfer.METHOD_OPTIONS`, :data:`~hubrl.transfer.METHOD_ONLY_SETTINGS`): every trial would
    run without it, though the grid records it as asked."""
    from hubrl.transfer import METHOD_ONLY_SETTINGS, METHOD_OPTIONS, TransferConfig

    present = {parse_method(token)[1] for token in methods}
    for name in sorted(settings):
        readers = METHOD_OPTIONS.get(name) or METHOD_ONLY_SETTINGS.get(name)
        if readers and not present & set(readers):
            flag = flag_name(name, TransferConfig.FLAGS)
            raise GridError(f"{name} ({flag}) is read only by --method {' or '.join(readers)}, and the grid has no such "
                            f"arm (its methods: {', '.join(sorted(present))}): drop it, or add the method.")


def _validate_trial_configs(games: Sequence[str], methods: Sequence[str], settings: dict[str, Any], budget: int,
                            pause_at: int | None = None) -> None:
    """Check every method's transfer config up front (``--set`` values included), so that a bad
    value stops the grid at once instead of failing each trial when it starts.

    A ``pause_at`` short of the budget must be a multiple of each arm's ``eval_freq``: the stage's
    report reads the evaluation at the stage's step, which the trials only make on that grid.
    """
    import dataclasses

    from hubrl.agents.presets import check_hyperparams
    from hubrl.harness import check_n_envs_given_once, resolve_run_hyperparams
    from hubrl.hub import HubError, resolve_hub
    from hubrl.methods import HUB_METHODS, check_hub_serves
    from hubrl.transfer import TransferConfig, refuse_options_of_other_methods, validate_config

    hubs: dict[tuple[Any, ...], Any] = {}  # resolved once per --hub / --sources: a trial's overrides may name another
    for token in methods:
        label, method, overrides = parse_method(token)
        try:
            refuse_options_of_other_methods(method, overrides)  # a method's own options; --set applies to all
            cfg = TransferConfig(env=games[0], method=method, seed=0, timesteps=budget,
                                 **{**trial_settings(method, settings), **overrides})
            try:
                validate_config(cfg)  # its messages name each option's flag: --top-k must be a whole number ...
            except TypeError:  # ... but an option of another type that it only compares (noise_floor=x) fails here
                _check_setting_types(overrides, token)
                raise
            _check_setting_types(overrides, token)  # one it does not read: hub-pathway:hub=5
            # what --hyperparams and --n-envs check as they parse (and the trial as it starts), for --set values too
            check_hyperparams(cfg.hyperparams, cfg.algo, where="hyperparams (--hyperparams or --set hyperparams)")
            if cfg.n_envs is not None:
                check_hyperparams({"n_envs": cfg.n_envs}, cfg.algo, where="--n-envs (or --set n_envs)")
            check_n_envs_given_once(cfg)  # as a new trial's run refuses it
            resolve_run_hyperparams(dataclasses.replace(cfg))  # the rest of the trial's check: policy_kwargs
            _check_stage_is_evaluated(pause_at, budget, cfg.eval_freq)
            if method in HUB_METHODS:
                key = (cfg.hub, tuple(cfg.sources))
                if key not in hubs:
                    hubs[key] = resolve_hub(cfg.hub, cfg.sources)
                check_hub_serves(cfg, hubs[key])
        except (UsageError, HubError, TypeError, ValueError) as exc:
            raise GridError(f"{label}: {exc}") from None


def _check_stage_is_evaluated(pause_at: int | None, budget: int, eval_freq: int) -> None:
    """Refuse a pause between evaluations: a stage paused at 250k with evaluations every 100k has
    none at 250k, so its report would have no score there (the last one is 200k's)."""
    if pause_at is None or pause_at >= budget or pause_at % eval_freq == 0:
        return
    divisor, around = math.gcd(pause_at, eval_freq), evaluations_around(pause_at, eval_freq)
    before = f"the last one before it is at {format_steps(around[0])}" if around[0] else "there is none before it"
    stages = " or ".join(format_steps(step) for step in around if 0 < step < budget)
    raise UsageError(f"--pause-at {format_steps(pause_at)} is not a multiple of --eval-freq {format_steps(eval_freq)}: "
                     f"the stage would have no evaluation at {format_steps(pause_at)} to report ({before}). Give "
                     f"--eval-freq {format_steps(divisor)} (it divides both; a grid keeps the --eval-freq it started "
                     f"with){f', or --pause-at {stages}' if stages else ''}.")


def _expand_finetune(methods: Sequence[str], settings: dict[str, Any]) -> list[str]:
    """A bare ``finetune`` (no ``source``) -> ``finetune:source=<expert>`` for every expert of the hub."""
    if "finetune" not in methods or "source" in settings:
        return list(methods)
    from hubrl.hub import resolve_hub

    names = resolve_hub(settings.get("hub"), settings.get("sources") or []).names
    out: list[str] = []
    for token in methods:
        out.extend([f"finetune:source={name}" for name in names] if token == "finetune" else [token])
    return list(dict.fromkeys(out))


def _usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, which ``taskset``, Slurm and a cgroup
    cpuset (``docker --cpuset-cpus``) narrow, where the platform tells it; else the machine's count.
    The pool's default threads divide these: threads for cores the process may not use would share
    its cores and stall (:mod:`hubrl.runtime`)."""
    count = getattr(os, "process_cpu_count", None)  # Python 3.13+: the affinity mask's size
    if count is not None:
        return count() or 1
    if hasattr(os, "sched_getaffinity"):
        try:
            return len(os.sched_getaffinity(0)) or 1
        except OSError:
            pass
    return os.cpu_count() or 1


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def _holding_grid_lock(run: Callable[..., GridSummary]) -> Callable[..., GridSummary]:
    """Run a grid only while holding ``<root>/.lock``: two runners on one root would train the
    same trials twice into the same folders, so a second one is refused, naming the first. A
    launch refused before it wrote anything into a root it created removes the lock and the root."""

    @functools.wraps(run)
    def locked(root: str | Path, *args: Any, **kwargs: Any) -> GridSummary:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise GridError(f"--root {root} is a file, not a grid folder: choose a folder.")
        created = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        try:
            with exclusive_lock(root / ".lock") as lock:
                try:
                    return run(root, *args, **kwargs)
                finally:
                    if created and [p.name for p in root.iterdir()] == [lock.name]:  # refused before writing anything
                        lock.unlink()  # while still held: no second runner can take the lock of a folder going away
        except LockHeld as exc:
            raise GridError(f"Another runner holds the grid {root} ({exc.holder or 'pid unknown'}; lock {exc.path}): "
                            f"wait for it to finish, or stop it, then rerun.") from None
        finally:
            if created and root.is_dir() and not any(root.iterdir()):
                root.rmdir()  # a refused launch leaves no trace, not even the folder it made

    return locked


def _refuse_another_budget(root: Path, specs: Sequence[dict[str, Any]], budget: int) -> None:
    """A grid has one budget: refuse, before anything is written, a launch whose budget differs from
    the one the grid's started trials run their schedules over: this launch's and every other trial
    folder of the root (the arms, games and seeds this launch does not name: a new arm with another
    budget would otherwise make ``grid.json`` record it, and the report would read every earlier
    trial as unfinished)."""
    folders = dict.fromkeys([Path(spec["folder"]) for spec in specs] + list(iter_trial_folders(root)))
    conflicts = [(folder, started) for folder in folders
                 if (started := binding_budget(folder)) is not None and started != int(budget)]
    if conflicts:
        folder, started = conflicts[0]
        raise GridError(f"{len(conflicts)} trial(s) of {root} were started with another budget, e.g. "
                        f"{folder.relative_to(root)} with {started:,} steps (its schedules run over it), not "
                        f"{int(budget):,}, and a grid has one budget, at which its report reads every trial: rerun "
                        f"with --timesteps {started}, or use another --root for the new budget. Nothing was written.")


def _started_elsewhere(root: Path, specs: Sequence[dict[str, Any]]) -> list[Path]:
    """The trial folders of the grid in ``root`` that this launch does not train (other arms, games or
    seeds) and that hold a started trial: a checkpoint, or a budget its records bind it to."""
    ours = {Path(spec["folder"]) for spec in specs}
    return [folder for folder in iter_trial_folders(root)
            if folder not in ours and (has_checkpoint(folder) or binding_budget(folder) is not None)]


def _recorded_arms(recorded: dict[str, Any]) -> dict[str, str]:
    """The arms a ``grid.json`` (read as ``recorded``) lists: label -> ``[LABEL=]NAME[:KEY=VALUE,...]``. One that
    does not parse (hand-edited) is left out: ``--continue`` would stop on it."""
    tokens = recorded.get("methods")
    arms: dict[str, str] = {}
    for token in tokens if isinstance(tokens, list) else []:
        try:
            if isinstance(token, str):
                arms[parse_method(token)[0]] = token
        except GridError:
            continue
    return arms


def _method_reads(method: str, name: str) -> bool:
    """Whether a trial of ``method`` reads the setting ``name``: all but the options and settings only other
    methods take (:data:`~hubrl.transfer.METHOD_OPTIONS`, :data:`~hubrl.transfer.METHOD_ONLY_SETTINGS`)."""
    from hubrl.transfer import METHOD_ONLY_SETTINGS, METHOD_OPTIONS

    return all(method in table.get(name, (method,)) for table in (METHOD_OPTIONS, METHOD_ONLY_SETTINGS))


def _given_to(method: str | None, name: str) -> bool:
    """Whether ``--continue`` gives a trial of ``method`` the grid-wide setting ``name``: all but those only
    other methods take (:func:`~hubrl.trial.trial_settings`). It then compares it on its resume, even one
    its method does not read (scratch's ``top_k``): a grid-wide ``--set top_k=2`` beside started scratch
    trials would make their resumes refuse ``--continue``. An unknown method (None) is given every one."""
    return method is None or name in trial_settings(method, {name: None})


def _started_methods(root: Path, folders: Sequence[Path]) -> dict[Path, str | None]:
    """The method each trial of ``folders`` runs: its ``config.yaml``'s, else that of its arm (the folder's
    label) in ``grid.json``; None where neither tells (damaged, or an arm no longer listed)."""
    from hubrl.runconfig import read_saved_run

    arms = _recorded_arms(read_grid(root))
    methods: dict[Path, str | None] = {}
    for folder in folders:
        try:
            method = read_saved_run(folder / "config.yaml").get("method")
        except (CheckpointError, UsageError, OSError):
            method = None
        label = folder.parent.name
        methods[folder] = method if isinstance(method, str) else parse_method(arms[label])[1] if label in arms else None
    return methods


def _refuse_other_grid_settings(root: Path, specs: Sequence[dict[str, Any]], methods: Sequence[str],
                                settings: dict[str, Any], game: str, budget: int) -> None:
    """Refuse, before anything is written, a launch whose grid-wide settings differ from those
    ``grid.json`` records while trials this launch does not train were started with them
    (``--method new=scratch --eval-episodes 10`` beside arms evaluated on 5 games): the new trials'
    results would not compare with theirs, and ``--continue``, which gives every arm of the grid
    ``grid.json``'s settings, would give the earlier arms settings their resumes refuse.

    Compared as a resume compares a trial's settings (:func:`_refuse_changed_settings`: those a resume
    may change, such as the device, may differ; ``n_envs`` resolved), for each arm of this launch on
    what its method reads, but for its own ``METHOD:KEY=VALUE`` options, which differ between arms by
    design, and only on what ``--continue`` would give the started trials too (:func:`_started_methods`,
    :func:`_given_to`): ``--set lite=true`` for a new zoo-tuning arm beside started scratch trials alone
    changes none of them (``--continue`` gives them no ``lite``), but ``--set top_k=2`` is refused there,
    since scratch's resumes would refuse the top-k ``--continue`` then gives them. The
    hub (``--hub``, ``--sources``), which a resume may move, is compared by its experts instead
    (:func:`_refuse_other_experts`). A ``grid.json`` that is missing, damaged or not of this version
    leaves the check to the trials' own (:func:`_refuse_changed_settings`)."""
    import dataclasses

    from hubrl.harness import resolve_run_hyperparams
    from hubrl.runconfig import resume_conflicts
    from hubrl.transfer import TransferConfig

    recorded = read_grid(root).get("settings")
    if grid_json_damage(root) or not isinstance(recorded, dict):
        return
    elsewhere = _started_elsewhere(root, specs)
    if not elsewhere:
        return  # nothing started but what this launch trains: the grid takes this launch's settings
    started = _started_methods(root, elsewhere)
    for token in methods:
        label, method, overrides = parse_method(token)
        compared = []
        for values in (recorded, settings):
            try:
                cfg = TransferConfig(env=game, method=method, seed=0, timesteps=int(budget),
                                     **{**trial_settings(method, values), **overrides})
                resolve_run_hyperparams(cfg)  # n_envs None -> the preset's, as a trial's own resume resolves it
            except (TypeError, ValueError, UsageError):  # a grid.json of another version or hand-edited: not comparable
                return
            compared.append({name: value for name, value in dataclasses.asdict(cfg).items()
                             if name not in overrides and _method_reads(cfg.method, name)
                             and any(_given_to(m, name) for m in started.values())})
        try:
            conflicts = resume_conflicts(TransferConfig, compared[0], compared[1], root / "grid.json")
        except (CheckpointError, UsageError):
            return
        if conflicts:
            parts = "; ".join(f"{flag_name(n, TransferConfig.FLAGS)} {w!r} where the grid has {v!r}" for n, w, v in conflicts)
            name, wanted, _ = conflicts[0]
            example = next(folder for folder, m in started.items() if _given_to(m, name)).relative_to(root)
            arm = token if "=" in token.partition(":")[0] else f"{label}={token}"  # labelled: its folder stays
            option = (f", e.g. {arm}{',' if ':' in token else ':'}{name}={wanted}"
                      if isinstance(wanted, (bool, int, float, str)) else "")  # a list or mapping is --set's only
            raise GridError(f"{label}: this launch's grid-wide settings differ from those of the grid {root} ({parts}; "
                            f"{root / 'grid.json'} records them), which trials this launch does not train were started "
                            f"with, e.g. {example}: their results would not compare. Give the "
                            f"grid's settings (an arm may have its own as METHOD:KEY=VALUE{option}), or use another "
                            "--root for the new ones. Nothing was written.")


def _merged_grid(root: Path, games: Sequence[str], methods: Sequence[str], seeds: Sequence[int],
                 settings: dict[str, Any]) -> dict[str, Any]:
    """What ``grid.json`` records of the grid after this launch: the union of the games, arms and seeds
    it recorded and this launch's (order kept; an arm given anew, by its label, takes this launch's
    definition), so that ``--continue`` continues every arm launched into the root, not only the last
    launch's; and this launch's settings, with those it recorded that none of this launch's arms
    reads but one of the grid's does (a new scratch arm keeps the grid's ``--hub`` for its hub arms).
    A missing or damaged ``grid.json`` records this launch alone."""
    recorded = read_grid(root)

    def listed(key: str, kind: type) -> list[Any]:
        values = recorded.get(key)
        return [v for v in values if isinstance(v, kind) and not isinstance(v, bool)] if isinstance(values, list) else []

    arms = _recorded_arms(recorded)
    arms.update({parse_method(token)[0]: token for token in methods})
    merged = {"games": list(dict.fromkeys([*listed("games", str), *games])), "methods": list(arms.values()),
              "seeds": list(dict.fromkeys([*listed("seeds", int), *(int(s) for s in seeds)])), "settings": dict(settings)}
    kept = recorded.get("settings")
    extra = {k: v for k, v in kept.items() if k not in settings} if isinstance(kept, dict) else {}
    if extra:
        from hubrl.transfer import METHOD_ONLY_SETTINGS, METHOD_OPTIONS

        launched = {parse_method(token)[1] for token in methods}
        grid = {parse_method(token)[1] for token in merged["methods"]}
        for name, value in extra.items():
            readers = set(METHOD_OPTIONS.get(name) or METHOD_ONLY_SETTINGS.get(name) or ())
            if readers and not readers & launched and readers & grid:
                merged["settings"][name] = value
    return merged


def _is_started(folder: Path) -> bool:
    """Whether ``folder`` holds a trial a launch would continue or skip rather than start afresh: a
    checkpoint, or a record of a finished or paused run (archived without its checkpoint)."""
    return has_checkpoint(folder) or read_status(folder).get("status") in ("ok", "paused")


def _refuse_changed_settings(root: Path, specs: Sequence[dict[str, Any]]) -> None:
    """Refuse, before anything is written, a launch whose settings would change a started trial
    (``--n-envs 2`` for trials started with 1): each trial would otherwise fail on its own resume
    check, one by one, with advice meant for a single run (:func:`hubrl.runconfig.resume_conflicts`).
    A finished or paused trial is checked too, archived without its checkpoint included: the launch
    would skip it as done and report its results as this launch's arm."""
    import dataclasses

    from hubrl.harness import resolve_run_hyperparams
    from hubrl.runconfig import read_saved_run, resume_conflicts
    from hubrl.transfer import METHOD_OPTIONS, TransferConfig

    for spec in specs:
        folder = Path(spec["folder"])
        if not _is_started(folder) or not (folder / "config.yaml").is_file():
            continue  # a trial that starts afresh takes this launch's settings
        try:
            saved = read_saved_run(folder / "config.yaml")
        except (CheckpointError, UsageError, OSError):
            continue  # the trial's own resume names the damaged file
        cfg = trial_config(spec)
        resolve_run_hyperparams(cfg)  # n_envs None -> the preset's, as the trial's own resume resolves it
        launch = {name: value for name, value in dataclasses.asdict(cfg).items()  # not the options its method ignores
                  if cfg.method in METHOD_OPTIONS.get(name, (cfg.method,))}
        try:
            conflicts = resume_conflicts(TransferConfig, saved, launch, folder / "config.yaml")
        except (CheckpointError, UsageError):
            continue  # a hand-edited value: the trial's own resume names it, the other trials run
        if conflicts:
            parts = "; ".join(f"{flag_name(n, TransferConfig.FLAGS)} {w!r} where it has {v!r}" for n, w, v in conflicts)
            raise GridError(f"{folder.relative_to(root)} was started with other settings than this launch gives it "
                            f"({parts}; saved in its config.yaml): relaunch with the settings the grid was started with "
                            f"({root / 'grid.json'} records them: run --root {shlex.quote(str(root))} --continue), or use "
                            "another --root for the new ones. Nothing was written.")


def _saved_experts(folder: Path) -> tuple[list[Any], str]:
    """The experts the trial in ``folder`` was started with, as its ``config.yaml`` describes them
    (:func:`hubrl.transfer.hub_records`) but for where each was read from, as YAML reads them back: what
    its resume compares (:func:`hubrl.transfer.resumed_hub`); and the hub it was started with
    (:func:`_hub_place`). No experts where it records none (a method without a hub) or its file is
    damaged (its own resume names it)."""
    from hubrl.runconfig import read_saved_config
    from hubrl.transfer import unplaced_records

    try:
        saved = read_saved_config(folder / "config.yaml")
    except (CheckpointError, UsageError, OSError):
        return [], ""
    run, records = saved["run"], saved.get("hub")
    place = _hub_place(run.get("hub") if isinstance(run.get("hub"), str) else None,
                       [str(s) for s in run.get("sources") or []] if isinstance(run.get("sources"), list) else [], {})
    return unplaced_records(records if isinstance(records, list) else []), place


def _hubs_given(root: Path, specs: Sequence[dict[str, Any]], settings: dict[str, Any]) -> dict[Path, tuple[Any, ...]]:
    """Each started trial of a hub method in ``root`` -> ``(hub, sources, how it is given)``: the hub it
    resumes on after this launch. This launch's trials, their own (their arm's ``hub=`` or ``sources=``
    option, else the grid-wide one); the other trials of the grid, where an arm of this launch reads a hub,
    the grid-wide one, which ``grid.json`` then records for ``--continue`` to give them (where none reads
    one, ``grid.json`` keeps the hub it recorded: nothing changes for them). A trial whose arm
    ``grid.json`` does not list, or lists with a hub of its own, is left to its own resume."""
    from hubrl.methods import HUB_METHODS

    given: dict[Path, tuple[Any, ...]] = {}
    for spec in specs:
        if spec["base_method"] in HUB_METHODS and _is_started(Path(spec["folder"])):
            cfg = trial_config(spec)
            given[Path(spec["folder"])] = (cfg.hub, tuple(cfg.sources), _hub_place(cfg.hub, cfg.sources, spec["overrides"]))
    if not any(spec["base_method"] in HUB_METHODS for spec in specs):
        return given
    arms = _recorded_arms(read_grid(root))
    for folder in _started_elsewhere(root, specs):
        _, method, overrides = parse_method(arms.get(folder.parent.name, "scratch"))
        if method in HUB_METHODS and not {"hub", "sources"} & set(overrides):
            hub, sources = settings.get("hub"), tuple(settings.get("sources") or ())
            given[folder] = (hub, sources, _hub_place(hub, sources, {}))
    return given


def _hub_place(hub: str | None, sources: Sequence[str], overrides: dict[str, Any]) -> str:
    """How a trial's hub is given, for messages: ``--hub DIR``, ``--sources ZIP ...``, the default hub, or
    (``overrides`` naming it) its arm's own option."""
    if "hub" in overrides or "sources" in overrides:
        return f"its arm's own option {'hub' if 'hub' in overrides else 'sources'}={hub or ' '.join(sources)}"
    if hub or sources:
        return f"--hub {hub}" if hub else f"--sources {' '.join(sources)}"
    return "the default hub (no --hub or --sources)"


def _refuse_other_experts(root: Path, specs: Sequence[dict[str, Any]], settings: dict[str, Any]) -> None:
    """Refuse, before anything is written, a launch whose hub (``--hub``, ``--sources``) holds other experts
    than a started trial of the grid was started with (:func:`_hubs_given`: this launch's own trials, and,
    where this launch has a hub arm, the earlier arms ``--continue`` would then give its hub).

    A trial's resume may take its hub from another place (``hub`` and ``sources`` are in
    :attr:`hubrl.transfer.TransferConfig.RESUME_MAY_CHANGE`: a hub moved or copied elsewhere), which is why
    :func:`_refuse_changed_settings` and :func:`_refuse_other_grid_settings` compare no hub path; but it
    refuses a hub that holds other experts (:func:`hubrl.transfer.resumed_hub`). The grid refuses one too,
    up front and by the same comparison: else this launch's started trials would fail one by one on their
    resumes; a new arm would train on another expert set than the arms beside it, results of one grid
    that do not compare; and ``grid.json`` would record its hub, which ``--continue`` gives the earlier arms
    and their resumes refuse. A hub at a new place holding the same experts is taken (and recorded). An
    arm's own ``hub=`` option may differ, as any arm's own option may."""
    from hubrl.hub import HubError, resolve_hub
    from hubrl.transfer import hub_records, unplaced_records

    experts: dict[tuple[Any, ...], list[Any]] = {}  # each hub resolved once
    for folder, (hub, sources, place) in _hubs_given(root, specs, settings).items():
        saved, started_with = _saved_experts(folder)
        if not saved:
            continue
        if (hub, sources) not in experts:
            try:
                experts[hub, sources] = unplaced_records(hub_records(resolve_hub(hub, list(sources))))
            except HubError as exc:
                raise GridError(f"{folder.relative_to(root)}: {exc}") from None
        if experts[hub, sources] != saved:
            names = [", ".join(str(e.get("name")) for e in found) for found in (saved, experts[hub, sources])]
            raise GridError(f"{folder.relative_to(root)} was started with other experts ({names[0]}, described in its "
                            f"config.yaml) than this launch's {place} holds ({names[1]}): a resume of it would refuse "
                            "that hub, and the results of one grid on two expert sets would not compare. Give the hub "
                            f"the grid was started with ({started_with}, or its new place if it moved: only its experts "
                            "must be the same), or use another --root for the new experts. Nothing was written.")


@_holding_grid_lock
def run_grid(
    root: str | Path,
    games: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    budget: int,
    *,
    settings: dict[str, Any] | None = None,
    workers: int = 1,
    threads: int | None = None,
    ray_address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    trial_fn: TrialFn = run_trial,
    validate: bool | None = None,
    log: Callable[[str], None] | None = print,
    pause_at: int | None = None,
) -> GridSummary:
    """Run (or continue) the grid ``games × methods × seeds`` at ``budget`` agent steps per trial.

    With ``pause_at``, every trial trains with its schedules over ``budget`` but stops cleanly at
    ``pause_at`` agent steps (checkpointed, status ``paused``); the same call with a later
    ``pause_at`` (or none) continues each trial from its checkpoint. Trials already paused at or
    past ``pause_at`` are skipped, so a grid advances stage by stage, all trials together. A
    ``pause_at`` at the budget finishes the trials; one past it is refused (none would pause).

    :param settings: extra :class:`~hubrl.transfer.TransferConfig` fields for every trial.
    :param workers: 0 = in this process; N >= 1 = a pool of N spawned processes, one fresh process per trial.
    :param threads: torch threads per trial (default: the CPUs this process may run on ``// workers`` in the pool;
        untouched in-process).
    :param ray_address: run the trials as Ray tasks on this cluster (``"auto"``, an address, or ``"local"``
        for a fresh local instance); an already initialised Ray is used as it is.
    :param trial_fn: top-level function ``spec -> dict`` doing one trial (tests inject fakes).
    :param validate: check games, methods (against ``hubrl.transfer.METHODS``) and settings;
        default: games always, methods and settings only with the real :func:`run_trial`.
    :param log: where progress lines go (None: silent).
    :returns: the records of this call, skipped trials included.
    """
    root = Path(root)
    settings = dict(settings or {})
    if budget <= 0:
        raise GridError(f"The step budget must be positive, got {budget}.")
    try:
        check_pause_at(pause_at, budget)  # past the budget: every trial would finish without pausing
    except UsageError as exc:
        raise GridError(str(exc)) from None
    if pause_at is not None and pause_at >= budget:
        pause_at = None  # pausing at the budget is finishing
    if workers < 0:
        raise GridError(f"--workers must be 0 (in-process) or more, got {workers}.")
    check = trial_fn is run_trial if validate is None else validate
    games, methods, seeds = (list(dict.fromkeys(x)) for x in (games, methods, seeds))  # no duplicate trials
    if check:
        game_names = _validate(games, methods, settings, check_methods=True)
        methods = _expand_finetune(methods, settings)
        _refuse_settings_no_arm_reads(methods, settings)
        _validate_trial_configs(game_names, methods, settings, budget, pause_at)
    else:
        game_names = _game_names(games)
    if ray_address is None and workers >= 1 and threads is None:
        threads = max(1, _usable_cpus() // workers)
    if ray_address is not None:
        threads = threads or max(1, int(cpus_per_trial))
    specs = make_specs(root, game_names, methods, seeds, budget, settings, threads, pause_at)
    _refuse_another_budget(root, specs, budget)
    if check:
        _refuse_changed_settings(root, specs)
        _refuse_other_experts(root, specs, settings)
        _refuse_other_grid_settings(root, specs, methods, settings, game_names[0], budget)
    merged = _merged_grid(root, game_names, methods, seeds, settings)
    root.mkdir(parents=True, exist_ok=True)
    write_json(
        root / "grid.json",
        {"games": merged["games"], "methods": merged["methods"], "seeds": merged["seeds"], "budget": int(budget),
         "pause_at": pause_at, "settings": merged["settings"], "workers": workers, "ray_address": ray_address,
         "commit": git_commit(), "machine": machine_info(), "updated": now()},
    )
    summary = GridSummary(root)
    journal = root / "trials.jsonl"
    say = log or (lambda _msg: None)
    total = len(specs)

    def record(rec: dict[str, Any]) -> None:
        """Journal an attempt; one that ends the trial in this launch (all but a ``requeued`` one, which a
        broken pool stopped and runs again: :func:`~hubrl.trial_runners.run_in_pool`) also goes to the
        summary and the log."""
        _append_line(journal, rec)
        if rec.get("requeued"):
            return
        summary.records.append(rec)
        done = len(summary.records)
        if rec["status"] == "skipped":
            say(f"[{done}/{total}] {rec['trial']}: {rec.get('reason', 'finished already')}, skipped")
        elif rec["status"] == "refused":
            say(f"[{done}/{total}] {rec['trial']}: REFUSED, nothing deleted: {rec['error']}")
        elif rec["status"] == "failed":
            say(f"[{done}/{total}] {rec['trial']}: FAILED after {rec['seconds']:.0f}s: {rec['error']}")
        else:
            rate = f", {rec['steps_per_s']:,.0f} steps/s" if rec.get("steps_per_s") else ""
            say(f"[{done}/{total}] {rec['trial']}: {rec['status']} in {rec['seconds']:.0f}s{rate}, "
                f"peak {rec['peak_rss_mb']:.0f} MiB")

    todo = []
    for spec in specs:
        records = read_trial_records(spec["folder"])  # read once: the state, a refusal and the history agree
        state = trial_state(spec["folder"], budget, pause_at, records)
        if state in ("finished", "paused"):
            reason = "finished already" if state == "finished" else f"paused at or past {pause_at:,} steps already"
            record(make_record(spec, "skipped", seconds=0.0, steps=0, finished=now(), reason=reason))
            continue
        if state == "refused":  # recorded in trials.jsonl only: the trial's own status.json stays as it was
            record(make_record(spec, "refused", seconds=0.0, steps=0, finished=now(),
                           error=refusal_reason(spec["folder"], budget, records)))
            continue
        previous = records.status  # {} when damaged: the resumed run rewrites it
        if previous:
            spec["history"] = [*previous.get("history", []), attempt_summary(previous)]
        todo.append(spec)

    if not todo:
        return summary
    if ray_address is not None:
        summary.stopped_by = run_on_ray(todo, trial_fn, ray_address, cpus_per_trial, gpus_per_trial, record, say)
    elif workers == 0:
        summary.stopped_by = run_in_process(todo, trial_fn, record, say)
    else:
        summary.stopped_by = run_in_pool(todo, trial_fn, workers, threads, record, say)
    return summary


