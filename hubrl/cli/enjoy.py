#!/usr/bin/env python
"""Watch an agent play an Atari game: print its raw scores, optionally record a video.

    %(prog)s runs/alien-hub-pathway-ppo-s0                  # a transfer run (its model.zip)
    %(prog)s --expert seaquest-ppo --video seaquest.mp4     # an expert of the shipped hub
    %(prog)s --expert Riverraid --hub hub --episodes 3      # an expert by game, from your hub
    %(prog)s ppo-SeaquestNoFrameskip-v4.zip --env Seaquest  # any SB3 CnnPolicy zip, weights only

Nothing is unpickled: a run folder's model.zip is rebuilt from its policy class name, its plain
settings and its weights (hubrl's own policies too), and any other .zip is read as weights only,
like --sources. So a run folder or zip someone else made cannot run code.
The video shows the screen as a person sees it (210x160 RGB, 15 frames per second of play):
MP4 with the [video] extra (pip install -e ".[video]"), else an animated GIF.
Entry point ``hubrl-enjoy``; also ``python -m hubrl enjoy`` and ``scripts/enjoy.py``.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from hubrl.cli.common import (
    ArgumentParser,
    add_threads_flag,
    command_prog,
    device,
    main_guard,
    path_text,
    positive_int,
    probability,
    seed,
    steps,
)


def build_parser(prog: str | None = None) -> ArgumentParser:
    """The parser of ``hubrl-enjoy`` (``prog``: how it was started, see :func:`~hubrl.cli.common.command_prog`)."""
    parser = ArgumentParser(prog=command_prog("enjoy", prog), description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None, help="A run folder (or its model.zip), or an SB3 .zip checkpoint.")
    parser.add_argument("--expert", default=None, metavar="NAME",
                        help="Play a hub expert: its name (seaquest-ppo) or its game (Seaquest).")
    parser.add_argument("--hub", type=path_text, default=None, metavar="DIR",
                        help="Hub folder for --expert (default: the shipped hub).")
    parser.add_argument("--env", default=None, metavar="GAME",
                        help="Game to play (default: the run's or expert's own; needed for a plain .zip).")
    parser.add_argument("--episodes", type=positive_int, default=None, metavar="N",
                        help="Games to play (with --timesteps: whichever limit comes first). "
                             "Default: 1, or no limit with --timesteps.")
    parser.add_argument("--timesteps", dest="steps", type=steps, default=None, metavar="STEPS", aliases=("--steps",),
                        help="Stop after STEPS agent steps (a game still running is reported as unfinished).")
    parser.add_argument("--video", type=path_text, default=None, metavar="FILE",
                        help="Record to FILE (.mp4, or .gif; .mp4 falls back to .gif without [video]). A GIF keeps "
                             "every frame in memory until the end (a 210x160 palette image, 33.6 kB, per agent step): "
                             "use .mp4 for long plays.")
    parser.add_argument("--deterministic", action="store_true", help="Greedy actions (default: sampled, as in evaluation).")
    parser.add_argument("--gate-noise", action="store_true",
                        help="Hub-Pathway runs: route each state with the gate noise the agent acted with in training "
                             "(default: noise-free, as evaluation).")
    parser.add_argument("--sticky-actions", type=probability, default=None, metavar="P",
                        help="Repeat-action probability in [0, 1] (default: the one the run or expert was trained "
                             "with; 0.25 for a plain .zip).")
    parser.add_argument("--seed", type=seed, default=0, metavar="SEED", help="Seed of the game. Default: 0.")
    add_threads_flag(parser)
    parser.add_argument("--device", type=device, default="cpu", metavar="DEVICE",
                        help="Torch device: cpu, cuda, cuda:1, mps, auto ... Default: cpu (one game at a time needs no GPU).")
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    return build_parser(prog).parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``hubrl-enjoy`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    args = parse_args(argv, prog)
    from hubrl.enjoy import check_video_path, load_player, play
    from hubrl.envs import display_name
    from hubrl.runconfig import check_device
    from hubrl.runtime import configure_threads

    if args.video is not None:
        check_video_path(args.video)  # before the agent is loaded and the game started
    check_device(args.device)
    configure_threads(args.threads)
    player = load_player(args.model, expert=args.expert, hub=args.hub, env=args.env, device=args.device)
    if args.gate_noise:
        from hubrl.policies import check_gate_noise

        check_gate_noise(player.policy)  # before "Playing ..." and the game's start
    game = display_name(player.game)
    print(f"Playing {game} with {player.label}" + (f", recording {args.video}" if args.video else ""), flush=True)
    episodes = args.episodes if args.episodes is not None or args.steps is not None else 1
    result = play(player, steps=args.steps, episodes=episodes, seed=args.seed, deterministic=args.deterministic,
                  video=args.video, repeat_action_probability=args.sticky_actions, gate_noise=args.gate_noise,
                  stop_on_signal=True,
                  on_game_end=lambda i, score, length: print(f"{game} game {i}: score {score:g} ({length} agent steps)",
                                                             flush=True))
    if result.unfinished_score is not None:
        print(f"{game}: game unfinished after {result.steps} steps, score so far {result.unfinished_score:g}")
    if result.scores:
        scores = result.scores
        print(f"{game}: {len(scores)} game(s), raw score mean {sum(scores) / len(scores):.1f}, "
              f"min {min(scores):g}, max {max(scores):g}")
    if result.video is not None:
        note = (" (GIF: imageio-ffmpeg is not installed; pip install -e \".[video]\" for MP4)"
                if result.video.suffix == ".gif" and str(args.video).lower().endswith(".mp4") else "")
        print(f"Video: {result.video}{note}")
    return 0 if result.interrupted_by is None else 128 + result.interrupted_by


def cli() -> None:
    """The entry point ``hubrl-enjoy``."""
    main_guard(lambda: main(prog="hubrl-enjoy"))
