"""What the route changes (hubrl.route_analysis, ``hubrl-bench routes``): each forced route is the
acting forward pass, identical experts give identical policies, and a grid's k=1 trials are measured."""

from __future__ import annotations

import pytest
import torch as th

import hubrl  # noqa: F401
from hubrl.agents import HubPPO
from hubrl.envs import make_atari_vec_env
from hubrl.hub import resolve_hub
from hubrl.policies import HubPathwayPolicy, load_hub_weights
from hubrl.route_analysis import per_route_outputs, route_divergence


def _policy(hub, **policy_kwargs) -> HubPathwayPolicy:
    env = make_atari_vec_env("Gopher", 2, seed=0)
    model = HubPPO(HubPathwayPolicy, env, n_steps=32, batch_size=64, seed=0, device="cpu",
                   policy_kwargs=dict(expert_names=hub.names, **policy_kwargs))
    load_hub_weights(model.policy, hub)
    env.close()
    return model.policy.eval()


@pytest.fixture
def hub(tiny_hub):
    return resolve_hub(str(tiny_hub), [])


@pytest.mark.parametrize("policy_kwargs", [{}, {"aggregation": "heads", "k1_weight": "prob"}])
def test_each_forced_route_is_that_experts_pathway(hub, policy_kwargs):
    policy = _policy(hub, **policy_kwargs)
    obs = th.randint(0, 256, (16, 4, 84, 84), dtype=th.uint8)
    logits, values = per_route_outputs(policy, obs)  # log-probabilities
    assert logits.shape == (2, 16, policy.action_space.n) and values.shape == (2, 16)
    x = policy.preprocess(obs)
    with th.no_grad():
        probs = th.softmax(policy.extractor.gate(x, explore=False).clean, dim=1)
        for i, expert in enumerate(policy.extractor.experts):
            features = expert(x)
            if policy.aggregation == "features":  # straight-through: weight 1 in the forward pass
                want_logits, want_values = policy.action_net(features), policy.value_net(features)
            else:  # heads, Switch weight: the expert's own head scaled by its probability
                head_logits, head_values = policy.expert_heads[i](features)
                want_logits, want_values = probs[:, i : i + 1] * head_logits, probs[:, i : i + 1] * head_values
            assert th.allclose(logits[i], want_logits.log_softmax(1), atol=1e-5)
            assert th.allclose(values[i], want_values.reshape(-1), atol=1e-5)


def test_identical_experts_make_the_route_irrelevant_and_different_ones_do_not(hub):
    policy = _policy(hub)
    obs = th.randint(0, 256, (64, 4, 84, 84), dtype=th.uint8)
    different = route_divergence(policy, obs)
    assert different.kl > 1e-6 and different.tv > 1e-4
    assert sum(different.clean_share) == pytest.approx(1) and sum(different.acting_share) == pytest.approx(1)
    assert min(different.acting_share) > 0.2  # an even gate with noise 1.0 acts with both experts
    policy.extractor.experts[1].load_state_dict(policy.extractor.experts[0].state_dict())
    same = route_divergence(policy, obs)
    assert same.kl == pytest.approx(0, abs=1e-6) and same.tv == pytest.approx(0, abs=1e-6)
    assert same.argmax_differs == 0 and same.value_gap == pytest.approx(0, abs=1e-6)
    assert same.states == 64 and same.acting_share == different.acting_share  # the acting draw is seeded


def test_k2_is_refused(hub):
    with pytest.raises(ValueError, match="k=1 only"):
        per_route_outputs(_policy(hub, top_k=2), th.zeros(2, 4, 84, 84, dtype=th.uint8))


def test_routes_command_measures_the_k1_hub_pathway_trials_of_a_grid(tmp_path, capsys):
    from hubrl.benchmark import run_grid
    from hubrl.cli.bench import main
    from hubrl.errors import UsageError
    from tests.conftest import TINY_PPO, make_tiny_hub

    root = tmp_path / "grid"
    with pytest.raises(UsageError, match="No grid"):
        main(["routes", str(root)])
    settings = dict(hub=str(make_tiny_hub(tmp_path / "hub")), n_envs=2, eval_freq=10**9, eval_episodes=1,
                    checkpoint_freq=10**9, hyperparams=dict(TINY_PPO), device="cpu")
    run_grid(root, ["Gopher"], ["hub-pathway", "k2=hub-pathway:top_k=2"], [0], 64, settings=settings,
             workers=0, log=None)
    assert main(["routes", str(root), "--states", "16"]) == 0
    text = (root / "report" / "routes.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| Gopher")]
    assert len(rows) == 1 and rows[0].startswith("| Gopher | hub-pathway | 0 | 64 | 16 |")  # the k=2 arm left out
    assert "seaquest-ppo noise-free / acting" in text
    from hubrl.report import write_report

    assert "[routes.md](routes.md)" in write_report(root, reps=100).read_text()
    with pytest.raises(UsageError, match="no k=1 hub-pathway trial with a usable model.zip among k2"):
        main(["routes", str(root), "--method", "k2"])


@pytest.mark.parametrize("case", ["different experts", "identical experts", "k=2"])
def test_each_rollout_logs_how_different_the_routes_are(hub, tmp_path, case):
    """GateUsageCallback: ``route_tv`` / ``route_kl`` per rollout for k=1 (on the rollout's states,
    before the update: 0 while both experts are the same network), none for k=2."""
    from hubrl.callbacks import GateUsageCallback, read_gate_history

    env = make_atari_vec_env("Gopher", 2, seed=0)
    model = HubPPO(HubPathwayPolicy, env, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu",
                   policy_kwargs=dict(expert_names=hub.names, top_k=2 if case == "k=2" else 1))
    load_hub_weights(model.policy, hub)
    experts = model.policy.extractor.experts
    if case == "identical experts":
        experts[1].load_state_dict(experts[0].state_dict())
    model.learn(128, callback=GateUsageCallback(history_path=tmp_path / "gates.jsonl"))
    env.close()
    rows = read_gate_history(tmp_path / "gates.jsonl")
    assert [r["step"] for r in rows] == [64, 128]
    if case == "k=2":
        assert all("route_tv" not in r for r in rows)
    elif case == "identical experts":  # the first rollout acts before any update: the routes are one policy
        assert rows[0]["route_tv"] == pytest.approx(0, abs=1e-6) and rows[0]["route_kl"] == pytest.approx(0, abs=1e-6)
        assert rows[1]["route_tv"] > 0  # each expert was then trained on its own states
    else:
        assert all(0 < r["route_tv"] <= 1 and r["route_kl"] > 0 for r in rows)


def test_a_damaged_trial_is_left_out_with_its_reason(tmp_path, capsys):
    import shutil

    from hubrl.benchmark import run_grid
    from hubrl.cli.bench import main
    from hubrl.errors import UsageError
    from tests.conftest import TINY_PPO, make_tiny_hub

    root = tmp_path / "grid"
    settings = dict(hub=str(make_tiny_hub(tmp_path / "hub")), n_envs=2, eval_freq=10**9, eval_episodes=1,
                    checkpoint_freq=10**9, hyperparams=dict(TINY_PPO), device="cpu")
    run_grid(root, ["Gopher"], ["hub-pathway"], [0], 64, settings=settings, workers=0, log=None)
    good = root / "Gopher" / "hub-pathway" / "s0"
    bad = root / "Gopher" / "hub-pathway" / "s1"
    shutil.copytree(good, bad)
    (bad / "model.zip").write_bytes(b"PK\x03\x04 torn")
    assert main(["routes", str(root), "--states", "8"]) == 0
    out = capsys.readouterr().out
    assert f"left out {bad}: {bad / 'model.zip'} cannot be loaded" in out
    text = (root / "report" / "routes.md").read_text()
    assert "| Gopher | hub-pathway | 0 |" in text and "| Gopher | hub-pathway | 1 |" not in text and "Left out" in text
    shutil.rmtree(good)
    with pytest.raises(UsageError, match=r"no k=1 hub-pathway trial with a usable model.zip \(1 left out: .*cannot be loaded"):
        main(["routes", str(root)])
