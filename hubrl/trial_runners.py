"""Where a grid's trials run: in this process, in a pool of fresh processes, or as Ray tasks.

Each runner takes the trials to run (specs, :mod:`hubrl.trial`), the trial function and
``record``, which the grid (:func:`hubrl.benchmark.run_grid`) gives to journal each attempt as it
comes back; each stops cleanly on a signal, recording what stopped. See
:func:`hubrl.benchmark.run_grid` for which to use.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from hubrl.errors import GridError
from hubrl.signals import SignalStop
from hubrl.trial import TrialFn, TrialSpec, execute_trial, failure_fields, make_record, now, save_status

__all__ = ["run_in_process", "run_in_pool", "run_on_ray"]


def run_in_process(todo: list[TrialSpec], trial_fn: TrialFn, record: Callable[[dict[str, Any]], None],
                   say: Callable[[str], None]) -> None:
    """One trial after another in this process (debugging; peak memory is the process's so far);
    a trial stopped by a signal (its own handler, :class:`hubrl.training.StopOnSignal`) ends the grid."""
    for spec in todo:
        rec = execute_trial(spec, trial_fn)
        record(rec)
        if rec["status"] == "interrupted":
            say("Stopped by a signal: rerun the same command to continue the grid.")
            break


def _init_worker(threads: int | None) -> None:
    """Pool initializer: cap BLAS/OpenMP threads before torch is imported in the worker."""
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)


def _new_pool(workers: int, threads: int | None) -> ProcessPoolExecutor:
    """``workers`` spawned processes, each running one trial and exiting (so peak memory is the trial's)."""
    context = multiprocessing.get_context("spawn")
    try:
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,),
                                   max_tasks_per_child=1)
    except TypeError:  # Python < 3.11: workers are reused, so peak memory spans several trials
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,))


def run_in_pool(todo: list[TrialSpec], trial_fn: TrialFn, workers: int, threads: int | None,
                record: Callable[[dict[str, Any]], None], say: Callable[[str], None]) -> None:
    """At most ``workers`` trials in flight; a pool broken by a dead worker is replaced.

    When a worker dies (killed for memory, a segfault), ``concurrent.futures`` fails every trial
    running in that pool: they are recorded as failed and retried by the next rerun.

    A signal (Ctrl-C, SIGTERM from ``kill -- -PGID``, a scheduler or ``timeout``, or the hang-up of a
    closed terminal) reaches the workers too, which stop their trials and checkpoint; this process
    (:class:`hubrl.signals.SignalStop`) starts no further trial, records theirs as they come back
    and returns, so ``trials.jsonl`` holds every attempt. Only a second Ctrl-C or SIGTERM stops it
    waiting.
    """
    pending = list(todo)
    isolated = sys.version_info >= (3, 11)
    for spec in pending:
        spec["isolated"] = isolated
    pool = _new_pool(workers, threads)
    running: dict[Future, tuple[TrialSpec, ProcessPoolExecutor]] = {}
    stop = SignalStop(then="the running trials save their checkpoints; no further trial starts")
    stopping = False  # a signal here, or a trial stopped by one this process did not see

    def failed(spec: TrialSpec, **fields: Any) -> dict[str, Any]:
        rec = make_record(spec, "failed", **fields, seconds=0.0, steps=0, finished=now())
        save_status(spec, rec)
        return rec

    try:
        with stop:
            while pending or running:
                while pending and len(running) < workers and not stopping:
                    spec = pending.pop(0)
                    running[pool.submit(execute_trial, spec, trial_fn)] = (spec, pool)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    spec, its_pool = running.pop(future)
                    try:
                        rec = future.result()
                    except BrokenProcessPool as exc:
                        rec = failed(spec, error=f"The worker process died (killed by the OS, e.g. for memory, or "
                                                 f"crashed): {exc}", traceback=None)
                        if its_pool is pool:
                            pool.shutdown(wait=False, cancel_futures=True)
                            pool = _new_pool(workers, threads)
                    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
                        rec = failed(spec, **failure_fields(exc))
                    record(rec)
                    stopping = stopping or rec["status"] == "interrupted"
                stopping = stopping or stop.received is not None
                if stopping and pending:
                    say("Stopped by a signal: waiting for the running trials to checkpoint; rerun the same command to "
                        "continue.")
                    pending.clear()
    except KeyboardInterrupt:
        # The second signal: the workers got it too (same process group) and stop at once, checkpointing.
        say("Interrupted again: waiting for the running trials to save their checkpoints (again to abort).")
        for future, (spec, _) in running.items():
            try:
                record(future.result())
            except Exception as exc:  # noqa: BLE001
                record(failed(spec, **failure_fields(exc)))
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_on_ray(todo: list[TrialSpec], trial_fn: TrialFn, address: str, cpus: float, gpus: float,
               record: Callable[[dict[str, Any]], None]) -> None:
    """Each trial a Ray task in a fresh worker process; records are collected as tasks finish."""
    try:
        import ray
    except ImportError:
        raise GridError('Running on Ray needs the ray package: pip install "hubrl[ray]".') from None
    started_here = False
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=False)
        started_here = True
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_calls=1, max_retries=0)(execute_trial)
    for spec in todo:
        spec["isolated"] = True
    refs = {remote.remote(spec, trial_fn): spec for spec in todo}
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                spec = refs.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, ...
                    rec = make_record(spec, "failed", **failure_fields(exc), seconds=0.0, steps=0, finished=now())
                    save_status(spec, rec)
                record(rec)
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)
        raise
    finally:
        if started_here:
            ray.shutdown()
