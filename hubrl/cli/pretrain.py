#!/usr/bin/env python
"""Pretrain the hub's source experts (default: PPO on Seaquest and Riverraid).

Each game trains in its run folder ``<out>/<game>-<algo>/`` (checkpoint.pt, config.yaml,
evaluations.json, learning_curve.png, TensorBoard events under tb/; ``--resume`` continues it)
and, once its budget is reached, only the expert is exported into the hub folder:
``<hub>/<game>-<algo>/expert.json`` + ``weights.safetensors``.

    %(prog)s --timesteps 10M --out runs/pretrain --hub hub
    %(prog)s --resume --out runs/pretrain       # after an interruption
    %(prog)s --export --out runs/pretrain       # export the latest checkpoints now (evaluated)
    %(prog)s --plot --out runs/pretrain         # learning_curve.png of each run

Entry point ``hubrl-pretrain``; also ``python -m hubrl pretrain`` and ``scripts/pretrain_sources.py``.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from hubrl.cli.common import (
    ArgumentParser,
    add_common_flags,
    command_prog,
    main_guard,
    parse_given,
    path_text,
    positive_int,
    probability,
    refuse_flags_not_read_by,
    steps,
)


def build_parser(prog: str | None = None) -> ArgumentParser:
    """The parser of ``hubrl-pretrain`` (``prog``: how it was started, see :func:`~hubrl.cli.common.command_prog`)."""
    parser = ArgumentParser(prog=command_prog("pretrain", prog), description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", dest="games", nargs="+", default=["Seaquest", "Riverraid"], metavar="GAME",
                        aliases=("--games",),
                        help="Source games. Default: Seaquest Riverraid.")
    parser.add_argument("--timesteps", type=steps, default=10_000_000, metavar="STEPS",
                        help="Agent steps per expert, e.g. 10M, 2e6, 500k. Default: 10M (RL Zoo's budget).")
    parser.add_argument("--out", type=path_text, default="runs/pretrain", metavar="DIR",
                        help="Folder of the runs: each expert trains in DIR/<game>-<algo> (training state, "
                             "TensorBoard events, learning curve). Default: runs/pretrain.")
    parser.add_argument("--hub", type=path_text, default=None, metavar="DIR",
                        help="Hub folder the finished experts are exported into (DIR/<game>-<algo>: expert.json + "
                             "weights.safetensors only). Default: ./hub for a new run; a resumed run or --export: "
                             "the hub the run was started with.")
    parser.add_argument("--resume", action="store_true",
                        help="Continue each expert's run in --out from its latest checkpoint, with the settings it was "
                             "started with (--timesteps, --device, --threads, --hub and --tensorboard-log may change).")
    parser.add_argument("--pause-at", type=steps, default=None, metavar="STEPS",
                        help="Pause with a checkpoint at the first rollout boundary at or past STEPS agent steps in all, up "
                             "to the budget; "
                             "the schedules still follow --timesteps, so --resume later continues as if uninterrupted. "
                             "E.g. train a 10M budget 2M at a time.")
    parser.add_argument("--force", action="store_true",
                        help="Start over: delete an existing run of the same name in --out, and replace the hub's "
                             "expert of that name when the run ends. With --export: replace an expert another run "
                             "exported into the hub.")
    parser.add_argument("--eval-freq", type=steps, default=250_000, metavar="STEPS",
                        help="Evaluate every STEPS agent steps. Default: 250k.")
    parser.add_argument("--eval-episodes", type=positive_int, default=10, metavar="N",
                        help="Games per evaluation, also of --export (whole games, raw score, actions sampled as RL Zoo does "
                             "for Atari). Default: 10; --export: the run's own.")
    parser.add_argument("--checkpoint-freq", type=steps, default=100_000, metavar="STEPS",
                        help="Checkpoint every STEPS agent steps. Default: 100k.")
    parser.add_argument("--sticky-actions", dest="repeat_action_probability", type=probability, default=0.25, metavar="P",
                        help="Repeat-action probability in [0, 1] (ALE v5's). Default: 0.25.")
    parser.add_argument("--export", action="store_true",
                        help="Do not train: evaluate each game's latest checkpoint and export it as the expert now "
                             "(mid-training is fine).")
    parser.add_argument("--plot", action="store_true",
                        help="Do not train: write each run's learning_curve.png (training and evaluation scores).")
    parser.add_argument("--export-dtype", choices=["float32", "float16"], default="float32",
                        help="Precision of the exported weights (weights.safetensors). Default: float32; --export: "
                             "the run's own.")
    add_common_flags(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    return _check(parser, *parse_given(parser, argv))[0]


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace, given: set[str]) -> tuple[argparse.Namespace, set[str]]:
    if args.resume and args.force:
        parser.error("--resume and --force contradict each other: choose one.")
    if args.plot:  # reads the runs' records only
        refuse_flags_not_read_by(parser, given, "plot", {"out", "games", "algo"})
    if args.export:  # evaluates and exports the runs' latest checkpoints (on the CPU unless --device says otherwise)
        refuse_flags_not_read_by(parser, given, "export", {"out", "games", "algo", "hub", "export_dtype", "eval_episodes",
                                                           "force", "device", "threads"})
        if "device" in given:  # before any run is read: a GPU this machine lacks is refused, never run on the CPU
            from hubrl.runconfig import check_device

            check_device(args.device)
    return args, given


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``hubrl-pretrain`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser(prog)
    args, given = _check(parser, *parse_given(parser, argv))
    from hubrl.agents import load_overrides
    from hubrl.envs import resolve_games
    from hubrl.pretrain import pretrain_expert

    if "games" not in given and (args.resume or args.export or args.plot):  # the runs already in --out
        from hubrl.pretrain import games_in

        found = games_in(args.out, args.algo)
        if not found:
            from hubrl.errors import UsageError

            raise UsageError(f"No {args.algo.upper()} pretraining run in {args.out} (no <game>-{args.algo}/config.yaml): "
                             "give the --out of a pretraining run, or --env GAME.")
        args.games = found
    games = resolve_games(args.games)  # fail fast on a typo, before any training; a game named twice trains once
    overrides = load_overrides(args.hyperparams, algo=args.algo) if args.hyperparams else {}
    if args.plot:
        from hubrl.plots import plot_expert_curve
        from hubrl.pretrain import run_folder

        for game in games:
            print(plot_expert_curve(run_folder(args.out, game, args.algo)))
        return 0
    if args.export:
        from stable_baselines3.common.utils import get_device

        from hubrl.pretrain import check_export_target, expert_folder, export_expert, run_folder
        from hubrl.runtime import configure_threads

        configure_threads(args.threads)
        export_device = str(get_device(args.device)) if "device" in given else "cpu"  # checked in _check

        for game in games if not args.force else ():  # none exported if one would replace another run's expert
            folder = run_folder(args.out, game, args.algo)
            if (folder / "config.yaml").is_file():  # else export_expert says what is missing
                check_export_target(folder, args.hub)
        for game in games:
            folder = run_folder(args.out, game, args.algo)
            # the run's own --export-dtype and --eval-episodes unless given now (not the flags' defaults)
            manifest = export_expert(folder, dtype=args.export_dtype if "export_dtype" in given else None,
                                     eval_episodes=args.eval_episodes if "eval_episodes" in given else None,
                                     device=export_device, hub=args.hub, force=args.force)
            print(f"{manifest.name}: exported {manifest.timesteps} steps ({manifest.weights_dtype}); "
                  f"eval {manifest.eval['mean']:.1f} ± {manifest.eval['std']:.1f} over {manifest.eval['episodes']} games "
                  f"-> {expert_folder(folder, args.hub)}")
        return 0
    configs = [_config(args, game, overrides) for game in games]
    if args.resume:  # every game's run is checked before the first one trains (for hours), not when its turn comes
        from hubrl.harness import check_resumable
        from hubrl.pretrain import check_export_target, run_folder

        folders = [run_folder(args.out, game, args.algo) for game in games]
        for folder in folders:
            check_resumable(folder, has_force=True)
        for folder in folders:  # then whose expert each would replace (a missing config.yaml: the resume says so)
            if (folder / "config.yaml").is_file():
                check_export_target(folder, args.hub, replace="move that expert away")
    else:  # so is every new game's: its run folder and the hub its export goes to (what pretrain_expert refuses)
        from hubrl.pretrain import check_new_run

        for cfg in configs:
            check_new_run(cfg, force=args.force, pause_at=args.pause_at)
    status = 0
    for index, cfg in enumerate(configs):
        result = pretrain_expert(cfg, resume=args.resume, force=args.force, progress_bar=not args.no_progress_bar,
                                 pause_at=args.pause_at,
                                 given=_requested(cfg, given) if args.resume else None)
        outcome = result.outcome
        if outcome.already_done:  # pretrain_expert said so in one line
            continue
        if outcome.interrupted_by is not None:
            print(f"{result.name}: stopped at {outcome.num_timesteps} steps; checkpoint saved. Resume with --resume."
                  + _not_started(games[index + 1:], args.out, args.algo))
            return 128 + outcome.interrupted_by
        if outcome.already_paused:  # e.g. the command that paused the run, given again
            print(f"{result.name}: already at {outcome.num_timesteps} of {result.budget} steps, at or past --pause-at "
                  f"{args.pause_at}: nothing to train. Continue with --resume and a later --pause-at (or none); "
                  "--export ships it as it is.")
            continue
        if outcome.paused:
            print(f"{result.name}: paused at {outcome.num_timesteps} of {result.budget} steps (--pause-at); "
                  "checkpoint saved. "
                  f"Continue with --resume; --export ships it as it is.")
            continue
        exported = result.manifest.eval  # its own games (seed + 20000), apart from the training evaluations
        print(f"{result.name}: {outcome.num_timesteps} steps in {outcome.seconds:.0f}s; export evaluation over "
              f"{exported.get('episodes', len(exported.get('scores', [])))} new games {exported['mean']:.1f} ± "
              f"{exported['std']:.1f} -> {result.expert} (run: {result.folder})")
    return status


def _config(args: argparse.Namespace, game: str, overrides: dict):
    """The :class:`~hubrl.pretrain.PretrainConfig` of ``game``'s run as the command line asks for it
    (``overrides``: the ``--hyperparams`` file's; a resumed run keeps its saved settings, :func:`_requested`)."""
    from hubrl.pretrain import PretrainConfig

    return PretrainConfig(
        game=game,
        algo=args.algo,
        timesteps=args.timesteps,
        n_envs=args.n_envs,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        precision=args.precision,
        out=args.out,
        hub=args.hub or "hub",
        tensorboard_log=args.tensorboard_log,
        eval_freq=args.eval_freq,
        eval_episodes=args.eval_episodes,
        checkpoint_freq=args.checkpoint_freq,
        repeat_action_probability=args.repeat_action_probability,
        hyperparams=overrides,
        export_dtype=args.export_dtype,
    )


def _not_started(games: list[str], out: str, algo: str) -> str:
    """The stop line's note on the ``games`` after the interrupted one that have no run in ``out`` yet:
    ``--resume`` (which finds the runs in ``out``) would skip them, and they must be started anew."""
    from hubrl.envs import display_name
    from hubrl.harness import CONFIG_NAME
    from hubrl.pretrain import run_folder

    waiting = [display_name(g) for g in games if not (run_folder(out, g, algo) / CONFIG_NAME).is_file()]
    if not waiting:
        return ""
    return (f" Not started yet: {' '.join(waiting)} (--resume continues started runs only): start "
            f"{'it' if len(waiting) == 1 else 'them'} afterwards with --env {' '.join(waiting)}, without --resume.")


def _requested(cfg, given: set[str]) -> dict:
    """The settings of ``cfg`` the user gave as flags (a resumed run keeps the others as saved)."""
    from dataclasses import fields

    from hubrl.agents import resolve_hyperparams

    requested = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name in given}
    requested["out"] = cfg.out  # the run being resumed is where it is now
    if "hyperparams" in requested:  # saved resolved (the preset included): compare like with like
        plain = resolve_hyperparams(cfg.algo, cfg.hyperparams)[0]
        requested["hyperparams"] = {k: v for k, v in plain.items() if k != "n_envs"}
    return requested


def cli() -> None:
    """The entry point ``hubrl-pretrain``."""
    main_guard(lambda: main(prog="hubrl-pretrain"))
