"""``hubrl-bench archive``: the records of stopped trials, without weights, copied out of a running grid."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from hubrl.archive import archive_grid, unsettled_reason
from hubrl.cli.bench import main
from hubrl.errors import UsageError


def _trial(root: Path, name: str, status: str | None, age: float = 100.0) -> Path:
    """A trial folder whose files are ``age`` seconds old, status.json last (as a stopped trial leaves it)."""
    folder = root / name
    (folder / "tb").mkdir(parents=True)
    for rel, text in (("evaluations.json", '{"points": []}'), ("gates.jsonl", "{}\n"), ("config.yaml", "run: {}\n"),
                      ("model.zip", "weights"), ("checkpoint.pt", "weights"), ("checkpoint.prev.pt", "weights"),
                      ("learning_curve.png", "png"), ("tb/events.out.tfevents.1", "events")):
        (folder / rel).write_text(text)
    if status is not None:
        (folder / "status.json").write_text(json.dumps({"status": status}))
    stamp = time.time() - age
    for path in [p for p in folder.rglob("*") if p.is_file() and p.name != "status.json"]:
        os.utime(path, (stamp - 1, stamp - 1))
    if status is not None:
        os.utime(folder / "status.json", (stamp, stamp))
    return folder


def _touch(path: Path) -> None:
    with open(path, "a") as handle:
        handle.write("{}\n")
    os.utime(path, None)


@pytest.fixture
def grid(tmp_path) -> Path:
    root = tmp_path / "grid"
    root.mkdir()
    (root / "grid.json").write_text('{"budget": 1000000}')
    (root / "trials.jsonl").write_text('{"trial": "Alien/scratch/s0"}\n')
    _trial(root, "Alien/scratch/s0", "paused")
    _trial(root, "Alien/scratch/s1", "ok")
    _touch(_trial(root, "Alien/hub-pathway/s0", "paused") / "gates.jsonl")  # a runner took it up again
    _touch(_trial(root, "Alien/hub-pathway/s1", "ok") / "checkpoint.pt")  # only a checkpoint since: settled
    _trial(root, "Gopher/scratch/s0", "failed")
    _trial(root, "Gopher/scratch/s1", None)
    return root


def test_only_stopped_trials_are_archived_and_never_their_weights(grid, tmp_path):
    dest = tmp_path / "archive"
    summary = archive_grid(grid, dest)
    assert sorted(summary.copied) == ["Alien/hub-pathway/s1", "Alien/scratch/s0", "Alien/scratch/s1"]
    assert summary.skipped == {
        "Alien/hub-pathway/s0": "being trained (gates.jsonl is newer than its status.json)",
        "Gopher/scratch/s0": "status 'failed', not paused or finished",
        "Gopher/scratch/s1": "no readable status.json",
    }
    for name in summary.copied:
        assert sorted(p.name for p in (dest / name).iterdir()) == ["config.yaml", "evaluations.json", "gates.jsonl",
                                                                   "status.json"]
    assert not (dest / "Alien/hub-pathway/s0").exists() and not (dest / "Gopher").exists()
    assert (dest / "grid.json").read_text() == (grid / "grid.json").read_text()
    assert (dest / "trials.jsonl").read_text() == (grid / "trials.jsonl").read_text()
    assert not [p for p in dest.rglob(".*")]  # no staging folder or file left behind
    with_tb = archive_grid(grid, tmp_path / "with-tb", tensorboard=True)
    assert (tmp_path / "with-tb" / with_tb.copied[0] / "tb" / "events.out.tfevents.1").is_file()
    archive_grid(grid, tmp_path / "with-tb")  # again without --tensorboard: the logs archived before stay
    assert (tmp_path / "with-tb" / with_tb.copied[0] / "tb" / "events.out.tfevents.1").is_file()


def test_an_archived_copy_is_kept_while_its_trial_trains_again_and_replaced_once_it_stops(grid, tmp_path):
    dest = tmp_path / "archive"
    archive_grid(grid, dest)
    stage_250k = (dest / "Alien/scratch/s0/gates.jsonl").read_text()
    _touch(grid / "Alien/scratch/s0/gates.jsonl")  # the next stage starts
    assert unsettled_reason(grid / "Alien/scratch/s0") is not None
    assert "Alien/scratch/s0" in archive_grid(grid, dest).skipped
    assert (dest / "Alien/scratch/s0/gates.jsonl").read_text() == stage_250k  # the settled copy stays
    time.sleep(0.01)
    (grid / "Alien/scratch/s0/status.json").write_text('{"status": "paused", "num_timesteps": 500000}')
    assert "Alien/scratch/s0" in archive_grid(grid, dest).copied  # paused again: the new records replace it
    assert (dest / "Alien/scratch/s0/gates.jsonl").read_text() == stage_250k + "{}\n"
    assert json.loads((dest / "Alien/scratch/s0/status.json").read_text())["num_timesteps"] == 500000


def test_archive_command_and_its_refusals(grid, tmp_path, capsys):
    assert main(["archive", str(grid), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "left out Gopher/scratch/s0: status 'failed'" in out
    assert f"archived 3 trial(s) of {grid} into {tmp_path / 'out'} (3 left out)" in out
    with pytest.raises(UsageError, match="No grid at"):
        archive_grid(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(UsageError, match="must be outside the grid"):
        archive_grid(grid, grid / "records")


def test_an_archive_into_a_grid_with_weights_is_refused_and_deletes_nothing(grid, tmp_path):
    """ROOT and DEST swapped (``archive ARCHIVE GRID``): the archive is a grid too (it has grid.json), so each
    trial of the real grid would be replaced by its weightless records. Refused before anything is written."""
    archive = tmp_path / "archive"
    archive_grid(grid, archive)
    before = sorted(p.relative_to(grid).as_posix() for p in grid.rglob("*"))
    with pytest.raises(UsageError, match="holds trial weights .*it is a grid, not an archive"):
        archive_grid(archive, grid)
    assert sorted(p.relative_to(grid).as_posix() for p in grid.rglob("*")) == before
    assert (grid / "Alien/scratch/s0/model.zip").is_file()


def test_an_archive_of_another_grid_is_refused_and_keeps_its_records(grid, tmp_path):
    """Archiving a new grid into the folder that archives an earlier one (another budget, the same trial names)
    would replace the earlier grid's records of every shared trial, its grid.json and trials.jsonl. Refused
    before anything is written; the same grid archives into it again."""
    archive = tmp_path / "archive"
    archive_grid(grid, archive)
    other = tmp_path / "other"
    other.mkdir()
    (other / "grid.json").write_text('{"budget": 100000}')
    (_trial(other, "Alien/scratch/s0", "ok") / "evaluations.json").write_text('{"points": [{"step": 100000}]}')
    before = {p.relative_to(archive).as_posix(): p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match="archives another grid .1,000,000 agent steps per trial; .* trains 100,000"):
        archive_grid(other, archive)
    assert {p.relative_to(archive).as_posix(): p.read_bytes() for p in archive.rglob("*") if p.is_file()} == before
    (other / "grid.json").write_text('{"budget": "1M"}')  # hand-edited: refused all the same, not a format traceback
    with pytest.raises(UsageError, match="archives another grid .1,000,000 agent steps per trial; .* trains '1M'"):
        archive_grid(other, archive)
    assert archive_grid(grid, archive).copied


def _points(folder: Path, *means: float) -> None:
    points = [{"step": 50_000 * (i + 1), "mean": mean} for i, mean in enumerate(means)]
    (folder / "evaluations.json").write_text(json.dumps({"points": points}))


def test_an_archive_of_another_run_with_the_same_budget_is_refused_unless_replaced(grid, tmp_path, capsys):
    """Another grid of the same budget, archived into this grid's archive, used to replace the records
    of every trial the two share by name, silently. An archived trial is now only brought up to date
    by its own run: its evaluations must be the start of the grid trial's; --replace overrides."""
    archive = tmp_path / "archive"
    _points(grid / "Alien/scratch/s0", 10.0, 20.0)
    os.utime(grid / "Alien/scratch/s0/status.json", None)  # still settled: status.json last
    archive_grid(grid, archive)
    _points(grid / "Alien/scratch/s0", 10.0, 20.0, 35.0)  # the same run, one stage on
    os.utime(grid / "Alien/scratch/s0/status.json", None)
    assert "Alien/scratch/s0" in archive_grid(grid, archive).copied
    other = tmp_path / "other"
    other.mkdir()
    (other / "grid.json").write_text('{"budget": 1000000}')
    _points(_trial(other, "Alien/scratch/s0", "ok"), 12.0, 18.0, 40.0)  # another run of the same trial
    os.utime(other / "Alien/scratch/s0/status.json", None)
    before = {p.relative_to(archive).as_posix(): p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match=r"holds another run of 1 of this grid's trials, e\.g\. Alien/scratch/s0: .*"
                                         r"--replace"):
        archive_grid(other, archive)
    assert {p.relative_to(archive).as_posix(): p.read_bytes() for p in archive.rglob("*") if p.is_file()} == before
    (archive / "Alien/scratch/s0/evaluations.json").write_text('{"points": [1, 2]}')  # damaged: refused, not a traceback
    with pytest.raises(UsageError, match="or a damaged evaluations.json"):
        archive_grid(grid, archive)
    assert main(["archive", str(other), str(archive), "--replace"]) == 0
    means = [p["mean"] for p in json.loads((archive / "Alien/scratch/s0/evaluations.json").read_text())["points"]]
    assert means == [12.0, 18.0, 40.0]


def test_an_archive_killed_between_the_renames_of_its_swap_loses_nothing(grid, tmp_path, monkeypatch):
    """A trial is swapped in by two renames: its archived copy aside to ``.s0.previous``, the new one in. An archive
    killed between them left the trial only as ``.s0.previous``; the next archive saw nothing archived there (no
    --replace protection, no archived tb/ to keep) and deleted it, TensorBoard logs and all. It is put back first."""
    archive, trial = tmp_path / "archive", tmp_path / "archive" / "Alien/scratch/s0"
    _points(grid / "Alien/scratch/s0", 10.0, 20.0)
    os.utime(grid / "Alien/scratch/s0/status.json", None)  # still settled: status.json last
    archive_grid(grid, archive, tensorboard=True)
    _points(grid / "Alien/scratch/s0", 10.0, 20.0, 35.0)  # the same run, one stage on
    os.utime(grid / "Alien/scratch/s0/status.json", None)
    rename = Path.rename

    def killed_before_the_new_copy_is_in(self: Path, target: Path) -> Path:
        if self == trial.with_name(".s0.archiving"):
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_before_the_new_copy_is_in)
    with pytest.raises(KeyboardInterrupt):
        archive_grid(grid, archive)
    monkeypatch.undo()
    assert not trial.exists() and (trial.with_name(".s0.previous") / "tb/events.out.tfevents.1").is_file()

    def files() -> dict[str, bytes]:
        return {p.relative_to(archive).as_posix(): p.read_bytes() for p in archive.rglob("*") if p.is_file()}

    other = tmp_path / "other"
    other.mkdir()
    (other / "grid.json").write_text('{"budget": 1000000}')
    _points(_trial(other, "Alien/scratch/s0", "ok"), 12.0, 18.0, 40.0)  # another run of the same trial
    os.utime(other / "Alien/scratch/s0/status.json", None)
    before = files()
    with pytest.raises(UsageError, match=r"holds another run of 1 of this grid's trials, e\.g\. Alien/scratch/s0"):
        archive_grid(other, archive)
    assert files() == before
    _touch(grid / "Alien/scratch/s0/gates.jsonl")  # the trial trains again: its archived copy is kept as it was
    assert "Alien/scratch/s0" in archive_grid(grid, archive).skipped
    assert [p["mean"] for p in json.loads((trial / "evaluations.json").read_text())["points"]] == [10.0, 20.0]
    time.sleep(0.01)
    (grid / "Alien/scratch/s0/status.json").write_text('{"status": "paused"}')
    assert "Alien/scratch/s0" in archive_grid(grid, archive).copied  # without --tensorboard: the archived logs stay
    assert [p["mean"] for p in json.loads((trial / "evaluations.json").read_text())["points"]] == [10.0, 20.0, 35.0]
    assert (trial / "tb/events.out.tfevents.1").is_file()
    assert not [p for p in archive.rglob(".*")]  # no staging or set-aside folder left behind
