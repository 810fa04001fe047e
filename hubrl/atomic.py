"""Crash-safe file writes (standard library only, so light tools such as the benchmark grid use them too).

A file is written to a temporary name in the same folder, flushed to disk and renamed over the
target (``os.replace`` is atomic on POSIX and Windows): killing the process at any moment leaves
either the previous file or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "probe_writable", "sha256_file"]


def atomic_write(
    path: str | Path, write: Callable[[Any], None], mode: str = "wb", keep_previous: str | Path | None = None,
) -> Path:
    """Write ``path`` by calling ``write(fileobj)`` on a temp file, fsync, then rename over ``path``.

    The file gets the usual permissions of a new file (0666 minus the umask), not mkstemp's 0600,
    so hubs and runs on shared storage stay readable by the team.

    With ``keep_previous``, the file being replaced is kept under that name (itself replaced
    atomically, just before the new file goes in), so a reader that finds ``path`` damaged
    has the version before it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = open_partial(path)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.is_file():
            _keep(path, Path(keep_previous))
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    return path


def open_partial(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A new hidden file beside ``path`` (``.<name>.<random><suffix>``, unique: two writers of one
    name never share it), open: ``(descriptor, name)``. What a write goes into before it is renamed
    over ``path``. It gets the usual permissions of a new file (0666 minus the umask), not mkstemp's
    0600, so what is renamed into place is as readable as any other output."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:  # named as the file asked for, not the hidden one that could not be made
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        _discard(name)
        raise
    return fd, name


def probe_writable(path: str | Path) -> None:
    """Raise now the ``OSError`` that writing ``path`` would meet (named by ``path``), rather than
    after the work that makes its content (a play, a ranking): a hidden file is made beside it and
    removed. Its folder must exist."""
    fd, name = open_partial(Path(path), suffix=".probe")
    os.close(fd)
    _discard(name)


def _keep(path: Path, previous: Path) -> None:
    """Atomically make ``previous`` a copy of ``path`` (a hard link where the file system allows)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{previous.name}.", suffix=".tmp", dir=previous.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:  # no hard links here (some network or FAT file systems): copy
            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: str) -> None:
    """Remove a temporary file of a write that failed (it may already be gone)."""
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes, keep_previous: str | Path | None = None) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), keep_previous=keep_previous)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) into ``path`` atomically: a report or table that readers never find torn."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
