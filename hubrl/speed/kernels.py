"""Single computations timed side by side, each checked first to compute what it stands in for
(``hubrl-speed zoo-conv``, ``not-adopted``, ``inference``): Zoo-Tuning's per-sample kernels
(grouped conv, output space, NatureCNN), the variants measured and not adopted (inference_mode
rollouts, /255 folded into conv 1, a faster conv-1 gradient), and Hub-Pathway's predict against
scratch's with the routing controlled. One torch thread; the least mean time over interleaved
repetitions (:func:`_min_ms`)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from hubrl.speed import machine_line

if TYPE_CHECKING:
    import torch as th

    from hubrl.zoo_tuning import AdaptiveConv2d

__all__ = ["bench_zoo_conv", "bench_not_adopted", "bench_inference"]


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

    The three are checked to give the same output before timing (in full float32: TF32 off for the
    check, on as by default for the timing). ``forward (no_grad)`` is timed
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
            # checked in full float32: on a GPU cuDNN runs float32 convolutions in TF32 by default
            # (10-bit mantissa), which alone moves the paths apart by ~1e-3; they are timed with the default
            with th.no_grad(), th.backends.cudnn.flags(enabled=th.backends.cudnn.enabled,
                                                        benchmark=th.backends.cudnn.benchmark,
                                                        deterministic=th.backends.cudnn.deterministic,
                                                        allow_tf32=False):
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
          f"{th.get_num_threads()} thread, {machine_line()}.")


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
          f"torch {th.__version__}, device {device}, {th.get_num_threads()} thread, {machine_line()}.")


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
          f"{th.get_num_threads()} thread, {machine_line()}.")
