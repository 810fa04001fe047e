"""Whole pipelines' speed on this machine, measured side by side in one run (``hubrl-speed envs``,
``train``, ``train-one``, ``transfer``, ``rank``): env steps/s of hubrl's AtariVecEnv against SB3's
``make_atari_env`` + ``VecFrameStack``, agent steps/s of training processes against stock SB3's,
every transfer method's training time and inference speed against scratch, and the wall time of
ranking a hub (``--method select``'s first step)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from hubrl.errors import UsageError
from hubrl.speed import machine_line

__all__ = ["TRAIN_VARIANTS", "TRANSFER_VARIANTS", "check_opencv", "bench_envs", "train_once", "bench_train", "bench_transfer",
           "bench_rank"]


def check_opencv(command: str) -> None:
    """Refuse ``command`` (as typed: ``python -m hubrl speed envs``) up front where OpenCV is missing: SB3's
    ``make_atari_env`` pipeline, which it measures against, resizes frames with ``cv2``; without it SB3 stops
    in an ``AssertionError`` after the measurements before it (``train``: in a child process)."""
    try:
        import cv2  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"{command} compares against SB3's make_atari_env, which needs OpenCV "
                         f"(import cv2 failed: {exc}): pip install -e \".[bench]\"") from None


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

    from hubrl.envs import display_name, make_atari_vec_env

    gym.register_envs(ale_py)
    try:
        import envpool  # optional: pip install -e ".[bench]"
    except ImportError:
        envpool = None
    ours, theirs, pool = [], [], []
    for r in range(repeats):  # interleaved, so all see the same machine state
        env = make_atari_vec_env(game, n_envs, seed=r)
        ours.append(_env_steps_per_second(env, steps, r))
        env.close()
        sb3 = VecFrameStack(make_atari_env(f"{display_name(game)}NoFrameskip-v4", n_envs=n_envs, seed=r), 4)
        theirs.append(_env_steps_per_second(sb3, steps, r))
        sb3.close()
        if envpool is not None:  # the same protocol as ours: v5 sticky actions 0.25, 84x84 gray, 4 stacked, 4 frames/step
            pool.append(_envpool_steps_per_second(envpool, game, n_envs, steps, r))
    o, t = np.median(ours), np.median(theirs)
    print(f"| env | n_envs | steps/s (median of {repeats}) | vs hubrl |\n|---|---|---|---|")
    print(f"| hubrl AtariVecEnv (C++ ALE vector) | {n_envs} | {o:,.0f} | 1.00x |")
    print(f"| SB3 make_atari_env + VecFrameStack | {n_envs} | {t:,.0f} | {t / o:.2f}x |")
    if pool:
        e = np.median(pool)
        print(f"| envpool {envpool.__version__} (C++ thread pool) | {n_envs} | {e:,.0f} | {e / o:.2f}x |")
    print(f"\nhubrl vs SB3: {o / t:.2f}x  ({game}, {steps} vector steps per repeat, random actions, {machine_line()})")


def _envpool_steps_per_second(envpool, game: str, n_envs: int, steps: int, seed: int) -> float:
    """envpool's Atari with hubrl's protocol (sticky 0.25, episodic life, noop 30, 84x84, 4 frames)."""
    env = envpool.make(f"{display_name_of(game)}-v5", env_type="gymnasium", num_envs=n_envs, seed=seed,
                       repeat_action_probability=0.25, episodic_life=True, reward_clip=True, noop_max=30)
    rng = np.random.default_rng(seed)
    env.reset()
    actions = [rng.integers(0, env.action_space.n, size=n_envs) for _ in range(steps)]
    start = time.perf_counter()
    for a in actions:
        env.step(a)
    rate = steps * n_envs / (time.perf_counter() - start)
    env.close()
    return rate


def display_name_of(game: str) -> str:
    from hubrl.envs import display_name

    return display_name(game)


TRAIN_VARIANTS = {  # label -> (implementation, torch threads (None: torch's default), precision)
    "stock SB3 (make_atari_env + VecFrameStack, CnnPolicy, torch default threads)": ("sb3", None, "fp32"),
    "hubrl defaults (AtariVecEnv, 1 thread, fused Adam)": ("hubrl", 1, "fp32"),
    "hubrl, 2 threads": ("hubrl", 2, "fp32"),
    "hubrl, bf16 encoders": ("hubrl", 1, "bf16"),
}


def train_once(impl: str, algo: str, game: str, steps: int, threads: int | None, precision: str, device: str = "cpu") -> dict:
    """One whole training process on ``device``: agent steps/s of ``learn(steps)`` after a one-rollout warm-up."""
    import torch as th

    from hubrl.agents import AGENT_CLASSES, resolve_hyperparams
    from hubrl.envs import display_name, make_atari_vec_env
    from hubrl.runtime import apply_precision

    if threads:
        th.set_num_threads(threads)
    plain, kwargs = resolve_hyperparams(algo)
    if impl == "sb3":
        from stable_baselines3 import A2C, PPO
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import VecFrameStack

        env = VecFrameStack(make_atari_env(f"ALE/{display_name(game)}-v5", n_envs=plain["n_envs"], seed=0,
                                           env_kwargs={"frameskip": 1}), n_stack=4)
        model = {"ppo": PPO, "a2c": A2C}[algo]("CnnPolicy", env, seed=0, device=device, **kwargs)
    else:
        env = make_atari_vec_env(game, plain["n_envs"], seed=0)
        model = AGENT_CLASSES[algo]("CnnPolicy", env, seed=0, device=device, **kwargs)
        apply_precision(model.policy, precision)
    model.learn(plain["n_envs"] * kwargs["n_steps"])  # warm-up: one rollout + update
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    env.close()
    return {"steps_per_s": steps / seconds, "threads": th.get_num_threads(), "device": str(model.device),
            "fused": bool(getattr(model.policy.optimizer, "defaults", {}).get("fused"))}


def _child_env() -> dict[str, str]:
    """This process's environment, with the folder holding this ``hubrl`` first on ``PYTHONPATH``:
    ``python -m hubrl`` in a child runs the same copy (also from a clone that is not installed)."""
    import hubrl

    here = str(Path(hubrl.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}


def bench_train(game: str, steps: int, repeats: int, algos: Sequence[str] = ("ppo",), device: str = "cpu") -> None:
    """hubrl's training against stock SB3's on SB3's standard Atari pipeline, whole processes,
    variants alternated ``repeats`` times (each round sees the same machine state); medians."""
    import json
    import subprocess
    import sys

    print(f"| algo | setup | agent steps/s (median of {repeats}) | vs stock SB3 |\n|---|---|---|---|")
    for algo in algos:
        rates: dict[str, list[float]] = {label: [] for label in TRAIN_VARIANTS}
        for _ in range(repeats):
            for label, (impl, threads, precision) in TRAIN_VARIANTS.items():
                cmd = [sys.executable, "-m", "hubrl", "speed", "train-one", "--impl", impl, "--algo", algo, "--env", game,
                       "--timesteps", str(steps), "--precision", precision, "--device", device]
                cmd += ["--threads", str(threads)] if threads else []
                out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                     env=_child_env()).stdout.strip().splitlines()[-1]
                rates[label].append(json.loads(out)["steps_per_s"])
        base = float(np.median(rates[next(iter(TRAIN_VARIANTS))]))
        for label, values in rates.items():
            rate = float(np.median(values))
            print(f"| {algo} | {label} | {rate:.0f} | {rate / base:.2f}x |")
    print(f"\n{game}, RL Zoo Atari presets, {steps} agent steps per process after a one-rollout warm-up, "
          f"device {device}; {machine_line()}")


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


def bench_transfer(game: str, steps: int, repeats: int, device: str = "cpu", algo: str = "ppo") -> None:
    """Same preset of ``algo`` (PPO or A2C) and step count for every method: training wall time and
    inference speed vs scratch.

    Training is also timed in CPU seconds (``time.process_time``: every thread of the process, the
    vector env's included). On a machine other jobs share, wall time counts the seconds a run waits
    for a core; CPU seconds count only the work, so their ratio is the steadier one there.
    """
    import resource

    import torch as th

    from hubrl.agents import AGENT_CLASSES, resolve_hyperparams
    from hubrl.envs import make_atari_vec_env, resolve_game
    from hubrl.evaluation import inference_steps_per_second
    from hubrl.methods import plan_method
    from hubrl.transfer import TransferConfig

    agent_class = AGENT_CLASSES[algo]
    plain, kwargs = resolve_hyperparams(algo)
    policy_kwargs = kwargs.pop("policy_kwargs", {})
    train: dict[str, list[float]] = {v[0]: [] for v in TRANSFER_VARIANTS}
    train_cpu: dict[str, list[float]] = {v[0]: [] for v in TRANSFER_VARIANTS}
    infer: dict[str, list[float]] = {v[0]: [] for v in TRANSFER_VARIANTS}
    params: dict[str, int] = {}
    finals: dict[str, object] = {}
    for r in range(repeats):  # interleaved repeats, so every method sees the same machine state
        for label, method, n_experts, overrides in TRANSFER_VARIANTS:
            env = make_atari_vec_env(game, plain["n_envs"], seed=r)
            cfg = TransferConfig(env=game, method=method, seed=r, algo=algo, **overrides)
            plan = plan_method(cfg, _synthetic_hub(n_experts) if n_experts else None, resolve_game(game))

            def make_agent(policy_class, plan=plan, env=env):
                extra = plan.policy_kwargs if policy_class is plan.policy else {}
                return agent_class(policy_class, env, seed=r, device=device, policy_kwargs={**policy_kwargs, **extra},
                                   **kwargs)

            model = make_agent(plan.policy)
            plan.init(model.policy)
            start, start_cpu = time.perf_counter(), time.process_time()
            model.learn(steps, callback=list(plan.callbacks))  # what a run pays: gate logging included
            train[label].append(time.perf_counter() - start)
            train_cpu[label].append(time.process_time() - start_cpu)
            final = plan.finalize(model, make_agent) if plan.finalize else model
            # unique tensors (state_dict repeats shared ones)
            params[label] = sum(p.numel() for p in final.policy.parameters())
            finals[label] = final.policy  # the saved model's policy, as deployed
            env.close()
            del model, final
    # Inference: the saved policies, interleaved rounds on the same observations, median per policy.
    env = make_atari_vec_env(game, plain["n_envs"], seed=0)
    obs = env.reset()
    env.close()
    for _ in range(7):
        for label, policy in finals.items():
            infer[label].append(inference_steps_per_second(policy, obs, calls=200))
    base_t = float(np.median(train[TRANSFER_VARIANTS[0][0]]))
    base_c = float(np.median(train_cpu[TRANSFER_VARIANTS[0][0]]))
    base_i = float(np.median(infer[TRANSFER_VARIANTS[0][0]]))
    print(f"| method | train seconds (median of {repeats}) | vs scratch | train CPU seconds | vs scratch "
          "| inference steps/s (median of 7) | vs scratch | parameters of model.zip |")
    print("|---|---|---|---|---|---|---|---|")
    for label, *_ in TRANSFER_VARIANTS:
        t, c, i = (float(np.median(x[label])) for x in (train, train_cpu, infer))
        print(f"| {label} | {t:.1f} | {t / base_t:.2f}x | {c:.1f} | {c / base_c:.2f}x | {i:,.0f} | {i / base_i:.2f}x "
              f"| {params[label]:,} |")
    two, eight = train.get("hub-pathway 2 experts k=2"), train.get("hub-pathway 8 experts k=2")
    scaling = (f"8 experts k=2 vs 2 experts k=2: {float(np.median(eight)) / float(np.median(two)):.2f}x. "
               if two and eight else "")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{scaling}{algo.upper()}, {steps} agent steps per run, {game}, "
          f"{plain['n_envs']} envs, device {device}, torch threads {th.get_num_threads()}, peak RSS {peak:.0f} MB, "
          f"{platform.machine()}")


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
