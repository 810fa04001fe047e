#!/usr/bin/env python
"""Throughput on this machine, measured side by side in one run.

    %(prog)s envs    # env steps/s: hubrl's AtariVecEnv vs SB3's make_atari_env + VecFrameStack
    %(prog)s train   # agent steps/s of hubrl's PPO training against stock SB3's, whole processes
    %(prog)s transfer  # every method's training wall time and inference speed vs scratch, same run
    %(prog)s rank      # wall time of ranking the default hub (--method select's first step)
    %(prog)s zoo-conv  # Zoo-Tuning's per-sample kernels: grouped conv vs output-space vs NatureCNN
    %(prog)s not-adopted  # measured, not adopted: inference_mode rollouts, /255 folded into conv 1, a faster conv-1 gradient
    %(prog)s inference  # Hub-Pathway's predict vs scratch's with the routing controlled, and where its time goes

(train-one is one training process of train's table: train runs it once per setup and repeat.)
SB3's pipeline (envs, train, train-one --impl sb3) needs OpenCV: ``pip install -e ".[bench]"``.
Entry point ``hubrl-speed``; also ``python -m hubrl speed`` and ``scripts/benchmark_speed.py``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from hubrl.cli.common import ArgumentParser, command_prog, device, env_count, flag_names, main_guard, parse_given, positive_int
from hubrl.cli.common import steps as step_count
from hubrl.errors import UsageError
from hubrl.provenance import cpu_model

if TYPE_CHECKING:
    import torch as th

    from hubrl.zoo_tuning import AdaptiveConv2d


def _machine() -> str:
    """CPU model and core count, for the record under a table."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


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
    print(f"\nhubrl vs SB3: {o / t:.2f}x  ({game}, {steps} vector steps per repeat, random actions, {_machine()})")


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
          f"device {device}; {_machine()}")


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


def _positive_ints(text: str) -> list[int]:
    """Parse a comma-separated list of positive integers: ``8,256``."""
    try:
        values = [positive_int(v) for v in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers: {exc}") from None
    return values


def _timing_device(device: str) -> tuple[str, Callable[[], object]]:
    """One torch CPU thread (the tables' setting) and ``device`` resolved (``auto`` -> a name);
    return it with the wait :func:`_min_ms` needs there (``torch.cuda.synchronize`` on a GPU)."""
    import torch as th
    from stable_baselines3.common.utils import get_device

    th.set_num_threads(1)
    device = str(get_device(device))
    return device, (th.cuda.synchronize if device.startswith("cuda") else (lambda: None))


def _check_same(got: th.Tensor, want: th.Tensor, problem: str) -> None:
    """Raise ``RuntimeError(problem + max |diff|)`` unless ``got`` equals ``want`` up to float32 rounding:
    a benchmark times computations only after checking they compute the same thing."""
    import torch as th

    if not th.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max())):
        raise RuntimeError(f"{problem}max |diff| {float((got - want).abs().max()):.3g}).")


def _min_ms(fns: dict[str, Callable[[], object]], repeats: int, min_seconds: float = 0.2,
            sync: Callable[[], object] = lambda: None) -> dict[str, float]:
    """Per function: the least mean time of one call over ``repeats`` repetitions, in ms.

    As ``timeit`` does, each repetition runs enough calls to last about ``min_seconds`` (counted
    from a warm-up call); repetitions of the functions are interleaved, so all see the same
    machine state. ``sync`` waits for queued work (``torch.cuda.synchronize`` on a GPU, whose
    kernels run after the call returns) before each clock reading.
    """
    number = {}
    for label, fn in fns.items():
        sync()
        start = time.perf_counter()
        fn()
        sync()
        number[label] = max(1, math.ceil(min_seconds / max(time.perf_counter() - start, 1e-9)))
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for label, fn in fns.items():
            sync()
            start = time.perf_counter()
            for _ in range(number[label]):
                fn()
            sync()
            best[label] = min(best[label], (time.perf_counter() - start) / number[label])
    return {label: 1e3 * seconds for label, seconds in best.items()}


def _output_space_conv(layer: AdaptiveConv2d, x: th.Tensor) -> th.Tensor:
    """The alternative to the grouped conv: one conv with K*out channels, then ``sum_k alpha_bk A_k``.

    ``layer`` is a :class:`hubrl.zoo_tuning.AdaptiveConv2d`; its gate and parameters are used as
    its own forward uses them, only the per-sample kernels are applied in output space.
    """
    from torch.nn import functional as F

    alpha = layer.mixing(x.mean((2, 3)))  # (B, K), as in AdaptiveConv2d.forward
    k, out = layer.n_experts, layer.out_features
    z = F.conv2d(x, layer.weight.flatten(0, 1), layer.bias.flatten(), stride=layer.stride)  # (B, K*out, h, w)
    h, w = z.shape[2:]
    z = (z.view(-1, k, out, h * w) * alpha[:, :, None, None]).view(-1, k * out, h * w)
    align = layer.align.permute(1, 0, 2).reshape(out, k * out)  # [A_1 ... A_K]
    return (align @ z).view(-1, out, h, w)


def bench_zoo_conv(experts: Sequence[int], batch_sizes: Sequence[int], n_envs: int, repeats: int, device: str = "cpu") -> None:
    """Zoo-Tuning's three convolutions (with ReLU) applied three ways, in ms: the table of ``hubrl/zoo_tuning.py``.

    * grouped: the module's own :class:`~hubrl.zoo_tuning.AdaptiveConv2d` forward (one kernel per
      sample, one grouped conv with ``groups=B``), gate included;
    * output-space: the same layers' gates and parameters, one conv with K*out channels, then the
      per-sample mix ``sum_k alpha_bk A_k`` (:func:`_output_space_conv`);
    * plain NatureCNN convs: SB3's ``NatureCNN`` convolutions, holding the kernels the adaptive
      layers built for sample 0.

    The three are checked to give the same output before timing. ``forward (no_grad)`` is timed
    for batches of at most ``n_envs`` (rollouts run without grad on one observation per env),
    ``forward+backward`` (of the output's sum, into every parameter) for every batch size.
    Random experts, alignment and input-dependent gates: the speed does not depend on the weights.
    """
    import gymnasium as gym
    import torch as th
    from stable_baselines3.common.torch_layers import NatureCNN
    from torch import nn

    from hubrl.zoo_tuning import NATURE_CONVS, AdaptiveConv2d

    device, sync = _timing_device(device)
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    print("| case | grouped | output-space | plain NatureCNN convs |\n|---|---|---|---|")
    for k in experts:
        th.manual_seed(k)
        layers, channels = [], space.shape[0]
        for out, size, stride in NATURE_CONVS:
            layer = AdaptiveConv2d(k, channels, out, size, stride)
            with th.no_grad():  # aligned experts and gates that differ per sample: every path really mixes
                layer.align.add_(0.1 * th.randn_like(layer.align))
                nn.init.normal_(layer.gate[-1].weight, std=1.0)
            layers.append(layer.to(device))
            channels = out
        plain = nn.Sequential(*list(NatureCNN(space).cnn)[:-1]).to(device)  # its three convs with ReLU, without Flatten
        convs = [m for m in plain if isinstance(m, nn.Conv2d)]

        def grouped(x):
            for layer in layers:
                x = th.relu(layer(x)[0])
            return x

        def output_space(x):
            for layer in layers:
                x = th.relu(_output_space_conv(layer, x))
            return x

        paths = {"grouped": grouped, "output-space": output_space, "plain": plain}
        for batch in batch_sizes:
            gen = th.Generator().manual_seed(batch)  # frames of different brightness, so the gates differ per sample
            x = (th.rand(batch, *space.shape, generator=gen) * th.rand(batch, 1, 1, 1, generator=gen)).to(device)
            with th.no_grad():
                h, gates = x, []
                for layer in layers:
                    y, alpha = layer(h)
                    h = th.relu(y)
                    gates.append(alpha[0])
                for conv, layer, alpha in zip(convs, layers, gates):
                    weight, bias = layer.merged(alpha)
                    conv.weight.copy_(weight)
                    conv.bias.copy_(bias)
                ref = grouped(x)
                checks = {"output-space": (output_space(x), ref), "plain": (plain(x[:1]), ref[:1])}
            for label, (got, want) in checks.items():
                _check_same(got, want, f"zoo-conv: the {label} path differs from the grouped one (K={k}, B={batch}, ")

            def forward(path, x=x):
                with th.no_grad():
                    path(x)

            def forward_backward(path, x=x):
                for module in (*layers, plain):
                    module.zero_grad(set_to_none=True)
                path(x).sum().backward()

            modes = [("forward (no_grad)", forward)] if batch <= n_envs else []
            for mode, run in modes + [("forward+backward", forward_backward)]:
                ms = _min_ms({label: (lambda path=path, run=run: run(path)) for label, path in paths.items()}, repeats,
                             sync=sync)
                cells = " | ".join(f"{ms[label]:.1f}" if ms[label] < 100 else f"{ms[label]:.0f}" for label in paths)
                print(f"| K={k}, B={batch} {mode} | {cells} |", flush=True)
    print(f"\nms per call, min over {repeats} repetitions (each >= 0.2 s of calls, paths interleaved); the three "
          f"NatureCNN convolutions with ReLU, gates included in the adaptive paths. torch {th.__version__}, device {device}, "
          f"{th.get_num_threads()} thread, {_machine()}.")


def bench_not_adopted(batch_sizes: Sequence[int], n_envs: int, repeats: int, device: str = "cpu") -> None:
    """Speed-ups measured and not adopted (BENCHMARKS.md, training throughput), in ms per call:

    * rollout inference: SB3's ``CnnPolicy`` forward on ``n_envs`` uint8 frames (one rollout step)
      under ``torch.no_grad`` (what SB3's ``collect_rollouts`` uses) against ``torch.inference_mode``;
    * NatureCNN forward+backward with SB3's ``/255`` of the input against a copy whose first conv
      holds the weights divided by 255 and takes the raw frame values (the two are checked equal),
      for every batch size;
    * the weight gradient of NatureCNN's first conv (8x8, stride 4), which autograd computes slowly
      on CPU, against the same gradient over space-to-depth blocks (checked equal), for every batch size.

    One torch thread; the variants interleaved (:func:`_min_ms`), so both see the same machine state.
    """
    import gymnasium as gym
    import torch as th
    from stable_baselines3.common.policies import ActorCriticCnnPolicy
    from stable_baselines3.common.torch_layers import NatureCNN

    device, sync = _timing_device(device)
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    th.manual_seed(0)
    policy = ActorCriticCnnPolicy(space, gym.spaces.Discrete(18), lambda _: 2.5e-4).to(device).eval()
    frames = th.randint(0, 256, (n_envs, *space.shape), dtype=th.uint8, device=device)

    def act(context):
        with context():
            policy(frames)

    ms = _min_ms({"no_grad": lambda: act(th.no_grad), "inference_mode": lambda: act(th.inference_mode)}, repeats, sync=sync)
    print("| case | baseline | variant | variant / baseline |\n|---|---|---|---|")
    print(f"| CnnPolicy forward, B={n_envs}: no_grad vs inference_mode | {ms['no_grad']:.2f} | {ms['inference_mode']:.2f} "
          f"| {ms['inference_mode'] / ms['no_grad']:.3f} |", flush=True)
    cnn = NatureCNN(space).to(device)
    folded = NatureCNN(space).to(device)
    folded.load_state_dict(cnn.state_dict())
    with th.no_grad():
        folded.cnn[0].weight.div_(255.0)
    for batch in batch_sizes:
        x = th.randint(0, 256, (batch, *space.shape), dtype=th.uint8, device=device)
        with th.no_grad():
            want, got = cnn(x.float() / 255.0), folded(x.float())
        _check_same(got, want, "not-adopted: the folded conv differs from /255 (")

        def step(net, scale, x=x):
            net.zero_grad(set_to_none=True)
            inp = x.float() / 255.0 if scale else x.float()
            net(inp).sum().backward()

        ms = _min_ms({"div": lambda: step(cnn, True), "folded": lambda: step(folded, False)}, repeats, sync=sync)
        print(f"| NatureCNN forward+backward, B={batch}: /255 vs folded into conv 1 | {ms['div']:.2f} | {ms['folded']:.2f} "
              f"| {ms['folded'] / ms['div']:.3f} |", flush=True)
    weight = th.randn(32, 4, 8, 8, device=device)  # NatureCNN's first conv: 32 filters, 8x8, stride 4
    for batch in batch_sizes:
        x = th.rand(batch, 4, 84, 84, device=device)
        grad_out = th.randn(batch, 32, 20, 20, device=device)
        _check_same(_conv1_weight_grad_s2d(x, grad_out, weight), _conv1_weight_grad(x, grad_out, weight),
                    "not-adopted: the space-to-depth weight gradient differs from autograd's (")
        ms = _min_ms({"autograd": lambda: _conv1_weight_grad(x, grad_out, weight),
                      "s2d": lambda: _conv1_weight_grad_s2d(x, grad_out, weight)}, repeats, sync=sync)
        print(f"| conv 1's weight gradient (backward), B={batch}: autograd vs space-to-depth | {ms['autograd']:.2f} "
              f"| {ms['s2d']:.2f} | {ms['s2d'] / ms['autograd']:.3f} |", flush=True)
    print(f"\nms per call, min over {repeats} repetitions (each >= 0.2 s of calls, variants interleaved). "
          f"torch {th.__version__}, device {device}, {th.get_num_threads()} thread, {_machine()}.")


def _conv1_weight_grad(x: th.Tensor, grad_out: th.Tensor, weight: th.Tensor) -> th.Tensor:
    """The weight gradient of an 8x8 stride-4 convolution, as autograd computes it in PPO's backward."""
    import torch as th

    return th.ops.aten.convolution_backward(grad_out, x, weight, [weight.shape[0]], [4, 4], [0, 0], [1, 1], False,
                                            [0, 0], 1, [False, True, False])[1]


def _conv1_weight_grad_s2d(x: th.Tensor, grad_out: th.Tensor, weight: th.Tensor) -> th.Tensor:
    """The same gradient computed as that of a 2x2 stride-1 convolution over 4x4 space-to-depth
    blocks of the input (16x the channels, a quarter of the side), mapped back to 8x8 weights."""
    import torch as th

    (batch, channels, height, width), out = x.shape, weight.shape[0]
    blocks = x.reshape(batch, channels, height // 4, 4, width // 4, 4).permute(0, 1, 3, 5, 2, 4)
    blocks = blocks.reshape(batch, channels * 16, height // 4, width // 4)
    shape = weight.new_empty(out, channels * 16, 2, 2)
    grad = th.ops.aten.convolution_backward(grad_out, blocks, shape, [out], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                            [False, True, False])[1]
    return grad.reshape(out, channels, 4, 4, 2, 2).permute(0, 1, 4, 2, 5, 3).reshape(out, channels, 8, 8)


def _route_by_half(gate, x: th.Tensor) -> None:
    """Set a 2-expert gate so the noise-free routing of the batch ``x`` splits it in half, by the
    sign of one random direction of the gate's hidden features around its median."""
    import torch as th

    with th.no_grad():
        hidden = gate.body(x)
        direction = th.randn(hidden.shape[1], generator=th.Generator().manual_seed(0)).to(hidden)
        projection = hidden @ direction
        gate.w_gate.weight.copy_(th.stack([direction, -direction]) * 1e3)
        gate.w_gate.bias.copy_(th.tensor([-1e3, 1e3]).to(hidden) * float(projection.median()))


def bench_inference(batch_sizes: Sequence[int], repeats: int, device: str = "cpu") -> None:
    """Deployment inference of Hub-Pathway (2 experts) against scratch's ``CnnPolicy``, in ms per
    ``policy.predict`` call on a batch of uint8 frames, with the routing under control:

    * k=1, every frame routed to one expert (the single-expert shortcut skips the gather);
    * k=1, the frames split in half between the experts (each expert runs on half the batch);
    * k=2 (both experts on every frame);

    and the parts of Hub-Pathway's cost: the gate alone and one NatureCNN encoder, on the same
    frames. Random weights (speed does not depend on them); one torch thread; paths interleaved.
    """
    import gymnasium as gym
    import torch as th
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    from hubrl.policies import HubPathwayPolicy

    device, sync = _timing_device(device)
    space, actions = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(18)
    th.manual_seed(0)
    scratch = ActorCriticCnnPolicy(space, actions, lambda _: 2.5e-4).to(device).eval()
    one, split, both = (HubPathwayPolicy(space, actions, lambda _: 2.5e-4, expert_names=["a", "b"], top_k=k).to(device).eval()
                        for k in (1, 1, 2))
    with th.no_grad():
        one.extractor.gate.w_gate.weight.zero_()
        one.extractor.gate.w_gate.bias.copy_(th.tensor([1.0, 0.0]))
    print("| B | scratch | hub k=1, one expert | hub k=1, split in half | hub k=2 | gate alone | one encoder | "
          "scratch / hub (one, split, k=2) |\n|---|---|---|---|---|---|---|---|")
    for batch in batch_sizes:
        frames = np.random.default_rng(batch).integers(0, 256, (batch, *space.shape), dtype=np.uint8)
        x = th.as_tensor(frames, device=device).float() / 255.0
        _route_by_half(split.extractor.gate, x)
        with th.no_grad():
            counts = [[int((p.extractor.gate(x, explore=False).selected == i).sum()) for i in range(2)] for p in (one, split)]
        if counts[0] != [batch, 0] or (batch > 1 and 0 in counts[1]):
            raise RuntimeError(f"inference: the routing was not set as intended (frames per expert {counts}).")

        def no_grad(fn):
            def call():
                with th.no_grad():
                    fn()
            return call

        ms = _min_ms({
            "scratch": lambda: scratch.predict(frames, deterministic=True),
            "one": lambda: one.predict(frames, deterministic=True),
            "split": lambda: split.predict(frames, deterministic=True),
            "both": lambda: both.predict(frames, deterministic=True),
            "gate": no_grad(lambda: one.extractor.gate(x, explore=False)),
            "encoder": no_grad(lambda: one.extractor.experts[0](x)),
        }, repeats, sync=sync)
        ratios = ", ".join(f"{ms['scratch'] / ms[k]:.2f}x" for k in ("one", "split", "both"))
        print(f"| {batch} | " + " | ".join(f"{ms[k]:.2f}" for k in ("scratch", "one", "split", "both", "gate", "encoder"))
              + f" | {ratios} |", flush=True)
    print(f"\nms per call, min over {repeats} repetitions (each >= 0.2 s of calls, paths interleaved); frames per expert "
          f"at the last batch: one {counts[0]}, split {counts[1]}. torch {th.__version__}, device {device}, "
          f"{th.get_num_threads()} thread, {_machine()}.")


#: The measurements that read each flag (as its help says); given to another one, a flag is refused rather
#: than ignored (``speed rank --device cuda`` would time the CPU, ``speed train --threads 8`` each setup's own).
FLAG_READERS: dict[str, tuple[str, ...]] = {
    "impl": ("train-one",),
    "algo": ("train", "train-one", "transfer"),
    "threads": ("train-one",),
    "precision": ("train-one",),
    "device": ("train", "train-one", "transfer", "zoo-conv", "not-adopted", "inference"),
    "game": ("envs", "train", "train-one", "transfer", "rank"),
    "n_envs": ("envs", "zoo-conv", "not-adopted"),
    "steps": ("envs", "train", "train-one", "transfer", "rank"),
    "repeats": ("envs", "train", "transfer", "zoo-conv", "not-adopted", "inference"),
    "experts": ("zoo-conv",),
    "batch_sizes": ("zoo-conv", "not-adopted", "inference"),
}


def refuse_flags_not_read(parser: argparse.ArgumentParser, what: str, given: set[str]) -> None:
    """Refuse, naming the flag and the measurements that read it, a flag given explicitly (``given``:
    destinations, :func:`~hubrl.cli.common.parse_given`) that the measurement ``what`` does not read."""
    flags = flag_names(parser)
    for dest in sorted(given):
        readers = FLAG_READERS.get(dest)
        if readers is not None and what not in readers:
            parser.error(f"{flags[dest]} is read by {', '.join(readers)}; {what} does not read it: drop it.")


def build_parser(prog: str | None = None) -> ArgumentParser:
    """The parser of ``hubrl-speed`` (``prog``: how it was started, see :func:`~hubrl.cli.common.command_prog`)."""
    parser = ArgumentParser(prog=command_prog("speed", prog), description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["envs", "train", "train-one", "transfer", "rank", "zoo-conv", "not-adopted",
                                         "inference"],
                        help="What to measure (see above).")
    parser.add_argument("--impl", choices=["hubrl", "sb3"], default="hubrl",
                        help="train-one: whose training pipeline. Default: hubrl.")
    parser.add_argument("--algo", nargs="+", default=["ppo"], choices=["ppo", "a2c"],
                        help="train: algorithms; train-one, transfer: the first one. Default: ppo.")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="train-one: torch CPU threads (default: torch's, one per core; train sets each setup's).")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="train-one: encoders' arithmetic (train sets each setup's). Default: fp32.")
    parser.add_argument("--device", type=device, default="cpu", metavar="DEVICE",
                        help="train, train-one, transfer, zoo-conv, not-adopted, inference: torch device "
                             "(cpu, cuda, cuda:1, mps, auto). Default: cpu "
                             "(the tables in BENCHMARKS.md); envs and rank run on the CPU.")
    parser.add_argument("--env", dest="game", default="Seaquest", metavar="GAME", aliases=("--game",),
                        help="envs, train, train-one, transfer, rank: game to measure on. Default: Seaquest.")
    parser.add_argument("--n-envs", type=env_count, default=8, metavar="N",
                        help="envs: parallel games; zoo-conv, not-adopted: the rollout batch (one frame per game). "
                             "Default: 8 (train, train-one and transfer use the preset's).")
    parser.add_argument("--timesteps", dest="steps", type=step_count, default=None, metavar="STEPS", aliases=("--steps",),
                        help="Length of each measurement: vector steps (envs, default 2000), agent steps (train, "
                             "train-one: after a one-rollout warm-up, default 10240; transfer: default 4096), "
                             "random-policy agent steps (rank, default 20k).")
    parser.add_argument("--repeats", type=positive_int, default=3, metavar="N",
                        help="Interleaved repetitions: the tables give their median (envs, train, transfer) or "
                             "minimum (zoo-conv, not-adopted, inference). Default: 3.")
    parser.add_argument("--experts", type=_positive_ints, default=[2, 4], metavar="K,...",
                        help="zoo-conv: expert counts. Default: 2,4.")
    parser.add_argument("--batch-sizes", type=_positive_ints, default=[8, 256], metavar="B,...",
                        help="zoo-conv, not-adopted, inference: batch sizes; zoo-conv's forward (no_grad) only for "
                             "those <= --n-envs (rollouts). Default: 8,256.")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``hubrl-speed`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser(prog)
    args, given = parse_given(parser, argv)
    refuse_flags_not_read(parser, args.what, given)
    if args.what in FLAG_READERS["device"]:
        from hubrl.runconfig import check_device

        check_device(args.device)
    if args.what in ("envs", "train") or (args.what == "train-one" and args.impl == "sb3"):
        check_opencv(f"{parser.prog} {args.what}" + (" --impl sb3" if args.what == "train-one" else ""))
    if args.what == "envs":
        bench_envs(args.game, args.n_envs, args.steps or 2000, args.repeats)
    elif args.what == "train":
        bench_train(args.game, args.steps or 10_240, args.repeats, args.algo, args.device)
    elif args.what == "train-one":
        import json

        print(json.dumps(train_once(args.impl, args.algo[0], args.game, args.steps or 10_240, args.threads, args.precision,
                                    args.device)))
    elif args.what == "transfer":
        bench_transfer(args.game, args.steps or 4096, args.repeats, args.device, args.algo[0])
    elif args.what == "rank":
        bench_rank(args.game, args.steps or 20_000)
    elif args.what == "not-adopted":
        bench_not_adopted(args.batch_sizes, args.n_envs, args.repeats, args.device)
    elif args.what == "inference":
        bench_inference(args.batch_sizes, args.repeats, args.device)
    else:
        bench_zoo_conv(args.experts, args.batch_sizes, args.n_envs, args.repeats, args.device)
    return 0


def cli() -> None:
    """The entry point ``hubrl-speed``."""
    main_guard(lambda: main(prog="hubrl-speed"))
