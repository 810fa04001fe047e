#!/usr/bin/env python
"""Throughput on this machine, measured side by side in one run (the measurements: :mod:`hubrl.speed`).

    %(prog)s envs    # env steps/s: hubrl's AtariVecEnv vs SB3's make_atari_env + VecFrameStack
    %(prog)s train   # agent steps/s of hubrl's PPO training against stock SB3's, whole processes
    %(prog)s transfer  # every method's training wall time and inference speed vs scratch, same run
    %(prog)s rank      # wall time of ranking the default hub (--method select's first step)
    %(prog)s zoo-conv  # Zoo-Tuning's per-sample kernels: grouped conv vs output-space vs NatureCNN
    %(prog)s not-adopted  # measured, not adopted: inference_mode rollouts, /255 folded into conv 1, a faster conv-1 gradient
    %(prog)s inference  # Hub-Pathway's predict vs scratch's with the routing controlled, and where its time goes

(train-one is one training process of train's table: train runs it once per setup and repeat.)
SB3's pipeline (envs, train, train-one --impl sb3) needs OpenCV: ``pip install -e ".[bench]"``.
Entry point ``hubrl-speed``; also ``python -m hubrl speed`` and ``scripts/benchmark_speed.py``.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from hubrl.cli.common import ArgumentParser, command_prog, device, env_count, flag_names, main_guard, parse_given, positive_int
from hubrl.cli.common import steps as step_count
from hubrl.speed.kernels import bench_inference, bench_not_adopted, bench_zoo_conv
from hubrl.speed.throughput import bench_envs, bench_rank, bench_train, bench_transfer, check_opencv, train_once


def _positive_ints(text: str) -> list[int]:
    """Parse a comma-separated list of positive integers: ``8,256``."""
    try:
        values = [positive_int(v) for v in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers: {exc}") from None
    return values


#: The measurements that read each flag (as its help says); given to another one, a flag is refused rather
#: than ignored (``speed rank --device cuda`` would time the CPU, ``speed train --threads 8`` each setup's own).
FLAG_READERS: dict[str, tuple[str, ...]] = {
    "impl": ("train-one",),
    "algo": ("train", "train-one", "transfer"),
    "threads": ("train-one",),
    "precision": ("train-one",),
    "device": ("train", "train-one", "transfer", "zoo-conv", "not-adopted", "inference"),
    "game": ("envs", "train", "train-one", "transfer", "rank"),
    "n_envs": ("envs", "zoo-conv", "not-adopted"),
    "steps": ("envs", "train", "train-one", "transfer", "rank"),
    "repeats": ("envs", "train", "transfer", "zoo-conv", "not-adopted", "inference"),
    "experts": ("zoo-conv",),
    "batch_sizes": ("zoo-conv", "not-adopted", "inference"),
}


def refuse_flags_not_read(parser: argparse.ArgumentParser, what: str, given: set[str]) -> None:
    """Refuse, naming the flag and the measurements that read it, a flag given explicitly (``given``:
    destinations, :func:`~hubrl.cli.common.parse_given`) that the measurement ``what`` does not read."""
    flags = flag_names(parser)
    for dest in sorted(given):
        readers = FLAG_READERS.get(dest)
        if readers is not None and what not in readers:
            parser.error(f"{flags[dest]} is read by {', '.join(readers)}; {what} does not read it: drop it.")


def build_parser(prog: str | None = None) -> ArgumentParser:
    """The parser of ``hubrl-speed`` (``prog``: how it was started, see :func:`~hubrl.cli.common.command_prog`)."""
    parser = ArgumentParser(prog=command_prog("speed", prog), description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["envs", "train", "train-one", "transfer", "rank", "zoo-conv", "not-adopted",
                                         "inference"],
                        help="What to measure (see above).")
    parser.add_argument("--impl", choices=["hubrl", "sb3"], default="hubrl",
                        help="train-one: whose training pipeline. Default: hubrl.")
    parser.add_argument("--algo", nargs="+", default=["ppo"], choices=["ppo", "a2c"],
                        help="train: algorithms; train-one, transfer: the first one. Default: ppo.")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="train-one: torch CPU threads (default: torch's, one per core; train sets each setup's).")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="train-one: encoders' arithmetic (train sets each setup's). Default: fp32.")
    parser.add_argument("--device", type=device, default="cpu", metavar="DEVICE",
                        help="train, train-one, transfer, zoo-conv, not-adopted, inference: torch device "
                             "(cpu, cuda, cuda:1, mps, auto). Default: cpu "
                             "(the tables in BENCHMARKS.md); envs and rank run on the CPU.")
    parser.add_argument("--env", dest="game", default="Seaquest", metavar="GAME", aliases=("--game",),
                        help="envs, train, train-one, transfer, rank: game to measure on. Default: Seaquest.")
    parser.add_argument("--n-envs", type=env_count, default=8, metavar="N",
                        help="envs: parallel games; zoo-conv, not-adopted: the rollout batch (one frame per game). "
                             "Default: 8 (train, train-one and transfer use the preset's).")
    parser.add_argument("--timesteps", dest="steps", type=step_count, default=None, metavar="STEPS", aliases=("--steps",),
                        help="Length of each measurement: vector steps (envs, default 2000), agent steps (train, "
                             "train-one: after a one-rollout warm-up, default 10240; transfer: default 4096), "
                             "random-policy agent steps (rank, default 20k).")
    parser.add_argument("--repeats", type=positive_int, default=3, metavar="N",
                        help="Interleaved repetitions: the tables give their median (envs, train, transfer) or "
                             "minimum (zoo-conv, not-adopted, inference). Default: 3.")
    parser.add_argument("--experts", type=_positive_ints, default=[2, 4], metavar="K,...",
                        help="zoo-conv: expert counts. Default: 2,4.")
    parser.add_argument("--batch-sizes", type=_positive_ints, default=[8, 256], metavar="B,...",
                        help="zoo-conv, not-adopted, inference: batch sizes; zoo-conv's forward (no_grad) only for "
                             "those <= --n-envs (rollouts). Default: 8,256.")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``hubrl-speed`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser(prog)
    args, given = parse_given(parser, argv)
    refuse_flags_not_read(parser, args.what, given)
    if getattr(args, "game", None) is not None:  # a typo is named first, with close matches, before any other check
        from hubrl.envs import resolve_game

        resolve_game(args.game)
    if args.what in FLAG_READERS["device"]:
        from hubrl.runconfig import check_device

        check_device(args.device)
    if args.what in ("envs", "train") or (args.what == "train-one" and args.impl == "sb3"):
        check_opencv(f"{parser.prog} {args.what}" + (" --impl sb3" if args.what == "train-one" else ""))
    if args.what == "envs":
        bench_envs(args.game, args.n_envs, args.steps or 2000, args.repeats)
    elif args.what == "train":
        bench_train(args.game, args.steps or 10_240, args.repeats, args.algo, args.device)
    elif args.what == "train-one":
        import json

        print(json.dumps(train_once(args.impl, args.algo[0], args.game, args.steps or 10_240, args.threads, args.precision,
                                    args.device)))
    elif args.what == "transfer":
        bench_transfer(args.game, args.steps or 4096, args.repeats, args.device, args.algo[0])
    elif args.what == "rank":
        bench_rank(args.game, args.steps or 20_000)
    elif args.what == "not-adopted":
        bench_not_adopted(args.batch_sizes, args.n_envs, args.repeats, args.device)
    elif args.what == "inference":
        bench_inference(args.batch_sizes, args.repeats, args.device)
    else:
        bench_zoo_conv(args.experts, args.batch_sizes, args.n_envs, args.repeats, args.device)
    return 0


def cli() -> None:
    """The entry point ``hubrl-speed``."""
    main_guard(lambda: main(prog="hubrl-speed"))
