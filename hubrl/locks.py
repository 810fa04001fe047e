"""Advisory file locks (standard library only): one process at a time works on a folder.

:func:`exclusive_lock` holds ``fcntl.flock`` on a lock file for the duration of a ``with`` block
and writes the holder's pid and host into it, so a second process is refused at once with who
holds it. The kernel releases the lock when the holder exits, however it exits (a crash or
``kill -9`` leaves no stale lock to clean up). Locks are per host on network file systems that
do not forward ``flock``.

A lock file may lie in a folder others can write (a shared run folder, the temporary folder), so
it is opened without following a symbolic link and written only when it is a regular file with no
other name (:func:`_refuse_a_foreign_file`): a ``.lock`` planted as a link to another file, or as a
hard link of it, would have that file overwritten with the holder's pid. Its owner is not checked: a
teammate's lock in a shared grid root, or a host user's in a container's mounted folder (on NFS with
root squashing every file root makes belongs to nobody), is a lock like any other, and truncating a
regular file with one name harms nothing but that file's own words.
:func:`private_folder` makes a folder of lock files that only this user can write.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hubrl.errors import HubrlError

__all__ = ["LockHeld", "LockRefused", "exclusive_lock", "private_folder"]

#: ``os.open`` flags of a lock file: never through a symbolic link, never inherited by a child process,
#: and never blocking on a FIFO or device planted under the lock's name (where the platform has them).
_OPEN_FLAGS = (os.O_RDWR | os.O_CREAT
               | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))


class LockHeld(HubrlError):
    """Another process holds the lock; ``holder`` is what it wrote into the lock file (pid, host)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by another process ({holder or 'pid unknown'}).")
        self.path = path
        self.holder = holder


class LockRefused(HubrlError):
    """A lock file, or a folder of lock files, that this process will not write through: a symbolic
    link, not a regular file, a file with another name (hard link), or a folder of lock files that is
    another user's."""


@contextmanager
def exclusive_lock(path: str | Path, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block.

    ``wait`` False: refused at once when another process holds it; True: wait for it (for locks
    held a moment, such as an expert's two writes).

    :raises LockHeld: when another process holds it and ``wait`` is False, with its pid and host.
    :raises LockRefused: when ``path`` is a symbolic link, not a regular file, or has another name (a
        hard link): writing it could overwrite a file that is not a lock.
    """
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked rather than not at all
        yield path
        return
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o666)
    except OSError as exc:
        if path.is_symlink():  # O_NOFOLLOW met a link (ELOOP on Linux, EMLINK on FreeBSD)
            raise LockRefused(_refusal(path, "is a symbolic link")) from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):  # a folder, a socket
            raise LockRefused(_refusal(path, "is not a regular file")) from None
        raise
    try:
        _refuse_a_foreign_file(fd, path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
            raise LockHeld(path, holder) from None
        os.ftruncate(fd, 0)  # a regular file of ours with no other name: only the lock's own words are lost
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def _refuse_a_foreign_file(fd: int, path: Path) -> None:
    """Raise :class:`LockRefused` unless the open file ``fd`` (at ``path``) is a regular file with one
    name: the only kind of file :func:`exclusive_lock` truncates and writes (whoever owns it)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LockRefused(_refusal(path, "is not a regular file"))
    if info.st_nlink > 1:
        raise LockRefused(_refusal(path, f"has {info.st_nlink - 1} other name(s) (a hard link to another file, "
                                         "or a folder copied with cp -al)"))


def _refusal(path: Path, problem: str) -> str:
    """The message of a lock file refused for ``problem``: what it is and what to do."""
    return (f"Lock file {path} {problem}: refusing to write it (that could overwrite another file). A lock file holds "
            "nothing but the pid of its holder: move it out of the way (someone may have put it there), then run again.")


def private_folder(folder: str | Path) -> Path:
    """``folder``, made with mode 0700 if missing, once it is checked to be a real folder of this user
    that no one else can write: a folder of lock files in a shared place (the temporary folder) that
    another user made first could hold links to that user's choice of files. A folder of this user
    that others can write (made under a umask of 002 by an earlier version) is made private again:
    only this user could have made it, and :func:`exclusive_lock` refuses any file planted in it.

    :raises LockRefused: ``folder`` is a symbolic link, not a folder, or another user's.
    """
    folder = Path(folder)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    problem = None
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder"
    elif hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        problem = f"belongs to another user (uid {info.st_uid})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        try:
            os.chmod(folder, 0o700)
        except OSError as exc:
            problem = f"can be written by other users (mode {stat.S_IMODE(info.st_mode):o}; chmod: {exc.strerror})"
    if problem:
        raise LockRefused(f"Lock folder {folder} {problem}: refusing to keep locks in it (its files could be links to "
                          f"other files). Move it out of the way (it holds only lock files), or set TMPDIR to a folder "
                          f"of your own, then run again.")
    return folder
