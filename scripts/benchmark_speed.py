#!/usr/bin/env python
"""Throughput on this machine, measured side by side in one run.

    python scripts/benchmark_speed.py envs    # env steps/s: hubrl's AtariVecEnv vs SB3's make_atari_env + VecFrameStack
    python scripts/benchmark_speed.py train   # agent steps/s of PPO and A2C training (RL Zoo presets)
    python scripts/benchmark_speed.py transfer  # Hub-Pathway training wall time vs scratch PPO, same run

The SB3 pipeline needs OpenCV: ``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse
import platform
import time

import _cli  # noqa: F401
import numpy as np
from _cli import main_guard, positive_int


def _env_steps_per_second(env, steps: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    env.reset()
    n = env.num_envs
    actions = [rng.integers(0, env.action_space.n, size=n) for _ in range(steps)]
    start = time.perf_counter()
    for a in actions:
        env.step(a)
    return steps * n / (time.perf_counter() - start)


def bench_envs(game: str, n_envs: int, steps: int, repeats: int) -> None:
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    from envs import display_name, make_atari_vec_env

    gym.register_envs(ale_py)
    ours, theirs = [], []
    for r in range(repeats):  # interleaved, so both see the same machine state
        env = make_atari_vec_env(game, n_envs, seed=r)
        ours.append(_env_steps_per_second(env, steps, r))
        env.close()
        sb3 = VecFrameStack(make_atari_env(f"{display_name(game)}NoFrameskip-v4", n_envs=n_envs, seed=r), 4)
        theirs.append(_env_steps_per_second(sb3, steps, r))
        sb3.close()
    o, t = np.median(ours), np.median(theirs)
    print(f"| env | n_envs | steps/s (median of {repeats}) |\n|---|---|---|")
    print(f"| hubrl AtariVecEnv (C++ ALE vector) | {n_envs} | {o:,.0f} |")
    print(f"| SB3 make_atari_env + VecFrameStack | {n_envs} | {t:,.0f} |")
    print(f"\nratio: {o / t:.2f}x  ({game}, {steps} vector steps per repeat, {platform.processor() or platform.machine()})")


def bench_train(game: str, steps: int) -> None:
    from agents import AGENT_CLASSES, resolve_hyperparams
    from envs import make_atari_vec_env

    print("| algo | n_envs | agent steps | seconds | agent steps/s |\n|---|---|---|---|---|")
    for algo in ("ppo", "a2c"):
        plain, kwargs = resolve_hyperparams(algo)
        env = make_atari_vec_env(game, plain["n_envs"], seed=0)
        model = AGENT_CLASSES[algo]("CnnPolicy", env, seed=0, device="cpu", **kwargs)
        model.learn(plain["n_envs"] * kwargs["n_steps"])  # warm-up: one rollout + update
        start = time.perf_counter()
        model.learn(steps, reset_num_timesteps=False)
        seconds = time.perf_counter() - start
        print(f"| {algo} | {plain['n_envs']} | {steps} | {seconds:.1f} | {steps / seconds:.0f} |")
        env.close()


def bench_transfer(game: str, steps: int, repeats: int) -> None:
    """Same PPO preset and step count: scratch CnnPolicy vs HubPathwayPolicy over synthetic hubs."""
    from agents import HubPPO, resolve_hyperparams
    from envs import make_atari_vec_env
    from hubrl.policies import HubPathwayPolicy

    _, kwargs = resolve_hyperparams("ppo")
    variants = [("scratch (CnnPolicy)", None, 0), ("hub-pathway 2 experts k=1", 2, 1),
                ("hub-pathway 2 experts k=2", 2, 2), ("hub-pathway 8 experts k=2", 8, 2)]
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for r in range(repeats):  # interleaved repeats
        for name, n_experts, k in variants:
            env = make_atari_vec_env(game, 8, seed=r)
            if n_experts is None:
                model = HubPPO("CnnPolicy", env, seed=r, device="cpu", **kwargs)
            else:
                names = [f"expert{i}" for i in range(n_experts)]
                model = HubPPO(HubPathwayPolicy, env, seed=r, device="cpu", policy_kwargs={"expert_names": names, "top_k": k}, **kwargs)
            start = time.perf_counter()
            model.learn(steps)
            times[name].append(time.perf_counter() - start)
            env.close()
    base = float(np.median(times[variants[0][0]]))
    two_k2 = float(np.median(times[variants[2][0]]))
    print(f"| variant | seconds (median of {repeats}) | vs scratch |\n|---|---|---|")
    for name, _, _ in variants:
        t = float(np.median(times[name]))
        print(f"| {name} | {t:.1f} | {t / base:.2f}x |")
    print(f"\n8 experts k=2 vs 2 experts k=2: {float(np.median(times[variants[3][0]])) / two_k2:.2f}x ({steps} agent steps each, {game})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["envs", "train", "transfer"])
    parser.add_argument("--game", default="Seaquest")
    parser.add_argument("--n-envs", type=positive_int, default=8)
    parser.add_argument("--steps", type=positive_int, default=None, help="vector steps (envs) or agent steps (train)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args()
    if args.what == "envs":
        bench_envs(args.game, args.n_envs, args.steps or 2000, args.repeats)
    elif args.what == "train":
        bench_train(args.game, args.steps or 10_240)
    else:
        bench_transfer(args.game, args.steps or 4096, args.repeats)
    return 0


if __name__ == "__main__":
    main_guard(main)
