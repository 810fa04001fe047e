"""``hubrl.locks`` and the write probe: a lock or probe file planted in a folder others can write
(a shared run folder, the temporary folder, a hub) never has hubrl write through it into another file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hubrl.locks import LockRefused, exclusive_lock, private_folder

VICTIM = b"a file of the user's, not a lock\n"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    return victim


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    """A shared run folder whose ``.lock`` links to another file: ``--resume`` overwrote that file with
    "pid N on host"."""
    victim = _victim(tmp_path)
    (tmp_path / ".lock").symlink_to(victim)
    with pytest.raises(LockRefused, match=r"\.lock is a symbolic link: refusing to write it .* move it out of the way"):
        with exclusive_lock(tmp_path / ".lock"):
            pass
    assert victim.read_bytes() == VICTIM


def test_a_lock_that_is_a_symlink_to_a_missing_file_creates_nothing(tmp_path):
    """A dangling link: following it would create the file it names, wherever that is."""
    (tmp_path / ".lock").symlink_to(tmp_path / "made-through-the-link")
    with pytest.raises(LockRefused, match="symbolic link"):
        with exclusive_lock(tmp_path / ".lock"):
            pass
    assert not (tmp_path / "made-through-the-link").exists()


def test_a_lock_that_is_a_hard_link_or_not_a_file_is_refused(tmp_path):
    victim = _victim(tmp_path)
    os.link(victim, tmp_path / ".lock")
    with pytest.raises(LockRefused, match="hard link"):
        with exclusive_lock(tmp_path / ".lock"):
            pass
    assert victim.read_bytes() == VICTIM
    os.mkfifo(tmp_path / "fifo.lock")  # opened without blocking, then refused
    with pytest.raises(LockRefused, match="is not a regular file"):
        with exclusive_lock(tmp_path / "fifo.lock"):
            pass
    (tmp_path / "folder.lock").mkdir()
    with pytest.raises(LockRefused, match="is not a regular file"):
        with exclusive_lock(tmp_path / "folder.lock"):
            pass


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_teammates_lock_file_is_a_lock_like_any_other(tmp_path):
    """A shared grid root or run folder holds locks other users' runs made (group-writable under umask
    002), and on NFS with root squashing every file root makes belongs to nobody: refusing a lock file for
    its owner refused all of these, and protected nothing (a regular file with one name loses only its own
    words). Only links are refused."""
    lock = tmp_path / ".lock"
    lock.write_text("pid 1 on teammate\n")
    os.chmod(lock, 0o664)
    os.chown(lock, 4242, -1)
    with exclusive_lock(lock):
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")


def test_a_lock_file_of_ours_is_written_and_reused(tmp_path):
    with exclusive_lock(tmp_path / ".lock") as lock:
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")
    with exclusive_lock(tmp_path / ".lock") as lock:  # left by an earlier holder: taken again
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_an_export_lock_folder_made_by_another_user_is_refused(tmp_path, monkeypatch):
    """The export locks' folder has a name anyone can guess (``$TMPDIR/hubrl-export-locks-<uid>``):
    another user who made it first, open to all, could put a link to any file of ours under a lock's name."""
    import tempfile

    from hubrl.experts import export_lock_path

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"hubrl-export-locks-{os.getuid()}"
    planted.mkdir()
    os.chmod(planted, 0o777)
    os.chown(planted, 4242, -1)
    with pytest.raises(LockRefused, match=rf"hubrl-export-locks-{os.getuid()} belongs to another user .* set TMPDIR"):
        export_lock_path(tmp_path / "hub" / "seaquest-ppo")
    assert stat.S_IMODE(planted.stat().st_mode) == 0o777  # not ours: left as it is


def test_an_export_lock_folder_is_private_and_a_link_planted_in_it_is_refused(tmp_path, monkeypatch):
    """One of ours that others could write (an earlier version made it under umask 002) is made private
    again; a link planted in it meanwhile is still refused, its target untouched."""
    import tempfile

    import torch as th

    from hubrl.experts import ExpertManifest, export_lock_path, save_expert

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = tmp_path / "hub" / "seaquest-ppo"
    made = export_lock_path(folder).parent
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    os.chmod(made, 0o777)
    victim = _victim(tmp_path)
    export_lock_path(folder).symlink_to(victim)
    assert stat.S_IMODE(export_lock_path(folder).parent.stat().st_mode) == 0o700
    manifest = ExpertManifest(name="seaquest-ppo", game="seaquest", algo="ppo", timesteps=1, observation_shape=[4, 84, 84],
                              action_meanings=["NOOP"])
    with pytest.raises(LockRefused, match="symbolic link"):
        save_expert(folder, {"x": th.zeros(1)}, manifest)
    assert victim.read_bytes() == VICTIM
    made.rename(tmp_path / "aside")  # the folder itself a link: refused, not followed
    (tmp_path / "elsewhere").mkdir()
    made.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LockRefused, match="is a symbolic link"):
        private_folder(made)


def test_the_write_probe_makes_a_new_file_and_leaves_a_planted_link_alone(tmp_path):
    """``writable_folder_problem`` wrote an empty ``.hubrl-write-test`` where a link of that name emptied its target."""
    from hubrl.harness import writable_folder_problem

    victim = _victim(tmp_path)
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / ".hubrl-write-test").symlink_to(victim)
    assert writable_folder_problem(hub) is None
    assert victim.read_bytes() == VICTIM
    assert sorted(p.name for p in hub.iterdir()) == [".hubrl-write-test"]  # the probe is gone, the link kept
