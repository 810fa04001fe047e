#!/usr/bin/env python
"""Throughput on this machine, measured side by side in one run.

    python scripts/benchmark_speed.py envs    # env steps/s: hubrl's AtariVecEnv vs SB3's make_atari_env + VecFrameStack
    python scripts/benchmark_speed.py train   # agent steps/s of PPO and A2C training (RL Zoo presets)
    python scripts/benchmark_speed.py transfer  # every method's training wall time and inference speed vs scratch, same run
    python scripts/benchmark_speed.py rank      # wall time of ranking the default hub (--method select's first step)

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


def _synthetic_hub(n_experts: int):
    """A hub of randomly initialised NatureCNN experts: the speed of a method does not depend on the weights."""
    import gymnasium as gym
    import torch as th
    from stable_baselines3.common.torch_layers import NatureCNN

    from hubrl.hub import Expert, Hub

    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    experts = []
    for i in range(n_experts):
        th.manual_seed(i)
        experts.append(Expert(f"expert{i}", {k: v.clone() for k, v in NatureCNN(space).state_dict().items()}, "synthetic"))
    return Hub(experts)


TRANSFER_VARIANTS = [  # (label, method, experts, TransferConfig overrides)
    ("scratch (CnnPolicy)", "scratch", 0, {}),
    ("finetune (= select after ranking)", "finetune", 2, {"source": "expert0"}),
    ("zoo-tuning 2 experts", "zoo-tuning", 2, {}),
    ("zoo-tuning lite 2 experts", "zoo-tuning", 2, {"lite": True}),
    ("hub-pathway 2 experts k=1", "hub-pathway", 2, {"top_k": 1}),
    ("hub-pathway 2 experts k=2", "hub-pathway", 2, {"top_k": 2}),
    ("hub-pathway 8 experts k=2", "hub-pathway", 8, {"top_k": 2}),
]


def _inference_steps_per_second(policy, obs, calls: int = 200) -> float:
    """``policy.predict`` on a rollout batch (n_envs observations), as when playing: agent steps/s."""
    policy.predict(obs)
    start = time.perf_counter()
    for _ in range(calls):
        policy.predict(obs)
    return calls * len(obs) / (time.perf_counter() - start)


def bench_transfer(game: str, steps: int, repeats: int) -> None:
    """Same PPO preset and step count for every method: training wall time and inference speed vs scratch."""
    import resource

    import torch as th

    from agents import HubPPO, resolve_hyperparams
    from envs import make_atari_vec_env, resolve_game
    from hubrl.methods import plan_method
    from hubrl.transfer import TransferConfig

    plain, kwargs = resolve_hyperparams("ppo")
    policy_kwargs = kwargs.pop("policy_kwargs", {})
    train: dict[str, list[float]] = {v[0]: [] for v in TRANSFER_VARIANTS}
    infer: dict[str, list[float]] = {v[0]: [] for v in TRANSFER_VARIANTS}
    params: dict[str, int] = {}
    finals: dict[str, object] = {}
    for r in range(repeats):  # interleaved repeats, so every method sees the same machine state
        for label, method, n_experts, overrides in TRANSFER_VARIANTS:
            env = make_atari_vec_env(game, plain["n_envs"], seed=r)
            cfg = TransferConfig(env=game, method=method, seed=r, **overrides)
            plan = plan_method(cfg, _synthetic_hub(n_experts) if n_experts else None, resolve_game(game))

            def make_agent(policy_class, plan=plan, env=env):
                extra = plan.policy_kwargs if policy_class is plan.policy else {}
                return HubPPO(policy_class, env, seed=r, device="cpu", policy_kwargs={**policy_kwargs, **extra}, **kwargs)

            model = make_agent(plan.policy)
            plan.init(model.policy)
            start = time.perf_counter()
            model.learn(steps)
            train[label].append(time.perf_counter() - start)
            final = plan.finalize(model, make_agent) if plan.finalize else model
            params[label] = sum(p.numel() for p in final.policy.parameters())  # unique tensors (state_dict repeats shared ones)
            finals[label] = final.policy  # the saved model's policy, as deployed
            env.close()
            del model, final
    # Inference: the saved policies, interleaved rounds on the same observations, median per policy.
    env = make_atari_vec_env(game, plain["n_envs"], seed=0)
    obs = env.reset()
    env.close()
    for _ in range(7):
        for label, policy in finals.items():
            infer[label].append(_inference_steps_per_second(policy, obs))
    base_t = float(np.median(train[TRANSFER_VARIANTS[0][0]]))
    base_i = float(np.median(infer[TRANSFER_VARIANTS[0][0]]))
    print(f"| method | train seconds (median of {repeats}) | vs scratch | inference steps/s (median of 7) | vs scratch | parameters of model.zip |")
    print("|---|---|---|---|---|---|")
    for label, *_ in TRANSFER_VARIANTS:
        t, i = float(np.median(train[label])), float(np.median(infer[label]))
        print(f"| {label} | {t:.1f} | {t / base_t:.2f}x | {i:,.0f} | {i / base_i:.2f}x | {params[label]:,} |")
    two_k2 = float(np.median(train["hub-pathway 2 experts k=2"]))
    eight_k2 = float(np.median(train["hub-pathway 8 experts k=2"]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n8 experts k=2 vs 2 experts k=2: {eight_k2 / two_k2:.2f}x. {steps} agent steps per run, {game}, "
          f"{plain['n_envs']} envs, torch threads {th.get_num_threads()}, peak RSS {peak:.0f} MB, {platform.machine()}")


def bench_rank(game: str, frames: int) -> None:
    """Wall time of ranking the default hub's experts for ``game`` (what ``--method select`` spends first)."""
    from hubrl.hub import resolve_hub
    from hubrl.selection import rank_experts

    hub = resolve_hub()
    start = time.perf_counter()
    rankings = rank_experts(hub, game, frames=frames)
    total = time.perf_counter() - start
    print("| expert | proxy (R²) | seconds |\n|---|---|---|")
    for r in rankings:
        print(f"| {r.name} | {r.proxy:.3f} | {r.seconds:.1f} |")
    print(f"\nrank_experts: {total:.1f}s in all ({frames} frames of {game}, {len(hub)} experts)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["envs", "train", "transfer", "rank"])
    parser.add_argument("--game", default="Seaquest")
    parser.add_argument("--n-envs", type=positive_int, default=8)
    parser.add_argument("--steps", type=positive_int, default=None, help="vector steps (envs) or agent steps (train)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args()
    if args.what == "envs":
        bench_envs(args.game, args.n_envs, args.steps or 2000, args.repeats)
    elif args.what == "train":
        bench_train(args.game, args.steps or 10_240)
    elif args.what == "transfer":
        bench_transfer(args.game, args.steps or 4096, args.repeats)
    else:
        bench_rank(args.game, args.steps or 20_000)
    return 0


if __name__ == "__main__":
    main_guard(main)
