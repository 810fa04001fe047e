"""Where and with what a run ran: git commit, machine, CPU kernels, package versions.

Why it is recorded with every run: an RL run is repeatable evaluation for evaluation only on the
same CPU kernels and package builds. On one machine two runs of a seed agree exactly (the
benchmark grid's ``select`` trial on Alien equals ``finetune-seaquest-ppo`` of the same seed), but
the same Gopher trial started again in a later session of the benchmark VM scored 448 instead of
672 at its first evaluation: float-level differences (another CPU or kernel path, another package build)
grow through training like a different seed. ``config.yaml`` of a run and every attempt in a grid's
``status.json`` therefore carry :func:`system_info`, and the benchmark report lists the systems
its trials ran on, so a reader can tell a real difference from a different machine.

Only the standard library at import time; torch is imported inside :func:`machine_info`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

__all__ = ["PACKAGES", "git_commit", "source_root", "installed_commit", "cpu_model", "package_versions", "machine_info",
           "system_info", "system_label"]

#: Distributions whose versions decide a run's numbers (hubrl itself included).
PACKAGES = ("hubrl", "torch", "stable-baselines3", "gymnasium", "ale-py", "numpy")


def git_commit(path: str | Path | None = None) -> str | None:
    """HEAD of the git checkout holding ``path``, ``+dirty`` if tracked files are modified; ``None``
    outside a checkout or without git.

    Default: hubrl's own commit, which git knows only where hubrl runs from its own source checkout
    (:func:`source_root`); hubrl installed inside another project's checkout (a ``.venv`` of it)
    would otherwise record that project's HEAD. Installed from a git URL, the commit pip recorded
    (:func:`installed_commit`); else ``None``.
    """
    if path is not None:
        return _head(Path(path))
    root = source_root()
    if root is not None and _toplevel(root) == root:
        return _head(root)
    return installed_commit()  # an installed copy, or hubrl's folder inside another project's checkout


def _toplevel(cwd: Path) -> Path | None:
    """The top folder of the git checkout holding ``cwd``, or ``None`` (none, or no git)."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(top.stdout.strip()).resolve() if top.returncode == 0 and top.stdout.strip() else None


def _head(cwd: Path) -> str | None:
    """HEAD of the checkout holding ``cwd`` (``+dirty`` with modified tracked files), or ``None``."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def source_root() -> Path | None:
    """The folder of hubrl's own source tree that holds this package, when it is one: the folder above
    the package with the ``pyproject.toml`` of the ``hubrl`` project. ``None`` for an installed copy
    (``site-packages`` holds no such file)."""
    root = Path(__file__).resolve().parent.parent
    try:
        text = (root / "pyproject.toml").read_text(errors="replace")
    except OSError:
        return None
    return root if re.search(r'^name\s*=\s*"hubrl"\s*$', text, re.MULTILINE) else None


def installed_commit() -> str | None:
    """The commit pip recorded installing this hubrl from a git URL (``direct_url.json``'s
    ``vcs_info``), when the installed distribution is the package imported; else ``None``."""
    try:
        dist = metadata.distribution("hubrl")
        if Path(str(dist.locate_file("hubrl/provenance.py"))).resolve() != Path(__file__).resolve():
            return None  # another copy of hubrl is installed: its record says nothing of this one
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, OSError, ValueError):
        return None
    vcs = direct.get("vcs_info") if isinstance(direct, dict) else None
    commit = vcs.get("commit_id") if isinstance(vcs, dict) else None
    return commit if isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{7,64}", commit) else None


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's marketing name (Linux ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution in ``names`` (``None`` where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info() -> dict[str, Any]:
    """Host, OS, Python, CPU (model, count, the vector ISA torch's kernels use) and the torch
    device ``auto`` resolves to."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch as th

        info["torch"] = str(th.__version__)  # a str subclass that yaml.safe_dump refuses
        get_capability = getattr(th.backends.cpu, "get_cpu_capability", None)
        info["cpu_capability"] = str(get_capability()) if get_capability else None
        info["cuda"] = th.cuda.get_device_name(0) if th.cuda.is_available() else None
        info["torch_device"] = "cuda" if th.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        info["torch_device"] = None
    return info


def system_info() -> dict[str, Any]:
    """Everything above in one record: ``commit``, the machine, and ``packages``."""
    return {"commit": git_commit(), **machine_info(), "packages": package_versions()}


def system_label(info: Mapping[str, Any]) -> str:
    """One line naming what decides a run's floats: CPU model and ISA, GPU, and package versions."""
    packages = info.get("packages") or {}
    parts = [str(info.get("cpu_model") or info.get("processor") or "unknown CPU")]
    if info.get("cpu_capability"):
        parts[0] += f" ({info['cpu_capability']})"
    if info.get("cuda"):
        parts.append(str(info["cuda"]))
    parts += [f"{name} {version}" for name, version in packages.items() if version and name != "hubrl"]
    return ", ".join(parts)
