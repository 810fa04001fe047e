"""Benchmark grid: skip / resume / retry logic, failure records, process pool, Ray, one real tiny grid.

The fake trial functions live at module level so that spawned pool workers and Ray workers can
import them by reference, and this module imports nothing heavy at the top for the same reason.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubrl.benchmark import GridError, run_grid
from hubrl.errors import CheckpointError, UsageError
from hubrl.grid import has_checkpoint, trial_folder, trial_state
from tests.conftest import ROOT, make_tiny_hub


def _root_of(spec: dict) -> Path:
    return Path(spec["folder"]).parents[2]


def fake_trial(spec: dict) -> dict:
    """Writes what a finished run leaves; fails while ``<root>/fail-<Game>-<method>-s<seed>`` exists."""
    root, folder = _root_of(spec), Path(spec["folder"])
    with open(root / "calls.txt", "a") as handle:
        handle.write(f"{spec['trial']} resume={(folder / 'checkpoint.pt').is_file()}\n")
    if (root / f"fail-{spec['game']}-{spec['method']}-s{spec['seed']}").exists():
        raise RuntimeError(f"boom in {spec['trial']}")
    if (root / f"die-{spec['game']}-{spec['method']}-s{spec['seed']}").exists():
        os._exit(9)  # as if the OS killed the worker (out of memory)
    budget = spec["budget"]
    points = [{"step": budget // 2, "mean": 1.0, "std": 0.0, "episodes": 1, "scores": [1.0]},
              {"step": budget, "mean": 2.0, "std": 0.0, "episodes": 1, "scores": [2.0]}]
    (folder / "evaluations.json").write_text(json.dumps({"points": points}))
    (folder / "model.zip").write_bytes(b"fake")
    return {"steps": budget, "num_timesteps": budget, "pid_seen": os.getpid()}


def slow_fake_trial(spec: dict) -> dict:
    time.sleep(0.5)
    return fake_trial(spec)


def signal_aware_trial(spec: dict) -> dict:
    """Like a training run: sets up (marking ``setting-up``; while ``<root>/hold-setup`` exists, until
    ``<root>/go`` does), marks itself ``started``, then trains until a signal (Ctrl-C, SIGTERM, a
    hang-up, the grid's request) and returns as interrupted; finishes as :func:`fake_trial` after
    300 s without one. (60 s was too short: on a loaded machine the second trial's fresh Ray worker
    took longer than that to import torch, so the first finished before the signal was sent.)"""
    from hubrl.signals import SignalStop

    folder, root = Path(spec["folder"]), _root_of(spec)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "setting-up").touch()
    deadline = time.time() + 300
    while (root / "hold-setup").exists() and not (root / "go").exists() and time.time() < deadline:
        time.sleep(0.05)
    with SignalStop() as stop:
        (folder / "started").touch()
        while stop.received is None and time.time() < deadline:
            time.sleep(0.05)
    if stop.received is None:
        return fake_trial(spec)
    return {"steps": 32, "num_timesteps": 32, "interrupted_by": stop.received}


def _calls(root: Path) -> list[str]:
    path = root / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def _journal(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "trials.jsonl").read_text().splitlines()]


def test_trial_state(tmp_path):
    folder = tmp_path / "t"
    assert trial_state(folder, 100) == "fresh"
    folder.mkdir()
    (folder / "evaluations.json").write_text(json.dumps({"points": [{"step": 50, "mean": 0.0}]}))
    (folder / "model.zip").write_bytes(b"x")
    assert trial_state(folder, 100) == "refused"  # a model.zip is a result, not leftovers: never deleted by a fresh start
    (folder / "model.zip").unlink()
    assert trial_state(folder, 100) == "fresh"  # budget not reached, nothing to resume from
    (folder / "model.zip").write_bytes(b"x")
    (folder / "checkpoint.pt").write_bytes(b"x")
    assert trial_state(folder, 100) == "resume"
    assert trial_state(folder, 50) == "finished"
    (folder / "model.zip").unlink()
    assert trial_state(folder, 50) == "resume"  # the final save is missing: resume finishes it
    (folder / "evaluations.json").write_text("{torn")
    assert trial_state(folder, 50) == "resume"
    # Archived without weights: the evaluations and a status recording the completed run suffice.
    (folder / "evaluations.json").write_text(json.dumps({"points": [{"step": 50, "mean": 0.0}]}))
    (folder / "checkpoint.pt").unlink()
    (folder / "status.json").write_text(json.dumps({"status": "ok", "completed": True, "num_timesteps": 50}))
    assert trial_state(folder, 50) == "finished"
    assert trial_state(folder, 60) == "refused"  # a finished, archived trial is never restarted (it would be deleted)
    (folder / "status.json").write_text(json.dumps({"status": "failed", "completed": False, "num_timesteps": 50}))
    assert trial_state(folder, 50) == "fresh"
    # stages: paused at 50 of a 100 budget
    (folder / "checkpoint.pt").write_bytes(b"x")
    (folder / "status.json").write_text(json.dumps({"status": "paused", "budget": 100, "num_timesteps": 50}))
    assert trial_state(folder, 100, pause_at=50) == "paused"
    assert trial_state(folder, 100, pause_at=75) == "resume"
    assert trial_state(folder, 100) == "resume"
    assert trial_state(folder, 200) == "refused"  # its schedules run over 100
    (folder / "checkpoint.pt").unlink()
    assert trial_state(folder, 100) == "refused"  # paused, checkpoint gone: never a fresh start over its results


@pytest.mark.parametrize("name, text", [
    ("evaluations.json", '{"points": [{"step": 25'),  # torn mid-write
    ("evaluations.json", '{"points": [5]}'),
    ("evaluations.json", '{"points": [{"step": "x"}]}'),
    ("status.json", '{"status": "ok", "completed": tr'),
    ("status.json", '{"status": "failed", "num_timesteps": "abc"}'),
    ("status.json", '{"status": "failed", "budget": "1M"}'),
    ("status.json", '{"status": "failed", "history": 5}'),
    ("status.json", '[1, 2]'),
])
def test_a_trial_with_a_damaged_record_is_refused_not_cleared(tmp_path, name, text):
    """A finished trial archived without checkpoints whose status.json or evaluations.json is damaged
    was counted as leftovers: the grid deleted its records and model.zip and trained it again from 0;
    a damaged field ended the whole launch in a traceback. Now the trial is refused, naming the file."""
    from hubrl.benchmark import run_grid

    root = tmp_path / "grid"
    folder = trial_folder(root, "Gopher", "scratch", 0)
    folder.mkdir(parents=True)
    (folder / "evaluations.json").write_text(json.dumps({"points": [{"step": 64, "mean": 100.0}]}))
    (folder / "status.json").write_text(json.dumps({"status": "ok", "completed": True, "num_timesteps": 64, "budget": 64}))
    (folder / name).write_text(text)
    kept = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert trial_state(folder, 64) == "refused"
    called = []
    summary = run_grid(root, ["Gopher"], ["scratch"], [0], 64, workers=0, trial_fn=lambda spec: called.append(spec))
    assert not called and summary.count("refused") == 1
    assert name in summary.records[0]["error"] and "delete" in summary.records[0]["error"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == kept  # nothing deleted or rewritten
    (folder / "checkpoint.pt").write_bytes(b"x")
    assert trial_state(folder, 64) == "resume"  # a checkpoint continues it; the run rewrites its records


def test_a_damaged_record_beside_a_checkpoint_or_a_finished_model_is_read_around(tmp_path):
    """Only the damaged file is set aside: a sound status.json keeps the trial's history of attempts
    when evaluations.json is torn; a finished trial (model.zip, evaluations at the budget) stays
    finished with a torn status.json; a budget of the wrong type beside a checkpoint is no traceback."""
    from hubrl.benchmark import run_grid

    root = tmp_path / "grid"
    folder = trial_folder(root, "Gopher", "scratch", 0)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"x")
    attempts = [{"status": "interrupted", "num_timesteps": 32, "seconds": 5400.0}]
    (folder / "status.json").write_text(json.dumps({"status": "interrupted", "budget": 64, "num_timesteps": 48,
                                                    "history": attempts}))
    (folder / "evaluations.json").write_text('{"points": [{"step": 25')
    assert trial_state(folder, 64) == "resume"
    summary = run_grid(root, ["Gopher"], ["scratch"], [0], 64, workers=0, trial_fn=fake_trial)
    assert summary.count("ok") == 1
    history = json.loads((folder / "status.json").read_text())["history"]
    assert history[0] == attempts[0] and history[1]["num_timesteps"] == 48  # earlier attempts kept, this one added
    (folder / "status.json").write_text('{"status": "ok", "compl')  # finished: model.zip and evaluations at 64
    (folder / "checkpoint.pt").unlink()
    assert trial_state(folder, 64) == "finished"
    for status in ("ok", "failed"):
        (folder / "status.json").write_text(json.dumps({"status": status, "completed": True, "budget": "1M"}))
        (folder / "evaluations.json").write_text('{"points": []}')
        (folder / "checkpoint.pt").write_bytes(b"x")
        assert run_grid(root, ["Gopher"], ["scratch"], [0], 64, workers=0, trial_fn=fake_trial).count("ok") == 1


def test_a_trial_with_only_its_previous_checkpoint_resumes_from_it(tmp_path):
    """``checkpoint.pt`` gone (deleted as damaged) but ``checkpoint.prev.pt`` kept: the trial resumes
    from the previous checkpoint, as a transfer run does, instead of counting as fresh, whose start
    would delete that checkpoint and the trial's records."""
    from hubrl.benchmark import run_trial

    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "evaluations.json").write_text(json.dumps({"points": [{"step": 50, "mean": 0.0}]}))
    (folder / "checkpoint.prev.pt").write_bytes(b"x")
    (folder / "status.json").write_text(json.dumps({"status": "failed", "budget": 100, "num_timesteps": 50}))
    assert trial_state(folder, 100) == "resume"
    assert trial_state(folder, 200) == "refused"  # its schedules run over 100
    spec = {"folder": str(folder), "game": "Gopher", "method": "scratch", "seed": 0, "budget": 100,
            "settings": {"n_envs": 1, "device": "cpu"}}
    # the torn stand-in is refused by the resume, not deleted; the advice is the grid's (no --resume, no --out there)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(folder))} and run the grid again") as refused:
        run_trial(spec)
    assert "--resume" not in str(refused.value) and "--out" not in str(refused.value)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.prev.pt", "evaluations.json", "status.json"]
    (folder / "checkpoint.pt").write_bytes(b"torn too")
    with pytest.raises(CheckpointError, match="damaged too: .* So delete .* and run the grid again"):
        run_trial(spec)


@pytest.mark.slow
def test_a_trial_whose_saved_model_cannot_be_timed_is_still_ok(tmp_path, monkeypatch, capsys):
    """The inference speed of a finished trial's model.zip is measured after it trained, evaluated
    and saved everything: a failing measure used to mark the whole trial failed, which the archive
    and the report leave out and the grid's next run trains again. Now the measure is missing, said."""
    import hubrl.evaluation
    from hubrl.benchmark import execute_trial
    from tests.conftest import TINY_PPO

    def broken(*args, **kwargs):
        raise RuntimeError("no timer here")

    monkeypatch.setattr(hubrl.evaluation, "inference_steps_per_second", broken)
    spec = {"trial": "Gopher/scratch/s0", "folder": str(tmp_path / "t"), "game": "Gopher", "method": "scratch", "seed": 0,
            "budget": 64, "settings": {"n_envs": 2, "device": "cpu", "eval_freq": 10**9, "eval_episodes": 1,
                                       "checkpoint_freq": 10**9, "hyperparams": dict(TINY_PPO)}}
    record = execute_trial(spec)
    assert record["status"] == "ok", record.get("traceback")
    assert record["inference_steps_per_s"] is None and record["params"] > 0
    assert json.loads((tmp_path / "t" / "status.json").read_text())["status"] == "ok"
    err = capsys.readouterr().err
    assert "inference speed of" in err and "no timer here" in err


def test_grid_skips_finished_records_failures_and_retries(tmp_path):
    root = tmp_path / "grid"
    root.mkdir()
    (root / "fail-Gopher-hub-pathway-s1").touch()
    kw = dict(trial_fn=fake_trial, workers=0, log=None)
    first = run_grid(root, ["Alien", "gopher"], ["hub-pathway", "scratch"], [0, 1], 100, **kw)
    assert (first.count("ok"), first.count("failed"), first.count("skipped")) == (7, 1, 0)
    failed = trial_folder(root, "Gopher", "hub-pathway", 1)
    status = json.loads((failed / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == "RuntimeError: boom in Gopher/hub-pathway/s1"
    assert "fake_trial" in status["traceback"] and status["seconds"] >= 0 and status["peak_rss_mb"] > 0
    assert status["rss_isolated"] is False  # in-process: the process's high-water mark
    ok = json.loads((trial_folder(root, "Alien", "scratch", 0) / "status.json").read_text())
    assert ok["status"] == "ok" and ok["steps"] == 100 and ok["steps_per_s"] > 0 and ok["error"] is None
    assert ok["system"]["packages"]["torch"] and ok["system"]["cpu_model"]  # what decides the run's floats
    assert [r["status"] for r in _journal(root)].count("ok") == 7
    assert _calls(root)[0].startswith("Alien/hub-pathway/s0")  # seed-major order
    grid = json.loads((root / "grid.json").read_text())
    assert grid["budget"] == 100 and grid["games"] == ["Alien", "Gopher"] and grid["machine"]["cpu_count"]

    second = run_grid(root, ["Alien", "Gopher"], ["hub-pathway", "scratch"], [0, 1], 100, **kw)
    assert (second.count("skipped"), second.count("failed")) == (7, 1)
    (failed / "checkpoint.pt").write_bytes(b"x")  # as if the failure came after a checkpoint
    (root / "fail-Gopher-hub-pathway-s1").unlink()
    third = run_grid(root, ["Alien", "Gopher"], ["hub-pathway", "scratch"], [0, 1], 100, **kw)
    assert (third.count("skipped"), third.count("ok")) == (7, 1)
    calls = _calls(root)
    assert len(calls) == 8 + 1 + 1 and calls[-1] == "Gopher/hub-pathway/s1 resume=True"
    status = json.loads((failed / "status.json").read_text())
    assert status["status"] == "ok" and [h["status"] for h in status["history"]] == ["failed", "failed"]
    assert all(h["system"]["packages"] for h in status["history"])  # each attempt keeps its system
    assert all("num_timesteps" in h for h in status["history"])  # and where it stopped (a stage's report needs it)
    assert len(_journal(root)) == 24

    # A bigger budget: the finished trial's model.zip is a result, never cleared for a fresh start (a real run's
    # status also records its budget, whose schedules bind it: refused either way). The trial resumed from its
    # checkpoint binds the grid's budget too, though this launch does not train it: first it refuses the launch.
    with pytest.raises(GridError, match=r"e.g. Gopher/hub-pathway/s1 with 100 steps .*a grid has one budget"):
        run_grid(root, ["Alien"], ["scratch"], [0], 200, **kw)
    (failed / "checkpoint.pt").unlink()
    fourth = run_grid(root, ["Alien"], ["scratch"], [0], 200, **kw)
    assert fourth.count("refused") == 1 and "model.zip" in fourth.records[0]["error"]
    assert (trial_folder(root, "Alien", "scratch", 0) / "model.zip").read_bytes() == b"fake"


@pytest.mark.slow
def test_process_pool_runs_trials_in_fresh_processes(tmp_path):
    root = tmp_path / "grid"
    root.mkdir()
    (root / "fail-Alien-scratch-s1").touch()
    summary = run_grid(root, ["Alien"], ["scratch"], [0, 1, 2], 64, trial_fn=slow_fake_trial, workers=2, log=None)
    assert (summary.count("ok"), summary.count("failed")) == (2, 1)
    ok = [r for r in summary.records if r["status"] == "ok"]
    assert len({r["pid"] for r in ok}) == 2 and os.getpid() not in {r["pid"] for r in ok}
    assert all(r["rss_isolated"] == (sys.version_info >= (3, 11)) for r in summary.records)
    assert summary.failed[0]["error"] == "RuntimeError: boom in Alien/scratch/s1"


def aborted_trial(spec: dict) -> dict:
    raise KeyboardInterrupt  # what a run stopped at once by a second Ctrl-C/SIGTERM raises, its checkpoint saved


def test_a_trial_stopped_at_once_by_a_second_signal_is_recorded_as_interrupted(tmp_path):
    """The second Ctrl-C raised KeyboardInterrupt through the trial's record: no status.json, no
    journal line. It is now an interrupted attempt like the first signal's, and the grid stops."""
    root = tmp_path / "grid"
    summary = run_grid(root, ["Alien"], ["scratch"], [0, 1], 64, trial_fn=aborted_trial, workers=0, log=None)
    assert [r["status"] for r in summary.records] == ["interrupted"]
    status = json.loads((trial_folder(root, "Alien", "scratch", 0) / "status.json").read_text())
    assert status["status"] == "interrupted" and "second signal" in status["error"]
    assert [r["status"] for r in _journal(root)] == ["interrupted"]


_GRID_UNDER_SIGNAL = """
import signal, sys
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal (a test run under nohup would ignore it)
from hubrl.benchmark import run_grid
from tests.test_benchmark import signal_aware_trial
runner = {"workers": 2}
if sys.argv[2] == "ray":  # a local Ray instance with room for two trials at once
    import os, ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
    runner = {"ray_address": "auto"}
summary = run_grid(sys.argv[1], ["Alien"], ["scratch"], [0, 1, 2, 3], 64, trial_fn=signal_aware_trial, log=None, **runner)
print("returned", [r["status"] for r in summary.records], summary.stopped_by)
"""


def _grid_under_signal(root: Path, signum: int, marker: str, whole_group: bool = True,
                       runner: str = "pool") -> tuple[str, list[dict]]:
    """Run the grid above (two trials at once: a pool of two workers, or Ray tasks) in its own
    process group, send ``signum`` (to the group, or to the grid's own process only) once both
    running trials have written ``marker``, and return what the grid printed and journalled."""
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _GRID_UNDER_SIGNAL, str(root), runner], cwd=ROOT,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240  # both trials' workers import torch; the first trial waits 300 s for its signal
        while len(list(root.glob(f"*/*/s*/{marker}"))) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(list(root.glob(f"*/*/s*/{marker}"))) == 2, proc.stderr.read() if proc.poll() is not None else "slow"
        (os.killpg if whole_group else os.kill)(proc.pid, signum)
        (root / "go").touch()
        out, err = proc.communicate(timeout=360)  # a trial that never sees the signal ends at 300 s
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    return out, _journal(root)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="process groups and SIGHUP are POSIX")
@pytest.mark.parametrize("signum, whole_group, hold", [
    ("SIGTERM", True, False),  # kill -- -PGID, a scheduler's cancel, timeout: the workers get it too
    ("SIGHUP", True, False),  # the terminal closed
    ("SIGTERM", False, False),  # kill PID of the grid alone: it asks its workers to stop
    ("SIGTERM", True, True),  # while the trials set up, before their training handles signals
])
def test_a_signalled_grid_records_its_interrupted_trials_and_starts_no_more(tmp_path, signum, whole_group, hold):
    """A signal to the grid used to kill its own process at once: the trials in its workers
    checkpointed, but trials.jsonl never heard of them; one that reached a worker outside its
    training killed the worker and failed the running trials as "killed by the OS"; one that
    reached only the grid's process left the trials training. Now each stops its trials cleanly,
    journals them, starts none of the others and says which signal stopped it."""
    root = tmp_path / "grid"
    if hold:
        root.mkdir()
        (root / "hold-setup").touch()
    out, journal = _grid_under_signal(root, getattr(signal, signum), "setting-up" if hold else "started", whole_group)
    assert f"returned ['interrupted', 'interrupted'] {int(getattr(signal, signum))}" in out
    assert [r["status"] for r in journal] == ["interrupted", "interrupted"]
    assert {r["trial"] for r in journal} == {"Alien/scratch/s0", "Alien/scratch/s1"}
    assert not list(root.glob("Alien/scratch/s[23]/setting-up"))  # no further trial began


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one local Ray instance at a time: pytest-xdist runs a group on one worker
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="process groups and SIGHUP are POSIX")
@pytest.mark.parametrize("signum, marker", [("SIGINT", "started"), ("SIGTERM", "setting-up")])
def test_a_signalled_ray_grid_checkpoints_and_journals_its_trials_and_starts_no_more(tmp_path, signum, marker):
    """Ray's workers run in process groups of their own: a Ctrl-C reaches only the grid's process.
    It used to cancel the tasks and shut Ray down at once: the trials were killed before their
    checkpoint and trials.jsonl never heard of them. Now the running trials stop as on a first
    signal (in training, or kept while they set up) and are journalled; the queued ones never start."""
    pytest.importorskip("ray", reason="needs the [ray] extra: pip install -e '.[ray]'")
    root = tmp_path / "grid"
    root.mkdir()
    if marker == "setting-up":
        (root / "hold-setup").touch()
    out, journal = _grid_under_signal(root, getattr(signal, signum), marker, whole_group=False, runner="ray")
    assert f"returned ['interrupted', 'interrupted'] {int(getattr(signal, signum))}" in out
    assert [r["status"] for r in journal] == ["interrupted", "interrupted"]
    assert all(r["interrupted_by"] == signal.SIGINT for r in journal)  # Ray's cancel: a first SIGINT in the trial
    assert {r["trial"] for r in journal} == {"Alien/scratch/s0", "Alien/scratch/s1"}
    assert not list(root.glob("Alien/scratch/s[23]/setting-up"))  # no further trial began


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_the_grids_stop_request_never_makes_a_signal_the_second():
    """In a worker, the grid's request (SIGUSR1) may be handled before the group's SIGTERM (signals
    run in number order): that SIGTERM is still the first signal, a clean stop, and only another one
    aborts. A signal that came before training began is found when it starts."""
    from hubrl.signals import SignalStop, deferred_signals, pending_signal

    with deferred_signals():
        with SignalStop() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.received == signal.SIGUSR1
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == signal.SIGTERM  # not an abort
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # between trainings: kept, not the end of the process
        assert pending_signal() == signal.SIGTERM
        with SignalStop() as stop:
            assert stop.received == signal.SIGTERM
    assert pending_signal() is None and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def slow_starting_worker() -> None:
    """A grid worker that takes a second to start: exits with the signal it kept (0: none)."""
    from hubrl.signals import defer_signals, pending_signal

    time.sleep(1.0)  # importing torch, say: the signals are not in hubrl's hands yet
    defer_signals()
    time.sleep(0.2)
    sys.exit(int(pending_signal() or 0))


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGUSR1"])
def test_a_worker_signalled_while_it_starts_keeps_the_signal_instead_of_dying(signum):
    """A SIGTERM to the grid's process group, or the grid's own stop request, reaching a worker
    still starting (before it can keep signals) ended it, and a dead worker breaks the pool and
    fails every running trial. Started with the signals held (signals.held_signals), it keeps it."""
    import multiprocessing

    from hubrl.signals import held_signals

    with held_signals():
        worker = multiprocessing.get_context("spawn").Process(target=slow_starting_worker)
        worker.start()
    try:
        time.sleep(0.3)
        os.kill(worker.pid, getattr(signal, signum))
        worker.join(timeout=60)
    finally:
        if worker.is_alive():
            worker.kill()
    assert worker.exitcode == int(getattr(signal, signum))


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_a_signal_kept_between_trainings_still_hangs_up_and_aborts_like_one_in_training(monkeypatch):
    """Kept signals behave as in training: a hang-up points the terminal output away at once (the
    trial's next line to a closed terminal would fail), and a second Ctrl-C or SIGTERM aborts."""
    import hubrl.signals
    from hubrl.signals import deferred_signals, pending_signal

    silenced = []
    monkeypatch.setattr(hubrl.signals, "silence_terminal_output", lambda: silenced.append(True))
    before = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal: a background job (CI) ignores both
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            assert pending_signal() == signal.SIGHUP and silenced == [True]
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGHUP, before[0])
        signal.signal(signal.SIGINT, before[1])


def test_a_grid_whose_every_trial_ran_is_not_stopped_by_a_late_signal(tmp_path):
    """A signal kept during the last trial's final evaluation cuts nothing short: the grid is not
    reported as stopped (no 128 + signal exit, --report still written)."""
    root = tmp_path / "grid"

    def last_trial_signalled(spec: dict) -> dict:
        os.kill(os.getpid(), signal.SIGTERM)  # kept (not in training), as in a final evaluation
        return fake_trial(spec)

    summary = run_grid(root, ["Alien"], ["scratch"], [0], 64, trial_fn=last_trial_signalled, workers=0, log=None)
    assert [r["status"] for r in summary.records] == ["ok"] and summary.stopped_by is None


def test_a_stopped_grid_exits_as_a_stopped_run_and_writes_no_report(tmp_path, monkeypatch, capsys):
    """128 + the signal, like a stopped transfer, so a scheduler or ``&&`` sees the grid did not
    finish; and no --report of a grid cut short."""
    import hubrl.benchmark
    import hubrl.report
    from hubrl.benchmark import GridSummary
    from hubrl.cli import command_main

    monkeypatch.setattr(hubrl.benchmark, "run_grid", lambda root, *a, **k: GridSummary(Path(root), stopped_by=15))
    monkeypatch.setattr(hubrl.report, "write_report", lambda *a, **k: pytest.fail("a report of a stopped grid"))
    argv = ["run", "--root", str(tmp_path), "--env", "Alien", "--method", "scratch", "--timesteps", "1k", "--report"]
    code = command_main("bench")(argv)
    assert code == 128 + 15
    assert (f"Stopped by a signal: rerun the same command, or run --root {tmp_path} --continue, to continue the grid "
            "(then --report).") in capsys.readouterr().out


def test_run_report_of_a_paused_grid_warns_and_reports_its_stage(tmp_path, monkeypatch, capsys):
    """``run --pause-at 500 --report``: the report at the budget has empty tables; its warning was
    dropped (only ``report`` printed it), and the stage the grid paused at went unreported."""
    import hubrl.benchmark
    import hubrl.report
    from hubrl.benchmark import GridSummary
    from hubrl.cli import command_main

    def report(root, *args, stage=None, notices=None, **kwargs):
        if notices is not None:
            notices.append("No trial has reached 1,000 agent steps yet")
        return Path(root) / "report" / (f"at-{stage}" if stage else "") / "report.md"

    monkeypatch.setattr(hubrl.benchmark, "run_grid", lambda root, *a, **k: GridSummary(Path(root)))
    monkeypatch.setattr(hubrl.report, "write_report", report)
    argv = ["run", "--root", str(tmp_path), "--env", "Alien", "--method", "scratch", "--timesteps", "1k",
            "--pause-at", "500", "--report"]
    assert command_main("bench")(argv) == 0
    out = capsys.readouterr().out
    assert "warning: No trial has reached 1,000 agent steps yet\n" in out
    assert f"report at 500 steps: {tmp_path / 'report' / 'at-500' / 'report.md'}" in out


@pytest.mark.slow
def test_a_dead_worker_fails_its_trial_and_the_grid_goes_on(tmp_path):
    root = tmp_path / "grid"
    root.mkdir()
    (root / "die-Alien-scratch-s1").touch()
    summary = run_grid(root, ["Alien"], ["scratch"], [0, 1, 2], 64, trial_fn=fake_trial, workers=1, log=None)
    assert [r["status"] for r in summary.records] == ["ok", "failed", "ok"]
    assert "worker process died" in summary.records[1]["error"]
    status = json.loads((trial_folder(root, "Alien", "scratch", 1) / "status.json").read_text())
    assert status["status"] == "failed"


def test_bad_grids(tmp_path):
    with pytest.raises(GridError, match="budget must be positive"):
        run_grid(tmp_path, ["Alien"], ["scratch"], [0], 0, trial_fn=fake_trial)
    with pytest.raises(GridError, match="Did you mean Alien"):
        run_grid(tmp_path, ["Alen"], ["hub-pathway"], [0], 10)
    with pytest.raises(GridError, match="Unknown method.*magic"):
        run_grid(tmp_path, ["Alien"], ["magic"], [0], 10)
    with pytest.raises(GridError, match="Unknown transfer setting.*bogus"):
        run_grid(tmp_path, ["Alien"], ["hub-pathway"], [0], 10, settings={"bogus": 1})
    with pytest.raises(GridError, match="hub-pathway-0: --top-k must be at least 1"):  # checked before any trial
        run_grid(tmp_path, ["Alien"], ["scratch", "hub-pathway:top_k=0"], [0], 10, settings={"noise_floor": 0.1})
    with pytest.raises(GridError, match="--top-k must be a whole number of experts, got 'abc'"):  # not "at least 1"
        run_grid(tmp_path, ["Alien"], ["hub-pathway:top_k=abc"], [0], 10)
    with pytest.raises(GridError, match=r"lite \(--lite\) is a switch: true or false, got 'yes'"):
        run_grid(tmp_path, ["Alien"], ["zoo-tuning:lite=yes"], [0], 10)  # a string would have run as "true"
    with pytest.raises(GridError, match="--freeze-experts is an option of --method hub-pathway; zoo-tuning does not"):
        run_grid(tmp_path, ["Alien"], ["zoo-tuning:freeze_experts=true"], [0], 10)  # a method's own option, checked
    run_grid(tmp_path / "set", ["Alien"], ["scratch"], [0], 10, settings={"top_k": 1}, trial_fn=fake_trial)  # --set: all
    with pytest.raises(GridError, match=r"'hub-pathway:top_k=2' and 'hub-pathway:noise=2' are both the arm 'hub-pathway-2'"):
        run_grid(tmp_path / "same", ["Alien"], ["hub-pathway:top_k=2", "hub-pathway:noise=2"], [0], 10, trial_fn=fake_trial)
    assert not (tmp_path / "same").exists()  # two arms in one folder: the second would skip as the first's results
    run_grid(tmp_path / "two", ["Alien"], ["hub-pathway:top_k=2", "noise2=hub-pathway:noise=2"], [0], 10, trial_fn=fake_trial)
    # what the hub cannot serve, checked against it before any trial starts (each used to fail as it started)
    with pytest.raises(GridError, match=r"hub-pathway-5: --top-k 5 is larger than the hub \(2 experts: "):
        run_grid(tmp_path, ["Alien"], ["scratch", "hub-pathway:top_k=5"], [0], 10, trial_fn=fake_trial, validate=True)
    with pytest.raises(GridError, match=r"finetune-pong: .*pong"):
        run_grid(tmp_path, ["Alien"], ["finetune:source=pong"], [0], 10, trial_fn=fake_trial, validate=True)
    rgb = make_tiny_hub(tmp_path / "rgb-hub", names=("x-ppo", "y-ppo"), in_channels=3)
    with pytest.raises(GridError, match="zoo-tuning: Expert 'x-ppo' reads 3 stacked frames but the target env gives 4"):
        run_grid(tmp_path, ["Alien"], ["zoo-tuning"], [0], 10, settings={"hub": str(rgb)}, trial_fn=fake_trial,
                 validate=True)
    assert not (tmp_path / "Alien").exists()


def test_ray_missing_gives_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(GridError, match=r'pip install "hubrl\[ray\]"'):
        run_grid(tmp_path, ["Alien"], ["scratch"], [0], 10, trial_fn=fake_trial, ray_address="auto", log=None)


@pytest.mark.xdist_group("ray")
def test_ray_runs_trials_as_tasks(tmp_path):
    ray = pytest.importorskip("ray", reason="needs the [ray] extra: pip install -e '.[ray]'")
    root = tmp_path / "grid"
    root.mkdir()
    (root / "fail-Alien-scratch-s1").touch()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
    try:
        summary = run_grid(root, ["Alien"], ["scratch"], [0, 1], 64, trial_fn=fake_trial, ray_address="auto", log=None)
    finally:
        ray.shutdown()
        for sig, handler in handlers.items():  # ray.init installs its own, which shutdown leaves: the tests
            signal.signal(sig, handler)        # that run after this one in the same (xdist) worker expect the default
    assert (summary.count("ok"), summary.count("failed")) == (1, 1)
    assert summary.failed[0]["error"] == "RuntimeError: boom in Alien/scratch/s1"
    assert all(r["pid"] != os.getpid() and r["rss_isolated"] for r in summary.records)
    assert trial_state(trial_folder(root, "Alien", "scratch", 0), 64) == "finished"


def test_a_trial_whose_config_is_gone_is_told_the_grids_fix(tmp_path):
    """A trial with a checkpoint but no config.yaml (a partial copy) failed with a command's advice,
    "start a new run with another --out", which a grid's trial has no way to follow."""
    from stable_baselines3 import PPO

    from hubrl.checkpoint import save_training_checkpoint
    from hubrl.envs import make_atari_vec_env

    root = tmp_path / "grid"
    folder = trial_folder(root, "Gopher", "scratch", 0)
    folder.mkdir(parents=True)
    model = PPO("CnnPolicy", make_atari_vec_env("Gopher", 1, seed=0), n_steps=8, batch_size=8, device="cpu")
    model.num_timesteps = 64
    save_training_checkpoint(model, folder / "checkpoint.pt")
    summary = run_grid(root, ["Gopher"], ["scratch"], [0], 128, settings=dict(n_envs=1, device="cpu"), workers=0, log=None)
    error = summary.failed[0]["error"]
    assert "config.yaml is missing" in error and f"For this grid's trial: delete {folder} and run the grid again" in error


def test_leftovers_of_a_run_still_working_are_not_cleared(tmp_path):
    """A trial folder without a checkpoint reads as fresh, and the grid cleared it, lock file
    included: a run still working there (started by hand, or orphaned by a runner killed outright)
    lost its records, and the new attempt locked a new .lock file, so both trained one folder.
    Now the folder's lock is taken first; held, the trial is refused and nothing is deleted."""
    from hubrl.locks import exclusive_lock
    from hubrl.trial import clear_leftovers

    folder = trial_folder(tmp_path, "Gopher", "scratch", 0)
    (folder / "tb").mkdir(parents=True)
    (folder / "config.yaml").write_text("run: {}\n")
    with exclusive_lock(folder / ".lock"):  # the run working there
        with pytest.raises(GridError, match=f"{folder} is in use by another process \\(pid {os.getpid()}"):
            clear_leftovers(folder)
        assert sorted(p.name for p in folder.iterdir()) == [".lock", "config.yaml", "tb"]
    clear_leftovers(folder)  # it ended: an attempt's leftovers, cleared but for the lock file
    assert [p.name for p in folder.iterdir()] == [".lock"]


@pytest.mark.slow
def test_real_trials_in_process_clear_leftovers_then_pause_continue_and_refuse_another_budget(tmp_path):
    from tests.conftest import TINY_PPO, make_tiny_hub

    settings = dict(hub=str(make_tiny_hub(tmp_path / "hub")), n_envs=2, eval_freq=10**9, eval_episodes=1,
                    checkpoint_freq=10**9, hyperparams=dict(TINY_PPO), device="cpu")
    root = tmp_path / "grid"
    folder = trial_folder(root, "Gopher", "hub-pathway", 0)
    folder.mkdir(parents=True)  # an attempt that failed before its first checkpoint
    (folder / "config.yaml").write_text("run: {}\n")
    (folder / "status.json").write_text(json.dumps({"status": "failed", "steps": 0, "seconds": 1.0}))
    settings["eval_freq"] = 64  # an evaluation at the pause point, as a staged grid has
    first = run_grid(root, ["Gopher"], ["hub-pathway"], [0], 128, settings=settings, workers=0, log=None, pause_at=64)
    assert first.records[0]["status"] == "paused", first.records[0].get("traceback")
    assert first.records[0]["resumed"] is False and first.records[0]["num_timesteps"] == 64
    assert json.loads((root / "grid.json").read_text())["pause_at"] == 64
    again = run_grid(root, ["Gopher"], ["hub-pathway"], [0], 128, settings=settings, workers=0, log=None, pause_at=64)
    assert again.records[0]["status"] == "skipped"  # this stage is done: nothing retrained
    second = run_grid(root, ["Gopher"], ["hub-pathway"], [0], 128, settings=settings, workers=0, log=None)
    rec = second.records[0]
    assert rec["status"] == "ok" and rec["resumed"] is True and rec["steps"] == 64 and rec["num_timesteps"] == 128
    assert rec["inference_steps_per_s"] > 0 and rec["params"] > 0  # the saved model.zip, timed
    assert "rollout_score" in rec  # mean raw score of the last training games (None before any game ended)
    points = json.loads((folder / "evaluations.json").read_text())["points"]
    assert [p["step"] for p in points] == [64, 128] and trial_state(folder, 128) == "finished"
    history = json.loads((folder / "status.json").read_text())["history"]
    assert [h["status"] for h in history] == ["failed", "paused"]
    # another budget is refused before anything is written: the trial's files and grid.json stay as they were
    (folder / "model.zip").unlink()
    before = {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*") if p.name != ".lock"}
    grid_json = (root / "grid.json").read_text()
    with pytest.raises(GridError, match=r"1 trial\(s\) of .* were started with another budget, e.g. "
                                        r"Gopher/hub-pathway/s0 with 128 steps .* rerun with --timesteps 128"):
        run_grid(root, ["Gopher"], ["hub-pathway"], [0], 256, settings=settings, workers=0, log=None)
    assert {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*") if p.name != ".lock"} == before
    assert (root / "grid.json").read_text() == grid_json  # the report still reads the grid's 128-step budget
    # so are other settings for its started trials, once, up front, not as a failure of every trial
    with pytest.raises(GridError, match=r"Gopher/hub-pathway/s0 was started with other settings than this launch gives "
                                        r"it \(--n-envs 1 where it has 2; .*grid.json records them: run --root .* "
                                        r"--continue\), or use another --root"):
        run_grid(root, ["Gopher"], ["hub-pathway"], [0], 128, settings={**settings, "n_envs": 1}, workers=0, log=None)
    assert {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*") if p.name != ".lock"} == before
    again = run_grid(root, ["Gopher"], ["hub-pathway"], [0], 128, settings=settings, workers=0, log=None)
    assert again.records[0]["status"] == "skipped"  # archived without model.zip, still finished at its own budget
    # a finished trial archived without its checkpoint: another arm's settings would take its results as theirs
    for checkpoint in folder.glob("checkpoint*.pt"):
        checkpoint.unlink()
    assert not has_checkpoint(folder)
    with pytest.raises(GridError, match=r"Gopher/hub-pathway/s0 was started with other settings .*--n-envs 1 where it has 2"):
        run_grid(root, ["Gopher"], ["hub-pathway"], [0], 128, settings={**settings, "n_envs": 1}, workers=0, log=None)
    assert run_grid(root, ["Gopher"], ["hub-pathway"], [0], 128, settings=settings, workers=0,
                    log=None).records[0]["status"] == "skipped"


def test_run_continue_relaunches_the_grids_last_launch_from_its_grid_json(tmp_path, monkeypatch):
    """A grid stopped by a signal says "rerun the same command"; a user who no longer has it typed
    every flag again, and one left out was refused as other settings. ``run --continue`` takes the
    launch grid.json records; only how and how far to run may be given anew."""
    import hubrl.benchmark
    from hubrl.benchmark import GridSummary
    from hubrl.cli.bench import main

    root = tmp_path / "g"
    root.mkdir()
    launch = {"games": ["Alien", "Gopher"], "methods": ["scratch", "finetune:source=seaquest-ppo"], "seeds": [2],
              "budget": 1_000_000, "pause_at": 250_000, "settings": {"eval_freq": 50_000, "eval_episodes": 10},
              "workers": 2, "ray_address": None}
    (root / "grid.json").write_text(json.dumps(launch))
    calls = []

    def fake_run_grid(root_, games, methods, seeds, budget, **kwargs):
        calls.append((games, methods, seeds, budget, kwargs))
        return GridSummary(Path(root_))

    monkeypatch.setattr(hubrl.benchmark, "run_grid", fake_run_grid)
    assert main(["run", "--root", str(root), "--continue", "--pause-at", "500k", "--threads", "1"]) == 0
    games, methods, seeds, budget, kwargs = calls[-1]
    assert (games, methods, seeds, budget) == (["Alien", "Gopher"], ["scratch", "finetune:source=seaquest-ppo"], [2],
                                               1_000_000)
    assert kwargs["settings"] == launch["settings"] and kwargs["workers"] == 2 and kwargs["threads"] == 1
    assert kwargs["pause_at"] == 500_000  # how far: as given now (none: grid.json's)
    main(["run", "--root", str(root), "--continue", "--workers", "1"])
    assert calls[-1][4]["workers"] == 1 and calls[-1][4]["pause_at"] == 250_000
    with pytest.raises(UsageError, match="--continue reads only .*; it does not read --seed"):  # it would change it
        main(["run", "--root", str(root), "--continue", "--seed", "0", "1", "2"])
    assert len(calls) == 2
    with pytest.raises(UsageError, match=r"--continue: .*new has no grid.json, so there is no launch to continue"):
        main(["run", "--root", str(tmp_path / "new"), "--continue"])
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "grid.json").write_text('{"games": ["Alien"], "budg')  # cut short: not "no grid.json"
    with pytest.raises(UsageError, match=r"--continue: .*torn/grid.json is damaged \(JSONDecodeError.*mend the file"):
        main(["run", "--root", str(tmp_path / "torn"), "--continue"])
    with pytest.raises(UsageError, match=r"required: --timesteps \(or --continue"):
        main(["run", "--root", str(root), "--env", "Alien"])


def _script_main():
    """``main`` of ``hubrl-bench`` (scripts/benchmark.py)."""
    from hubrl.cli.bench import main

    return main


@pytest.mark.slow
def test_tiny_real_grid_run_then_report(tmp_path):
    """scripts/benchmark.py run + report on 1 game, hub-pathway, 1 seed, 128 steps of tiny PPO."""
    import yaml

    from tests.conftest import TINY_PPO, make_tiny_hub, run_script

    hub = make_tiny_hub(tmp_path / "hub")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_PPO))
    root = tmp_path / "bench"
    result = run_script(
        "benchmark.py", "run", "--root", str(root), "--env", "Gopher", "--method", "hub-pathway:aggregation=heads",
        "--seed", "0",
        "--timesteps", "128", "--hub", str(hub), "--n-envs", "2", "--eval-freq", "1M", "--eval-episodes", "1",
        "--checkpoint-freq", "1M", "--hyperparams", str(tmp_path / "tiny.yaml"), "--device", "cpu", "--threads", "1",
        "--set", "top_k=2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 trials: 1 ok" in result.stdout
    folder = root / "Gopher" / "hub-pathway-heads" / "s0"
    assert {"model.zip", "evaluations.json", "config.yaml", "checkpoint.pt", "status.json"} <= {
        p.name for p in folder.iterdir()}
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "ok" and status["num_timesteps"] == 128 and status["device"] == "cpu" and status["rss_isolated"]
    run = yaml.safe_load((folder / "config.yaml").read_text())["run"]
    assert run["top_k"] == 2 and run["aggregation"] == "heads" and run["method"] == "hub-pathway"
    assert trial_state(folder, 128) == "finished"

    assert _script_main()(["report", str(root), "--reps", "1000"]) == 0  # in-process: torch and SB3 are loaded already
    out = root / "report"
    assert {"report.md", "results.csv", "compute.csv", "aggregate.csv", "runs.csv", "curves_Gopher.png",
            "aggregate_iqm.png"} <= {p.name for p in out.iterdir()}
    text = (out / "report.md").read_text()
    assert "Budget: 128 agent steps" in text and "Seeds: 0" in text and "hub-pathway-heads" in text
    compute = (out / "compute.csv").read_text().splitlines()
    params = int(compute[1].split(",")[compute[0].split(",").index("params")])
    assert params > 100_000  # two NatureCNN experts and the heads


def test_cli_bad_input_is_one_line(tmp_path):
    from tests.conftest import run_script

    result = run_script("benchmark.py", "run", "--root", str(tmp_path), "--env", "Alen", "--timesteps", "1k")
    assert result.returncode == 2 and "Did you mean Alien?" in result.stderr and "Traceback" not in result.stderr


def test_method_variants_name_their_folders_and_carry_their_settings(tmp_path):
    from hubrl.benchmark import _expand_finetune, make_specs, parse_method
    from tests.conftest import make_tiny_hub

    assert parse_method("hub-pathway:aggregation=heads,top_k=2") == (
        "hub-pathway-heads-2", "hub-pathway", {"aggregation": "heads", "top_k": 2})
    assert parse_method("zoo-tuning:lite") == ("zoo-tuning-lite", "zoo-tuning", {"lite": True})
    assert parse_method("scratch") == ("scratch", "scratch", {})
    assert parse_method("hp-new=hub-pathway:top_k=2") == ("hp-new", "hub-pathway", {"top_k": 2})
    assert make_specs(tmp_path, ["Alien"], ["hp-new=hub-pathway"], [0], 100)[0]["folder"] == str(
        tmp_path / "Alien" / "hp-new" / "s0")
    with pytest.raises(GridError, match="must be a folder name"):
        parse_method("../x=hub-pathway")
    with pytest.raises(GridError, match="share the label"):
        run_grid(tmp_path / "g", ["Alien"], ["hub-pathway", "hub-pathway=hub-pathway:top_k=2"], [0], 100)
    spec = make_specs(tmp_path, ["Alien"], ["finetune:source=seaquest-ppo"], [1], 100)[0]
    assert spec["folder"] == str(tmp_path / "Alien" / "finetune-seaquest-ppo" / "s1")
    assert spec["base_method"] == "finetune" and spec["overrides"] == {"source": "seaquest-ppo"}
    hub = make_tiny_hub(tmp_path / "hub")
    assert _expand_finetune(["scratch", "finetune"], {"hub": str(hub)}) == [
        "scratch", "finetune:source=riverraid-ppo", "finetune:source=seaquest-ppo"]
    assert _expand_finetune(["finetune"], {"hub": str(hub), "source": "seaquest-ppo"}) == ["finetune"]
    with pytest.raises(GridError, match="Unknown transfer setting"):
        run_grid(tmp_path / "g", ["Alien"], ["hub-pathway:agregation=heads"], [0], 100)


def test_the_grid_lock_is_held_while_trials_run(tmp_path):
    """The runner holds ``<root>/.lock`` for the whole grid, not only while it starts: a second
    runner arriving mid-grid is refused."""
    from hubrl.locks import LockHeld, exclusive_lock

    held: list[bool] = []

    def trial(spec: dict) -> dict:
        try:
            with exclusive_lock(Path(spec["folder"]).parents[2] / ".lock"):
                held.append(False)
        except LockHeld:
            held.append(True)
        return fake_trial(spec)

    run_grid(tmp_path, ["Alien"], ["scratch"], [0, 1], 10, trial_fn=trial, workers=0, log=None)
    assert held == [True, True]


class _Built(Exception):
    """Raised by a stand-in ``run_transfer``: the trial's config was built, nothing trained."""


def test_grid_wide_settings_go_to_the_arms_that_take_them(tmp_path, monkeypatch):
    """``--hub`` / ``--sources`` serve the grid's hub methods and ``--set source=NAME`` its finetune arm:
    scratch and hub-pathway beside them run without what they would refuse (each used to stop the
    whole grid: ``--method scratch hub-pathway --hub hub``, the command of ``hubrl-bench --help``).
    A method's own ``NAME:KEY=VALUE`` is still checked."""
    import hubrl.transfer
    from hubrl.benchmark import make_specs, run_trial
    from tests.conftest import make_tiny_hub

    hub = str(make_tiny_hub(tmp_path / "hub"))
    settings = {"hub": hub, "source": "seaquest-ppo"}
    methods = ["scratch", "hub-pathway", "finetune"]
    run_grid(tmp_path / "g", ["Alien"], methods, [0], 10, settings=settings, trial_fn=fake_trial, validate=True, log=None)
    built: dict[str, hubrl.transfer.TransferConfig] = {}

    def run_transfer(cfg, **kwargs):
        hubrl.transfer.validate_config(cfg)
        built[cfg.method] = cfg
        raise _Built

    monkeypatch.setattr(hubrl.transfer, "run_transfer", run_transfer)
    for spec in make_specs(tmp_path / "h", ["Alien"], methods, [0], 10, settings):
        with pytest.raises(_Built):
            run_trial(spec)
    assert (built["scratch"].hub, built["scratch"].source) == (None, None)
    assert (built["hub-pathway"].hub, built["hub-pathway"].source) == (hub, None)
    assert (built["finetune"].hub, built["finetune"].source) == (hub, "seaquest-ppo")
    with pytest.raises(GridError, match="scratch uses no hub"):
        run_grid(tmp_path / "g2", ["Alien"], [f"scratch:hub={hub}"], [0], 10, trial_fn=fake_trial, validate=True)


def test_a_game_named_twice_is_one_trial(tmp_path):
    """``--env Alien alien ALE/Alien-v5`` is one game: one trial per method and seed, not three trials
    of one folder (which a pool of workers would train at the same time)."""
    summary = run_grid(tmp_path, ["Alien", "alien", "ALE/Alien-v5"], ["scratch"], [0], 10, trial_fn=fake_trial, log=None)
    assert [r["trial"] for r in summary.records] == ["Alien/scratch/s0"]
    assert json.loads((tmp_path / "grid.json").read_text())["games"] == ["Alien"]


@pytest.mark.parametrize("setting, flag, reader", [({"top_k": 2}, "--top-k", "hub-pathway"),
                                                   ({"hub": "SHIPPED"}, "--hub", "hub-pathway or finetune"),
                                                   ({"select_frames": 5000}, "--select-timesteps", "select")])
def test_a_grid_wide_setting_no_arm_reads_is_refused(tmp_path, setting, flag, reader):
    """``--method scratch --set top_k=2`` (or ``--hub``): no trial reads it, so the grid refuses it before
    anything is written instead of running every trial without it; beside an arm that reads it, it runs."""
    from hubrl.hub import default_hub_path

    setting = {key: str(default_hub_path()) if value == "SHIPPED" else value for key, value in setting.items()}
    with pytest.raises(GridError, match=f"\\({flag}\\) is read only by --method {reader}.*its methods: scratch"):
        run_grid(tmp_path / "g", ["Alien"], ["scratch"], [0], 10, settings=setting, trial_fn=fake_trial, validate=True)
    assert not (tmp_path / "g" / "Alien").exists() and not (tmp_path / "g" / "grid.json").exists()
    run_grid(tmp_path / "ok", ["Alien"], ["scratch", "hub-pathway", "select"], [0], 10, settings=setting,
             trial_fn=fake_trial, validate=True, log=None)


def test_a_started_trial_relaunched_with_the_presets_n_envs_is_not_refused(tmp_path):
    """A grid launched without --n-envs (the preset's 8) pauses; the same command with the next
    --pause-at must continue it. The trial's config.yaml holds the resolved 8, the launch None: the
    up-front check resolves it as the trial's own resume does, and skips the options the trial's
    method does not read. Another --n-envs is still refused."""
    import yaml

    root = tmp_path / "grid"
    folder = trial_folder(root, "Alien", "scratch", 0)
    folder.mkdir(parents=True)
    run = {"env": "Alien", "method": "scratch", "seed": 0, "timesteps": 1000, "n_envs": 8, "out": str(folder),
           "noise": "learned"}  # a hub-pathway option scratch never reads, saved at an older default
    (folder / "config.yaml").write_text(yaml.safe_dump({"run": run}))
    (folder / "checkpoint.pt").write_bytes(b"a paused trial's checkpoint")
    (folder / "status.json").write_text(json.dumps({"status": "paused", "num_timesteps": 256, "paused": True,
                                                    "budget": 1000}))
    launch = dict(trial_fn=fake_trial, validate=True, log=None)
    summary = run_grid(root, ["Alien"], ["scratch"], [0], 1000, **launch)
    assert summary.records[0]["status"] == "ok"
    with pytest.raises(GridError, match=r"Alien/scratch/s0 was started with other settings .*--n-envs 4 where it has 8"):
        run_grid(root, ["Alien"], ["scratch"], [0], 1000, settings={"n_envs": 4}, **launch)


def test_every_bench_flag_takes_the_default_its_help_names():
    """``routes --help`` said ``--play`` defaults to 0 (no play), and ``--play 0`` was refused as not
    positive: the default of every flag is a value the flag takes."""
    import argparse

    from hubrl.cli.bench import build_parser, parse_args

    assert parse_args(["routes", "g", "--play", "0"]).play == parse_args(["routes", "g"]).play == 0
    with pytest.raises(UsageError, match="--play: -1 is out of range"):
        parse_args(["routes", "g", "--play", "-1"])
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        for action in command._actions:
            if callable(action.type) and action.default is not None and not isinstance(action.default, list):
                assert action.type(str(action.default)) == action.default, (name, action.option_strings)


@pytest.mark.parametrize("methods, settings, message", [
    (["scratch"], {"hyperparams": 5}, "--set hyperparams: 5 (int) is not dict[str, Any]: write a YAML mapping, e.g. "
                                      "--set hyperparams={n_steps: 128}."),
    (["scratch"], {"hyperparams": {"nsteps": 5}}, "scratch: Unknown hyperparameter(s) nsteps in hyperparams (--hyperparams "
                                                  "or --set hyperparams) for ppo: known are "),
    (["scratch:algo=a2c"], {"hyperparams": {"n_epochs": 4}}, "scratch-a2c: Unknown hyperparameter(s) n_epochs in "),
    (["scratch"], {"n_envs": 5000}, "scratch: Hyperparameter n_envs: 5000 in --n-envs (or --set n_envs) is not valid: "
                                    "expected a number of parallel games up to 1,024."),
    (["scratch"], {"n_envs": 4, "hyperparams": {"n_envs": 8}}, "scratch: --n-envs 4 and the --hyperparams n_envs: 8 disagree"),
    (["scratch"], {"tensorboard_log": 5}, "--set tensorboard_log: 5 (int) is not str | None: quote it to keep it text, "
                                          "e.g. --set tensorboard_log=\"'5'\"."),
    (["hub-pathway"], {"sources": "a.zip"}, "--set sources: 'a.zip' (str) is not list[str]: write a YAML list, e.g. "
                                            "--set sources=[a.zip]."),
    (["hub-pathway"], {"hub": 5}, "--set hub: 5 (int) is not str | None: quote it to keep it text"),
    (["scratch"], {"repeat_action_probability": "x"},
     "--set repeat_action_probability: 'x' (str) is not float: give a number."),
    (["scratch", "hub-pathway:hub=5"], {}, "hub-pathway-5: hub: 5 (int) is not str | None: give a str."),
    (["hub-pathway:noise_floor=x"], {}, "hub-pathway-x: noise_floor: 'x' (str) is not float: give a number."),
    (["hub-pathway:sources=a.zip"], {}, "hub-pathway-a.zip: sources: 'a.zip' (str) is not list[str]: a method's option takes "
                                        "one plain value, not a list: name a hub folder instead (hub-pathway:hub=DIR), or "
                                        "give it to every arm with --set sources=[a, b]."),
    (["scratch:hyperparams=5"], {}, "scratch-5: hyperparams: 5 (int) is not dict[str, Any]: a method's option takes one "
                                    "plain value, not a mapping: give it to every arm with --set hyperparams={n_steps: 128}."),
], ids=["hyperparams-int", "hyperparams-typo", "hyperparams-of-another-algo", "n_envs-past-1024", "n_envs-twice",
        "tensorboard_log-int", "sources-a-string", "hub-int", "sticky-actions-text", "option-hub-int",
        "option-noise_floor-text", "option-sources-a-string", "option-hyperparams-int"])
def test_a_bad_set_value_is_refused_at_launch_as_its_flag_would_be(tmp_path, methods, settings, message):
    """``--set KEY=VALUE`` (any YAML) skipped the checks of the flags: ``hyperparams=5`` made every trial fail with
    "'int' object is not a mapping", a misspelt hyperparameter or ``n_envs=5000`` (--n-envs stops at 1024) each trial
    as it started, ``sources=a.zip`` was read letter by letter, ``hub=5`` failed in os.fspath. Now the launch refuses
    each, in one line naming the key and what to write, before any trial starts or anything is written."""
    with pytest.raises(GridError) as refused:
        run_grid(tmp_path / "g", ["Alien"], methods, [0], 1000, settings=settings, trial_fn=fake_trial, validate=True,
                 log=None)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value), str(refused.value)
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("setting, named", [("hyperparams=5", "--set hyperparams: 5 (int) is not dict"),
                                            ("hyperparams={nsteps: 5}", "Unknown hyperparameter(s) nsteps"),
                                            ("n_envs=5000", "n_envs: 5000 in --n-envs (or --set n_envs)"),
                                            ("sources=a.zip", "--set sources: 'a.zip' (str) is not list[str]"),
                                            ("hub=5", "--set hub: 5 (int) is not str | None")],
                         ids=["hyperparams-int", "hyperparams-typo", "n_envs-past-1024", "sources-a-string", "hub-int"])
def test_bench_run_refuses_a_bad_set_value_in_one_line_before_any_trial(tmp_path, monkeypatch, setting, named):
    """The command line's path: ``hubrl-bench run ... --set KEY=VALUE`` exits 2 with one line, and no grid folder."""
    import contextlib
    import io

    from hubrl.cli import command_main
    from hubrl.cli.common import main_guard

    def run_transfer(cfg, **kwargs):  # the trials run in this process (--workers 0): none may train
        raise _Built

    monkeypatch.setattr("hubrl.transfer.run_transfer", run_transfer)
    main, err = command_main("bench"), io.StringIO()
    argv = ["run", "--root", str(tmp_path / "g"), "--env", "Alien", "--timesteps", "1k", "--method", "scratch",
            "hub-pathway", "--workers", "0", "--set", setting]
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        main_guard(lambda *_: main(argv))
    assert exited.value.code == 2 and err.getvalue().startswith("error: ") and err.getvalue().count("\n") == 1, err.getvalue()
    assert named in err.getvalue() and "Traceback" not in err.getvalue()
    assert not (tmp_path / "g").exists()


def completed_trial(spec: dict) -> dict:
    """:func:`fake_trial` recording a completed run, as the real one does: its budget binds the trial."""
    return {**fake_trial(spec), "completed": True}


def test_a_new_arm_with_another_budget_is_refused_and_grid_json_keeps_every_arm(tmp_path):
    """A new arm (``--method new=scratch``) launched with another budget passed the budget check, which
    read only this launch's trials: grid.json then recorded the new budget (the report read the earlier
    arms as unfinished) and only the new arm (``--continue`` continued it alone). Now the launch is
    refused as a whole, and a launch of the same budget adds its arms, games and seeds to grid.json's."""
    root = tmp_path / "grid"
    kw = dict(trial_fn=completed_trial, workers=0, log=None)
    run_grid(root, ["Alien"], ["scratch"], [0], 64, **kw)
    grid_json = (root / "grid.json").read_text()
    with pytest.raises(GridError, match=r"^1 trial\(s\) of .* were started with another budget, e.g. Alien/scratch/s0 with "
                                        r"64 steps .*not 128, and a grid has one budget.*rerun with --timesteps 64, or use "
                                        r"another --root"):
        run_grid(root, ["Alien"], ["new=scratch"], [0], 128, **kw)
    assert (root / "grid.json").read_text() == grid_json and not (root / "Alien" / "new").exists()
    assert run_grid(root, ["Gopher"], ["new=scratch"], [1], 64, **kw).count("ok") == 1  # the same budget: a new arm
    grid = json.loads((root / "grid.json").read_text())
    assert (grid["games"], grid["methods"], grid["seeds"], grid["budget"]) == (
        ["Alien", "Gopher"], ["scratch", "new=scratch"], [0, 1], 64)
    summary = run_grid(root, ["Alien"], ["scratch"], [0], 64, pause_at=32, **kw)  # a relaunch of one arm, a stage
    assert summary.count("skipped") == 1
    assert json.loads((root / "grid.json").read_text())["methods"] == ["scratch", "new=scratch"]  # still both arms


def test_a_new_arm_with_other_grid_wide_settings_is_refused_but_its_own_options_are_not(tmp_path):
    """``--method new=scratch --eval-episodes 10`` beside trials evaluated on 5 games: only this launch's
    trials were compared with their settings, so the new arm ran with 10, grid.json recorded 10 for every
    arm, and the results did not compare. Now it is refused in one line naming the setting and the fix; an
    arm's own METHOD:KEY=VALUE may differ, where it runs (--device) may too, and a new scratch arm keeps the
    grid's --hub in grid.json for its hub arms."""
    hub = str(make_tiny_hub(tmp_path / "hub"))
    root = tmp_path / "grid"
    kw = dict(trial_fn=completed_trial, workers=0, log=None, validate=True)
    run_grid(root, ["Alien"], ["scratch", "hub-pathway"], [0], 64, settings={"eval_episodes": 5, "hub": hub}, **kw)
    grid_json = (root / "grid.json").read_text()
    with pytest.raises(GridError) as refused:
        run_grid(root, ["Alien"], ["new=scratch"], [0], 64, settings={"eval_episodes": 10}, **kw)
    message = str(refused.value)
    assert message.startswith("new: this launch's grid-wide settings differ from those of the grid ") and "\n" not in message
    assert "(--eval-episodes 10 where the grid has 5;" in message and "e.g. Alien/hub-pathway/s0" in message
    assert "e.g. new=scratch:eval_episodes=10), or use another --root" in message
    assert (root / "grid.json").read_text() == grid_json and not (root / "Alien" / "new").exists()
    with pytest.raises(GridError, match=r"^new: .*\(--eval-episodes 10 where the grid has 5;"):  # left out: the default
        run_grid(root, ["Alien"], ["new=scratch"], [0], 64, **kw)
    run_grid(root, ["Alien"], ["new=scratch:eval_episodes=10"], [0], 64, settings={"eval_episodes": 5, "device": "cpu"},
             **kw)
    grid = json.loads((root / "grid.json").read_text())
    assert grid["methods"] == ["scratch", "hub-pathway", "new=scratch:eval_episodes=10"]
    assert grid["settings"] == {"eval_episodes": 5, "device": "cpu", "hub": hub}  # the hub arm's --hub is kept


def test_a_setting_continue_would_not_give_the_started_trials_is_not_compared_with_the_grids(tmp_path):
    """``--method z=zoo-tuning --set lite=true`` beside started scratch trials alone was refused ("--lite
    True where the grid has False"), though ``--continue`` gives scratch no ``lite`` (only zoo-tuning takes
    it: :func:`hubrl.trial.trial_settings`) and their results compare as before. Now only what ``--continue``
    would give the started trials is compared: that arm runs; a ``--set top_k=2``, which ``--continue`` would
    give scratch and its resumes would refuse, is still refused, naming a scratch trial."""
    hub = str(make_tiny_hub(tmp_path / "hub"))
    root = tmp_path / "grid"
    kw = dict(trial_fn=completed_trial, workers=0, log=None, validate=True)
    run_grid(root, ["Alien"], ["scratch"], [0], 64, settings={"eval_episodes": 5}, **kw)
    with pytest.raises(GridError, match=r"^xp: .*\(--top-k 2 where the grid has 1;.* e\.g\. Alien/scratch/s0: their results"):
        run_grid(root, ["Alien"], ["xp=hub-pathway"], [0], 64, settings={"eval_episodes": 5, "hub": hub, "top_k": 2}, **kw)
    summary = run_grid(root, ["Alien"], ["z=zoo-tuning"], [0], 64, settings={"eval_episodes": 5, "hub": hub, "lite": True},
                       **kw)
    assert summary.count("ok") == 1
    assert json.loads((root / "grid.json").read_text())["settings"] == {"eval_episodes": 5, "hub": hub, "lite": True}
    with pytest.raises(GridError, match=r"^z2: .*\(--lite False where the grid has True;.* e\.g\. Alien/z/s0: their results"):
        run_grid(root, ["Alien"], ["z2=zoo-tuning"], [0], 64, settings={"eval_episodes": 5, "hub": hub}, **kw)
    with pytest.raises(GridError, match=r"^z2: .*\(--eval-episodes 10 where the grid has 5;.* e\.g\. Alien/scratch/s0:"):
        run_grid(root, ["Alien"], ["z2=zoo-tuning"], [0], 64, settings={"eval_episodes": 10, "hub": hub, "lite": True}, **kw)


def configured_trial(spec: dict) -> dict:
    """:func:`completed_trial` saving its settings and its experts in ``config.yaml``, as a real run does."""
    import dataclasses

    import yaml

    from hubrl.harness import resolve_run_hyperparams
    from hubrl.hub import resolve_hub
    from hubrl.methods import HUB_METHODS
    from hubrl.transfer import hub_records
    from hubrl.trial import trial_config

    cfg = trial_config(spec)
    resolve_run_hyperparams(cfg)
    hub = hub_records(resolve_hub(cfg.hub, cfg.sources)) if cfg.method in HUB_METHODS else []
    Path(spec["folder"], "config.yaml").write_text(yaml.safe_dump({"run": dataclasses.asdict(cfg), "hub": hub}))
    return completed_trial(spec)


def test_a_launch_whose_hub_holds_other_experts_than_a_started_trials_is_refused(tmp_path):
    """The grid's settings checks skipped --hub and --sources, which a resume may move: a new arm launched
    on a hub of other experts trained beside the arms of the first (results that do not compare), and
    grid.json recorded its hub, which --continue gave the earlier arms, whose resumes refuse it; a relaunch
    of a started arm on it failed each trial on its own resume. Now both are refused before anything is
    written, naming the experts and the hub the trial was started with; the same experts at a new place,
    and an arm's own hub= option, are taken."""
    import shutil

    first, other = make_tiny_hub(tmp_path / "hub"), make_tiny_hub(tmp_path / "other", names=("seaquest-ppo",))
    root = tmp_path / "grid"
    kw = dict(trial_fn=configured_trial, workers=0, log=None, validate=True)
    run_grid(root, ["Alien"], ["hub-pathway"], [0], 64, settings={"hub": str(first)}, **kw)
    grid_json = (root / "grid.json").read_text()
    for methods in (["new=hub-pathway"], ["hub-pathway"]):
        with pytest.raises(GridError) as refused:
            run_grid(root, ["Alien"], methods, [0], 64, settings={"hub": str(other)}, **kw)
        message = str(refused.value)
        assert message.startswith("Alien/hub-pathway/s0 was started with other experts (riverraid-ppo, seaquest-ppo, ")
        assert f"than this launch's --hub {other} holds (seaquest-ppo): a resume of it would refuse" in message
        assert f"Give the hub the grid was started with (--hub {first}, or its new place" in message
        assert "another --root for the new experts. Nothing was written." in message and "\n" not in message
        assert (root / "grid.json").read_text() == grid_json and not (root / "Alien" / "new").exists()
    moved = shutil.copytree(first, tmp_path / "moved")
    assert run_grid(root, ["Alien"], ["new=hub-pathway"], [0], 64, settings={"hub": str(moved)}, **kw).count("ok") == 1
    assert json.loads((root / "grid.json").read_text())["settings"] == {"hub": str(moved)}
    assert run_grid(root, ["Alien"], [f"own=hub-pathway:hub={other}"], [0], 64, settings={"hub": str(moved)},
                    **kw).count("ok") == 1


@pytest.mark.slow
def test_an_attempt_a_broken_pool_stopped_and_runs_again_is_journalled(tmp_path):
    """A trial whose worker the broken pool SIGTERMed runs again in a fresh pool: its stopped attempt was
    in its status.json's history but not in trials.jsonl, which journals every other attempt. Now it is
    journalled too, marked requeued, before the attempt that ends the trial; the launch's summary still
    holds one record per trial."""
    from hubrl.trial import HISTORY_FIELDS
    from tests.test_trial_runners import one_worker_dies

    root = tmp_path / "grid"
    summary = run_grid(root, ["Alien"], ["scratch"], [0, 1, 2, 3], 64, workers=3, threads=1, trial_fn=one_worker_dies,
                       log=None)
    journal = _journal(root)
    s0 = [r for r in journal if r["trial"] == "Alien/scratch/s0"]
    assert [(r["status"], r.get("requeued")) for r in s0] == [("interrupted", True), ("ok", None)]
    assert (s0[0]["interrupted_by"], s0[0]["steps"]) == (signal.SIGTERM, 32) and len(journal) == 5
    status = json.loads((trial_folder(root, "Alien", "scratch", 0) / "status.json").read_text())
    assert status["history"][-1] == {key: s0[0][key] for key in HISTORY_FIELDS}
    assert sorted(r["trial"] for r in summary.records) == [f"Alien/scratch/s{seed}" for seed in range(4)]


def test_continue_keeps_the_grids_pause_at_and_its_advice_quotes_the_root(tmp_path, monkeypatch, capsys):
    """After Ctrl-C the grid said "run --root ROOT --continue", which trained every trial past the stage
    the grid was launched to pause at, to the budget: --continue did not read grid.json's pause_at. Now
    it does unless --pause-at is given, and the printed root is quoted for the shell."""
    import hubrl.benchmark
    from hubrl.benchmark import GridSummary
    from hubrl.cli.bench import main

    root = tmp_path / "my grid"
    root.mkdir()
    launch = {"games": ["Alien"], "methods": ["scratch"], "seeds": [0], "budget": 1_000_000, "pause_at": 250_000,
              "settings": {}, "workers": 1, "ray_address": None}
    (root / "grid.json").write_text(json.dumps(launch))
    asked = []

    def stopped_grid(root_, *args, **kwargs):
        asked.append(kwargs["pause_at"])
        return GridSummary(Path(root_), stopped_by=2)

    monkeypatch.setattr(hubrl.benchmark, "run_grid", stopped_grid)
    assert main(["run", "--root", str(root), "--continue"]) == 128 + 2
    assert asked == [250_000]
    assert f"run --root '{root}' --continue, to continue the grid." in capsys.readouterr().out
    main(["run", "--root", str(root), "--continue", "--pause-at", "1M"])  # the budget: on to the end
    assert asked[-1] == 1_000_000
    (root / "grid.json").write_text(json.dumps({**launch, "pause_at": "250k"}))
    with pytest.raises(UsageError, match=r"--continue: .*grid.json records the pause_at '250k', not a number of agent "
                                         r"steps: give --pause-at STEPS"):
        main(["run", "--root", str(root), "--continue"])


def test_the_pools_default_threads_divide_the_cpus_this_process_may_run_on(tmp_path, monkeypatch):
    """``taskset -c 0``, Slurm or ``docker --cpuset-cpus`` give the grid fewer CPUs than the machine has:
    dividing os.cpu_count() gave each worker threads for cores it may not use, which stall."""
    import hubrl.benchmark

    monkeypatch.delattr(os, "process_cpu_count", raising=False)  # Python 3.13+: the same mask
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    pools = []
    monkeypatch.setattr(hubrl.benchmark, "run_in_pool",
                        lambda todo, trial_fn, workers, threads, record, say: pools.append((workers, threads)))
    run_grid(tmp_path / "g", ["Alien"], ["scratch"], [0], 64, workers=2, trial_fn=fake_trial, log=None)
    run_grid(tmp_path / "g", ["Alien"], ["scratch"], [0], 64, workers=1, trial_fn=fake_trial, log=None)
    assert pools == [(2, 1), (1, 2)]


def staged_trial(spec: dict) -> dict:
    """Pauses at ``pause_at`` (evaluated there, checkpointed); without one, fails at 48 steps when
    ``<root>/fail-later`` exists, else is interrupted there (checkpointed)."""
    folder = Path(spec["folder"])
    path = folder / "evaluations.json"
    points = json.loads(path.read_text())["points"] if path.exists() else []
    (folder / "checkpoint.pt").write_bytes(b"x")
    if spec.get("pause_at"):
        path.write_text(json.dumps({"points": [*points, {"step": spec["pause_at"], "mean": 1.0, "scores": [1.0]}]}))
        return {"steps": spec["pause_at"], "num_timesteps": spec["pause_at"], "paused": True}
    if (_root_of(spec) / "fail-later").exists():
        raise RuntimeError("out of memory at 48 steps")
    return {"steps": 16, "num_timesteps": 48, "interrupted_by": 2}


@pytest.mark.parametrize("later", ["interrupted", "failed"])
def test_a_stage_paused_then_stopped_later_without_its_checkpoint_is_refused_not_cleared(tmp_path, later):
    """A trial paused at a stage, then interrupted (or failed) past it, then archived without its
    checkpoints, read as fresh: its start cleared the folder, and the stage's scores in evaluations.json
    with it. Now it holds a result, as a paused trial does: refused with the advice to restore the
    checkpoint, nothing deleted; its budget binds the grid's."""
    root = tmp_path / "grid"
    if later == "failed":
        root.mkdir()
        (root / "fail-later").touch()
    kw = dict(trial_fn=staged_trial, workers=0, log=None)
    assert run_grid(root, ["Alien"], ["scratch"], [0], 64, pause_at=32, **kw).count("paused") == 1
    assert run_grid(root, ["Alien"], ["scratch"], [0], 64, **kw).records[0]["status"] == later
    folder = trial_folder(root, "Alien", "scratch", 0)
    (folder / "checkpoint.pt").unlink()  # archived without weights
    kept = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert trial_state(folder, 64) == "refused"

    def must_not_run(spec: dict) -> dict:
        raise AssertionError("a trial holding a stage was trained again")

    summary = run_grid(root, ["Alien"], ["scratch"], [0], 64, trial_fn=must_not_run, workers=0, log=None)
    assert summary.count("refused") == 1
    last = "interrupted at 48 steps" if later == "interrupted" else "failed"  # a failed attempt records no step
    assert summary.records[0]["error"] == (f"an earlier attempt paused it at 32 steps (its last attempt: {last}) but its "
                                           "checkpoint.pt is gone (archived?): restore the checkpoint to continue; a fresh "
                                           "start would discard the recorded stage")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == kept
    with pytest.raises(GridError, match=r"Alien/scratch/s0 with 64 steps"):
        run_grid(root, ["Alien"], ["scratch"], [0], 128, trial_fn=must_not_run, workers=0, log=None)


def test_a_grid_record_nested_past_the_parsers_depth_reads_as_damaged_not_a_traceback(tmp_path):
    """``[[[...]]]`` 200,000 deep in a grid's JSON or YAML raised RecursionError out of every reader (a
    shared grid root is data): it now reads as damaged, as any other undecodable file does."""
    from hubrl.grid import grid_json_damage, read_grid, read_json_object, read_yaml_object

    deep = "[" * 200_000 + "]" * 200_000
    (tmp_path / "grid.json").write_text(deep)
    (tmp_path / "config.yaml").write_text("run: " + deep)
    assert read_grid(tmp_path) == {} and read_json_object(tmp_path / "grid.json") is None
    assert "is damaged (RecursionError" in grid_json_damage(tmp_path)
    assert read_yaml_object(tmp_path / "config.yaml") is None
