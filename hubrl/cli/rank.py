#!/usr/bin/env python
"""Rank a hub's experts for a target Atari game before training ("select", Puigcerver et al. 2021).

    %(prog)s --env Alien                              # the package's default hub
    %(prog)s --env Gopher --hub hub --timesteps 10k --json ranking.json
    %(prog)s --env Alien --sources ppo-Seaquest.zip ppo-Riverraid.zip
    %(prog)s --env Seaquest --probe knn --random-baseline  # BENCHMARKS.md, "Selection proxy against a random encoder"

Plays --timesteps steps of the target game with a random policy (once, shared by all experts), then
scores each expert by how well a probe on its frozen features (ridge; or --probe knn, cosine kNN)
predicts the discounted return-to-go (R² on held-out episodes, higher is better). Fine-tune the expert
ranked first (hubrl-transfer --method select ranks this way, then fine-tunes it).
With --random-baseline, a randomly initialised encoder is scored too, as a reference row.
Entry point ``hubrl-rank``; also ``python -m hubrl rank`` and ``scripts/rank_hub.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Sequence

from hubrl.atomic import atomic_write_bytes, probe_writable
from hubrl.cli.common import (
    ArgumentParser,
    add_threads_flag,
    command_prog,
    env_count,
    main_guard,
    path_text,
    probability,
    seed,
    steps,
)
from hubrl.errors import UsageError


def build_parser(prog: str | None = None) -> ArgumentParser:
    """The parser of ``hubrl-rank`` (``prog``: how it was started, see :func:`~hubrl.cli.common.command_prog`)."""
    parser = ArgumentParser(prog=command_prog("rank", prog), description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, metavar="GAME", help="Target game: Alien, Gopher, Jamesbond, ALE/Alien-v5 ...")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--hub", type=path_text, default=None, metavar="DIR",
                        help="Hub folder made by hubrl-pretrain (default: the shipped hub).")
    source.add_argument("--sources", nargs="+", type=path_text, default=[], metavar="ZIP",
                        help="SB3 checkpoints (.zip) or expert folders to rank.")
    parser.add_argument("--timesteps", dest="frames", type=steps, default=20_000, metavar="STEPS", aliases=("--frames",),
                        help="Random-policy agent steps of the target game, e.g. 20k. Default: 20k.")
    parser.add_argument("--n-envs", type=env_count, default=8, metavar="N",
                        help="Parallel games for the data collection. Default: 8.")
    parser.add_argument("--probe", choices=["ridge", "knn"], default="ridge",
                        help="Probe on the frozen features: ridge (scores every frame) or knn (cosine kNN, k=20, "
                             "scores 4k held-out frames). Default: ridge.")
    parser.add_argument("--seed", type=seed, default=0, metavar="SEED",
                        help="Seed of the games, the random policy and the random encoder. Default: 0. "
                             "hubrl-transfer --method select ranks with its run's --seed, and the proxy's gaps between "
                             "experts can be as small as its seed-to-seed spread: give the run's seed to see its choice.")
    parser.add_argument("--sticky-actions", dest="repeat_action_probability", type=probability, default=0.25, metavar="P",
                        help="Repeat-action probability of the target game in [0, 1] (ALE v5's), as the transfer run's "
                             "--sticky-actions: select ranks with its run's. Default: 0.25.")
    parser.add_argument(
        "--random-baseline", action="store_true",
        help="Also score a randomly initialised NatureCNN (seeded by --seed) on the same frames, shown as the row "
             "'random-init (reference)' and never chosen as best: the proxy is only informative if the experts "
             "beat a random encoder (random features already predict some of the return).",
    )
    add_threads_flag(parser)
    parser.add_argument("--json", type=path_text, default=None, metavar="FILE",
                        help="Also write the ranking to this JSON file (replaced whole if it exists).")
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.json is not None and Path(args.json).is_dir():  # found out before the ranking's work, not after
        parser.error(f"--json {args.json} is a folder: give a file name, e.g. {Path(args.json) / 'ranking.json'}")
    return args


def prepare_json(path: str) -> None:
    """Make ``--json``'s folder and check the file can be written, before the ranking's work (as
    enjoy --video makes its own); called once the game and the hub are accepted, so a refused
    command leaves no folder behind."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--json {path}: cannot make its folder ({exc.strerror or exc})") from None
    try:
        probe_writable(path)
    except OSError as exc:
        raise UsageError(f"--json {path}: cannot be written ({exc.strerror or exc})") from None


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``hubrl-rank`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    args = parse_args(argv, prog)
    from hubrl.envs import OBSERVATION_SHAPE, display_name, resolve_game
    from hubrl.hub import resolve_hub
    from hubrl.runtime import configure_threads
    from hubrl.selection import Ranking, collect_target_data, random_baseline, rank_experts

    configure_threads(args.threads)
    start = time.perf_counter()
    game = resolve_game(args.env)
    hub = resolve_hub(args.hub, args.sources)
    hub.validate(OBSERVATION_SHAPE)  # experts the game's frames cannot feed: refused before any data are collected
    if args.json:
        prepare_json(args.json)
    summary = {"game": game, "frames": args.frames, "seed": args.seed, "probe": args.probe,
               "repeat_action_probability": args.repeat_action_probability, "data": None}
    reference = None
    if len(hub) == 1:
        rankings = rank_experts(hub, game)
        print(f"Only one expert ({rankings[0].name}): nothing to rank; fine-tune it."
              + (" (--random-baseline skipped: no data are collected for one expert.)" if args.random_baseline else ""))
    else:
        data = collect_target_data(game, frames=args.frames, seed=args.seed, n_envs=args.n_envs,
                                   repeat_action_probability=args.repeat_action_probability)
        summary["data"] = {**data.info, "episodes": data.n_episodes}
        print(
            f"{display_name(game)}: {data.info['steps']} random-policy agent steps in {data.info['seconds']:.1f}s, "
            f"{len(data)} labelled ({data.n_episodes} episodes, {data.info['rewarded_steps']} rewarded steps). "
            f"Scoring {len(hub)} experts ({args.probe} probe, held-out R²) ...",
            flush=True,
        )
        rankings = rank_experts(hub, game, probe=args.probe, data=data)
        if args.random_baseline:
            reference = random_baseline(data, probe=args.probe, seed=args.seed)
    rows = [(str(i), r) for i, r in enumerate(rankings, 1)]
    if reference is not None:  # in score order, so the experts above it are those that beat it
        at = next((j for j, (_, r) in enumerate(rows) if not r.proxy > reference.proxy), len(rows))
        rows.insert(at, ("ref", reference))
    width = max(len("expert"), *(len(r.name) for _, r in rows))
    print(f"{'rank':>4}  {'expert':<{width}}  {'proxy (R²)':>10}  {'seconds':>7}")
    for rank, r in rows:
        proxy = "-" if r.proxy is None else f"{r.proxy:.4f}"
        print(f"{rank:>4}  {r.name:<{width}}  {proxy:>10}  {r.seconds:>7.1f}")
    total = time.perf_counter() - start
    print(f"Best: {rankings[0].name}. Total {total:.1f}s.")
    if reference is not None:
        beat = sum(r.proxy > reference.proxy for r in rankings)
        print(f"{beat} of {len(rankings)} experts beat the random-init reference (R² {reference.proxy:.4f})."
              + ("" if beat else " The proxy cannot tell these experts from an untrained encoder on this game."))
    if args.json:
        def entry(rank: int | None, r: Ranking) -> dict:
            proxy = r.proxy if r.proxy is None or math.isfinite(r.proxy) else None
            return {"rank": rank, "name": r.name, "proxy": proxy, "seconds": round(r.seconds, 3), "baseline": r.baseline}

        # Experts best first (rankings[0] is the one to fine-tune), then the reference (rank null).
        summary["rankings"] = [entry(i, r) for i, r in enumerate(rankings, 1)]
        if reference is not None:
            summary["rankings"].append(entry(None, reference))
        summary["total_seconds"] = round(total, 3)
        atomic_write_bytes(args.json, (json.dumps(summary, indent=2) + "\n").encode())  # never a torn file
    return 0


def cli() -> None:
    """The entry point ``hubrl-rank``."""
    main_guard(lambda: main(prog="hubrl-rank"))
