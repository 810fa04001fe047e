"""The command line (issue 16): entry points ``hubrl-<command>``, ``python -m hubrl <command>`` and
the wrappers in scripts/ run the same ``hubrl.cli.<command>.main``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hubrl.cli import COMMANDS, command_main
from hubrl.cli import main as hubrl_main
from tests.conftest import ROOT

SCRIPTS = {"pretrain": "pretrain_sources.py", "transfer": "transfer.py", "rank": "rank_hub.py", "bench": "benchmark.py",
           "speed": "benchmark_speed.py", "enjoy": "enjoy.py"}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_python_m_hubrl_command_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        hubrl_main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m hubrl {command} ")
    assert "%(prog)" not in out and out.count(f"python -m hubrl {command} ") > 1  # the examples name it too


def test_python_m_hubrl_lists_the_commands_and_refuses_an_unknown_one(capsys):
    assert hubrl_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {command} " in out for command in COMMANDS)
    assert hubrl_main([]) == 2
    assert hubrl_main(["nope"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: unknown command 'nope'")


def test_the_entry_points_are_installed_and_are_the_commands():
    """pyproject.toml's [project.scripts] and the installed metadata (reinstall after editing it)."""
    from importlib.metadata import entry_points

    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert declared == {f"hubrl-{command}": f"hubrl.cli.{command}:cli" for command in COMMANDS}
    installed = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name.startswith("hubrl-")}
    assert installed == declared
    for command in COMMANDS:
        assert callable(getattr(sys.modules[command_main(command).__module__], "cli"))


def test_each_script_is_a_thin_wrapper_of_its_command():
    assert sorted(p.name for p in (ROOT / "scripts").glob("*.py")) == sorted(SCRIPTS.values())
    for command, script in SCRIPTS.items():
        text = (ROOT / "scripts" / script).read_text()
        assert f'run_script("{command}", __file__)' in text and len(text.splitlines()) <= 15, script


def test_the_three_ways_name_themselves_in_usage_and_errors(tmp_path):
    """``python scripts/x.py`` as typed, ``python -m hubrl x`` and the entry point ``hubrl-x``, each in
    its own process (a mistake is one ``error:`` line that says where to find help)."""
    bin_dir = Path(sys.executable).parent
    runs = {
        "python scripts/rank_hub.py": ([sys.executable, "scripts/rank_hub.py", "--env", "Alien", "--bogus"], ROOT),
        "python -m hubrl rank": ([sys.executable, "-m", "hubrl", "rank", "--env", "Alien", "--bogus"], tmp_path),
    }
    if (bin_dir / "hubrl-rank").is_file():
        runs["hubrl-rank"] = ([str(bin_dir / "hubrl-rank"), "--env", "Alien", "--bogus"], tmp_path)
    for prog, (cmd, cwd) in runs.items():
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=60)
        assert proc.returncode == 2, (prog, proc.stderr)
        assert proc.stderr == f"error: unrecognized arguments: --bogus (see {prog} --help)\n", proc.stderr
