"""Evaluation on the raw game score, the way RL Zoo evaluates Atari agents.

A separate env plays whole games (no life-loss termination, no reward clipping, sticky actions as
in training) and the policy samples its actions (``deterministic=False``: RL Zoo's choice for
Atari, where a greedy policy can loop forever). Scores come from ``info["episode"]``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.policies import BasePolicy

from hubrl.envs import make_atari_vec_env

__all__ = ["EvalResult", "EvaluationStopped", "make_eval_env", "seeded_actions", "evaluate_model",
           "inference_steps_per_second"]


class EvaluationStopped(Exception):
    """:func:`evaluate_model` was asked to stop (its ``stop`` said so) before all its games were played:
    it has no result, and the games it did play are discarded."""


@dataclass
class EvalResult:
    """Raw game scores of ``episodes`` evaluation games."""

    mean: float
    std: float
    episodes: int
    scores: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.std:.1f} over {self.episodes} episode{'s' if self.episodes != 1 else ''}"


def make_eval_env(game: str, n_envs: int = 4, seed: int = 10_000, **options):
    """Env that plays whole games and reports raw scores (seeded apart from the training env)."""
    options.setdefault("terminal_on_life_loss", False)
    options.setdefault("clip_reward", False)
    return make_atari_vec_env(game, n_envs, seed=seed, **options)


@contextmanager
def seeded_actions(policy: Any, seed: int | None, gate_noise: bool = False) -> Iterator[None]:
    """Within the block, ``policy`` (an agent or a bare policy) samples its actions from ``seed``:
    what evaluation and play share, so that a seed repeats the same games.

    ``seed``: the sampled actions (and gate noise) come from torch's generator seeded with it, in
    a fork that leaves the caller's generator as it was, wherever that stands; ``None`` draws
    from the caller's generator (no fork). ``gate_noise``: a Hub-Pathway policy routes with its
    acting gate noise (:func:`hubrl.policies.predict_with_gate_noise`, which refuses a policy
    without it).
    """
    import torch as th

    from hubrl.policies import predict_with_gate_noise

    with th.random.fork_rng(enabled=seed is not None), predict_with_gate_noise(policy, gate_noise):
        if seed is not None:
            th.manual_seed(seed)
        yield


def evaluate_model(model: BaseAlgorithm | BasePolicy, env, n_episodes: int = 10, deterministic: bool = False,
                   gate_noise: bool = False, seed: int | None = None,
                   stop: Callable[[], bool] | None = None) -> EvalResult:
    """Play ``n_episodes`` games with ``model`` (an agent or a bare policy) on ``env``; raw score
    statistics. ``seed`` and ``gate_noise``: see :func:`seeded_actions`; a seed also seeds
    ``env``'s games (their no-op starts and sticky actions, from the reset that starts the
    evaluation), so it scores the same weights the same whatever ``env`` played before (a resumed
    run's fresh env, or one that has evaluated earlier steps); ``None`` draws from the caller's
    generators (training's periodic evaluations pass a seed of their own: :func:`hubrl.training.eval_seed`).

    ``stop``: asked after every step; True ends the evaluation there with :class:`EvaluationStopped`
    (a training run stopped by Ctrl-C does not play out the games of an evaluation it will discard)."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be positive, got {n_episodes}.")
    if seed is not None:
        env.seed(seed)  # applied by evaluate_policy's reset: the games, as the actions below, from this seed

    def asked(_locals: dict[str, Any], _globals: dict[str, Any]) -> None:
        if stop is not None and stop():
            raise EvaluationStopped

    with seeded_actions(model, seed, gate_noise):
        scores, lengths = evaluate_policy(model, env, n_eval_episodes=n_episodes, deterministic=deterministic,
                                          return_episode_rewards=True, warn=False, callback=asked)
    scores_arr = np.asarray(scores, dtype=np.float64)
    return EvalResult(
        mean=float(scores_arr.mean()),
        std=float(scores_arr.std()),
        episodes=len(scores),
        scores=[float(s) for s in scores],
        lengths=[int(n) for n in lengths],
    )


def inference_steps_per_second(
    policy: BaseAlgorithm | BasePolicy, observations: np.ndarray, calls: int = 100, rounds: int = 1,
) -> float:
    """Agent steps per second of ``policy.predict`` on one batch of observations, as when playing.

    One call acts for ``len(observations)`` envs (a rollout's vector step), so the rate is
    ``calls * len(observations) / seconds``. One untimed call warms up first; with ``rounds > 1``
    the median over rounds of ``calls`` calls each is returned (robust to a busy moment).
    Use real observations of the game: routing methods pick experts per observation, so their
    cost depends on what they see.
    """
    if calls < 1 or rounds < 1:
        raise ValueError(f"calls and rounds must be positive, got {calls} and {rounds}.")
    policy.predict(observations)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            policy.predict(observations)
        rates.append(calls * len(observations) / (time.perf_counter() - start))
    return float(np.median(rates))
