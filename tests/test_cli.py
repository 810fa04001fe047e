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
    from importlib.metadata import PackageNotFoundError, distribution, entry_points

    from tests.conftest import read_pyproject

    declared = read_pyproject()["project"]["scripts"]
    assert declared == {f"hubrl-{command}": f"hubrl.cli.{command}:cli" for command in COMMANDS}
    try:
        distribution("hubrl")
    except PackageNotFoundError:  # run from a source tree on PYTHONPATH (scripts/gpu_check.sh does): nothing installed
        pytest.skip("hubrl is not installed here (run from source): no entry points to check")
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


# ----------------------------------------------------------------------------- one vocabulary


def _parser(command: str, *sub: str):
    """The parser of ``command`` (or of its subcommand ``sub``)."""
    import argparse
    import importlib

    parser = importlib.import_module(f"hubrl.cli.{command}").build_parser()
    for name in sub:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


PARSERS = [("pretrain",), ("transfer",), ("rank",), ("bench", "run"), ("bench", "report"), ("speed",), ("enjoy",)]

# (command, old spelling, its value(s), the flag now): every old spelling of the commands before issue 16
ALIASES = [
    (("pretrain",), "--games", ["Pong", "Seaquest"], "--env"),
    (("transfer",), "--select-frames", ["5k"], "--select-timesteps"),
    (("rank",), "--frames", ["1.5k"], "--timesteps"),
    (("bench", "run"), "--games", ["Alien", "Gopher"], "--env"),
    (("bench", "run"), "--methods", ["scratch", "hub-pathway"], "--method"),
    (("bench", "run"), "--seeds", ["0", "1"], "--seed"),
    (("bench", "run"), "--budget", ["1M"], "--timesteps"),
    (("bench", "report"), "--budget", ["250k"], "--timesteps"),
    (("speed",), "--game", ["Pong"], "--env"),
    (("speed",), "--steps", ["2k"], "--timesteps"),
    (("enjoy",), "--steps", ["200"], "--timesteps"),
]
REQUIRED = {("rank",): ["--env", "Alien"], ("bench", "run"): ["--root", "r", "--env", "Alien", "--timesteps", "1k"],
            ("bench", "report"): ["root"], ("speed",): ["envs"]}


@pytest.mark.parametrize("where, old, values, new", ALIASES, ids=[f"{' '.join(a[0])} {a[1]}" for a in ALIASES])
def test_a_deprecated_spelling_still_parses_as_its_flag(where, old, values, new, capsys):
    parser = _parser(*where)
    assert parser.deprecated_aliases[old] == new
    base = REQUIRED.get(where, [])
    want = parser.parse_args([*base, new, *values])
    assert capsys.readouterr().err == ""
    assert parser.parse_args([*base, old, *values]) == want
    assert capsys.readouterr().err == f"warning: {old} is deprecated: use {new} (same meaning)\n"
    if len(values) == 1:
        assert parser.parse_args([*base, f"{old}={values[0]}"]) == want
    assert old not in parser.format_help() and new in parser.format_help()  # hidden


def test_the_whole_commands_take_the_old_spellings(capsys):
    """Through ``main``, as BENCHMARKS.md's commands and running grids' command lines use them."""
    from hubrl.cli.bench import parse_args

    old = parse_args(["run", "--root", "g", "--games", "Alien", "--methods", "scratch", "--seeds", "0", "1", "--budget", "1M",
                      "--pause-at", "250k"])
    new = parse_args(["run", "--root", "g", "--env", "Alien", "--method", "scratch", "--seed", "0", "1", "--timesteps", "1M",
                      "--pause-at", "250k"])
    assert old == new and (old.games, old.methods, old.seeds, old.budget) == (["Alien"], ["scratch"], [0, 1], 1_000_000)


@pytest.mark.parametrize("where", PARSERS)
def test_abbreviated_flags_are_refused(where):
    """``--time 1M`` must not silently mean ``--timesteps``: a later flag with the same prefix
    would change what a saved command line does."""
    from hubrl.errors import UsageError

    parser = _parser(*where)
    base = REQUIRED.get(where, [])
    longest = max((f for f in parser._option_string_actions if f.startswith("--") and f != "--help"), key=len)
    action = parser._option_string_actions[longest]
    value = [] if action.nargs == 0 else ["1"]
    with pytest.raises(UsageError, match="unrecognized arguments"):
        parser.parse_args([*base, longest[:-2], *value])


def test_one_flag_name_per_concept_across_the_commands():
    from hubrl.cli.common import FLAG_VOCABULARY

    flags = {flag for flag, _ in FLAG_VOCABULARY.values()}
    old = {alias: flag for flag, aliases in FLAG_VOCABULARY.values() for alias in aliases}
    for where in PARSERS:
        parser = _parser(*where)
        names = set(parser._option_string_actions)
        assert not names & set(old), (where, names & set(old))  # an old spelling is never a flag of its own
        assert set(parser.deprecated_aliases.items()) <= set(old.items()), where
        assert {"--game", "--games", "--budget", "--steps", "--frames"}.isdisjoint(names)
    for where, _, _, new in ALIASES:
        assert new in flags and new in _parser(*where)._option_string_actions


ALL_PARSERS = [*PARSERS, ("bench", "routes"), ("bench", "archive")]


def _arguments(where: tuple[str, ...]) -> list:
    """The arguments of a command's parser, ``--help`` and the subcommand chooser left out."""
    import argparse

    return [a for a in _parser(*where)._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


@pytest.mark.parametrize("where", ALL_PARSERS, ids=" ".join)
def test_help_says_what_every_argument_is_and_its_default(where):
    """Every argument has a help text, and one with a default says it: a user should not need the
    code to learn what happens when a flag is left out."""
    for action in _arguments(where):
        name = f"{' '.join(where)} {action.option_strings[-1] if action.option_strings else action.dest}"
        assert action.help, f"{name}: no help"
        if action.default not in (None, False, []):
            assert "default" in action.help.lower(), f"{name}: its default {action.default!r} is not in its help"


@pytest.mark.parametrize("where", [("transfer",), ("bench", "run")], ids=" ".join)
def test_the_help_of_a_command_that_takes_a_method_says_what_each_is_and_names_the_shipped_hub(where):
    """--method listed the names only: nothing said what zoo-tuning or select do, nor which experts
    the default hub holds."""
    from hubrl.method_catalog import METHOD_SUMMARIES, METHODS, SHIPPED_HUB

    assert tuple(METHOD_SUMMARIES) == METHODS  # a new method gets its line
    text = " ".join(_parser(*where).format_help().split())
    for name, summary in METHOD_SUMMARIES.items():
        assert f"{name} {' '.join(summary.split())}" in text, name
    experts = sorted(p.parent.name for p in SHIPPED_HUB.glob("*/expert.json"))
    assert experts and f"({SHIPPED_HUB}): {', '.join(experts)}." in text


def test_the_flags_given_are_known_also_for_a_flag_given_several_times():
    """``bench run --set K=V`` appends: its not-given marker broke the parse of every ``run`` that gave it."""
    from hubrl.cli.common import parse_given

    run = _parser("bench", "run")
    args, given = parse_given(run, ["--root", "g", "--env", "Alien", "--timesteps", "1k", "--set", "top_k=2", "--set",
                                    "lite=true"])
    assert args.extra == [("top_k", 2), ("lite", True)] and type(args.extra) is list
    assert given == {"root", "games", "budget", "extra"}
    args, given = parse_given(run, ["--root", "g", "--continue"])
    assert args.extra == [] and given == {"root", "continue_grid"}


def test_a_flag_reads_the_same_in_every_help():
    """A flag shows one metavar in every command (``--pause-at STEPS``, ``--sticky-actions P``), and
    every step count (10M, 250k ...) shows ``STEPS``."""
    from hubrl.cli.common import steps

    shown: dict[str, set] = {}
    for where in ALL_PARSERS:
        for action in _arguments(where):
            if not action.option_strings or action.nargs == 0:
                continue
            metavar = action.metavar or (None if action.choices else action.dest.upper())
            shown.setdefault(action.option_strings[-1], set()).add(metavar)
            if action.type is steps:
                assert metavar == "STEPS", (where, action.option_strings[-1], metavar)
    assert {flag: names for flag, names in shown.items() if len(names) > 1} == {}


def test_one_parser_of_step_counts():
    from hubrl.units import format_steps, parse_steps

    assert [parse_steps(t) for t in ("250k", "1M", "1m", "2e6", "1.5k", "100000", "1.4")] == \
        [250_000, 1_000_000, 1_000_000, 2_000_000, 1_500, 100_000, 1]
    for bad, why in (("0", "positive"), ("-5", "positive"), ("inf", "finite"), ("nan", "finite"), ("10x", "step count"),
                     ("2e15", "out of range"), ("0.5", "at least 1 step, got 0.5")):  # 0.5 is positive: not why
        with pytest.raises(ValueError, match=why):
            parse_steps(bad)
    assert [format_steps(n) for n in (250_000, 1_000_000, 1_500, 999)] == ["250k", "1M", "1500", "999"]
    assert all(parse_steps(format_steps(n)) == n for n in (1, 999, 1_000, 1_500, 250_000, 3_000_000))


SPEED_MEASUREMENTS = ("bench_envs", "bench_train", "train_once", "bench_transfer", "bench_rank", "bench_not_adopted",
                      "bench_inference", "bench_zoo_conv")


@pytest.mark.parametrize("argv, flag", [
    (["rank", "--device", "cpu"], "--device"), (["train", "--threads", "2"], "--threads"),
    (["zoo-conv", "--env", "Alien"], "--env"), (["inference", "--n-envs", "4"], "--n-envs"),
    (["rank", "--repeats", "2"], "--repeats"), (["transfer", "--precision", "bf16"], "--precision"),
])
def test_speed_refuses_a_flag_its_measurement_does_not_read(argv, flag, monkeypatch):
    """``speed rank --device cuda`` timed the CPU, ``speed train --threads 8`` each setup's own threads: a flag
    the measurement does not read is refused before anything is measured; the flags it reads run."""
    from hubrl.cli import speed
    from hubrl.errors import UsageError

    measured: list[tuple] = []
    for name in SPEED_MEASUREMENTS:
        monkeypatch.setattr(speed, name, lambda *args, **kwargs: measured.append(args) or {})
    with pytest.raises(UsageError, match=f"{flag} is read by .*; {argv[0]} does not read it: drop it"):
        speed.main(argv)
    assert measured == []
    assert speed.main(["zoo-conv", "--device", "cpu", "--experts", "2", "--n-envs", "2", "--repeats", "1"]) == 0
    assert measured == [([2], [8, 256], 2, 1, "cpu")]


def test_speed_not_adopted_checks_the_fold_and_prints_both_tables(capsys):
    """``benchmark_speed.py not-adopted`` (cited by BENCHMARKS.md) compares equal computations only."""
    from hubrl.speed.kernels import bench_not_adopted

    bench_not_adopted([2, 4], n_envs=2, repeats=1)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [r.split(":")[0] for r in rows[1:]] == ["| CnnPolicy forward, B=2", "| NatureCNN forward+backward, B=2",
                                                  "| NatureCNN forward+backward, B=4",
                                                  "| conv 1's weight gradient (backward), B=2",
                                                  "| conv 1's weight gradient (backward), B=4"]
    assert all(float(r.rsplit("|", 2)[1]) > 0 for r in rows[1:])


def test_speed_not_adopted_times_conv1_gradients_that_equal_autograds(monkeypatch):
    """Both conv-1 weight gradients it times are autograd's gradient of an 8x8 stride-4 conv, and a
    variant that computed something else is refused before it is timed."""
    import torch as th
    import torch.nn.functional as F

    from hubrl.speed import kernels as speed

    x, weight = th.rand(3, 4, 84, 84), th.randn(32, 4, 8, 8, requires_grad=True)
    out = F.conv2d(x, weight, stride=4)
    grad_out = th.randn_like(out)
    out.backward(grad_out)
    for variant in (speed._conv1_weight_grad, speed._conv1_weight_grad_s2d):
        assert th.allclose(variant(x, grad_out, weight.detach()), weight.grad, rtol=1e-4, atol=1e-3)
    monkeypatch.setattr(speed, "_conv1_weight_grad_s2d", lambda x, g, w: speed._conv1_weight_grad(x, g, w).transpose(2, 3))
    with pytest.raises(RuntimeError, match="space-to-depth weight gradient differs"):
        speed.bench_not_adopted([2], n_envs=2, repeats=1)


def test_speed_inference_controls_the_routing_it_reports(capsys, monkeypatch):
    """``benchmark_speed.py inference`` (cited by BENCHMARKS.md): one row per batch size, and it refuses
    to print a "split in half" figure when the frames were not split."""
    from hubrl.speed import kernels as speed

    speed.bench_inference([1, 4], repeats=1)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| 1", "| 4"]
    assert all(float(cell) > 0 for r in rows[1:] for cell in r.split(" | ")[1:7])
    monkeypatch.setattr(speed, "_route_by_half", lambda gate, x: None)  # the split gate left even: all on one expert
    with pytest.raises(RuntimeError, match="routing was not set as intended"):
        speed.bench_inference([4], repeats=1)


@pytest.mark.slow
def test_speed_transfer_times_what_a_run_pays_gate_logging_included(capsys, monkeypatch):
    """``benchmark_speed.py transfer`` trains each method with the callbacks its runs use (Hub-Pathway's
    gate logging among them), so its time ratios are those of real runs."""
    from hubrl.callbacks import GateUsageCallback
    from hubrl.speed import throughput as speed

    logged: list[int] = []
    original = GateUsageCallback._on_rollout_end
    monkeypatch.setattr(GateUsageCallback, "_on_rollout_end", lambda self: (logged.append(self.num_timesteps), original(self)))
    variants = [v for v in speed.TRANSFER_VARIANTS if v[1] in ("scratch", "hub-pathway")][:2]
    monkeypatch.setattr(speed, "TRANSFER_VARIANTS", variants)
    cpu_clock = iter(range(0, 10**6, 1000))  # each call 1000 CPU seconds later: every run reads 1000
    monkeypatch.setattr(speed.time, "process_time", lambda: float(next(cpu_clock)))
    speed.bench_transfer("Seaquest", 160, repeats=1, algo="a2c")
    assert logged == [80, 160]  # the hub-pathway run's two A2C rollouts
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| hub-pathway 2 experts k=1")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert float(cells[3]) == 1000.0 and cells[4] == "1.00x"  # the CPU column reads the process's CPU clock


@pytest.mark.parametrize("depth", range(0, 48, 3))
def test_the_help_epilog_never_breaks_a_name_at_its_hyphen_wherever_the_package_is_installed(
        depth, tmp_path, monkeypatch):
    """The epilog was wrapped at hyphens, so with the package under a path of another length
    'riverraid-ppo' came out as 'riverraid- ppo' (CI at 10f8e86 caught it from /check/work/main)."""
    import hubrl.method_catalog as catalog

    hub = tmp_path / ("d" * depth) / "default_hub"
    for name in ("riverraid-ppo", "seaquest-ppo"):
        (hub / name).mkdir(parents=True)
    monkeypatch.setattr(catalog, "SHIPPED_HUB", hub)
    text = " ".join(catalog.methods_help().split())
    assert f"({hub}): riverraid-ppo, seaquest-ppo." in text
    for name, summary in catalog.METHOD_SUMMARIES.items():
        assert f"{name} {' '.join(summary.split())}" in text, name


def test_a_file_where_a_folder_is_needed_is_named_as_such(tmp_path, capsys):
    """A folder to make that is a file (``bench archive GRID FILE``, ``bench report --out FILE``) was
    refused with "this already exists: choose another path", as if an existing folder were refused too."""
    import json

    from hubrl.cli.bench import main
    from hubrl.cli.common import run_guarded

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    trial = tmp_path / "grid" / "Alien" / "scratch" / "s0"
    trial.mkdir(parents=True)
    (tmp_path / "grid" / "grid.json").write_text(json.dumps({"budget": 1000}))
    (trial / "evaluations.json").write_text(json.dumps({"points": [{"step": 1000, "mean": 1.0, "scores": [1.0]}]}))
    for argv in (["archive", str(tmp_path / "grid"), str(a_file)],
                 ["report", str(tmp_path / "grid"), "--out", str(a_file), "--reps", "100"]):
        assert run_guarded(main, argv) == 2
        assert capsys.readouterr().err == f"error: {a_file}: this is a file where a folder is needed: choose another path\n"
    assert a_file.read_text() == "x"
