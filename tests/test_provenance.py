"""Provenance records: CPU model, package versions, the one-line system label the report prints."""

from __future__ import annotations

import pytest
import torch

from hubrl.provenance import PACKAGES, cpu_model, package_versions, system_info, system_label


def test_cpu_model_reads_cpuinfo_and_falls_back(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                       "model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\nflags\t: sse\n")
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    fallback = cpu_model(tmp_path / "missing")
    assert isinstance(fallback, str) and fallback


def test_package_versions():
    versions = package_versions(("torch", "surely-not-a-distribution-hubrl"))
    assert versions["surely-not-a-distribution-hubrl"] is None
    # the installed distribution's version: some CUDA builds' metadata lack the local label that
    # torch.__version__ carries (2.11.0 for 2.11.0+cu130, seen on the device machine)
    assert versions["torch"] and torch.__version__.startswith(versions["torch"])


def test_system_info_and_label():
    info = system_info()
    assert set(PACKAGES) == set(info["packages"]) and info["packages"]["stable-baselines3"]
    assert info["cpu_model"] and info["cpu_count"] and info["torch"] == torch.__version__
    label = system_label({
        "cpu_model": "AMD EPYC 7B13", "cpu_capability": "AVX2", "cuda": None,
        "packages": {"hubrl": "0.1.0", "torch": "2.13.0+cpu", "ale-py": "0.12.1", "numpy": None},
    })
    assert label == "AMD EPYC 7B13 (AVX2), torch 2.13.0+cpu, ale-py 0.12.1"
    assert system_label({}) == "unknown CPU"


def test_system_info_is_plain_yaml():
    """``config.yaml`` is written with ``yaml.safe_dump``: every value must be a plain type."""
    import yaml

    info = system_info()
    assert yaml.safe_load(yaml.safe_dump(info)) == info


def _git(folder, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=folder, check=True,
                          capture_output=True, text=True).stdout.strip()


def _checkout_with_provenance(root, package_dir: str, project: str):
    """A git checkout ``root`` (one commit) holding a copy of ``hubrl/provenance.py`` under ``package_dir``
    and a ``pyproject.toml`` of ``project`` at its top; the copy, imported on its own, and the HEAD."""
    import importlib.util
    import shutil
    import uuid

    import hubrl.provenance

    package = root / package_dir / "hubrl"
    package.mkdir(parents=True)
    shutil.copy(hubrl.provenance.__file__, package / "provenance.py")
    (root / "pyproject.toml").write_text(f'[project]\nname = "{project}"\nversion = "1.0"\n')
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "one")
    spec = importlib.util.spec_from_file_location(f"provenance_copy_{uuid.uuid4().hex}", package / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, _git(root, "rev-parse", "HEAD")


def test_hubrl_installed_inside_another_projects_checkout_records_no_commit_of_that_project(tmp_path):
    """hubrl installed (not editable) in ``myproject/.venv``: git run from its package folder answered
    with myproject's HEAD, recorded in every run as hubrl's commit."""
    import shutil

    if shutil.which("git") is None:
        pytest.skip("needs git")
    copy, head = _checkout_with_provenance(tmp_path / "myproject", ".venv/lib/python3/site-packages", "myproject")
    assert copy.git_commit() is None
    assert copy.source_root() is None
    assert copy.git_commit(tmp_path / "myproject") == head  # a path given: that checkout's HEAD, as before


def test_hubrl_installed_from_a_git_url_records_the_commit_pip_installed(tmp_path, monkeypatch):
    """pip install git+URL@REV records the commit in direct_url.json: taken for this copy, never for another."""
    import shutil
    from pathlib import Path

    if shutil.which("git") is None:
        pytest.skip("needs git")
    copy, _ = _checkout_with_provenance(tmp_path / "myproject", ".venv/lib/python3/site-packages", "myproject")
    site = Path(copy.__file__).parent.parent

    class Installed:
        def __init__(self, where: Path) -> None:
            self.where = where

        def locate_file(self, name: str) -> Path:
            return self.where / name

        def read_text(self, name: str) -> str:
            return '{"url": "https://example.com/hubrl.git", "vcs_info": {"vcs": "git", "commit_id": "' + "a" * 40 + '"}}'

    monkeypatch.setattr(copy.metadata, "distribution", lambda name: Installed(site))
    assert copy.git_commit() == "a" * 40
    monkeypatch.setattr(copy.metadata, "distribution", lambda name: Installed(tmp_path / "another-venv"))
    assert copy.git_commit() is None


@pytest.mark.parametrize("project, ours", [("hubrl", True), ("myproject", False)])
def test_hubrl_records_its_commit_only_in_its_own_source_checkout(tmp_path, project, ours):
    import shutil

    if shutil.which("git") is None:
        pytest.skip("needs git")
    copy, head = _checkout_with_provenance(tmp_path / "checkout", ".", project)
    assert copy.git_commit() == (head if ours else None)
    (tmp_path / "checkout" / "pyproject.toml").write_text(f'[project]\nname = "{project}"\nversion = "1.1"\n')
    assert copy.git_commit() == (head + "+dirty" if ours else None)
