"""Atari environments for hubrl: fast vectorised ALE behind SB3's ``VecEnv`` API, and a game registry."""

from envs.atari import AtariVecEnv, make_atari_vec_env
from envs.games import (
    REFERENCE_SCORES,
    UnknownGameError,
    action_meanings,
    available_games,
    display_name,
    human_normalized_score,
    resolve_game,
)

__all__ = [
    "AtariVecEnv",
    "make_atari_vec_env",
    "REFERENCE_SCORES",
    "UnknownGameError",
    "action_meanings",
    "available_games",
    "display_name",
    "human_normalized_score",
    "resolve_game",
]
