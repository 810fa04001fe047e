"""Behaviours that mutation testing found unguarded (issue 19): each test fails when its mutation
is applied (the named term dropped, the weights ignored, the rewards clipped).

The resume-side gaps (a step counter restarting at 0, checkpoints read with
``weights_only=False``) are guarded in ``tests/test_resume.py``.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from hubrl.losses import exploitation_loss, exploitation_ratio_stats


def _one_sample(p_new: float, p_old: float, advantage: float):
    """One expert, one sample, action 0 taken with probability ``p_old``, now ``p_new``; value exact."""
    logits = th.log(th.tensor([[p_new, 1 - p_new]]))
    outputs = {0: (th.tensor([0]), logits, th.tensor([[0.0]]))}
    return outputs, th.tensor([0]), th.log(th.tensor([p_old])), th.tensor([advantage]), th.tensor([0.0])


@pytest.mark.parametrize("p_new, p_old, advantage, expected", [
    (0.8, 0.4, 1.0, -1.1),   # ratio 2 clipped to 1 + 0.1: PPO does not push further
    (0.1, 0.4, -1.0, 0.9),   # ratio 0.25 clipped to 1 - 0.1 for a negative advantage
    (0.42, 0.4, 1.0, -1.05),  # inside the clip range: the plain ratio
])
def test_exploitation_loss_is_ppos_clipped_surrogate(p_new, p_old, advantage, expected):
    loss = exploitation_loss(*_one_sample(p_new, p_old, advantage), clip_range=0.1, vf_coef=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_exploitation_ratio_stats_measure_the_heads_distance_from_the_acting_policy():
    outputs, actions, old_log_prob, _, _ = _one_sample(0.8, 0.4, 1.0)  # ratio 2: outside a 0.1 clip range
    others = {1: (th.tensor([0]), th.log(th.tensor([[0.42, 0.58]])), th.tensor([[0.0]])),  # ratio 1.05: inside
              2: (th.tensor([0]), th.log(th.tensor([[0.2, 0.8]])), th.tensor([[0.0]]))}  # ratio 0.5: outside, below
    stats = exploitation_ratio_stats({**outputs, **others}, actions, old_log_prob, clip_range=0.1)
    assert stats["exploitation_clip_fraction"].item() == pytest.approx(2 / 3)
    kl = sum((r - 1) - math.log(r) for r in (2.0, 1.05, 0.5)) / 3
    assert stats["exploitation_approx_kl"].item() == pytest.approx(kl, rel=1e-4)
    a2c = exploitation_ratio_stats(outputs, actions, old_log_prob, clip_range=None)  # no clip range: no clip fraction
    assert set(a2c) == {"exploitation_approx_kl"}


def test_exploitation_loss_without_clip_range_is_the_importance_weighted_policy_gradient():
    """Under A2C a head's term is ``-A * pi_head / pi_acting``: its gradient is ``ratio * A * grad log
    pi_head``, the head's policy gradient on samples the acting policy drew (``-A log pi_head`` would
    weigh them as if the head had drawn them)."""
    outputs, actions, old_log_prob, advantages, returns = _one_sample(0.8, 0.4, 2.0)
    index, logits, values = outputs[0]
    logits = logits.clone().requires_grad_(True)
    loss = exploitation_loss({0: (index, logits, values)}, actions, old_log_prob, advantages, returns, clip_range=None)
    assert loss.item() == pytest.approx(-2.0 * 0.8 / 0.4, rel=1e-5)
    loss.backward()  # d log pi(a=0) / d logits = onehot - p = (0.2, -0.2), times -A * ratio = -4
    assert logits.grad[0].tolist() == pytest.approx([-0.8, 0.8], rel=1e-4)


def test_heads_aggregation_mixes_the_heads_with_the_pathway_weights():
    """With two experts selected per sample, the policy's action probabilities and values are the
    gate-weighted sums of the experts' heads (not their plain sum, nor one head)."""
    from hubrl.policies import HubPathwayPolicy

    th.manual_seed(0)
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    policy = HubPathwayPolicy(space, gym.spaces.Discrete(6), lambda _: 1e-4, expert_names=["a", "b"], top_k=2,
                              aggregation="heads")
    policy.set_training_mode(False)  # no gate noise: the same routing on every call
    with th.no_grad():
        policy.extractor.gate.requires_grad_(False)
        obs = th.as_tensor(np.random.default_rng(0).integers(0, 256, (5, 4, 84, 84), dtype=np.uint8))
        routed = policy.extractor.route(policy.preprocess(obs))
        w = routed.routing.weights
        assert (w > 0).all() and not th.allclose(w[:, 0], w[:, 1])  # both experts, unequal weights
        logits = sum(w[:, i : i + 1] * policy.expert_heads[i](routed.per_expert[i][1])[0] for i in range(2))
        values = sum(w[:, i : i + 1] * policy.expert_heads[i](routed.per_expert[i][1])[1] for i in range(2))
        probs = policy.get_distribution(obs).distribution.probs
        assert th.allclose(probs, th.softmax(logits, dim=-1), atol=1e-6)
        assert th.allclose(policy.predict_values(obs), values, atol=1e-6)


def test_evaluation_env_scores_raw_rewards():
    """Evaluation plays on the raw score: Alien's dots are worth 10, not a clipped 1."""
    from hubrl.evaluation import make_eval_env

    env = make_eval_env("Alien", n_envs=1, seed=0)
    try:
        env.reset()
        rng = np.random.default_rng(0)
        rewards = []
        for _ in range(400):
            _, reward, _, _ = env.step(rng.integers(0, env.action_space.n, 1))
            rewards.append(float(reward[0]))
            if reward[0]:
                break
    finally:
        env.close()
    assert max(rewards) >= 10
