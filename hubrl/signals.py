"""A clean stop on a signal: Ctrl-C, SIGTERM, or the hang-up of a closed terminal.

:class:`SignalStop` turns SIGINT / SIGTERM / SIGHUP into a flag that the caller's loop checks, so
the loop stops at a point of its choosing (a training run after its env step, then checkpoints; a
grid after its running trials have checkpointed). A second Ctrl-C or SIGTERM is the user insisting:
it raises :class:`KeyboardInterrupt` there and then. :class:`hubrl.training.StopOnSignal` is the
same stop as an SB3 callback.

This module imports only the standard library (a grid's parent process uses it without torch).
"""

from __future__ import annotations

import os
import signal
import stat
from typing import Any

__all__ = ["SignalStop", "silence_terminal_output"]


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
    """

    def __init__(self, then: str = "saving a checkpoint, then stopping") -> None:
        self.received: int | None = None
        self.then = then
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        hangup = signum == getattr(signal, "SIGHUP", None)
        if self.received is not None:  # second Ctrl-C: the user insists (a closing terminal may hang up twice)
            if hangup:
                return
            raise KeyboardInterrupt
        self.received = signum
        if hangup:  # the terminal is gone: every later write to it would fail (EIO) and could cost the checkpoint
            silence_terminal_output()
            return
        print(f"\nReceived {signal.Signals(signum).name}: {self.then} (again to abort).", flush=True)

    def __enter__(self) -> "SignalStop":
        hangup = getattr(signal, "SIGHUP", None)  # POSIX only
        for sig in (signal.SIGINT, signal.SIGTERM, hangup):
            if sig is None or (sig == hangup and signal.getsignal(sig) is not signal.SIG_DFL):
                continue  # nohup (ignored) or the caller's own handler: left as it is
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
