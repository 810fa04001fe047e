"""The route policy gradient (``route_pg_coef``): the gate's sampled top-1 route trained by the
agent's own surrogate with the advantage, so routes can compare the experts state by state."""

from __future__ import annotations

import math

import pytest
import torch as th
from stable_baselines3.common.logger import configure

import hubrl  # noqa: F401
from hubrl.agents import HubA2C, HubPPO
from hubrl.agents.auxiliary import AuxiliaryBatch
from hubrl.envs import make_atari_vec_env
from hubrl.hub import resolve_hub
from hubrl.losses import route_policy_loss
from hubrl.pathway import PathwayGenerator, top1_route_log_prob
from hubrl.policies import HubPathwayPolicy, load_hub_weights
from tests.test_routing import TINY, _collect


@pytest.fixture
def hub(tiny_hub):
    return resolve_hub(str(tiny_hub), [])


def _agent(algo, hub, tmp_path, lr=0.0, **policy_kwargs):
    env = make_atari_vec_env("Gopher", 4, seed=0)
    model = algo(HubPathwayPolicy, env, learning_rate=lr, seed=0, device="cpu",
                 policy_kwargs=dict(expert_names=hub.names, route_pg_coef=1.0, **policy_kwargs), **TINY[algo])
    load_hub_weights(model.policy, hub)
    model.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    return model


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("gap", [0.0, 0.7, 2.0, 4.0])
@pytest.mark.parametrize("stds", [(1.0, 1.0), (0.5, 1.5)])
def test_two_experts_match_the_closed_form(gap, stds):
    clean = th.tensor([[gap, 0.0]], dtype=th.float64)
    std = th.tensor([stds], dtype=th.float64)
    scale = math.hypot(*stds)
    for chosen, expected in ((0, _phi(gap / scale)), (1, _phi(-gap / scale))):
        prob = top1_route_log_prob(clean, std, th.tensor([[chosen]])).exp().item()
        assert prob == pytest.approx(expected, abs=1e-4)


def test_three_experts_match_sampled_frequencies():
    gen = th.Generator().manual_seed(0)
    clean, std = th.tensor([[0.3, -0.2, 0.5]]), th.tensor([[1.0, 0.5, 1.5]])
    winners = (clean + std * th.randn(200_000, 3, generator=gen)).argmax(1)
    probs = [top1_route_log_prob(clean, std, th.tensor([[i]])).exp().item() for i in range(3)]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    for i, prob in enumerate(probs):
        assert prob == pytest.approx((winners == i).float().mean().item(), abs=5e-3)  # ~4 standard errors


def test_gate_computes_route_log_probs_only_for_sampled_routes():
    gate = PathwayGenerator(4, 2, 1)
    gate.route_log_probs = True
    obs = th.rand(8, 4, 84, 84)
    acted = gate(obs, explore=True)
    assert acted.log_prob is not None and acted.log_prob.shape == (8,)
    assert acted.route().log_prob is not None and not acted.route().log_prob.requires_grad
    assert gate(obs, explore=False).log_prob is None  # predict: no route was sampled
    replay = gate(obs, noise=acted.noise, selected=acted.selected)
    assert th.allclose(replay.log_prob, acted.log_prob)
    replay.log_prob.sum().backward()
    assert gate.w_gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("algo", [HubPPO, HubA2C])
def test_rollout_stores_the_acting_route_probability(algo, hub, tmp_path):
    """Stored with the rollout, the acting gate's route log-probability equals what the update
    recomputes under the replayed route before any gradient step: the route ratio is exactly 1."""
    model = _agent(algo, hub, tmp_path)
    _collect(model)
    assert model.rollout_buffer.has_route_log_prob
    model.policy.set_training_mode(True)
    for data in model.rollout_buffer.get(64):
        model._evaluate(data, data.actions.long().flatten())
        routed = model.policy._last_routed
        assert data.route.log_prob is not None
        assert th.allclose(routed.routing.log_prob, data.route.log_prob, rtol=0, atol=2e-6)
        # a coin at the even start
        assert th.allclose(data.route.log_prob.exp(), th.full_like(data.route.log_prob, 0.5), atol=0.01)


def test_route_policy_loss_moves_the_gate_toward_advantageous_routes(hub, tmp_path):
    """Routes to expert 0 earned a high return, routes to expert 1 a low one: one step on the
    auxiliary loss alone makes expert 0 more likely on those states (and without the term the
    same step leaves the gate's preference where it was)."""
    obs = th.randint(0, 255, (64, 4, 84, 84), dtype=th.uint8)
    shifts = {}
    for coef in (1.0, 0.0):
        th.manual_seed(0)
        model = _agent(HubPPO, hub, tmp_path, exploration_coef=0.0, exploitation_coef=0.0)
        policy = model.policy
        policy.route_pg_coef = coef
        policy.set_training_mode(True)
        with th.no_grad():
            policy(obs)
        route = policy.pop_acting_route()
        before = policy.extractor.gate(policy.preprocess(obs)).probs[:, 0].mean().item()
        returns = th.where(route.selected[:, 0] == 0, 1.0, -1.0)
        actions = th.zeros(64, dtype=th.long)
        policy.evaluate_actions(obs, actions, route=route)
        terms = policy.auxiliary_loss(AuxiliaryBatch(actions, th.zeros(64), th.zeros(64), returns, 0.2, True))
        gate_params = list(policy.extractor.gate.parameters())
        optimizer = th.optim.SGD(gate_params, lr=1.0)
        optimizer.zero_grad()
        terms.loss.backward()
        optimizer.step()
        after = policy.extractor.gate(policy.preprocess(obs)).probs[:, 0].mean().item()
        shifts[coef] = after - before
        if coef:
            assert {"route_pg_loss", "route_prob"} <= set(terms.logs)
        else:
            assert "route_pg_loss" not in terms.logs
    assert shifts[1.0] > 0.01
    assert abs(shifts[0.0]) < 1e-3


def test_the_route_advantage_does_not_depend_on_the_sampled_route(hub, tmp_path, monkeypatch):
    """The critic learns a value per route (at k = 1 it reads the chosen expert's features), so the
    agent's advantages, measured against the sampled route's own value, tend to 0 for every route
    as it fits: with an exact critic route A earning 1 and route B 0 would both get 0. The route's
    policy gradient measures the return against the noise-free route's value instead, a function of
    the state only: the same states and returns give the same route advantages whichever route was
    replayed, and a route's advantage is its return minus that baseline."""
    import hubrl.policies

    seen = []
    real = hubrl.policies.route_policy_loss
    monkeypatch.setattr(hubrl.policies, "route_policy_loss",
                        lambda log_prob, old, adv, clip: seen.append(adv) or real(log_prob, old, adv, clip))
    model = _agent(HubPPO, hub, tmp_path)
    policy = model.policy
    policy.set_training_mode(True)
    obs = th.randint(0, 255, (16, 4, 84, 84), dtype=th.uint8)
    actions = th.zeros(16, dtype=th.long)
    returns = th.linspace(-1.0, 1.0, 16)
    with th.no_grad():
        policy(obs)
    acted = policy.pop_acting_route()
    per_route_values = []
    for expert in (0, 1):
        route = type(acted)(acted.noise, th.full_like(acted.selected, expert), acted.log_prob)
        values, _, _ = policy.evaluate_actions(obs, actions, route=route)
        per_route_values.append(values.detach().flatten())
        agents_advantages = returns - per_route_values[-1]  # what GAE gives against this route's own value
        policy.auxiliary_loss(AuxiliaryBatch(actions, th.zeros(16), agents_advantages, returns, 0.2))
    assert (per_route_values[0] - per_route_values[1]).abs().max() > 1e-4  # the routes' values differ ...
    assert th.equal(seen[0], seen[1])  # ... the route advantages do not
    with th.no_grad():
        noise_free = policy.predict_values(obs).flatten()
    assert th.allclose(seen[0], returns - noise_free, atol=1e-6)


def test_route_policy_loss_forms():
    adv = th.tensor([1.0, -1.0])
    old = th.log(th.tensor([0.5, 0.5]))
    new = th.log(th.tensor([0.9, 0.1]))  # ratio 1.8 and 0.2: both clipped at 0.2
    assert route_policy_loss(new, old, adv, 0.2).item() == pytest.approx(-(1.2 * 1 + 0.8 * -1) / 2)
    assert route_policy_loss(new, old, adv, None).item() == pytest.approx(-(new[0] - new[1]).item() / 2)


@pytest.mark.parametrize("kwargs, match", [({"top_k": 2}, "top_k 1"), ({"noise": 0.0}, "noisy gate"),
                                           ({"route_pg_coef": -1.0}, ">= 0")])
def test_route_pg_refuses_what_it_cannot_train(kwargs, match, hub, tmp_path):
    with pytest.raises(ValueError, match=match):
        _agent(HubPPO, hub, tmp_path, **kwargs) if "route_pg_coef" not in kwargs else HubPPO(
            HubPathwayPolicy, make_atari_vec_env("Gopher", 1, seed=0), device="cpu",
            policy_kwargs=dict(expert_names=hub.names, **kwargs))


def test_route_pg_trains_and_survives_save_load(hub, tmp_path):
    model = _agent(HubPPO, hub, tmp_path, lr=1e-3)
    model.learn(256)  # the first update's logs are written when the second rollout starts
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "log" / "progress.csv")) if r.get("train/route_pg_loss")]
    assert rows and 0.5 <= float(rows[-1]["train/route_prob"]) <= 1.0
    model.save(tmp_path / "model.zip")
    loaded = HubPPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy.route_pg_coef == 1.0 and loaded.policy.extractor.gate.route_log_probs


def test_transfer_flag_reaches_the_gate_and_bad_settings_are_refused_in_one_line(tmp_path, tiny_hub):
    from hubrl.errors import UsageError
    from hubrl.transfer import run_transfer
    from tests.test_transfer import _cfg

    result = run_transfer(_cfg(tmp_path, hub=str(tiny_hub), route_pg_coef=0.5), progress_bar=False, verbose=0)
    loaded = HubPPO.load(result.folder / "model.zip", device="cpu")
    assert loaded.policy.route_pg_coef == 0.5 and loaded.policy.extractor.gate.route_log_probs
    for settings in ({"top_k": 2}, {"noise": 0.0}):
        with pytest.raises(UsageError, match="--route-pg-coef .* needs --top-k 1 and gate noise"):
            run_transfer(_cfg(tmp_path, hub=str(tiny_hub), route_pg_coef=1.0, out=str(tmp_path / "bad"), **settings),
                         progress_bar=False, verbose=0)
    assert not (tmp_path / "bad").exists()
