"""Advisory file locks (standard library only): one process at a time works on a folder.

:func:`exclusive_lock` holds ``fcntl.flock`` on a lock file for the duration of a ``with`` block
and writes the holder's pid and host into it, so a second process is refused at once with who
holds it. The kernel releases the lock when the holder exits, however it exits (a crash or
``kill -9`` leaves no stale lock to clean up). Locks are per host on network file systems that
do not forward ``flock``.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hubrl.errors import HubrlError

__all__ = ["LockHeld", "exclusive_lock"]


class LockHeld(HubrlError):
    """Another process holds the lock; ``holder`` is what it wrote into the lock file (pid, host)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by another process ({holder or 'pid unknown'}).")
        self.path = path
        self.holder = holder


@contextmanager
def exclusive_lock(path: str | Path, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block.

    ``wait`` False: refused at once when another process holds it; True: wait for it (for locks
    held a moment, such as an expert's two writes).

    :raises LockHeld: when another process holds it and ``wait`` is False, with its pid and host.
    """
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked rather than not at all
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
            raise LockHeld(path, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
