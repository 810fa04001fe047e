"""The grid's process pool (hubrl.trial_runners): a dead worker, and the workers' thread caps.

The trial functions live at module level so that the pool's spawned workers can import them by
reference, and this module imports nothing heavy (no torch: not tests.conftest) for the same reason.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from pathlib import Path

import pytest

from hubrl.benchmark import run_grid
from hubrl.grid import trial_folder

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS")


def _finish(spec: dict) -> dict:
    """What a finished run leaves (its evaluations at the budget, a model); returns its step counters."""
    folder, budget = Path(spec["folder"]), spec["budget"]
    points = [{"step": budget, "mean": 1.0, "std": 0.0, "episodes": 1, "scores": [1.0]}]
    (folder / "evaluations.json").write_text(json.dumps({"points": points}))
    (folder / "model.zip").write_bytes(b"fake")
    return {"steps": budget, "num_timesteps": budget}


def _wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.02)


def one_worker_dies(spec: dict) -> dict:
    """s0 trains (stopping on a signal, checkpointed) and, resumed, finishes; s1's worker dies (killed
    by the OS) once s0 trains and s2 has come back, when s3, handed over after s2, is most likely in a
    worker still starting (which takes it after the pool broke); s2 and s3 finish at once."""
    from hubrl.signals import SignalStop

    folder = Path(spec["folder"])
    siblings = folder.parent
    if spec["seed"] == 1:
        _wait_for(siblings / "s0" / "started")
        _wait_for(siblings / "s2" / "status.json")
        time.sleep(0.2)  # s3 handed to the pool, its fresh worker still starting
        os._exit(9)
    if spec["seed"] != 0 or (folder / "checkpoint.pt").exists():
        return _finish(spec)
    with SignalStop() as stop:
        (folder / "started").touch()
        deadline = time.time() + 120
        while stop.received is None and time.time() < deadline:
            time.sleep(0.02)
    (folder / "checkpoint.pt").write_bytes(b"ckpt")
    return {"steps": 32, "num_timesteps": 32, "interrupted_by": stop.received}


@pytest.mark.slow
def test_a_dead_worker_fails_its_own_trial_only_and_the_others_run_on(tmp_path):
    """A dead worker broke the pool, which SIGTERMs the other workers: their trials stopped cleanly
    (checkpoint, status.json "interrupted"), but the grid journalled them all as failed ("worker
    process died"), did not rerun them, exited 1, and its failure record could overwrite the
    trial's own. Now only the dead worker's trial fails; the one the SIGTERM stopped resumes in a
    fresh pool in this launch, its stopped attempt kept in its history; none is journalled twice as its result."""
    root = tmp_path / "grid"
    summary = run_grid(root, ["Alien"], ["scratch"], [0, 1, 2, 3], 64, workers=3, threads=1, trial_fn=one_worker_dies,
                       log=None)
    journal = [json.loads(line) for line in (root / "trials.jsonl").read_text().splitlines()]
    journal = [r for r in journal if not r.get("requeued")]  # the attempt the broken pool stopped: journalled, then rerun
    assert sorted((r["trial"], r["status"]) for r in journal) == [
        ("Alien/scratch/s0", "ok"), ("Alien/scratch/s1", "failed"), ("Alien/scratch/s2", "ok"), ("Alien/scratch/s3", "ok")]
    assert summary.stopped_by is None and [r["trial"] for r in summary.failed] == ["Alien/scratch/s1"]
    assert "worker process died" in summary.failed[0]["error"]
    status = {seed: json.loads((trial_folder(root, "Alien", "scratch", seed) / "status.json").read_text())
              for seed in range(4)}
    assert status[1]["status"] == "failed" and [status[s]["status"] for s in (0, 2, 3)] == ["ok"] * 3
    stopped = status[0]["history"][-1]
    assert (stopped["status"], stopped["steps"], stopped["num_timesteps"]) == ("interrupted", 32, 32)
    assert stopped["seconds"] > 0 and status[0]["steps"] == 64


def _openblas_threads() -> int | None:
    """How many threads numpy's OpenBLAS runs in this process (None: no bundled OpenBLAS found)."""
    import numpy

    libs = sorted((Path(numpy.__file__).parent.parent / "numpy.libs").glob("lib*openblas*.so*"))
    for lib in libs:
        handle = ctypes.CDLL(str(lib))
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
            getter = getattr(handle, name, None)
            if getter is not None:
                return int(getter())
    return None


def report_blas_threads(spec: dict) -> dict:
    return {"steps": 0, "openblas_threads": _openblas_threads()}


@pytest.mark.slow
def test_pool_workers_run_blas_on_the_threads_they_are_given(tmp_path, monkeypatch):
    """The workers set OMP/OPENBLAS_NUM_THREADS in their initializer, after numpy (imported in
    unpickling it) had sized OpenBLAS's threads to every core: each of N workers ran a thread per
    core. The cap is now in the environment they are spawned with; this process's is restored."""
    if _openblas_threads() is None:
        pytest.skip("numpy has no bundled OpenBLAS here")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: OpenBLAS runs one thread anyway")
    for var in _THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")  # the user's own: restored after the grid
    summary = run_grid(tmp_path / "grid", ["Alien"], ["scratch"], [0], 64, workers=1, threads=1,
                       trial_fn=report_blas_threads, log=None)
    assert [(r["status"], r["openblas_threads"]) for r in summary.records] == [("ok", 1)]
    assert os.environ.get("MKL_NUM_THREADS") == "7" and "OPENBLAS_NUM_THREADS" not in os.environ
