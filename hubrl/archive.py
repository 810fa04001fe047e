"""Archive a grid's records without its weights: what a repository keeps of a long benchmark.

A long grid (the 1M-step grid runs in stages over many sessions) trains in a folder outside the
repository, where its checkpoints let it continue; what the report needs is only each trial's
records (``status.json``, ``evaluations.json``, ``config.yaml``, ``gates.jsonl``). :func:`archive_grid`
copies those of every *settled* trial into another folder, typically one that is committed, so
finished and paused trials can land while the grid goes on:

* **settled**: its ``status.json`` says ``paused`` or ``ok`` and nothing in the folder but
  checkpoints was written after it. A trial that a runner is training (its records grow past its
  last ``status.json``) or that failed or was interrupted is left out with the reason, and an
  earlier copy of it in the archive is kept as it was, so the archive only ever holds records of
  stopped trials;
* **without weights**: ``checkpoint*.pt`` and ``model.zip`` are never copied; nor are TensorBoard
  logs (large; ``tensorboard=True`` copies them, and a later archive without it keeps those it
  copied) or ``learning_curve.png`` (the report redraws curves from ``evaluations.json``);
* **atomic per trial**: each trial is copied into a temporary folder beside its destination and
  then swapped in, so an interrupted archive leaves every trial either as it was or complete. The
  swap is two renames (the archived copy aside to ``.<trial>.previous``, the new one in); a process
  killed between them leaves the archived copy aside, and the next archive puts it back first, so it
  is compared, kept and replaced as if the kill had not happened.

``grid.json`` (the latest launch) and ``trials.jsonl`` (every attempt) are copied as they are.
``hubrl-bench archive ROOT DEST`` is the command.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hubrl.errors import UsageError
from hubrl.grid import iter_trial_folders, read_evaluations, read_grid, read_status

__all__ = ["SETTLED_STATES", "ArchiveSummary", "unsettled_reason", "archive_grid", "continues"]

#: Trial states whose records are final for their stage.
SETTLED_STATES = ("paused", "ok")
_WEIGHTS = ("checkpoint*.pt", "model.zip")
_WRITTEN_WHILE_TRAINING_ONLY = ("checkpoint*.pt", ".lock")


@dataclass
class ArchiveSummary:
    """What :func:`archive_grid` did: trial folders copied (relative to the root) and left out (with why)."""

    copied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def unsettled_reason(folder: str | Path) -> str | None:
    """Why a trial folder's records may still change (``None`` when it is settled, see the module docstring)."""
    folder = Path(folder)
    status_path = folder / "status.json"
    status = read_status(folder).get("status")
    if status not in SETTLED_STATES:
        return f"status {status!r}, not paused or finished" if status else "no readable status.json"
    written = status_path.stat().st_mtime
    for path in folder.rglob("*"):
        if path.is_file() and not any(path.match(p) for p in _WRITTEN_WHILE_TRAINING_ONLY) and path.stat().st_mtime > written:
            return f"being trained ({path.relative_to(folder)} is newer than its status.json)"
    return None


def archive_grid(root: str | Path, dest: str | Path, tensorboard: bool = False, replace: bool = False) -> ArchiveSummary:
    """Copy the records of every settled trial of the grid in ``root`` into ``dest`` (module docstring).

    An archived trial is only ever brought up to date by the run it archived: its evaluations must
    be the start of the grid trial's (:func:`continues`). Where they are not, ``dest`` archives
    another run of that trial (another grid's archive, or the trial trained again from the start),
    and nothing is written unless ``replace`` says to replace such copies.

    :raises UsageError: when ``root`` is no grid, ``dest`` is ``root`` or inside it, ``dest`` holds a trial's
        weights (a grid, not an archive: its weights would be deleted), archives a grid of another budget or
        holds other runs of this grid's trials (without ``replace``): their records would be replaced. Before
        anything is written.
    """
    root, dest = Path(root), Path(dest)
    if not root.is_dir() or not (root / "grid.json").is_file():
        raise UsageError(f"No grid at {root} (no grid.json): give the --root of a grid run.")
    if dest.resolve() == root.resolve() or root.resolve() in dest.resolve().parents:
        raise UsageError(f"Archive {dest} must be outside the grid {root}: give another folder.")
    held = next((path for folder in iter_trial_folders(dest) for pattern in _WEIGHTS for path in folder.glob(pattern)), None)
    if held is not None:  # e.g. ROOT and DEST swapped: each trial would be replaced by its records, weights deleted
        raise UsageError(f"{dest} holds trial weights ({held}): it is a grid, not an archive, and archiving into it "
                         f"would delete them. Give the grid first and the archive folder second (ROOT DEST).")
    _refuse_another_grids_archive(root, dest)
    ignored = [*_WEIGHTS, ".lock", "learning_curve.png", "*.tmp", *([] if tensorboard else ["tb"])]
    summary = ArchiveSummary()
    settled = []
    for folder in iter_trial_folders(root):
        name = folder.relative_to(root).as_posix()
        reason = unsettled_reason(folder)
        if reason is not None:
            summary.skipped[name] = reason
        else:
            settled.append((folder, name))
    others = [name for folder, name in settled if not continues(_archived_copy(dest / name), folder)]
    if others and not replace:
        raise UsageError(
            f"{dest} holds another run of {len(others)} of this grid's trials, e.g. {others[0]}: its evaluations are "
            f"not the start of {root / others[0]}'s (the archive of another grid; the trial trained again from the "
            "start, or resumed from an earlier checkpoint and evaluated again; or a damaged evaluations.json), and "
            "archiving would replace its records. Give another folder, or pass --replace to replace them.")
    dest.mkdir(parents=True, exist_ok=True)
    for name in [*summary.skipped, *(name for _, name in settled)]:  # a skipped trial's archived copy is kept too
        _restore_swapped_out(dest / name)
    for folder, name in settled:
        target = dest / name
        staging = _staging(target)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(*ignored))
        if not tensorboard and (target / "tb").is_dir() and not (staging / "tb").exists():
            shutil.copytree(target / "tb", staging / "tb")  # archived by an earlier --tensorboard: kept, not dropped
        previous = _swapped_out(target)
        shutil.rmtree(previous, ignore_errors=True)  # left by a kill after the swap: target is its replacement
        if target.exists():
            target.rename(previous)
        staging.rename(target)
        shutil.rmtree(previous, ignore_errors=True)
        summary.copied.append(name)
    for record in ("grid.json", "trials.jsonl"):
        if (root / record).is_file():
            shutil.copy2(root / record, dest / f".{record}.archiving")
            (dest / f".{record}.archiving").replace(dest / record)
    return summary


def continues(archived: str | Path, trial: str | Path) -> bool:
    """Whether the trial folder ``trial`` is the run archived in ``archived``, or its continuation: the
    archived evaluations are the first ones of the trial, step and mean score alike (``True`` when
    nothing is archived there yet)."""
    old, new = read_evaluations(archived), read_evaluations(trial)
    return len(old) <= len(new) and all(isinstance(a, dict) and isinstance(b, dict) and a.get("step") == b.get("step")
                                        and a.get("mean") == b.get("mean") for a, b in zip(old, new))


def _staging(target: Path) -> Path:
    """Where :func:`archive_grid` copies a trial's records before swapping them in at ``target``."""
    return target.with_name(f".{target.name}.archiving")


def _swapped_out(target: Path) -> Path:
    """Where :func:`archive_grid` moves the archived copy ``target`` while it swaps the new one in."""
    return target.with_name(f".{target.name}.previous")


def _archived_copy(target: Path) -> Path:
    """The archived copy of the trial archived at ``target``: ``target``, or the copy moved aside by an archive
    killed between the two renames of its swap (``target`` missing), which :func:`_restore_swapped_out` puts back."""
    previous = _swapped_out(target)
    return previous if not target.exists() and previous.is_dir() else target


def _restore_swapped_out(target: Path) -> None:
    """Put back the archived copy of ``target`` that an archive killed between the two renames of its swap left
    aside (``.<trial>.previous``, no ``target``), and remove that archive's staging folder: otherwise the trial
    reads as never archived, and its copy, with TensorBoard logs maybe archived nowhere else, is deleted."""
    previous = _swapped_out(target)
    if not target.exists() and previous.is_dir():
        previous.rename(target)
        shutil.rmtree(_staging(target), ignore_errors=True)


def _refuse_another_grids_archive(root: Path, dest: Path) -> None:
    """Refuse a ``dest`` that archives another grid: its ``grid.json`` names another step budget (a grid keeps
    one budget for all its launches), so archiving ``root`` into it would replace the records of every trial
    the two grids share by name, and its ``grid.json`` and ``trials.jsonl``."""
    ours, theirs = read_grid(root).get("budget"), read_grid(dest).get("budget")
    if ours is not None and theirs is not None and ours != theirs:
        def steps(budget: object) -> str:  # a hand-edited grid.json may hold "1M" here
            return f"{budget:,}" if isinstance(budget, int) else repr(budget)

        raise UsageError(f"{dest} archives another grid ({steps(theirs)} agent steps per trial; {root} trains {steps(ours)}): "
                         "archiving into it would replace the records of its trials. Give another folder.")
