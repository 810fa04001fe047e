"""The pathway generator, routed extractor and losses behave as Hub-Pathway specifies."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from hubrl.losses import entropy_balance_loss, exploitation_loss
from hubrl.pathway import HubPathwayExtractor, PathwayGenerator

SPACE = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


def _obs(batch=16, seed=0):
    return th.rand(batch, 4, 84, 84, generator=th.Generator().manual_seed(seed))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_selects_the_largest_logits(k):
    gate = PathwayGenerator(4, 5, k, noise=0.0).eval()
    routing = gate(_obs())
    expected = routing.logits.topk(k, dim=1).indices
    assert th.equal(routing.selected.sort(1).values, expected.sort(1).values)
    assert ((routing.weights > 0).sum(1) == k).all()
    unselected = th.ones_like(routing.weights, dtype=th.bool).scatter(1, routing.selected, False)
    assert (routing.weights[unselected] == 0).all()
    if k > 1:  # softmax over the selected experts
        assert th.allclose(routing.weights.sum(1), th.ones(16))
        manual = th.softmax(routing.logits.gather(1, routing.selected), dim=1)
        assert th.allclose(routing.weights.gather(1, routing.selected), manual)
    else:  # k = 1: the expert's full-softmax probability (keeps the gate trainable)
        assert th.allclose(routing.weights.gather(1, routing.selected),
                           th.softmax(routing.logits, 1).gather(1, routing.selected))


def test_top_k_bounds():
    with pytest.raises(ValueError, match="between 1 and the hub size 2"):
        PathwayGenerator(4, 2, 3)
    with pytest.raises(ValueError, match="between 1 and the hub size 2, got 0"):
        PathwayGenerator(4, 2, 0)


@pytest.mark.parametrize("noise", ["learned", 1.0])
def test_noise_only_in_training(noise):
    gate = PathwayGenerator(4, 4, 1, noise=noise)
    x = _obs()
    gate.eval()
    a, b = gate(x), gate(x)
    assert th.equal(a.logits, b.logits)
    gate.train()
    c, d = gate(x), gate(x)
    assert not th.equal(c.logits, d.logits)
    assert not th.equal(c.logits, a.logits)


def _count_samples(extractor):
    seen = [0] * extractor.n_experts
    for i, expert in enumerate(extractor.experts):
        expert.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, seen[i] + inp[0].shape[0]))
    return seen


@pytest.mark.parametrize("n_experts, k", [(4, 1), (4, 2), (8, 2)])
def test_each_sample_runs_only_through_its_selected_experts(n_experts, k):
    extractor = HubPathwayExtractor(SPACE, [f"e{i}" for i in range(n_experts)], top_k=k, noise=0.0).eval()
    seen = _count_samples(extractor)
    x = _obs(32)
    routed = extractor.route(x)
    counts = [(routed.routing.selected == i).any(1).sum().item() for i in range(n_experts)]
    assert seen == counts
    assert sum(seen) == 32 * k  # compute grows with k, not with the hub size
    # aggregation = sum of pathway weight x expert features over the selected experts
    manual = th.zeros(32, 512)
    for i, (idx, feats) in routed.per_expert.items():
        manual[idx] += routed.routing.weights[idx, i : i + 1] * feats
        assert th.allclose(feats, extractor.experts[i](x[idx]), atol=1e-6)
    assert th.allclose(routed.aggregated, manual, atol=1e-6)


def test_gradients_reach_gate_and_selected_experts_only():
    extractor = HubPathwayExtractor(SPACE, ["a", "b", "c"], top_k=1, noise=0.0)
    with th.no_grad():  # make expert 0 win every sample, expert 2 second
        extractor.gate.w_gate.bias.copy_(th.tensor([50.0, -50.0, 0.0]))
    extractor(_obs(8)).sum().backward()
    assert extractor.gate.w_gate.weight.grad is not None and extractor.gate.w_gate.weight.grad.abs().sum() > 0
    assert extractor.experts[0].cnn[0].weight.grad.abs().sum() > 0
    for unselected in (1, 2):
        grads = [p.grad for p in extractor.experts[unselected].parameters()]
        assert all(g is None or g.abs().sum() == 0 for g in grads)


def test_entropy_balance_loss_minimal_when_balanced():
    k = 4
    uniform = th.full((10, k), 1 / k)
    assert entropy_balance_loss(uniform).item() == pytest.approx(0.0, abs=1e-6)
    # sharp per-sample routing that is balanced over the batch is also optimal
    balanced = th.eye(k).repeat(3, 1)
    assert entropy_balance_loss(balanced).item() == pytest.approx(0.0, abs=1e-6)
    collapsed = th.zeros(10, k)
    collapsed[:, 0] = 1
    assert entropy_balance_loss(collapsed).item() == pytest.approx(math.log(k), abs=1e-5)
    skewed = th.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(10, 1)
    assert 0 < entropy_balance_loss(skewed).item() < math.log(k)


def test_exploitation_loss_uses_only_routed_samples():
    th.manual_seed(0)
    batch, n_actions = 10, 6
    actions = th.randint(0, n_actions, (batch,))
    old_log_prob = th.randn(batch)
    advantages = th.randn(batch)
    returns = th.randn(batch)
    idx0, idx1 = th.tensor([0, 2, 4]), th.tensor([1, 2])
    logits0 = th.randn(3, n_actions, requires_grad=True)
    logits1 = th.randn(2, n_actions, requires_grad=True)
    outputs = {0: (idx0, logits0, th.zeros(3, 1)), 1: (idx1, logits1, th.zeros(2, 1))}
    loss = exploitation_loss(outputs, actions, old_log_prob, advantages, returns, clip_range=0.1)
    # changing data of samples no expert was routed (3, 5..9) changes nothing
    unrouted = th.tensor([3, 5, 6, 7, 8, 9])
    for tensor in (advantages, returns, old_log_prob):
        tensor[unrouted] += 100.0
    actions2 = actions.clone()
    actions2[unrouted] = (actions2[unrouted] + 1) % n_actions
    again = exploitation_loss(outputs, actions2, old_log_prob, advantages, returns, clip_range=0.1)
    assert again.item() == pytest.approx(loss.item())
    loss.backward()
    assert logits0.grad.abs().sum() > 0 and logits1.grad.abs().sum() > 0
    # A2C form (no clipping) runs too
    assert th.isfinite(exploitation_loss(outputs, actions, old_log_prob, advantages, returns, clip_range=None))


@pytest.mark.parametrize("net_arch, refused", [([], False), (None, False), ({"pi": [], "vf": []}, False), ([64], True),
                                               ({"pi": [64], "vf": []}, True)])
def test_a_net_arch_that_hub_pathway_would_never_train_is_refused(net_arch, refused):
    """The heads read the aggregated features directly, so an MLP from net_arch would be built,
    saved and given to the optimizer, and never get a gradient."""
    from hubrl.policies import HubPathwayPolicy

    def build():
        return HubPathwayPolicy(SPACE, gym.spaces.Discrete(6), lambda _: 1e-4, expert_names=["a", "b"], net_arch=net_arch)

    if refused:
        with pytest.raises(ValueError, match="takes no net_arch"):
            build()
    else:
        build()
