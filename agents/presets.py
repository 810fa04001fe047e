"""Hyperparameter presets: RL Zoo's Atari settings for PPO and A2C, overridable from CLI or YAML.

Values follow ``rl-baselines3-zoo/hyperparams/{ppo,a2c}.yml`` (Atari section). Schedules are written
as RL Zoo writes them, ``"lin_2.5e-4"`` for a linear decay to zero, and turned into callables by
:func:`resolve_hyperparams`, so the resolved config stays plain YAML.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import yaml

__all__ = ["ATARI_PRESETS", "ALGOS", "preset", "load_overrides", "resolve_hyperparams", "linear_schedule"]

ALGOS = ("ppo", "a2c")

ATARI_PRESETS: dict[str, dict[str, Any]] = {
    "ppo": {
        "n_envs": 8,
        "n_steps": 128,
        "n_epochs": 4,
        "batch_size": 256,
        "learning_rate": "lin_2.5e-4",
        "clip_range": "lin_0.1",
        "ent_coef": 0.01,
        "vf_coef": 0.5,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "max_grad_norm": 0.5,
    },
    "a2c": {
        "n_envs": 16,
        "n_steps": 5,
        "learning_rate": 7e-4,
        "ent_coef": 0.01,
        "vf_coef": 0.25,
        "gamma": 0.99,
        "gae_lambda": 1.0,
        "max_grad_norm": 0.5,
        # RMSprop as in the original A2C (TF-like epsilon handling), RL Zoo's Atari choice.
        "policy_kwargs": {"optimizer": "RMSpropTFLike", "optimizer_kwargs": {"eps": 1e-5}},
    },
}


def preset(algo: str) -> dict[str, Any]:
    """A fresh copy of the Atari preset for ``algo`` (``ppo`` or ``a2c``)."""
    algo = algo.lower()
    if algo not in ATARI_PRESETS:
        raise ValueError(f"Unknown algo {algo!r}: choose one of {', '.join(ALGOS)}.")
    return copy.deepcopy(ATARI_PRESETS[algo])


def load_overrides(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of hyperparameter overrides (same keys as the presets)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"Cannot read hyperparameter file {path}: {exc.strerror}.") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"Hyperparameter file {path} is not valid YAML: {exc}.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"Hyperparameter file {path} must hold a mapping of name: value.")
    return data


def linear_schedule(initial: float) -> Callable[[float], float]:
    """Linear decay from ``initial`` to 0 over training (SB3 passes progress remaining 1 -> 0)."""
    return _Linear(initial)


class _Linear:
    """Picklable linear schedule (a class, not a closure, so saved models load anywhere)."""

    def __init__(self, initial: float) -> None:
        self.initial = float(initial)

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial

    def __repr__(self) -> str:
        return f"lin_{self.initial:g}"


def _schedule(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("lin_"):
        return linear_schedule(float(value[4:]))
    return value


def resolve_hyperparams(algo: str, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge ``overrides`` into the preset; return ``(plain_config, sb3_kwargs)``.

    ``plain_config`` is YAML-serialisable (for the run folder); ``sb3_kwargs`` has schedules as
    callables and the optimizer class resolved, ready for the SB3 constructor. ``n_envs`` is in
    the config but not in the kwargs (it sizes the env, not the algorithm).
    """
    config = preset(algo)
    for key, value in (overrides or {}).items():
        if key == "policy_kwargs" and isinstance(value, dict):
            config.setdefault("policy_kwargs", {}).update(value)
        elif value is not None:
            config[key] = value
    kwargs = {k: _schedule(v) for k, v in config.items() if k != "n_envs"}
    policy_kwargs = dict(kwargs.pop("policy_kwargs", {}) or {})
    if policy_kwargs.get("optimizer") == "RMSpropTFLike":
        from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

        policy_kwargs["optimizer_class"] = RMSpropTFLike
        policy_kwargs.pop("optimizer")
    if policy_kwargs:
        kwargs["policy_kwargs"] = policy_kwargs
    return config, kwargs
