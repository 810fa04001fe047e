"""Shared fixtures: tiny hyperparameters so that every training test runs in seconds on a CPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch as th

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
th.set_num_threads(1)

# PPO small enough for a few hundred steps to finish in seconds.
TINY_PPO = {"n_steps": 32, "batch_size": 64, "n_epochs": 1}


def read_pyproject() -> dict:
    """The repository's pyproject.toml, parsed (tomllib; the dev extra's tomli on Python 3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject's addopts): one worker per core, at most 8. Each worker holds torch, ALE
    and a few tiny agents (about 0.5 GB), so a many-core machine need not start dozens."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@pytest.fixture
def tiny_ppo() -> dict:
    return dict(TINY_PPO)


def run_script(name: str, *args: str, timeout: float = 300, env: dict | None = None):
    """Run ``scripts/<name>`` in a subprocess; return the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def make_tiny_hub(root: Path, names=("seaquest-ppo", "riverraid-ppo"), in_channels: int = 4) -> Path:
    """A hub of untrained NatureCNN experts in pretrain_sources.py's format (no training: instant)."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    from hubrl.experts import ExpertManifest, save_expert

    space = gym.spaces.Box(0, 255, (in_channels, 84, 84), np.uint8)
    for i, name in enumerate(names):
        th.manual_seed(i)
        policy = ActorCriticCnnPolicy(space, gym.spaces.Discrete(18), lambda _: 1e-4)
        manifest = ExpertManifest(name=name, game=name.split("-")[0], algo="ppo", timesteps=0,
                                  observation_shape=[in_channels, 84, 84], action_meanings=["NOOP"] * 18)
        save_expert(root / name, policy.state_dict(), manifest)
    return root


def make_sb3_zip(path: Path, seed: int = 0) -> Path:
    """A stock SB3 PPO CnnPolicy checkpoint, as model.save writes it."""
    from stable_baselines3 import PPO

    from hubrl.envs import make_atari_vec_env

    env = make_atari_vec_env("Seaquest", 1, seed=seed)
    PPO("CnnPolicy", env, n_steps=8, batch_size=8, seed=seed, device="cpu").save(path)
    env.close()
    return path


def forbid_unpickling(monkeypatch) -> None:
    """From here on, any unpickling fails the test: what reads files as data must never call it.

    Covers pickle's and cloudpickle's entry points (``loads``, ``load``, ``Unpickler``, which a
    ``torch.load(weights_only=False)`` builds on) and ``torch.load`` itself unless it is given
    ``weights_only=True`` (torch's restricted unpickler, which rebuilds tensors only)."""
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("the file's data was unpickled")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise AssertionError("torch.load without weights_only=True unpickles the file")
        return real_load(*args, **kwargs)

    for name in ("pickle.loads", "pickle.load", "cloudpickle.loads", "cloudpickle.load"):
        monkeypatch.setattr(name, refuse)
    monkeypatch.setattr("pickle.Unpickler", RefusingUnpickler)
    monkeypatch.setattr(torch, "load", weights_only_load)


@pytest.fixture
def tiny_hub(tmp_path) -> Path:
    return make_tiny_hub(tmp_path / "hub")
