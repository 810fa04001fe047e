#!/usr/bin/env python
"""Benchmark transfer methods: a grid of games × methods × seeds, then a report with robust statistics.

    %(prog)s run --root bench --env Alien Gopher Jamesbond --seed 0 1 2 --timesteps 1M
    %(prog)s run --root bench --env Alien --method scratch hub-pathway --timesteps 1M --workers 2 --hub hub
    %(prog)s run --root bench --env Alien Gopher --timesteps 1M --ray-address auto \\
        --cpus-per-trial 4 --gpus-per-trial 0.25
    %(prog)s run --root bench --env Alien Gopher Jamesbond --timesteps 1M --pause-at 250k --eval-freq 50k  # a stage
    %(prog)s report bench --stages 250k 500k 1M
    %(prog)s routes bench  # what the route changes in each hub-pathway trial's policy (needs model.zip)
    %(prog)s archive /scratch/big benchmarks/big  # records of the stopped trials, without weights

`run` trains each trial in <root>/<Game>/<method>/s<seed>/; rerunning it skips finished trials, resumes
started ones from their checkpoint and retries failed ones. A failing trial does not stop the grid:
it is logged in <root>/trials.jsonl and its status.json. Exit code 1 when a trial failed.
`report` writes <root>/report/: report.md (index), CSV + Markdown tables (scores, HNS, AUC,
IQM with stratified-bootstrap CIs, head-to-head, steps/s, memory, parameters, inference speed) and
PNG learning curves (--out: another folder); with --stages, the same at each stage in <that folder>/at-<steps>/.
`routes` writes <root>/report/routes.md and .csv: per k=1 hub-pathway trial, how different the policies
of its routes are on states of its own play (hubrl.route_analysis).
`archive` copies the records of every paused or finished trial (no weights; TensorBoard logs with --tensorboard) into
another folder, e.g. one you commit, while the grid goes on (hubrl.archive).
Entry point ``hubrl-bench``; also ``python -m hubrl bench`` and ``scripts/benchmark.py``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from hubrl.cli.common import (
    ArgumentParser,
    bounded_float,
    command_prog,
    device,
    env_count,
    main_guard,
    non_negative_float,
    non_negative_int,
    parse_given,
    path_text,
    positive_int,
    refuse_flags_not_read_by,
    seed,
    steps,
)
from hubrl.errors import UsageError
from hubrl.method_catalog import METHODS, methods_help

REPORT_BASELINE = "scratch"  # report's defaults: a grid may lack them (no scratch arm), a method given must exist
REPORT_FOCUS = ["hub-pathway"]


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a TransferConfig field), got {text!r}")
    return key.strip().replace("-", "_"), yaml.safe_load(value)


def build_parser(prog: str | None = None) -> ArgumentParser:
    """The parser of ``hubrl-bench`` (``prog``: how it was started, see :func:`~hubrl.cli.common.command_prog`)."""
    parser = ArgumentParser(prog=command_prog("bench", prog), description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="Run (or continue) a grid of transfer trials.", epilog=methods_help(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--root", required=True, type=path_text, metavar="DIR",
                     help="Grid folder: trials go to DIR/<Game>/<method>/s<seed>/.")
    run.add_argument("--env", dest="games", nargs="+", default=None, metavar="GAME", aliases=("--games",),
                     help="Target games: Alien Gopher Jamesbond ... (required, but with --continue).")
    run.add_argument("--method", dest="methods", nargs="+", default=None, metavar="METHOD", aliases=("--methods",),
                     help=f"Transfer methods (default: all: {' '.join(METHODS)}, each said at the end; a bare "
                          "finetune is one arm per hub expert unless --set source=NAME); a variant is "
                          "NAME:KEY=VALUE,... (hub-pathway:top_k=2), an arm with its own name LABEL=NAME[:...].")
    run.add_argument("--seed", dest="seeds", nargs="+", type=seed, default=[0, 1, 2], metavar="SEED", aliases=("--seeds",),
                     help="Seeds. Default: 0 1 2.")
    run.add_argument("--timesteps", dest="budget", type=steps, default=None, metavar="STEPS", aliases=("--budget",),
                     help="Agent steps per trial (the budget), e.g. 1M, 100k (required, but with --continue).")
    run.add_argument("--continue", dest="continue_grid", action="store_true",
                     help="Continue the grid as its grid.json records it (every game, method and seed launched into "
                          "it, its budget and settings, and the last launch's --pause-at), without typing them again; "
                          "--pause-at (default: grid.json's, so a grid stopped mid-stage finishes that stage; give a "
                          "later one, or the budget, to go further), --workers or --ray-address, --threads, --verbose "
                          "and --report may be given anew.")
    run.add_argument("--pause-at", type=steps, default=None, metavar="STEPS",
                     help="Pause every trial at the first rollout boundary at or past STEPS agent steps, up to the "
                          "budget (schedules "
                          "still follow --timesteps); trials paused there already are skipped; rerun with a later "
                          "--pause-at or none to continue.")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=1, metavar="N",
                       help="Trials at once, each in a fresh process (0: in this process, for debugging). Default: 1.")
    where.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="Run trials as Ray tasks: auto, ray://host:10001, or local (needs pip install \"hubrl[ray]\").")
    run.add_argument("--threads", type=positive_int, default=None, metavar="N",
                     help="Torch CPU threads per trial (default: the CPUs this process may run on // --workers; with "
                          "Ray, --cpus-per-trial; "
                          "with --workers 0, torch's own).")
    run.add_argument("--cpus-per-trial", type=bounded_float(0.0, low_open=True), default=1, metavar="N",
                     help="Ray: CPUs each trial asks for. Default: 1.")
    run.add_argument("--gpus-per-trial", type=non_negative_float, default=0, metavar="N",
                     help="Ray: GPUs each trial asks for (fractions share one). Default: 0.")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--hub", type=path_text, default=None, metavar="DIR",
                        help="Hub folder made by hubrl-pretrain, for the methods that use one (all but scratch). "
                             "Default: the shipped hub, named at the end.")
    source.add_argument("--sources", nargs="+", type=path_text, default=None, metavar="ZIP",
                        help="SB3 checkpoints (.zip), read as weights only, or expert folders, to use as experts "
                             "(by the methods that use a hub).")
    run.add_argument("--algo", choices=["ppo", "a2c"], default=None,
                     help="RL algorithm (RL Zoo Atari presets). Default: ppo.")
    run.add_argument("--n-envs", type=env_count, default=None, metavar="N",
                     help="Parallel games per trial (default: the preset's, 8 for PPO, 16 for A2C).")
    run.add_argument("--device", type=device, default=None, metavar="DEVICE",
                     help="Torch device of each trial: auto, cpu, cuda, cuda:1, mps ... "
                          "Default: auto (CUDA when available, else the CPU).")
    run.add_argument("--hyperparams", type=path_text, default=None, metavar="YAML",
                     help="YAML file of hyperparameter overrides, e.g. n_steps: 64 "
                          "(keys as in agents/hyperparams/<algo>.yml).")
    run.add_argument("--eval-freq", type=steps, default=None, metavar="STEPS",
                     help="Evaluate every STEPS agent steps (the report of a stage needs an evaluation there: "
                          "a --pause-at short of the budget must be a multiple of it). Default: 100k.")
    run.add_argument("--eval-episodes", type=positive_int, default=None, metavar="N",
                     help="Games per evaluation (whole games, raw score, actions sampled as RL Zoo does for Atari). "
                          "Default: 10.")
    run.add_argument("--checkpoint-freq", type=steps, default=None, metavar="STEPS",
                     help="Checkpoint every STEPS agent steps. Default: 100k.")
    run.add_argument("--set", dest="extra", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                     help="Any other TransferConfig field for every trial, e.g. --set top_k=2 --set aggregation=heads "
                          "(source only for finetune, lite only for zoo-tuning: the other arms run without it).")
    run.add_argument("--verbose", type=int, choices=(0, 1), default=0, metavar="LEVEL",
                     help="What each trial prints (0: nothing; 1: its run folder, resume point and evaluations, "
                          "as hubrl-transfer does). Default: 0.")
    run.add_argument("--report", action="store_true",
                     help="Write <root>/report/ when the grid is done (as the report command with its defaults).")

    report = sub.add_parser("report", help="Write <root>/report/ from the trials of a grid.")
    report.add_argument("root", type=path_text, help="Grid folder (the --root of run).")
    report.add_argument("--out", type=path_text, default=None, metavar="DIR", help="Report folder. Default: <root>/report.")
    report.add_argument("--timesteps", dest="budget", type=steps, default=None, metavar="STEPS", aliases=("--budget",),
                        help="Budget: the tables count the trials evaluated at this many agent steps "
                             "(default: the grid's budget, from grid.json; for a grid that records it, only that "
                             "budget: --stages reports earlier steps).")
    report.add_argument("--stages", type=steps, nargs="+", default=None, metavar="STEPS",
                        help="Also report the grid as it stood at each of these agent steps (e.g. 250k 500k 1M): scores "
                             "and compute up to that stage, in <report folder>/at-<steps>/.")
    report.add_argument("--baseline", default=REPORT_BASELINE, metavar="METHOD",
                        help="Method the compute ratios (steps/s, memory, parameters, inference) divide by. "
                             "Default: scratch.")
    report.add_argument("--focus", nargs="+", default=REPORT_FOCUS, metavar="METHOD",
                        help="Method(s) the head-to-head compares with each other one, a section each. Default: hub-pathway.")
    report.add_argument("--reps", type=positive_int, default=50_000, metavar="N",
                        help="Bootstrap replicates of every CI. Default: 50000 (rliable's).")
    report.add_argument("--seed", type=seed, default=0, help="Seed of the bootstrap. Default: 0.")

    routes = sub.add_parser("routes", help="Write <root>/report/routes.md: what the route changes in each "
                                           "hub-pathway trial's policy (each model.zip read as weights only, "
                                           "never unpickled).")
    routes.add_argument("root", type=path_text, help="Grid folder (the --root of run).")
    routes.add_argument("--out", type=path_text, default=None, metavar="DIR",
                        help="Folder of routes.md and routes.csv. Default: <root>/report.")
    routes.add_argument("--method", dest="methods", nargs="+", default=None, metavar="METHOD",
                        help="Only these arms (labels). Default: every k=1 hub-pathway arm.")
    routes.add_argument("--states", type=positive_int, default=512, metavar="N",
                        help="States of each trial's own play to compare on. Default: 512.")
    routes.add_argument("--seed", type=seed, default=0, help="Seed of the play and of the acting noise. Default: 0.")
    routes.add_argument("--play", type=non_negative_int, default=0, metavar="GAMES",
                        help="Also play GAMES whole games per trial noise-free and as many with the acting gate noise "
                             "(same game seeds) and compare the scores. Default: 0 (no play).")

    archive = sub.add_parser("archive", help="Copy the records of the stopped trials of a grid, without weights, "
                                             "into another folder.")
    archive.add_argument("root", type=path_text, help="Grid folder (the --root of run).")
    archive.add_argument("dest", type=path_text,
                         help="Archive folder (outside the grid); its copies of trials still training are kept.")
    archive.add_argument("--tensorboard", action="store_true", help="Also copy each trial's TensorBoard logs (tb/).")
    archive.add_argument("--replace", action="store_true",
                         help="Replace archived trials that another run of the same trial made (their evaluations are "
                              "not the start of the grid's); without it, such an archive is refused.")
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parse ``hubrl-bench``'s command line as :func:`main` does, its checks included; runs nothing."""
    return _parse(argv, prog)[0]


def _parse(argv: Sequence[str] | None, prog: str | None) -> tuple[argparse.Namespace, set[str]]:
    """The arguments and the flags given explicitly (``run``'s; else none)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.command != "run":
        return args, set()
    run = _run_parser(parser)  # parsed again by its own parser, to know which flags were given (--continue)
    args, given = parse_given(run, argv[argv.index("run") + 1:])
    args.command = "run"
    if args.continue_grid:
        refuse_flags_not_read_by(run, given, "continue_grid", CONTINUE_READS)
    else:
        missing = [flag for dest, flag in (("games", "--env"), ("budget", "--timesteps")) if getattr(args, dest) is None]
        if missing:
            run.error(f"the following arguments are required: {', '.join(missing)} (or --continue, to continue the "
                      "grid's last launch)")
    return args, given


def _settings(args: argparse.Namespace) -> dict:
    from hubrl.agents import load_overrides

    settings = {
        "hub": args.hub, "sources": args.sources, "algo": args.algo, "n_envs": args.n_envs, "device": args.device,
        "eval_freq": args.eval_freq, "eval_episodes": args.eval_episodes, "checkpoint_freq": args.checkpoint_freq,
        "hyperparams": load_overrides(args.hyperparams, algo=args.algo) if args.hyperparams else None,
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    settings.update(dict(args.extra))
    return settings


#: What ``run --continue`` reads from the command line; the rest comes from the grid's grid.json.
CONTINUE_READS = {"root", "pause_at", "workers", "ray_address", "threads", "cpus_per_trial", "gpus_per_trial", "verbose",
                  "report"}


def _continue_launch(args: argparse.Namespace, given: set[str]) -> dict:
    """``run --continue``: the grid from its grid.json (games, methods, seeds, budget, settings, and
    the last launch's ``--pause-at`` unless one is given: a grid stopped by Ctrl-C mid-stage goes on
    to that stage, not past it to the budget) into ``args``; returns its settings (flags that would
    change the launch were refused when parsing)."""
    from hubrl.grid import grid_json_damage, read_grid

    damage = grid_json_damage(args.root)
    if damage:
        raise UsageError(f"--continue: {damage}, so its launch cannot be read: mend the file, or give --env, --timesteps "
                         "and the other flags of the grid.")
    launch = read_grid(args.root)
    needed = ("games", "methods", "seeds", "budget", "settings")
    if not all(key in launch for key in needed):
        what = "has no grid.json" if not launch else "has a grid.json without its launch (" + ", ".join(
            key for key in needed if key not in launch) + ")"
        raise UsageError(f"--continue: {args.root} {what}, so there is no launch to continue: give --env, --timesteps "
                         "and the other flags of the grid.")
    args.games, args.methods, args.seeds, args.budget = (launch[key] for key in needed[:4])
    if "pause_at" not in given:
        pause_at = launch.get("pause_at")
        if pause_at is not None and (isinstance(pause_at, bool) or not isinstance(pause_at, int) or pause_at < 1):
            raise UsageError(f"--continue: {Path(args.root) / 'grid.json'} records the pause_at {pause_at!r}, not a number "
                             "of agent steps: give --pause-at STEPS (or the budget, to train to it), or mend the file.")
        args.pause_at = pause_at
    if "workers" not in given and "ray_address" not in given:
        args.workers = launch.get("workers", args.workers)
        args.ray_address = launch.get("ray_address")
    return dict(launch["settings"])


def cmd_run(args: argparse.Namespace, given: set[str]) -> int:
    from hubrl.benchmark import run_grid
    from hubrl.runconfig import check_device

    settings = _continue_launch(args, given) if args.continue_grid else _settings(args)
    ray_only = [f"--{name.replace('_', '-')}" for name in ("cpus_per_trial", "gpus_per_trial") if name in given]
    if ray_only and not args.ray_address:  # the local pool has --workers and --threads: it would drop them unread
        raise UsageError(f"{' and '.join(ray_only)} {'is' if len(ray_only) == 1 else 'are'} what each trial asks of a "
                         "Ray cluster (--ray-address), not read by the local pool of --workers: drop "
                         f"{'it' if len(ray_only) == 1 else 'them'}, or give --ray-address.")
    if settings.get("device") is not None:
        check_device(settings["device"])  # before the grid is locked and its folder made

    summary = run_grid(
        args.root, args.games, args.methods or list(METHODS), args.seeds, args.budget, settings=settings,
        workers=args.workers, threads=args.threads, ray_address=args.ray_address, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, pause_at=args.pause_at,
    )
    print(f"{summary} -> {summary.root}/trials.jsonl")
    for rec in summary.failed:
        print(f"  failed: {rec['trial']}: {rec['error']}")
    if summary.stopped_by is not None:  # as a stopped run: 128 + the signal, and no report of a grid cut short
        print(f"Stopped by a signal: rerun the same command, or run --root {shlex.quote(str(args.root))} --continue, to "
              "continue the grid"
              + (" (then --report)." if args.report else "."))
        return 128 + summary.stopped_by
    if args.report:  # with the stage this launch paused the grid at (the report at the budget would be empty)
        stages = [args.pause_at] if args.pause_at is not None and not summary.failed else []
        if _write_reports(args.root, stages):
            return 1
    return 1 if summary.failed else 0


def _write_reports(root: str, stages: Sequence[int], **kwargs: Any) -> int:
    """Write the report of the grid in ``root`` (``kwargs``: :func:`hubrl.report.write_report`'s),
    printing its path and warnings, then one report per stage; the number of stages that could not be
    reported (each said on stderr: one does not stop the others)."""
    from hubrl.report import write_report

    notices: list[str] = []
    print(f"report: {write_report(root, notices=notices, **kwargs)}")
    for notice in notices:  # e.g. the grid paused short of its budget: that report's tables are empty
        print(f"warning: {notice}")
    failed = 0
    for stage in stages:
        try:
            staged = write_report(root, stage=stage, **kwargs)
        except FileNotFoundError as exc:
            print(f"error: stage {stage}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"report at {stage} steps: {staged}")
    return failed


def _check_report_methods(args: argparse.Namespace) -> None:
    """Refuse a ``--baseline`` or ``--focus`` method the grid has no trial of (a typo would give empty
    ratio columns or no head-to-head). The defaults may be absent: a grid need not have scratch."""
    asked = [("--baseline", args.baseline)] if args.baseline != REPORT_BASELINE else []
    asked += [("--focus", m) for m in args.focus] if args.focus != REPORT_FOCUS else []
    _check_methods(args, asked)


def _check_methods(args: argparse.Namespace, asked: list[tuple[str, str]]) -> None:
    """Refuse each ``(flag, method)`` of ``asked`` that names no arm of the grid in ``args.root``,
    naming the grid's arms (folder labels)."""
    from hubrl.grid import iter_trial_folders

    methods = sorted({folder.parent.name for folder in iter_trial_folders(args.root)})
    if not methods:
        return  # the command says there is no trial
    for flag, method in asked:
        if method not in methods:
            raise UsageError(f"{flag} {method!r}: the grid {args.root} has no trial of it; its methods are "
                             f"{', '.join(methods)}.")


def _check_report_stages(args: argparse.Namespace) -> None:
    """Refuse a ``--timesteps`` other than grid.json's budget (past it, no trial trains there; below
    it, trials further on would be scored by their later evaluations: ``--stages`` cuts them off
    there), and a ``--stages`` step past the budget
    (``--timesteps``, else grid.json's): no trial trains beyond it, so that report would wait for
    steps no trial will reach, or be the final report again titled as a stage of a longer run."""
    from hubrl.grid import evaluations_around, read_grid
    from hubrl.tables import step_label

    grid = read_grid(args.root)
    recorded = grid.get("budget")
    settings = grid.get("settings")
    every = settings.get("eval_freq") if isinstance(settings, dict) else None
    if isinstance(recorded, int) and args.budget is not None and args.budget > recorded:
        raise UsageError(f"--timesteps {step_label(args.budget)} is past the grid's budget of {recorded:,} agent steps "
                         f"({Path(args.root) / 'grid.json'}): no trial trains beyond it; drop --timesteps, or give "
                         f"--stages for earlier steps.")
    if isinstance(recorded, int) and args.budget is not None and args.budget < recorded:  # scores past it would count
        raise UsageError(f"--timesteps {step_label(args.budget)} is below the grid's budget of {recorded:,} agent steps "
                         f"({Path(args.root) / 'grid.json'}): the report at a budget scores each trial by its last "
                         f"evaluation, so trials further on would be counted at their later scores; "
                         f"{_stage_advice(args.root, args.budget, every)}")
    budget = args.budget or recorded
    past = [stage for stage in args.stages or [] if isinstance(budget, int) and stage > budget]
    if past:
        raise UsageError(f"--stages {step_label(past[0])} is past the grid's budget of {budget:,} agent steps: give "
                         f"stages up to {step_label(budget)} (the report without --stages is the grid at its budget).")
    between = [stage for stage in args.stages or [] if isinstance(every, int) and every > 0 and stage % every
               and not (isinstance(budget, int) and stage >= budget)]
    if between:  # no trial has an evaluation there: every table would be empty
        stage = between[0]
        near = " or ".join(step_label(step) for step in evaluations_around(stage, every)
                           if 0 < step and not (isinstance(budget, int) and step > budget))
        raise UsageError(f"--stages {step_label(stage)}: the grid evaluates every {step_label(every)} (grid.json), so "
                         f"no trial has a score at {step_label(stage)}; give multiples of {step_label(every)}"
                         f"{f', e.g. {near}' if near else ''}.")


def _stage_advice(root: str, step: int, every: Any) -> str:
    """The ``--stages`` that reports the grid in ``root`` as it stood at ``step`` agent steps, one
    ``report`` takes and that has scores: ``step`` itself where the grid records no ``eval_freq``
    (``every``), else the furthest multiple of ``every`` up to ``step`` that a trial was evaluated at
    (:func:`hubrl.report.evaluated_stage`); or that there is none (yet)."""
    from hubrl.grid import load_trials
    from hubrl.report import evaluated_stage
    from hubrl.tables import step_label

    stage = evaluated_stage(load_trials(root), every, up_to=step) if isinstance(every, int) and every > 0 else step
    if stage == step:  # (no eval_freq recorded: any stage is taken)
        return f"give --stages {step_label(step)} for the grid as it stood at {step_label(step)}."
    if stage:
        return (f"give --stages {step_label(stage)} for the grid as it stood at {step_label(stage)}, its last stage "
                f"with scores by {step_label(step)} (it evaluates every {step_label(every)}, grid.json).")
    return (f"no trial was evaluated at a stage up to {step_label(step)} (the grid evaluates every {step_label(every)}, "
            f"grid.json), so there is no earlier stage to report: drop --timesteps.")


def cmd_report(args: argparse.Namespace) -> int:
    _check_report_methods(args)
    _check_report_stages(args)
    failed = _write_reports(args.root, args.stages or [], out=args.out, budget=args.budget, baseline=args.baseline,
                            reps=args.reps, seed=args.seed, focus=args.focus)
    return 1 if failed else 0  # a stage that cannot be reported does not stop the others, but fails the command


def cmd_archive(args: argparse.Namespace) -> int:
    from hubrl.archive import archive_grid

    summary = archive_grid(args.root, args.dest, tensorboard=args.tensorboard, replace=args.replace)
    for name, why in summary.skipped.items():
        print(f"left out {name}: {why}")
    print(f"archived {len(summary.copied)} trial(s) of {args.root} into {args.dest} "
          f"({len(summary.skipped)} left out)")
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    from hubrl.route_report import write_routes
    from hubrl.tables import routes_markdown

    _check_methods(args, [("--method", m) for m in args.methods or []])
    path, rows, skipped = write_routes(args.root, args.out, args.methods, args.states, args.seed, args.play)
    for folder, why in skipped.items():
        print(f"left out {folder}: {why}")
    print(routes_markdown(rows))
    print(f"routes: {path}")
    return 0


def _run_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``run`` subcommand's own parser, inside ``parser`` (:func:`build_parser`'s)."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``hubrl-bench`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    args, given = _parse(argv, prog)
    if args.command == "run":
        return cmd_run(args, given)
    commands = {"report": cmd_report, "routes": cmd_routes, "archive": cmd_archive}
    return commands[args.command](args)


def cli() -> None:
    """The entry point ``hubrl-bench``."""
    main_guard(lambda: main(prog="hubrl-bench"))
