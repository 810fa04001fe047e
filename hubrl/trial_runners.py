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
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from hubrl.errors import GridError
from hubrl.signals import SignalStop, defer_signals, deferred_signals, held_signals, pending_signal, request_stop
from hubrl.trial import TrialFn, TrialSpec, execute_trial, failure_fields, make_record, now, save_status

__all__ = ["run_in_process", "run_in_pool", "run_on_ray"]

_POLL_SECONDS = 1.0  # how often a waiting grid looks for a signal of its own, to pass on to its workers


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


def _init_worker(threads: int | None) -> None:
    """Pool initializer: cap BLAS/OpenMP threads before torch is imported in the worker, and keep a
    signal that comes outside a trial's training for the training to stop on
    (:func:`hubrl.signals.defer_signals`) instead of dying of it, which would break the pool and
    fail every running trial."""
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    defer_signals()


def _worker_pids(pool: ProcessPoolExecutor) -> list[int]:
    """The pool's worker processes (CPython's ``_processes``; none where that is not there)."""
    return list(getattr(pool, "_processes", None) or {})


def _new_pool(workers: int, threads: int | None) -> ProcessPoolExecutor:
    """``workers`` spawned processes, each running one trial and exiting (so peak memory is the trial's)."""
    context = multiprocessing.get_context("spawn")
    try:
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,),
                                   max_tasks_per_child=1)
    except TypeError:  # Python < 3.11: workers are reused, so peak memory spans several trials
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,))


def run_in_pool(todo: list[TrialSpec], trial_fn: TrialFn, workers: int, threads: int | None,
                record: Callable[[dict[str, Any]], None], say: Callable[[str], None]) -> int | None:
    """At most ``workers`` trials in flight; a pool broken by a dead worker is replaced.

    When a worker dies (killed for memory, a segfault), ``concurrent.futures`` fails every trial
    running in that pool: they are recorded as failed and retried by the next rerun.

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
    pending = list(todo)
    isolated = sys.version_info >= (3, 11)
    for spec in pending:
        spec["isolated"] = isolated
    with held_signals():
        pool = _new_pool(workers, threads)
    running: dict[Future, tuple[TrialSpec, ProcessPoolExecutor]] = {}
    stop = SignalStop(then="the running trials save their checkpoints; no further trial starts")
    stopped_by: int | None = None  # this process's signal, or one a trial stopped on that this process did not see
    cut_short = False  # a trial interrupted, or one never started: what makes the grid "stopped"
    asked: set[int] = set()
    journalled: set[Future] = set()

    def failed(spec: TrialSpec, **fields: Any) -> dict[str, Any]:
        rec = make_record(spec, "failed", **fields, seconds=0.0, steps=0, finished=now())
        save_status(spec, rec)
        return rec

    try:
        with stop:
            while pending or running:
                while pending and len(running) < workers and stopped_by is None and stop.received is None:
                    spec = pending.pop(0)
                    with held_signals():  # the worker it may start keeps a signal from its first instant
                        running[pool.submit(execute_trial, spec, trial_fn)] = (spec, pool)
                if not running:
                    break
                done, _ = wait(running, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    spec, its_pool = running[future]
                    try:
                        rec = future.result()
                    except BrokenProcessPool as exc:
                        rec = failed(spec, error=f"The worker process died (killed by the OS, e.g. for memory, or "
                                                 f"crashed): {exc}", traceback=None)
                        if its_pool is pool:
                            pool.shutdown(wait=False, cancel_futures=True)
                            with held_signals():
                                pool = _new_pool(workers, threads)
                    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
                        rec = failed(spec, **failure_fields(exc))
                    journalled.add(future)  # before its record: a second signal in between journals it once
                    record(rec)
                    del running[future]
                    if rec["status"] == "interrupted":
                        cut_short = True
                        stopped_by = stopped_by or int(rec.get("interrupted_by") or signal.SIGINT)
                if stop.received is not None:
                    stopped_by = stop.received
                    for pid in {pid for _, its_pool in running.values() for pid in _worker_pids(its_pool)} - asked:
                        request_stop(pid)  # a signal to this process alone (kill PID) reaches the trials too
                        asked.add(pid)
                if stopped_by is not None and pending:
                    say("Stopped by a signal: waiting for the running trials to checkpoint; rerun the same command to "
                        "continue.")
                    pending.clear()
                    cut_short = True
    except KeyboardInterrupt:
        say("Interrupted again: waiting for the running trials to save their checkpoints (again to abort).")
        for future, (spec, _) in running.items():
            if future in journalled:
                continue
            try:
                record(future.result())
            except Exception as exc:  # noqa: BLE001
                record(failed(spec, **failure_fields(exc)))
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
