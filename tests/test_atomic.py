"""``hubrl.atomic``: a write stopped at any point leaves the previous file whole, and no temp file.

Checkpoints, hubs, grid records and reports are written through :func:`hubrl.atomic.atomic_write`;
these tests stop it in the middle of the data and just before the rename (a kill, a full disk).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hubrl.atomic import atomic_write, atomic_write_bytes

OLD = b"the previous contents"


def _existing(tmp_path: Path) -> Path:
    path = tmp_path / "f.bin"
    path.write_bytes(OLD)
    return path


def test_a_write_stopped_half_way_leaves_the_previous_file(tmp_path):
    path = _existing(tmp_path)

    def half(handle) -> None:
        handle.write(b"the new con")  # part of the data ...
        raise KeyboardInterrupt  # ... and the process is stopped

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half, keep_previous=tmp_path / "f.prev")
    assert path.read_bytes() == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file, and no .prev for a write that failed


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")],
                         ids=["killed", "disk-full"])
def test_a_write_stopped_before_the_rename_leaves_the_previous_file(tmp_path, monkeypatch, error):
    """All the data written, then stopped at the flush to disk: the name still holds the old file."""
    path = _existing(tmp_path)

    def stopped(fd: int) -> None:
        raise error

    monkeypatch.setattr(os, "fsync", stopped)
    with pytest.raises(type(error)):
        atomic_write_bytes(path, b"the new contents, complete")
    assert path.read_bytes() == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_keep_previous_holds_the_version_replaced(tmp_path):
    path = _existing(tmp_path)
    atomic_write(path, lambda handle: handle.write(b"new"), keep_previous=tmp_path / "f.prev")
    assert path.read_bytes() == b"new" and (tmp_path / "f.prev").read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin", "f.prev"]
