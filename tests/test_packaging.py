"""One clear package (issue 16): ``agents/`` and ``envs/`` import as ``hubrl.agents`` / ``hubrl.envs``
everywhere (an editable install, a plain clone, a wheel) and no generic top-level name leaks."""

from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

GENERIC = ("agents", "envs")
# What the mechanical rewrite of issue 16 replaced: ``from agents... import`` / ``import envs...`` at the top level.
GENERIC_IMPORT = re.compile(r"^\s*(?:from|import) (?:agents|envs)(?:\.\w+)*(?:\s|$)", re.M)


def test_no_code_imports_the_generic_top_level_names():
    offenders = [f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}"
                 for folder in ("hubrl", "agents", "envs", "scripts", "tests")
                 for path in sorted((ROOT / folder).rglob("*.py"))
                 for text in [path.read_text()]
                 for m in GENERIC_IMPORT.finditer(text)]
    assert not offenders, f"import hubrl.agents / hubrl.envs instead: {offenders}"


def test_pyproject_lists_every_package_with_its_folder():
    """setuptools is told the packages by name (find cannot map folders): a new subpackage must be listed."""
    from tests.conftest import read_pyproject

    setuptools = read_pyproject()["tool"]["setuptools"]
    folders = {"hubrl": "hubrl", "hubrl.agents": "agents", "hubrl.envs": "envs"}
    assert setuptools["package-dir"] == folders
    found = {".".join((package, *init.parent.relative_to(ROOT / folder).parts))
             for package, folder in folders.items() for init in (ROOT / folder).rglob("__init__.py")}
    # Folders of data only (the shipped hub, the presets) are listed too, each with its own package-data.
    data = set(setuptools["packages"]) - found
    assert data <= set(setuptools["package-data"]), data
    for package in data:
        parent, name = package.rsplit(".", 1)
        folder = ROOT / folders[parent] / name
        assert folder.is_dir() and not list(folder.glob("*.py")), package
    assert sorted(setuptools["packages"]) == sorted(found | data)


def test_importing_every_module_loads_no_generic_top_level_package():
    import hubrl

    for info in pkgutil.walk_packages(hubrl.__path__, "hubrl."):
        if info.name != "hubrl.__main__":  # runs the command line
            importlib.import_module(info.name)
    import hubrl.agents
    import hubrl.envs.atari  # noqa: F401

    assert not [name for name in GENERIC if name in sys.modules]
    assert hubrl.agents.HubPPO.__module__ == "hubrl.agents.ppo"


def test_a_clone_without_installation_imports_the_folders_beside_hubrl(tmp_path):
    """The fallback finder of hubrl/__init__.py: the copies beside *this* ``hubrl`` (even though
    another copy may be installed in editable mode), and no other name (``hubrl.scripts``)."""
    clone = tmp_path / "clone"
    for folder in ("hubrl", "agents", "envs", "scripts", "tests"):
        shutil.copytree(ROOT / folder, clone / folder, ignore=shutil.ignore_patterns("default_hub", "__pycache__"))
    code = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(clone)!r})\n"
        "import hubrl.envs.games\n"
        "agents = importlib.util.find_spec('hubrl.agents')  # found, not run: no torch import\n"
        "print(hubrl.__file__, hubrl.envs.games.__file__, agents.origin, *agents.submodule_search_locations)\n"
        "print([n for n in ('hubrl.scripts', 'hubrl.tests', 'hubrl.hubrl') if importlib.util.find_spec(n)])\n"
        "print([n for n in ('agents', 'envs') if n in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    files, exposed, generic = proc.stdout.splitlines()
    assert files.split() == [str(clone / "hubrl" / "__init__.py"), str(clone / "envs" / "games.py"),
                             str(clone / "agents" / "__init__.py"), str(clone / "agents")]
    assert exposed == "[]" and generic == "[]"


@pytest.mark.slow
def test_the_wheel_installs_agents_and_envs_inside_hubrl(tmp_path):
    """Build the wheel, check its file list, install it (no deps: this venv has them) into a
    folder of its own and import it from elsewhere."""
    import zipfile

    pytest.importorskip("setuptools")
    source = tmp_path / "source"  # a copy: setuptools leaves build/ behind, whose stale files later wheels would carry
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in ("hubrl", "agents", "envs"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "-w", str(wheels), "--no-deps",
                            "--no-build-isolation", "-q"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    # A data folder with an importable name left out of `packages` makes setuptools warn, at length, on every install.
    assert "absent from the `packages` configuration" not in build.stdout + build.stderr
    wheel = next(wheels.glob("hubrl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"hubrl", f"hubrl-{wheel.name.split('-')[1]}.dist-info"}, tops  # no agents/, envs/, tests/ ...
    for needed in ("hubrl/agents/__init__.py", "hubrl/agents/ppo.py", "hubrl/agents/hyperparams/ppo.yml",
                   "hubrl/agents/hyperparams/a2c.yml", "hubrl/envs/__init__.py", "hubrl/envs/atari.py",
                   "hubrl/cli/transfer.py", "hubrl/__main__.py", "hubrl/default_hub/seaquest-ppo/expert.json",
                   "hubrl/default_hub/riverraid-ppo/weights.safetensors"):
        assert needed in names
    dist_info = f"hubrl-{wheel.name.split('-')[1]}.dist-info"
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert all(f"hubrl-{command} = hubrl.cli.{command}:cli" in entry_points
               for command in ("pretrain", "transfer", "rank", "bench", "speed", "enjoy"))

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import importlib.util, sys\n"
        "import hubrl.agents, hubrl.envs\n"
        "print(hubrl.agents.__file__, hubrl.envs.__file__)\n"
        "print([n for n in ('agents', 'envs') if importlib.util.find_spec(n)])\n"
        "print(hubrl.agents.preset('a2c')['learning_rate'])\n"  # the YAML presets travel as package data
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    files, generic, learning_rate = proc.stdout.splitlines()
    assert files.split() == [str(target / "hubrl" / "agents" / "__init__.py"), str(target / "hubrl" / "envs" / "__init__.py")]
    assert generic == "[]" and learning_rate == "0.0007"


def _save_as_before_issue_16(model, path: Path, monkeypatch) -> Path:
    """Save ``model`` as hubrl did when the agents were the top-level package ``agents``: the
    schedules' class pickled as ``agents.presets._Linear``."""
    import types

    import hubrl.agents.presets as presets

    old = types.ModuleType("agents")
    old.presets = presets
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "agents", old)
        patch.setitem(sys.modules, "agents.presets", presets)
        patch.setattr(presets._Linear, "__module__", "agents.presets")
        model.save(path)
    return path


def test_a_model_zip_saved_under_the_old_module_names_still_loads(tmp_path, monkeypatch, tiny_ppo):
    import base64
    import json
    import zipfile

    from stable_baselines3 import PPO

    import hubrl.agents.presets as presets
    from hubrl.agents import HubPPO, legacy_custom_objects, resolve_hyperparams
    from hubrl.envs import make_atari_vec_env

    # From the repository's root the folder agents/ is importable as `agents` (tests/conftest.py puts the
    # root on sys.path): hide it, as for a user of the installed package.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != ROOT])
    env = make_atari_vec_env("Seaquest", 1, seed=0)
    _, kwargs = resolve_hyperparams("ppo", {**tiny_ppo, "batch_size": 32})
    kwargs.update(learning_rate=presets._Linear(2.5e-4), clip_range=presets._Linear(0.1))  # hubrl's schedules then
    model = HubPPO("CnnPolicy", env, seed=0, device="cpu", **kwargs)
    old = _save_as_before_issue_16(model, tmp_path / "old.zip", monkeypatch)
    env.close()
    data = json.loads(zipfile.ZipFile(old).read("data"))
    assert b"agents.presets" in base64.b64decode(data["learning_rate"][":serialized:"])  # the file is really old-style
    with pytest.raises(ModuleNotFoundError, match="agents"):
        PPO.load(old, device="cpu")  # what SB3 alone does with it

    assert sorted(legacy_custom_objects(old)) == ["clip_range", "learning_rate", "lr_schedule"]
    for loaded in (HubPPO.load(old, device="cpu"), HubPPO.load(tmp_path / "old", device="cpu"),
                   PPO.load(old, device="cpu", custom_objects=legacy_custom_objects(old))):
        assert loaded.lr_schedule(1.0) == pytest.approx(2.5e-4) and loaded.clip_range(0.5) == pytest.approx(0.05)
        for key, value in model.policy.state_dict().items():
            assert (loaded.policy.state_dict()[key] == value).all()
    assert not [name for name in GENERIC if name in sys.modules]  # nothing registered under the old names

    model.save(tmp_path / "new.zip")
    assert legacy_custom_objects(tmp_path / "new.zip") == {}
    assert legacy_custom_objects(tmp_path / "missing.zip") == {}
