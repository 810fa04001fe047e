"""Where a grid's trials run: in this process, in a pool of fresh processes, or as Ray tasks.

Each runner takes the trials to run (specs, :mod:`hubrl.trial`), the trial function and
``record``, which the grid (:func:`hubrl.benchmark.run_grid`) gives to journal each attempt as it
comes back; each stops cleanly on a signal, recording what stopped. See
:func:`hubrl.benchmark.run_grid` for which to use.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from hubrl.errors import GridError
from hubrl.grid import read_status
from hubrl.signals import SignalStop, defer_signals, deferred_signals, held_signals, pending_signal, request_stop
from hubrl.trial import (
    TrialFn,
    TrialSpec,
    attempt_summary,
    execute_trial,
    failure_fields,
    make_record,
    now,
    save_status,
)

__all__ = ["run_in_process", "run_in_pool", "run_on_ray"]

_POLL_SECONDS = 1.0  # how often a waiting grid looks for a signal of its own, to pass on to its workers
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_DIED = "The worker process died (killed by the OS, e.g. for memory, or crashed)"


def run_in_process(todo: list[TrialSpec], trial_fn: TrialFn, record: Callable[[dict[str, Any]], None],
                   say: Callable[[str], None]) -> int | None:
    """One trial after another in this process (debugging; peak memory is the process's so far).

    A signal during a trial's training stops it there (:class:`hubrl.training.StopOnSignal`); one
    between trainings (setting up, evaluating at the end) is kept (:func:`hubrl.signals.deferred_signals`):
    the trial in progress finishes what it was doing and no further trial starts. Returns the
    signal that stopped the grid (None: every trial ran).
    """
    with deferred_signals():
        for spec in todo:
            kept = pending_signal()
            if kept is not None:
                say("Stopped by a signal: rerun the same command to continue the grid.")
                return kept
            rec = execute_trial(spec, trial_fn)
            record(rec)
            if rec["status"] == "interrupted":
                say("Stopped by a signal: rerun the same command to continue the grid.")
                return int(rec.get("interrupted_by") or pending_signal() or signal.SIGINT)
        return None  # every trial ran: a signal kept during the last one's final evaluation cut nothing short


@contextmanager
def _worker_threads(threads: int | None) -> Iterator[None]:
    """Cap BLAS/OpenMP threads at ``threads`` in the pool's workers: in this process's environment,
    which every worker it spawns meanwhile inherits (the pool spawns them while it runs, replacing
    each worker whose trial ended), and restored after. Setting them in the worker is too late: a
    spawned worker has loaded numpy, and OpenBLAS sized its threads to every core, before any code of
    ours runs there (unpickling its initializer imports hubrl, hence numpy)."""
    if not threads:
        yield
        return
    saved = {var: os.environ.get(var) for var in _THREAD_VARS}
    os.environ.update({var: str(threads) for var in _THREAD_VARS})
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _init_worker() -> None:
    """Pool initializer: keep a signal that comes outside a trial's training for the training to stop
    on (:func:`hubrl.signals.defer_signals`) instead of dying of it, which would break the pool and
    stop every running trial."""
    defer_signals()


def _pool_trial(spec: TrialSpec, trial_fn: TrialFn, marker: str) -> dict[str, Any]:
    """A pool task's body: write this worker's pid to ``marker``, then
    :func:`hubrl.trial.execute_trial`. Should the pool break, the marker tells a trial that started
    from one still queued, and which ``status.json`` is this attempt's (:func:`_after_break`)."""
    Path(marker).write_text(str(os.getpid()))
    return execute_trial(spec, trial_fn)


class _Task(NamedTuple):
    """A trial handed to the pool: its spec, the file its worker writes its pid to when it takes
    it (:func:`_pool_trial`) and when it was handed over (its attempt's record starts then or later)."""

    spec: TrialSpec
    marker: Path
    since: str


def _after_break(task: _Task) -> tuple[bool, dict[str, Any] | None]:
    """Once a broken pool's workers have exited: whether a worker took ``task``'s trial, and the
    record it wrote of this attempt (``status.json`` by the worker's pid, started since the trial was
    handed over; ``history`` left out, as in a returned record), None when it wrote none (it died)."""
    try:
        pid = int(task.marker.read_text())
    except (OSError, ValueError):
        return False, None  # still queued when the pool broke
    status = read_status(task.spec["folder"])
    if status.get("pid") != pid or str(status.get("started") or "") < task.since:
        return True, None
    return True, {key: value for key, value in status.items() if key != "history"}


def _worker_pids(pool: ProcessPoolExecutor) -> list[int]:
    """The pool's worker processes (CPython's ``_processes``; none where that is not there)."""
    return list(getattr(pool, "_processes", None) or {})


def _new_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes, each running one trial and exiting (so peak memory is the trial's)."""
    context = multiprocessing.get_context("spawn")
    try:
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, max_tasks_per_child=1)
    except TypeError:  # Python < 3.11: workers are reused, so peak memory spans several trials
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)


def run_in_pool(todo: list[TrialSpec], trial_fn: TrialFn, workers: int, threads: int | None,
                record: Callable[[dict[str, Any]], None], say: Callable[[str], None]) -> int | None:
    """At most ``workers`` trials in flight, their BLAS/OpenMP threads capped at ``threads``
    (:func:`_worker_threads`); a pool broken by a dead worker is replaced.

    When a worker dies (killed for memory, a segfault), ``concurrent.futures`` breaks the pool and
    SIGTERMs its other workers, whose trials stop cleanly (checkpointed, their records written).
    Once they have exited, each trial of the pool is settled by what its worker wrote
    (:func:`_after_break`): the one whose worker died without a record is recorded as failed (the
    next rerun retries it); one whose worker wrote its record is journalled with it; but one the
    pool's SIGTERM stopped, or one no worker took, runs again in a fresh pool in this launch (unless
    the grid is being stopped), its stopped attempt kept in its ``history`` and given to ``record``
    marked ``requeued``, which the grid journals as every attempt but keeps out of the launch's
    summary (one record per trial: the attempt that ends it). Where no trial's worker died (a worker died
    starting up), the trials no worker took fail instead: a worker that cannot start fails the
    grid's trials rather than breaking pool after pool.

    A signal (Ctrl-C, SIGTERM, the hang-up of a closed terminal), whether it reached the whole
    process group or only this process, stops the grid cleanly: this process
    (:class:`hubrl.signals.SignalStop`) starts no further trial and asks each worker to stop
    (:func:`hubrl.signals.request_stop`, never taken as a second signal); the trials checkpoint and
    come back, and each is journalled. Workers start with the signals held
    (:func:`hubrl.signals.held_signals`: the pool's manager thread, created by the first submit
    under the hold, keeps it for the workers it starts later), so none dies of one while starting,
    which would break the pool. A second Ctrl-C or SIGTERM aborts the trials (each still saves its
    checkpoint on the way out) and this process waits for their records; a third leaves without
    them. Returns the signal that cut the grid short (None: every trial ran).
    """
    with _worker_threads(threads), tempfile.TemporaryDirectory(prefix="hubrl-pool-") as markers:
        return _run_pool(todo, trial_fn, workers, Path(markers), record, say)


def _run_pool(todo: list[TrialSpec], trial_fn: TrialFn, workers: int, markers: Path,
              record: Callable[[dict[str, Any]], None], say: Callable[[str], None]) -> int | None:
    """:func:`run_in_pool`'s loop, the workers' pid markers (:func:`_pool_trial`) in ``markers``."""
    pending = list(todo)
    isolated = sys.version_info >= (3, 11)
    for spec in pending:
        spec["isolated"] = isolated
    with held_signals():
        pool = _new_pool(workers)
    running: dict[Future, _Task] = {}  # every one in ``pool``: a broken pool's are settled before the next is used
    stop = SignalStop(then="the running trials save their checkpoints; no further trial starts")
    stopped_by: int | None = None  # this process's signal, or one a trial stopped on that this process did not see
    cut_short = False  # a trial interrupted, or one never started: what makes the grid "stopped"
    asked: set[int] = set()
    journalled: set[Future] = set()
    handed = 0  # trials handed to a pool so far: each its own marker

    def failed(spec: TrialSpec, **fields: Any) -> dict[str, Any]:
        rec = make_record(spec, "failed", **fields, seconds=0.0, steps=0, finished=now())
        save_status(spec, rec)
        return rec

    def outcome(future: Future) -> dict[str, Any]:
        """The record of a trial that came back (a failure where its record could not)."""
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
            return failed(running[future].spec, **failure_fields(exc))

    def journal(future: Future, rec: dict[str, Any]) -> None:
        nonlocal cut_short, stopped_by
        journalled.add(future)  # before its record: a second signal in between journals it once
        record(rec)
        del running[future]
        if rec["status"] == "interrupted":
            cut_short = True
            stopped_by = stopped_by or int(rec.get("interrupted_by") or signal.SIGINT)

    def settle_broken() -> None:
        """The pool broke: wait for its workers to exit, then journal or requeue each of its trials."""
        nonlocal pool
        pool.shutdown(wait=True)  # its manager thread waits for the workers: the trials it SIGTERMed have written records
        with held_signals():
            pool = _new_pool(workers)
        back = {future: _after_break(task) for future, task in running.items()
                if isinstance(future.exception(), BrokenProcessPool)}
        died = any(started and rec is None for started, rec in back.values())
        again: list[TrialSpec] = []
        for future, task in list(running.items()):
            if future not in back:  # it came back before the pool broke
                journal(future, outcome(future))
                continue
            started, rec = back[future]
            if rec is None and (started or not died):
                why = "" if started else " before this trial started"
                journal(future, failed(task.spec, error=f"{_DIED}{why}: {future.exception()}", traceback=None))
                continue
            requeue = rec is None or (rec["status"] == "interrupted" and rec.get("interrupted_by") == signal.SIGTERM
                                      and stop.received is None and stopped_by is None)
            if not requeue:
                journal(future, rec)
                continue
            journalled.add(future)  # before its record: a second signal in between journals it once
            del running[future]
            if rec is not None:  # the attempt the pool's SIGTERM stopped: its steps and time count in the trial's totals
                task.spec["history"] = [*task.spec.get("history", []), attempt_summary(rec)]
                record({**rec, "requeued": True})  # journalled as every attempt is, not as the trial's result
            say(f"{task.spec['trial']}: {'stopped' if rec else 'not started'} when another worker died, which broke the "
                f"pool; it runs again in a fresh one.")
            again.append(task.spec)
        pending[:0] = again

    try:
        with stop:
            while pending or running:
                while pending and len(running) < workers and stopped_by is None and stop.received is None:
                    spec = pending.pop(0)
                    task = _Task(spec, markers / str(handed), now())
                    handed += 1
                    with held_signals():  # the worker it may start keeps a signal from its first instant
                        running[pool.submit(_pool_trial, spec, trial_fn, str(task.marker))] = task
                if not running:
                    break
                done, _ = wait(running, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    if future not in running:
                        continue  # settled with its broken pool
                    if isinstance(future.exception(), BrokenProcessPool):
                        settle_broken()
                    else:
                        journal(future, outcome(future))
                if stop.received is not None:
                    stopped_by = stop.received
                    for pid in set(_worker_pids(pool)) - asked:
                        request_stop(pid)  # a signal to this process alone (kill PID) reaches the trials too
                        asked.add(pid)
                if stopped_by is not None and pending:
                    say("Stopped by a signal: waiting for the running trials to checkpoint; rerun the same command to "
                        "continue.")
                    pending.clear()
                    cut_short = True
    except KeyboardInterrupt:
        say("Interrupted again: waiting for the running trials to save their checkpoints (again to abort).")
        for future, task in running.items():
            if future in journalled:
                continue
            try:
                record(future.result())
            except BrokenProcessPool as exc:
                pool.shutdown(wait=True)  # its workers exit: those still stopping write their records
                started, rec = _after_break(task)
                if started:
                    record(rec or failed(task.spec, error=f"{_DIED}: {exc}", traceback=None))
            except Exception as exc:  # noqa: BLE001
                record(failed(task.spec, **failure_fields(exc)))
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return stopped_by if cut_short else None


def _ray_trial(spec: TrialSpec, trial_fn: TrialFn) -> dict[str, Any]:
    """A Ray task's body: :func:`hubrl.trial.execute_trial`, keeping a stop that comes outside the
    trial's training (setting up, evaluating) for the training to stop on, as a pool worker does
    (:func:`hubrl.signals.defer_signals`). Each task has a fresh worker process (``max_calls=1``)."""
    defer_signals()
    return execute_trial(spec, trial_fn)


def run_on_ray(todo: list[TrialSpec], trial_fn: TrialFn, address: str, cpus: float, gpus: float,
               record: Callable[[dict[str, Any]], None], say: Callable[[str], None]) -> int | None:
    """Each trial a Ray task in a fresh worker process; records are collected as tasks finish.

    A signal to this process (Ctrl-C, SIGTERM, a hang-up: Ray's workers run in process groups of
    their own, so they never get the terminal's) stops the grid cleanly: every task is cancelled
    once, which Ray delivers to a running trial as a SIGINT, a first signal: it stops at its next
    step, saves its checkpoint and returns its record, which is journalled; a queued trial never
    starts. A second Ctrl-C or SIGTERM cancels them again, which aborts the trials (each still saves
    its checkpoint on the way out), and this process waits for their records; a third leaves
    without them. Returns the signal that cut the grid short (None: every trial ran).
    """
    try:
        import ray
        from ray.exceptions import TaskCancelledError
    except ImportError:
        raise GridError('Running on Ray needs the ray package: pip install "hubrl[ray]".') from None
    started_here = False
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=False)
        started_here = True
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_calls=1, max_retries=0)(_ray_trial)
    for spec in todo:
        spec["isolated"] = True
    refs = {remote.remote(spec, trial_fn): spec for spec in todo}
    stop = SignalStop(then="the running trials save their checkpoints; no further trial starts")
    stopped_by: int | None = None
    cut_short = False  # a trial interrupted, or one never started: what makes the grid "stopped"

    def collect(ref: Any) -> None:
        nonlocal cut_short, stopped_by
        spec = refs.pop(ref)
        try:
            rec = ray.get(ref)
        except TaskCancelledError:  # cancelled before it started (or before it could keep the signal)
            cut_short = True
            return
        except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, ...
            rec = make_record(spec, "failed", **failure_fields(exc), seconds=0.0, steps=0, finished=now())
            save_status(spec, rec)
        record(rec)
        if rec["status"] == "interrupted":
            cut_short = True
            stopped_by = stopped_by or int(rec.get("interrupted_by") or signal.SIGINT)

    try:
        try:
            with stop:
                while refs:
                    ready, _ = ray.wait(list(refs), num_returns=1, timeout=_POLL_SECONDS)
                    for ref in ready:
                        collect(ref)
                    if stop.received is not None and stopped_by is None:
                        stopped_by = stop.received
                        say("Stopped by a signal: waiting for the running trials to checkpoint; rerun the same "
                            "command to continue.")
                        for ref in refs:
                            ray.cancel(ref)  # a running trial takes it as a first signal; a queued one never starts
        except KeyboardInterrupt:
            say("Interrupted again: the trials stop at once, saving their checkpoints (again to leave without "
                "their records).")
            for ref in refs:
                ray.cancel(ref)  # their second signal: an abort
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    collect(ref)
            raise
    finally:
        if started_here:
            ray.shutdown()
    return stopped_by if cut_short else None
