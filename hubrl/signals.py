"""A clean stop on a signal: Ctrl-C, SIGTERM, or the hang-up of a closed terminal.

:class:`SignalStop` turns SIGINT / SIGTERM / SIGHUP into a flag that the caller's loop checks, so
the loop stops at a point of its choosing (a training run after its env step, then checkpoints; a
grid after its running trials have checkpointed). A second Ctrl-C or SIGTERM is the user insisting:
it raises :class:`KeyboardInterrupt` there and then. :class:`hubrl.training.StopOnSignal` is the
same stop as an SB3 callback.

A grid's worker processes (:mod:`hubrl.trial_runners`) call :func:`defer_signals` first: a signal
that reaches a worker outside any :class:`SignalStop` (starting up, setting up its trial, idle) is
kept instead of killing it, and the next :class:`SignalStop` starts stopped. The grid also sends
its workers :data:`STOP_REQUEST` (SIGUSR1), a stop that is never taken as the second signal, so a
signal that reached only the grid's own process stops the trials too, and one that reached the
whole process group does not abort them.

This module imports only the standard library (a grid's parent process uses it without torch).
"""

from __future__ import annotations

import os
import signal
import stat
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["STOP_REQUEST", "SignalStop", "defer_signals", "deferred_signals", "held_signals", "pending_signal",
           "request_stop", "silence_terminal_output"]

#: The stop a grid asks of its workers: like a first SIGTERM, and never an abort however often it comes.
STOP_REQUEST: int | None = getattr(signal, "SIGUSR1", None)  # POSIX only
_HANGUP: int | None = getattr(signal, "SIGHUP", None)
_pending: int | None = None  # the first signal a deferring process received outside any SignalStop
_STOP_SIGNALS = tuple(sig for sig in (signal.SIGINT, signal.SIGTERM, _HANGUP, STOP_REQUEST) if sig is not None)


def _defer(signum, frame) -> None:  # noqa: ARG001
    global _pending
    if signum == _HANGUP:  # the terminal is gone: the trial's next line to it would fail (EIO)
        silence_terminal_output()
    if _pending is None or _pending == STOP_REQUEST:
        _pending = signum
    elif signum not in (_HANGUP, STOP_REQUEST):  # a second Ctrl-C or SIGTERM: the user insists, also between trainings
        raise KeyboardInterrupt


def defer_signals() -> None:
    """Keep a SIGINT / SIGTERM / SIGHUP (not ignored, e.g. by ``nohup``) or :data:`STOP_REQUEST`
    that arrives outside any :class:`SignalStop` for the next one to find (:func:`pending_signal`),
    instead of ending the process: a grid's worker calls this when it starts. Signals held back
    since the worker was started (:func:`held_signals`) are let through now, into this keeping."""
    for sig in _STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _defer)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextmanager
def held_signals() -> Iterator[None]:
    """Hold the stop signals back in this thread while it starts processes (a grid's pool), so
    that each process starts with them held (a blocked mask is inherited) until it can keep them
    (:func:`defer_signals`): a SIGTERM to the process group, or the grid's :data:`STOP_REQUEST`,
    would otherwise end a worker that is still starting, whose death breaks the whole pool. The
    signals are delivered to this process when the block ends. Where the platform cannot block
    signals, nothing is held."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # launching it later would unblock SIGINT and SIGTERM in this thread
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """:func:`defer_signals` for a while (a grid running its trials in its own process); on exit
    the handlers are restored and a kept signal forgotten."""
    global _pending
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    defer_signals()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _pending = None


def pending_signal() -> int | None:
    """The signal :func:`defer_signals` kept (None when none came)."""
    return _pending


def request_stop(pid: int) -> None:
    """Send :data:`STOP_REQUEST` to the process ``pid`` (a grid's worker), if it still runs."""
    if STOP_REQUEST is not None:
        try:
            os.kill(pid, STOP_REQUEST)
        except (ProcessLookupError, PermissionError):
            pass


def silence_terminal_output() -> None:
    """Point stdout and stderr (file descriptors 1 and 2) at the null device, where they are a
    terminal: after a hang-up, writes to it fail with EIO, and a progress bar's refresh or a
    message would raise before the checkpoint is saved. Files and pipes are left as they are."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        for fd in (1, 2):
            try:
                if stat.S_ISCHR(os.fstat(fd).st_mode):  # a terminal (isatty may already fail on a hung-up one)
                    os.dup2(null, fd)
            except OSError:
                pass
    finally:
        os.close(null)


class SignalStop:
    """While entered, SIGINT / SIGTERM / SIGHUP set :attr:`received` instead of ending the process.

    SIGHUP is what a closed terminal or a dropped ssh session sends: by default it kills the process
    with nothing saved. It is taken only where it would kill: under ``nohup`` (SIGHUP ignored) the
    process goes on as the user asked, and a handler the caller installed is left as it is. After a
    hang-up the terminal is gone, so the process's terminal output is pointed at the null device
    (:func:`silence_terminal_output`); a second hang-up is ignored (a closing terminal may send two).
    The first signal is said in one line, with ``then``, what the caller does before it stops.
    In a grid's worker (:func:`defer_signals`) it also takes :data:`STOP_REQUEST`, which stops but
    never counts as the first of two, and starts stopped when a signal came before it was entered.
    """

    def __init__(self, then: str = "saving a checkpoint, then stopping") -> None:
        self.received: int | None = None
        self.then = then
        self._previous: dict[int, Any] = {}
        self._finishing = self._insisted = False

    @contextmanager
    def finishing(self) -> Iterator[None]:
        """While the caller saves what it keeps on the way out (its checkpoint), a second Ctrl-C or
        SIGTERM waits: it raises :class:`KeyboardInterrupt` when the block has ended, not inside
        the write, where it would cost the checkpoint being written (the run would go back to its
        last periodic one). An exception of the block's own goes on up as it is."""
        self._finishing, self._insisted = True, False
        try:
            yield
        finally:
            self._finishing = False
        if self._insisted:
            raise KeyboardInterrupt

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        if signum == STOP_REQUEST:  # the grid's request: a stop, never an abort, and said by the grid itself
            if self.received is None:
                self.received = signum
            return
        hangup = signum == _HANGUP
        if self.received is not None and self.received != STOP_REQUEST:  # second Ctrl-C: the user insists
            if hangup:  # a closing terminal may hang up twice
                return
            if self._finishing:  # ... but not in the middle of the checkpoint being written (see finishing())
                if not self._insisted:
                    print(f"\nReceived {signal.Signals(signum).name} again: aborting once the checkpoint is written.",
                          flush=True)
                self._insisted = True
                return
            raise KeyboardInterrupt
        self.received = signum  # the first signal (the grid's request may have come first: SIGUSR1 < SIGTERM)
        if hangup:  # the terminal is gone: every later write to it would fail (EIO) and could cost the checkpoint
            silence_terminal_output()
            return
        print(f"\nReceived {signal.Signals(signum).name}: {self.then} (again to abort).", flush=True)

    def __enter__(self) -> "SignalStop":
        for sig in _STOP_SIGNALS:
            current = signal.getsignal(sig)
            if sig == STOP_REQUEST and current is not _defer:
                continue  # only a grid's worker takes the grid's request
            if sig == _HANGUP and current not in (signal.SIG_DFL, _defer):
                continue  # nohup (ignored) or the caller's own handler: left as it is
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        if _pending is not None and self.received is None:  # it came while setting up: stop at once
            self.received = _pending
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
