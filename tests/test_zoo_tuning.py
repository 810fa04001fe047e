"""Zoo-Tuning: adaptive aggregation, channel alignment, lite merging, and stock SB3 save/load."""

from __future__ import annotations

import copy
import functools

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import NatureCNN
from torch import nn
from torch.nn import functional as F

import hubrl.zoo_tuning  # noqa: F401  (what users import before PPO.load)
from hubrl.agents import HubPPO
from hubrl.envs import make_atari_vec_env
from hubrl.hub import Hub, load_hub
from hubrl.zoo_tuning import ZooTuningExtractor, ZooTuningPolicy, load_zoo_weights, merge_lite
from tests.conftest import TINY_PPO, make_tiny_hub, run_script

SPACE = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
NAMES = ["seaquest-ppo", "riverraid-ppo", "pong-ppo"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Hub:
    return load_hub(make_tiny_hub(tmp_path_factory.mktemp("zoo") / "hub", names=NAMES))


def _obs(batch=6, seed=0):
    return th.rand(batch, 4, 84, 84, generator=th.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=None)
def _template(names: tuple[str, ...], lite: bool, ema_momentum: float) -> ZooTuningExtractor:
    th.manual_seed(0)
    return ZooTuningExtractor(SPACE, list(names), lite=lite, ema_momentum=ema_momentum)


def _fresh(names=("a", "b", "c"), lite=False, ema_momentum=0.99) -> ZooTuningExtractor:
    """A new extractor (copied: the orthogonal init of K 512 x 3136 matrices takes a while)."""
    return copy.deepcopy(_template(tuple(names), lite, ema_momentum))


def _extractor(names=("a", "b", "c"), lite=False, seed=0, **kw) -> ZooTuningExtractor:
    """An extractor with input-dependent gates (the default start is the constant 1/K)."""
    ext = _fresh(names, lite, **kw)
    th.manual_seed(seed)
    for layer in ext.layers:
        nn.init.normal_(layer.gate[-1].weight, std=1.0)
        nn.init.normal_(layer.gate[-1].bias, std=0.5)
    return ext


def _reference(ext: ZooTuningExtractor, x: th.Tensor, align: bool, batch_mean: bool) -> th.Tensor:
    """Independent forward: sum_k alpha_k [A_k] layer(x; W_k, b_k), one expert at a time."""
    strides = [4, 2, 1]

    def gates(layer, summary):
        alpha = th.sigmoid(layer.gate(summary))
        return alpha.mean(0, keepdim=True).expand_as(alpha) if batch_mean else alpha

    def mix(layer, k, y):
        return th.einsum("oj,bj...->bo...", layer.align[k], y) if align else y

    for conv, stride in zip(ext.convs, strides):
        alpha = gates(conv, x.mean((2, 3)))
        x = F.relu(sum(alpha[:, k, None, None, None] * mix(conv, k, F.conv2d(x, conv.weight[k], conv.bias[k], stride=stride))
                       for k in range(ext.n_experts)))
    lin = ext.linear
    alpha = gates(lin, x.mean((2, 3)))
    flat = x.flatten(1)
    return F.relu(sum(alpha[:, k, None] * mix(lin, k, F.linear(flat, lin.weight[k], lin.bias[k]))
                      for k in range(ext.n_experts)))


@pytest.mark.parametrize("lite, training", [(False, False), (False, True), (True, True)])
def test_identity_alignment_equals_plain_aggregation(lite, training):
    ext = _extractor(lite=lite).train(training)
    for layer in ext.layers:  # alignment starts at the identity
        assert th.equal(layer.align, th.eye(layer.out_features).expand_as(layer.align))
    x = _obs()
    with th.no_grad():
        ours = ext(x)
        plain = _reference(ext, x, align=False, batch_mean=lite)
    assert ours.abs().max() > 0
    assert th.allclose(ours, plain, atol=1e-5)


@pytest.mark.parametrize("lite", [False, True])
def test_alignment_mixes_each_experts_output_channels(lite):
    ext = _extractor(lite=lite).train()
    with th.no_grad():
        for layer in ext.layers:
            layer.align.add_(0.1 * th.randn_like(layer.align))
    x = _obs()
    with th.no_grad():
        ours = ext(x)
        ref = _reference(ext, x, align=True, batch_mean=lite)
        unaligned = _reference(ext, x, align=False, batch_mean=lite)
    assert th.allclose(ours, ref, atol=1e-5 * ref.abs().max())  # float32 rounding grows with the features (~30 here)
    assert not th.allclose(ours, unaligned, atol=1e-3)


@pytest.mark.parametrize("chosen", [0, 2])
def test_gates_selecting_one_expert_reproduce_its_nature_cnn(hub, chosen):
    expert = NatureCNN(SPACE, 512)
    expert.load_state_dict(hub.experts[chosen].encoder_state)
    x = _obs()
    with th.no_grad():
        theirs = expert(x)
    assert theirs.abs().max() > 0
    for lite in (False, True):
        ext = _fresh(hub.names, lite)
        load_zoo_weights(ext, hub)
        with th.no_grad():
            for layer in ext.layers:
                layer.gate[-1].weight.zero_()
                layer.gate[-1].bias.fill_(-30.0)
                layer.gate[-1].bias[chosen] = 30.0
                layer.ema_gate.copy_(F.one_hot(th.tensor(chosen), len(hub)).float())
            for training in (True, False):
                ours = ext.train(training)(x)
                assert (ours - theirs).abs().max() <= 1e-5, (lite, training)


def test_load_zoo_weights_copies_in_hub_order_and_checks_names(hub):
    ext = _fresh(hub.names)
    load_zoo_weights(ext, hub)
    for k, expert in enumerate(hub.experts):
        assert th.equal(ext.convs[1].weight[k], expert.encoder_state["cnn.2.weight"])
        assert th.equal(ext.linear.bias[k], expert.encoder_state["linear.0.bias"])
    with pytest.raises(ValueError, match="do not match the hub"):
        load_zoo_weights(_fresh(list(reversed(hub.names))), hub)


def test_lite_merge_equals_lite_eval_after_training(hub):
    ext = _fresh(hub.names, lite=True, ema_momentum=0.5)
    load_zoo_weights(ext, hub)
    for layer in ext.layers:  # gates away from their 1/K start, so the moving averages move
        nn.init.normal_(layer.gate[-1].weight, std=1.0)
        nn.init.normal_(layer.gate[-1].bias, std=0.5)
    start_ema = [layer.ema_gate.clone() for layer in ext.layers]
    optimizer = th.optim.Adam(ext.parameters(), lr=1e-2)
    ext.train()
    for step in range(4):
        loss = (ext(_obs(8, seed=step)) - 0.5).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for layer, ema in zip(ext.layers, start_ema):
        assert (layer.align - th.eye(layer.out_features)).abs().max() > 1e-3
        assert (layer.ema_gate - ema).abs().max() > 1e-3
    merged = merge_lite(ext)
    cnn = NatureCNN(SPACE, 512)
    assert set(merged) == set(cnn.state_dict())
    cnn.load_state_dict(merged)
    x = _obs(16, seed=9)
    with th.no_grad():
        diff = (ext.eval()(x) - cnn(x)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("policy_kwargs", [{}, {"net_arch": [64]}, {"share_features_extractor": False},
                                           {"net_arch": {"pi": [32], "vf": [16]}, "share_features_extractor": False}])
def test_the_saved_lite_policy_computes_what_the_trained_one_does(hub, policy_kwargs):
    """Lite saves a plain CnnPolicy built with the run's policy kwargs. The copy used to take only
    the encoder and the two heads: with a net_arch MLP, or unshared extractors, the saved policy
    had freshly initialised layers (value off by up to 1.85) while evaluation scored the trained one."""
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    from hubrl.zoo_tuning import load_merged_lite

    action_space, lr = gym.spaces.Discrete(6), lambda _: 1e-4
    th.manual_seed(0)
    trained = ZooTuningPolicy(SPACE, action_space, lr, expert_names=hub.names, lite=True, **policy_kwargs)
    load_zoo_weights(trained, hub)
    trained.set_training_mode(False)
    plain = ActorCriticCnnPolicy(SPACE, action_space, lr, **policy_kwargs)
    load_merged_lite(trained, plain)
    plain.set_training_mode(False)
    x = _obs(8, seed=4) * 255
    with th.no_grad():
        probs = [p.get_distribution(x).distribution.probs for p in (trained, plain)]
        values = [p.predict_values(x) for p in (trained, plain)]
    assert (probs[0] - probs[1]).abs().max() <= 1e-5 and (values[0] - values[1]).abs().max() <= 1e-4


def test_the_lite_average_takes_the_official_codes_tenth_of_each_batch_mean():
    """The agent acts with the lite moving average and trains the batch-mean gate: the official
    code moves the average 0.1 of the way per batch (m = 0.1), a lag of about 10 minibatches;
    hubrl's 0.99 made it 100."""
    policy = ZooTuningPolicy(SPACE, gym.spaces.Discrete(6), lambda _: 1e-4, expert_names=["a", "b"], lite=True)
    layer = policy.features_extractor.convs[0]
    nn.init.normal_(layer.gate[-1].weight, std=1.0)  # a gate away from its even start
    before, x = layer.ema_gate.clone(), _obs(8)
    policy.features_extractor.train()(x)
    with th.no_grad():
        batch_mean = th.sigmoid(layer.gate(x.mean((2, 3)))).mean(0)
    assert th.allclose(layer.ema_gate, 0.9 * before + 0.1 * batch_mean, atol=1e-6)


def test_ema_updates_only_in_training_and_is_detached():
    ext = _extractor(lite=True, ema_momentum=0.9)
    first = ext.convs[0]
    assert "convs.0.ema_gate" in ext.state_dict() and "linear.ema_gate" in ext.state_dict()
    before = [layer.ema_gate.clone() for layer in ext.layers]
    x = _obs()
    ext.eval()(x)
    assert all(th.equal(layer.ema_gate, b) for layer, b in zip(ext.layers, before))
    ext.train()
    for _ in range(2):  # backward twice: no graph is kept through the buffer
        ext(x).sum().backward()
    for layer in ext.layers:
        assert not layer.ema_gate.requires_grad and layer.ema_gate.grad_fn is None
    with th.no_grad():
        mean_gate = th.sigmoid(first.gate(x.mean((2, 3)))).mean(0)
    expected = 0.9 * (0.9 * before[0] + 0.1 * mean_gate) + 0.1 * mean_gate
    assert th.allclose(first.ema_gate, expected, atol=1e-6)
    assert all(not th.equal(layer.ema_gate, b) for layer, b in zip(ext.layers, before))


@pytest.mark.parametrize("lite", [False, True])
def test_gradients_reach_gates_alignment_and_expert_kernels(lite):
    ext = _extractor(lite=lite).train()
    ext(_obs()).pow(2).mean().backward()
    for layer in ext.layers:
        for name, param in [("weight", layer.weight), ("bias", layer.bias), ("align", layer.align),
                            ("gate in", layer.gate[0].weight), ("gate out", layer.gate[-1].weight)]:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        assert (layer.weight.grad.flatten(1).abs().sum(1) > 0).all()  # every expert's kernel


def test_default_gates_start_at_one_over_k():
    ext = _fresh().eval()
    with th.no_grad():
        _, gates = ext.forward_with_gates(_obs())
    assert all(g.shape == (6, 3) and th.allclose(g, th.full_like(g, 1 / 3)) for g in gates)
    assert all(th.allclose(layer.ema_gate, th.full((3,), 1 / 3)) for layer in ext.layers)


def test_every_gate_hidden_unit_starts_alive_and_every_gate_at_one_over_k():
    """After SB3's orthogonal init and ``reset_gates`` (what building the policy does), every hidden unit of every gate
    has a positive pre-activation on near-equal frames (with signed hidden weights a unit can be dead on every input:
    both of the first gate's 2 units in about a quarter of starts, a third of the later gates' units), and every gate
    is still 1/K."""
    policy = ZooTuningPolicy(SPACE, gym.spaces.Discrete(6), lambda _: 1e-4, expert_names=NAMES[:2]).eval()
    ext = policy.extractor
    g = th.Generator().manual_seed(0)
    base = th.rand(32, 1, 84, 84, generator=g) * (0.1 + 0.8 * th.rand(32, 1, 1, 1, generator=g))
    obs = ((base + 0.02 * th.randn(32, 4, 84, 84, generator=g)).clamp(0, 1) * 255).to(th.uint8)  # 4 near-equal frames
    hidden = {}
    for i, layer in enumerate(ext.layers):
        layer.gate[0].register_forward_hook(lambda module, args, out, i=i: hidden.__setitem__(i, out))
    for seed in range(24):
        if seed:  # another start, as ZooTuningPolicy._build makes it: SB3's ortho_init, then reset_gates
            th.manual_seed(seed)
            ext.apply(functools.partial(policy.init_weights, gain=np.sqrt(2)))
            ext.reset_gates()
        with th.no_grad():
            _, gates = ext.forward_with_gates(preprocess_obs(obs, SPACE))
        assert all(th.allclose(a, th.full_like(a, 0.5)) for a in gates), seed
        assert sorted(hidden) == [0, 1, 2, 3]
        for i, pre in hidden.items():
            dead = (pre <= 0).all(0).nonzero().flatten().tolist()
            assert (pre > 0).all(), f"seed {seed}, gate {i + 1}: units {dead} dead on every frame, {(pre <= 0).sum()} <= 0"


def test_usage_counts_eval_forward_passes_only():
    ext = _extractor()
    ext.train()(_obs())
    assert all(v["weight_mean"] == 0 for v in ext.usage().values())
    ext.eval()
    x = _obs(5)
    with th.no_grad():
        _, gates = ext.forward_with_gates(x)
    ext(x)
    with ext.paused_usage():
        ext(_obs(7, seed=3))
    expected = th.stack([g.mean(0) for g in gates]).mean(0)
    usage = ext.usage()
    assert list(usage) == ["a", "b", "c"]
    assert np.allclose([usage[n]["weight_mean"] for n in "abc"], expected.numpy(), atol=1e-6)
    ext.reset_usage()
    assert all(v["weight_mean"] == 0 for v in ext.usage().values())
    lite = _extractor(lite=True).eval()
    lite(_obs(3))
    expected = th.stack([layer.ema_gate for layer in lite.layers]).mean(0)
    assert np.allclose([lite.usage()[n]["weight_mean"] for n in "abc"], expected.numpy(), atol=1e-6)


def test_merge_lite_refuses_the_full_version():
    with pytest.raises(ValueError, match="lite=True"):
        merge_lite(_fresh())


@pytest.mark.slow
@pytest.mark.parametrize("lite", [False, True])
def test_tiny_ppo_learns_saves_and_loads_with_stock_sb3(tmp_path, hub, lite):
    env = make_atari_vec_env("Gopher", 2)
    model = HubPPO(ZooTuningPolicy, env, **TINY_PPO, seed=0, device="cpu",
                   policy_kwargs=dict(expert_names=hub.names, lite=lite))
    load_zoo_weights(model.policy, hub)
    before = model.policy.extractor.linear.align.detach().clone()
    model.learn(64)
    policy = model.policy
    assert not th.equal(policy.extractor.linear.align, before)  # alignment trained
    usage = policy.usage()
    assert list(usage) == hub.names and all(0 < v["weight_mean"] < 1 for v in usage.values())
    policy.reset_usage()
    assert all(v["weight_mean"] == 0 for v in policy.usage().values())
    model.save(tmp_path / "model.zip")

    loaded = PPO.load(tmp_path / "model.zip", device="cpu")
    assert type(loaded.policy) is ZooTuningPolicy and loaded.policy.lite == lite
    assert loaded.policy.expert_names == hub.names
    trained = policy.state_dict()
    assert set(loaded.policy.state_dict()) == set(trained)
    for key, value in loaded.policy.state_dict().items():
        assert th.equal(value, trained[key]), key
    obs = env.reset()
    for _ in range(4):
        ours, _ = model.predict(obs, deterministic=True)
        theirs, _ = loaded.predict(obs, deterministic=True)
        assert np.array_equal(ours, theirs)
        obs = env.step(ours)[0]
    assert all(v["weight_mean"] == 0 for v in policy.usage().values())  # predict() is not a rollout
    if lite:
        for key, value in merge_lite(loaded.policy).items():
            assert th.allclose(value, merge_lite(policy)[key])

    policy.save(tmp_path / "policy.pt")  # the policy's own save/load round trip
    again = ZooTuningPolicy.load(tmp_path / "policy.pt", device="cpu")
    assert again.lite == lite and again.expert_names == hub.names
    env.close()


def test_lite_eval_kernel_cache_follows_parameter_changes(hub):
    ext = _extractor(hub.names, lite=True)
    load_zoo_weights(ext, hub)
    ext.eval()
    x = _obs(4)
    with th.no_grad():
        first = ext(x)
    with_grad = ext(x)  # autograd on: no cache, output-space linear layer
    assert th.allclose(first, with_grad, rtol=1e-4, atol=1e-4)
    optimizer = th.optim.SGD(ext.parameters(), lr=0.1)
    with_grad.pow(2).mean().backward()
    optimizer.step()  # parameters change while staying in eval mode
    with th.no_grad():
        after = ext(x)
        ext.linear.ema_gate.copy_(th.tensor([1.0, 0.0, 0.0]))  # a buffer change is seen too
        last = ext(x)
    assert not th.allclose(first, after) and not th.allclose(after, last)
    cnn = NatureCNN(SPACE, 512)
    cnn.load_state_dict(merge_lite(ext))
    with th.no_grad():
        assert (last - cnn(x)).abs().max() <= 1e-5
    cached = ext.linear._frozen
    ext.eval()  # SB3's predict() calls eval() on every step: the merged kernels are kept
    assert cached is not None and ext.linear._frozen is cached
    ext.train()
    assert ext.linear._frozen is None


@pytest.mark.slow
def test_zoo_conv_benchmark_prints_the_docstring_table_rows():
    """``benchmark_speed.py zoo-conv`` (cited by the module docstring) checks its three paths agree, then
    prints one row per case: forward (no_grad) only for rollout-sized batches (<= --n-envs)."""
    assert "benchmark_speed.py zoo-conv" in hubrl.zoo_tuning.__doc__
    proc = run_script("benchmark_speed.py", "zoo-conv", "--experts", "2", "--batch-sizes", "2,8", "--n-envs", "4",
                      "--repeats", "1", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| case | grouped | output-space | plain NatureCNN convs |" in proc.stdout
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| K=")}
    assert list(rows) == ["K=2, B=2 forward (no_grad)", "K=2, B=2 forward+backward", "K=2, B=8 forward+backward"]
    for line in rows.values():
        cells = [float(cell) for cell in line.strip().strip("|").split("|")[1:]]
        assert len(cells) == 3 and all(ms > 0 for ms in cells), line
    assert "torch " in proc.stdout and "1 thread" in proc.stdout and "min over 1 repetitions" in proc.stdout
