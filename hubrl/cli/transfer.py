"""Fine-tune an agent on a target Atari game by transfer from a hub of pretrained experts.

    %(prog)s --env Alien                         # Hub-Pathway, PPO, the package's default hub
    %(prog)s --env Gopher --hub hub --top-k 2 --exploration-loss importance-load
    %(prog)s --env Alien --sources ppo-SeaquestNoFrameskip-v4.zip ppo-RiverraidNoFrameskip-v4.zip
    %(prog)s --env Alien --method scratch                # the baselines, same harness:
    %(prog)s --env Alien --method finetune --source seaquest-ppo
    %(prog)s --env Alien --method zoo-tuning [--lite]
    %(prog)s --env Alien --method select                 # rank experts by a proxy, fine-tune the best
    %(prog)s --plot --out runs/alien-hub-pathway-ppo-s0  # redraw a run's learning_curve.png

The run folder (--out, default runs/<game>-<method>-<algo>-s<seed>) gets model.zip, config.yaml,
checkpoint.pt, evaluations.json, learning_curve.png (scores; gate usage per expert) and TensorBoard
events (raw score, per-expert gate usage, auxiliary losses).

    %(prog)s --resume --out runs/alien-hub-pathway-ppo-s0   # continue a run exactly as it was started

Errors a user can fix (bad flags, hubs, checkpoints, a full disk) end as one line and exit code 2.
Entry point ``hubrl-transfer``; also ``python -m hubrl transfer`` and ``scripts/transfer.py``.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Sequence

from hubrl.cli.common import (
    ArgumentParser,
    add_common_flags,
    bounded_float,
    command_prog,
    flag_names,
    main_guard,
    non_negative_float,
    parse_given,
    path_text,
    positive_int,
    probability,
    refuse_flags_not_read_by,
    steps,
)
from hubrl.errors import HubError, UsageError
from hubrl.method_catalog import METHODS, methods_help


def noise(text: str) -> str | float:
    """``learned`` or a fixed gate-noise standard deviation >= 0 (finite)."""
    if text == "learned":
        return text
    try:
        return non_negative_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'learned' or a finite standard deviation >= 0, got {text!r}") from None


def build_parser(prog: str | None = None) -> ArgumentParser:
    """The parser of ``hubrl-transfer`` (``prog``: how it was started, see :func:`~hubrl.cli.common.command_prog`)."""
    parser = ArgumentParser(prog=command_prog("transfer", prog), description=__doc__, epilog=methods_help(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None, metavar="GAME",
                        help="Target game: Alien, Gopher, Jamesbond, ALE/Alien-v5 ... "
                             "(required to train, except to resume a run).")
    parser.add_argument("--method", default="hub-pathway", metavar="METHOD",
                        help=f"{', '.join(METHODS)} (each said at the end). Default: hub-pathway.")
    parser.add_argument("--source", default=None, metavar="NAME", help="finetune: the expert whose encoder starts the agent.")
    parser.add_argument("--lite", action="store_true", help="zoo-tuning: batch-mean gates; model.zip is one merged NatureCNN.")
    parser.add_argument("--select-timesteps", dest="select_frames", type=steps, default=20_000, metavar="STEPS",
                        aliases=("--select-frames",),
                        help="select: agent steps of the target game played by a random policy, on which the proxy "
                             "ranks the experts (as hubrl-rank --timesteps). Default: 20k.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--hub", type=path_text, default=None, metavar="DIR",
                        help="Hub folder made by hubrl-pretrain (default: the shipped hub, named at the end).")
    source.add_argument("--sources", nargs="+", type=path_text, default=[], metavar="ZIP",
                        help="SB3 checkpoints (.zip), read as weights only, or expert folders, to use as experts.")
    parser.add_argument("--timesteps", type=steps, default=1_000_000, metavar="STEPS",
                        help="Agent steps (the budget), e.g. 1M, 100k. Default: 1M.")
    parser.add_argument("--out", type=path_text, default=None, metavar="DIR",
                        help="Run folder. Default: runs/<game>-<method>-<algo>-s<seed>.")
    parser.add_argument("--resume", action="store_true",
                        help="Continue the run in --out from its checkpoint, with the settings it was started with "
                             "(a flag that contradicts them is refused; --timesteps, --device, --threads, "
                             "--tensorboard-log and the place of its experts, --hub or --sources, may change).")
    parser.add_argument("--pause-at", type=steps, default=None, metavar="STEPS",
                        help="Pause with a checkpoint at the first rollout boundary at or past STEPS agent steps in "
                             "all, up to the budget (schedules still follow --timesteps); continue later with --resume.")
    parser.add_argument("--top-k", type=positive_int, default=1, metavar="K",
                        help="hub-pathway: experts per observation (1..hub size). Default: 1.")
    parser.add_argument("--noise", type=noise, default=None, metavar="STD",
                        help="hub-pathway: gate noise when acting in training: a fixed std >= 0, or 'learned' "
                             "(input-dependent, trained only by --exploration-loss importance-load; with the other "
                             "losses it stays at its start, about 1.0 with the floor). Default: 1.0.")
    parser.add_argument("--noise-floor", type=non_negative_float, default=None, metavar="STD",
                        help="hub-pathway: minimum std of the learned gate noise, so route exploration never dies out. "
                             "Default: 0.3.")
    parser.add_argument("--k1-weight", choices=["prob", "straight-through"], default=None,
                        help="hub-pathway: weight of the chosen expert at --top-k 1: its gate probability, "
                             "or 1 with that probability's gradient "
                             "(keeps the expert's features at their pretrained scale). With prob, evaluation "
                             "(noise-free) weighs the expert by its noise-free probability, lower than the noisy "
                             "one it acted with in training (about 0.5 against 0.7 for 2 even experts at noise 1). "
                             "Default: straight-through.")
    parser.add_argument("--exploration-loss", choices=["switch", "entropy", "importance-load"], default="switch",
                        help="hub-pathway: load balancing of the gate: switch (K*sum f_i*P_i on the actual assignments), "
                             "entropy of the batch-mean "
                             "probabilities, or Shazeer's importance+load. Default: switch (a constant when --top-k "
                             "equals the hub size: use another there).")
    parser.add_argument("--aggregation", choices=["features", "heads"], default="features",
                        help="hub-pathway: aggregate the expert features into one head (features) "
                             "or per-expert heads' outputs (heads, the paper's form; at --top-k 1 with the "
                             "straight-through weight the acting head is the chosen expert's own, so the "
                             "exploitation loss repeats the task loss: 1.5x its policy term). Default: features.")
    parser.add_argument("--exploration-coef", type=non_negative_float, default=None, metavar="W",
                        help="hub-pathway: weight of the exploration loss (>= 0). Default: 0.1.")
    parser.add_argument("--exploitation-coef", type=non_negative_float, default=0.5, metavar="W",
                        help="hub-pathway: weight of the exploitation loss (>= 0). Default: 0.5.")
    parser.add_argument("--freeze-experts", action="store_true",
                        help="hub-pathway: keep the expert encoders fixed (default: fine-tune them).")
    parser.add_argument("--route-pg-coef", type=non_negative_float, default=0.0, metavar="W",
                        help="hub-pathway: weight of the policy gradient that trains the gate's sampled top-1 route "
                             "with the advantage, so routes can compare the experts state by state (needs --top-k 1 "
                             "and gate noise). Default: 0, the paper's gate (trained through the pathway weights).")
    parser.add_argument("--gate-lr-scale", type=bounded_float(0.0, low_open=True), default=1.0, metavar="X",
                        help="hub-pathway: the gate's learning rate as X times the agent's (its schedule followed). "
                             "Default: 1, the encoders' rate.")
    parser.add_argument("--eval-freq", type=steps, default=100_000, metavar="STEPS",
                        help="Evaluate every STEPS agent steps. Default: 100k.")
    parser.add_argument("--eval-episodes", type=positive_int, default=10, metavar="N",
                        help="Games per evaluation (whole games, raw score, actions sampled as RL Zoo does for Atari). "
                             "Default: 10.")
    parser.add_argument("--early-eval", action=argparse.BooleanOptionalAction, default=True,
                        help="One extra evaluation on 3 games at 10%% of the budget (at most 25k steps), "
                             "for a score early. Default: on.")
    parser.add_argument("--plot", action="store_true", help="Only redraw learning_curve.png of the run in --out, then exit.")
    parser.add_argument("--checkpoint-freq", type=steps, default=100_000, metavar="STEPS",
                        help="Checkpoint every STEPS agent steps. Default: 100k.")
    parser.add_argument("--sticky-actions", dest="repeat_action_probability", type=probability, default=0.25, metavar="P",
                        help="Repeat-action probability in [0, 1] (ALE v5's). Default: 0.25.")
    add_common_flags(parser)
    return parser


def transfer_config(parser: argparse.ArgumentParser, args: argparse.Namespace, given: set[str]):
    """The run's :class:`~hubrl.transfer.TransferConfig`: the flags (defaults included) for a new
    run; for ``--resume``, the saved run with only the explicitly given flags laid over it. A flag
    of a method other than the run's (the saved one, on resume) is refused as such
    (:func:`~hubrl.transfer.refuse_options_of_other_methods`), before its value is compared."""
    from dataclasses import fields

    from hubrl.agents import load_overrides
    from hubrl.runconfig import read_saved_config, resume_config
    from hubrl.transfer import (
        TransferConfig,
        check_resumable,
        default_run_folder,
        refuse_options_of_other_methods,
        saved_source_name,
    )

    names = {f.name: f for f in fields(TransferConfig)}
    # A flag whose default lives in the library is None when not given: the library's default applies.
    chosen = {name: getattr(args, name) for name, f in names.items()
              if hasattr(args, name) and (name in given or not args.resume)
              and not (getattr(args, name) is None and f.default is not None and name not in given)}
    if "hyperparams" in chosen:
        chosen["hyperparams"] = load_overrides(chosen["hyperparams"], algo=chosen.get("algo")) if chosen["hyperparams"] else {}
    if "sources" in chosen:
        chosen["sources"] = list(chosen["sources"])
    if args.resume and "hub" in given:  # the experts' new place replaces the saved one, whichever flag that was
        chosen["sources"] = []
    if args.resume and "sources" in given:
        chosen["hub"] = None
    if not args.resume:
        if args.env is None:
            raise UsageError("--env is required (the target game), except with --resume --out DIR.")
        refuse_options_of_other_methods(chosen["method"], given)
        return TransferConfig(**chosen)
    if args.out is None:
        if args.env is None:
            raise UsageError("--resume needs the run folder: --resume --out DIR, or the flags the run was started with "
                             "(--env GAME and, for a method's own folder, --method ...), which name its default folder.")
        defaults = {name: getattr(args, name) for name, f in names.items()
                    if hasattr(args, name) and name != "hyperparams"
                    and (getattr(args, name) is not None or f.default is None)}
        if defaults.get("source") is not None:  # the folder a new run made: named after the expert, not the game
            defaults["source"] = _expert_name(defaults["source"], args.hub, args.sources)
        chosen["out"] = str(default_run_folder(TransferConfig(**defaults)))
    check_resumable(Path(chosen["out"]))
    config_path = Path(chosen["out"]) / "config.yaml"
    saved = read_saved_config(config_path)
    method = saved["run"].get("method")
    if isinstance(method, str) and chosen.get("method", method) == method:  # another --method is refused below, by name
        refuse_options_of_other_methods(method, given, resuming=Path(chosen["out"]))
    if chosen.get("source") is not None:  # --source Seaquest resumes the run saved as seaquest-ppo
        chosen["source"] = saved_source_name(chosen["source"], saved)
    flags = {**TransferConfig.FLAGS, **{k: v for k, v in flag_names(parser).items() if k in names}}
    return resume_config(TransferConfig, config_path, chosen, flags)  # run_transfer checks the device, naming the file


def _expert_name(source: str, hub: str | None, sources: Sequence[str] | None) -> str:
    """``--source`` as a new run names its default folder: the expert's name (``Seaquest`` ->
    ``seaquest-ppo``) in the hub the command names; as typed where that hub does not resolve it
    (the resume check then names the folder it looked for)."""
    from hubrl.hub import resolve_hub

    try:
        return resolve_hub(hub, sources).get(source).name
    except HubError:
        return source


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``hubrl-transfer`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser(prog)
    args, given = parse_given(parser, argv)
    if args.plot:
        refuse_flags_not_read_by(parser, given, "plot", {"out"})
        if not args.out:
            parser.error("--plot needs --out RUN_FOLDER")
        from hubrl.plots import plot_run_curve

        print(plot_run_curve(args.out))
        return 0
    from hubrl.transfer import run_transfer

    cfg = transfer_config(parser, args, given)
    result = run_transfer(cfg, resume=args.resume, progress_bar=not args.no_progress_bar, pause_at=args.pause_at)
    outcome = result.outcome
    if outcome.already_done:  # run_transfer said so in one line
        return 0
    resume = f"{parser.prog} --resume --out {shlex.quote(str(result.folder))}"
    if outcome.already_paused:  # e.g. the command that paused the run, given again
        print(f"Already at {outcome.num_timesteps} of {cfg.timesteps} steps, at or past --pause-at {args.pause_at}: "
              f"nothing to train. Continue with: {resume} (with a later --pause-at, or none)")
        return 0
    if outcome.paused:
        print(f"Paused at {outcome.num_timesteps} of {cfg.timesteps} steps (--pause-at); checkpoint saved. "
              f"Continue with: {resume}")
        return 0
    if outcome.interrupted_by is not None:
        print(f"Stopped at {outcome.num_timesteps} steps; checkpoint saved. Resume with: {resume}")
        return 128 + outcome.interrupted_by
    last = outcome.history.points[-1] if outcome.history.points else None
    score = f"; eval {last['mean']:.1f} ± {last['std']:.1f}" if last else ""
    print(f"{outcome.num_timesteps} steps in {outcome.seconds:.0f}s{score} -> {result.folder}/model.zip")
    return 0


def cli() -> None:
    """The entry point ``hubrl-transfer``."""
    main_guard(lambda: main(prog="hubrl-transfer"))
