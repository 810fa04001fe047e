"""Shared command-line plumbing: flags every script has, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

# Scripts run from a clone without installation too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError)


def positive_int(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def steps(text: str) -> int:
    """Parse 10M / 500k / 2e6 / 1000 into an int."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a step count like 10M, 500k or 2e6, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", default="ppo", choices=["ppo", "a2c"], help="RL algorithm (RL Zoo Atari presets). Default: ppo.")
    parser.add_argument("--n-envs", type=positive_int, default=None, help="Parallel games (default: the preset's, 8 for PPO, 16 for A2C).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed of agent and envs. Default: 0.")
    parser.add_argument("--device", default="auto", help="Torch device: auto, cpu, cuda, cuda:1 ... Default: auto.")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="Torch CPU threads (default: 1, right when cores are shared; try 2+ on a machine to yourself).")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="Encoders' arithmetic: fp32, or bf16 autocast (faster on CPUs with AVX512-BF16; not yet validated "
                             "by learning curves). Default: fp32.")
    parser.add_argument("--tensorboard-log", default=None, help="TensorBoard folder (default: inside the run folder).")
    parser.add_argument("--hyperparams", default=None, metavar="YAML", help="YAML file of hyperparameter overrides (keys as in agents/presets.py).")
    parser.add_argument("--no-progress-bar", action="store_true", help="Hide the progress bar (e.g. in logs).")


def main_guard(main: Callable[[], int]) -> None:
    """Run ``main``; turn user errors into one line on stderr and exit code 2."""
    try:
        sys.exit(main())
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
