"""Atari environments for hubrl: fast vectorised ALE behind SB3's ``VecEnv`` API, and a game registry.

The env classes load on first use (PEP 562), so tools that only need the game registry (the
benchmark report) do not pay for importing ale-py and stable-baselines3.
"""

from typing import Any

from hubrl.envs.games import (
    REFERENCE_SCORES,
    UnknownGameError,
    action_meanings,
    available_games,
    display_name,
    human_normalized_score,
    resolve_game,
    resolve_games,
)

#: Observations of every hubrl Atari env (:class:`AtariVecEnv`'s defaults): 4 stacked 84x84 grey
#: frames, channels first. A hub is checked against it before any emulator starts.
OBSERVATION_SHAPE: tuple[int, int, int] = (4, 84, 84)

#: Most parallel games a run starts (``--n-envs``, or ``n_envs`` in ``--hyperparams``): each is an
#: emulator in the process's memory; far more stalls the machine before the first step (100,000
#: ran silently until killed) instead of failing.
MAX_ENVS = 1024

__all__ = [
    "MAX_ENVS",
    "OBSERVATION_SHAPE",
    "AtariVecEnv",
    "make_atari_vec_env",
    "REFERENCE_SCORES",
    "UnknownGameError",
    "action_meanings",
    "available_games",
    "display_name",
    "human_normalized_score",
    "resolve_game",
    "resolve_games",
]


def __getattr__(name: str) -> Any:
    if name in ("AtariVecEnv", "make_atari_vec_env"):
        from hubrl.envs import atari

        return getattr(atari, name)
    raise AttributeError(f"module 'hubrl.envs' has no attribute {name!r}")
