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
from hubrl.route_analysis import per_route_outputs, route_distances, route_divergence


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
    generator = th.random.get_rng_state()
    different = route_divergence(policy, obs)
    assert th.equal(th.random.get_rng_state(), generator)  # seeded without touching the global generator
    assert different.kl > 1e-6 and different.tv > 1e-4
    assert sum(different.clean_share) == pytest.approx(1) and sum(different.acting_share) == pytest.approx(1)
    assert min(different.acting_share) > 0.2  # an even gate with noise 1.0 acts with both experts
    assert route_distances(policy, obs) == pytest.approx((different.kl, different.tv))  # what training logs
    policy.extractor.experts[1].load_state_dict(policy.extractor.experts[0].state_dict())
    same = route_divergence(policy, obs)
    assert same.kl == pytest.approx(0, abs=1e-6) and same.tv == pytest.approx(0, abs=1e-6)
    assert same.argmax_differs == 0 and same.value_gap == pytest.approx(0, abs=1e-6)
    assert same.states == 64 and same.acting_share == different.acting_share  # the acting draw is seeded


def test_gate_noise_in_predict_plays_the_acting_routes_and_only_inside_the_block(hub):
    from hubrl.policies import predict_with_gate_noise

    policy = _policy(hub)
    obs = th.randint(0, 256, (64, 4, 84, 84), dtype=th.uint8)

    def log_probs() -> th.Tensor:
        with th.no_grad():
            return policy.get_distribution(obs).distribution.logits

    clean = log_probs()
    assert th.equal(clean, log_probs())  # noise-free: the same route on every call
    per_route, _ = per_route_outputs(policy, obs)
    with predict_with_gate_noise(policy):
        noisy = [log_probs() for _ in range(2)]
    assert not th.allclose(noisy[0], noisy[1])  # a fresh draw on each call
    # each state plays exactly one expert's route, and both experts are played: the acting mixture
    matches = th.stack([(noisy[0] - per_route[i]).abs().amax(-1) < 1e-5 for i in range(2)])
    assert bool(matches.any(0).all()) and bool(matches.all(1).logical_not().all()) and bool(matches.any(1).all())
    assert th.equal(log_probs(), clean) and not policy.gate_noise_in_predict  # off again after the block
    with pytest.raises(KeyError), predict_with_gate_noise(policy):
        raise KeyError("stopped")
    assert not policy.gate_noise_in_predict  # ... also when the block raised
    with predict_with_gate_noise(policy):
        with predict_with_gate_noise(policy):
            pass
        assert policy.gate_noise_in_predict  # a nested block leaves the outer one's noise on


def test_gate_noise_is_refused_for_what_does_not_route_with_noise(hub, tiny_hub):
    from hubrl.enjoy import load_player, play
    from hubrl.errors import UsageError
    from hubrl.policies import predict_with_gate_noise

    with pytest.raises(UsageError, match="routes without noise: drop --gate-noise"), \
            predict_with_gate_noise(_policy(hub, noise=0.0)):
        pass
    with pytest.raises(UsageError, match="CnnPolicy does not route: drop --gate-noise"):
        play(load_player(expert="Seaquest", hub=tiny_hub), steps=5, gate_noise=True)


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
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.replace("\\|", "").count("|") for line in table}) == 1  # header, rule and rows: as many cells
    from hubrl.report import write_report

    assert "[routes.md](routes.md)" in write_report(root, reps=100).read_text()
    with pytest.raises(UsageError, match="no k=1 hub-pathway trial with a usable model.zip among k2"):
        main(["routes", str(root), "--method", "k2"])


@pytest.mark.slow
def test_routes_play_scores_each_agent_noise_free_and_with_its_acting_gate_noise(tmp_path):
    from hubrl.benchmark import run_grid
    from hubrl.cli.bench import main
    from tests.conftest import TINY_PPO, make_tiny_hub

    root = tmp_path / "grid"
    settings = dict(hub=str(make_tiny_hub(tmp_path / "hub")), n_envs=2, eval_freq=10**9, eval_episodes=1,
                    checkpoint_freq=10**9, hyperparams=dict(TINY_PPO), device="cpu")
    run_grid(root, ["Jamesbond"], ["hub-pathway"], [0, 1], 64, settings=settings, workers=0, log=None)
    assert main(["routes", str(root), "--states", "16", "--play", "2"]) == 0
    text = (root / "report" / "routes.md").read_text()
    assert "`hubrl-bench routes " + str(root) + " --states 16 --seed 0 --play 2`" in text
    assert "score noise-free / acting" in text and "## Scores noise-free and with the acting gate noise" in text
    summary = [line for line in text.splitlines() if line.startswith("| Jamesbond | hub-pathway | 2 | 4 |")]
    assert len(summary) == 1  # 2 trials, 2 games each per mode, pooled
    import csv

    rows = list(csv.DictReader((root / "report" / "routes.csv").open()))
    assert len(rows) == 2 and all(len(r["scores/acting"].split()) == len(r["scores/noise-free"].split()) == 2 for r in rows)


def test_gate_noise_scores_pool_the_games_of_a_game_and_say_which_mode_scores_higher():
    from hubrl.route_report import gate_noise_scores
    from hubrl.tables import gate_noise_markdown

    rows = [{"game": "Gopher", "method": "hp", "scores/noise-free": "900 1000 950", "scores/acting": "100 200 150"},
            {"game": "Gopher", "method": "hp", "scores/noise-free": "1000 980", "scores/acting": "300 120"},
            {"game": "Alien", "method": "hp", "scores/noise-free": "200 400", "scores/acting": "250 350"},
            {"game": "Alien", "method": "other"}]  # no play: left out
    table = {(r["game"], r["method"]): r for r in gate_noise_scores(rows, reps=2000)}
    assert set(table) == {("Gopher", "hp"), ("Alien", "hp")}
    gopher = table["Gopher", "hp"]
    assert gopher["trials"] == 2 and gopher["games"] == 5
    assert gopher["noise_free"] == pytest.approx(966) and gopher["acting"] == pytest.approx(174)
    assert gopher["difference"] == pytest.approx(-792) and gopher["high"] < 0 and gopher["verdict"] == "noise-free higher"
    assert table["Alien", "hp"]["verdict"] == "tie" and table["Alien", "hp"]["difference"] == pytest.approx(0)
    assert "| Gopher | hp | 2 | 5 | 966.0 | 174.0 | -792 [" in gate_noise_markdown(list(table.values()))


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
    model.learn(128, callback=GateUsageCallback(history_path=tmp_path / "gates.jsonl", route_every=1))
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


def test_route_tv_is_measured_on_the_first_rollout_then_every_route_every_steps(hub, tmp_path):
    """Usage is logged every rollout; the routes are compared on the first one and then once
    ``route_every`` steps have passed (A2C's short rollouts would otherwise pay 17% for it)."""
    from hubrl.agents import HubA2C
    from hubrl.callbacks import GateUsageCallback, read_gate_history

    env = make_atari_vec_env("Gopher", 2, seed=0)
    model = HubA2C(HubPathwayPolicy, env, n_steps=5, seed=0, device="cpu", policy_kwargs=dict(expert_names=hub.names))
    load_hub_weights(model.policy, hub)
    model.learn(100, callback=GateUsageCallback(history_path=tmp_path / "gates.jsonl", route_every=30))
    env.close()
    rows = read_gate_history(tmp_path / "gates.jsonl")
    assert [r["step"] for r in rows] == list(range(10, 101, 10))  # every 10-step rollout logs its usage
    assert [r["step"] for r in rows if "route_tv" in r] == [10, 40, 70, 100]


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
    assert f"left out {bad}: {bad / 'model.zip'} is not a readable SB3 model" in out
    text = (root / "report" / "routes.md").read_text()
    assert "| Gopher | hub-pathway | 0 |" in text and "| Gopher | hub-pathway | 1 |" not in text and "Left out" in text
    shutil.rmtree(good)
    with pytest.raises(UsageError, match=r"no k=1 hub-pathway trial with a usable model.zip "
                                         r"\(1 left out: .*not a readable SB3 model"):
        main(["routes", str(root)])


def test_a_one_expert_hub_has_one_route_and_no_distance_between_routes(hub):
    """A hub of one expert (``--hub`` an expert folder): zero distances, not the NaN of an empty mean
    (which gates.jsonl would hold as invalid JSON), and training logs none."""
    from hubrl.callbacks import GateUsageCallback
    from hubrl.hub import Hub

    policy = _policy(Hub(hub.experts[:1]))
    obs = th.randint(0, 256, (8, 4, 84, 84), dtype=th.uint8)
    assert route_distances(policy, obs) == (0.0, 0.0)
    divergence = route_divergence(policy, obs)
    assert divergence.tv == 0.0 and divergence.clean_share == [1.0] and divergence.value_scale > 0

    class Model:  # what the callback reads of a model at a rollout's end
        rollout_buffer = type("Buffer", (), {"observations": obs.numpy(), "obs_shape": (4, 84, 84)})()

    callback = GateUsageCallback(prefix="pathway")
    callback.model = Model()
    assert callback._route_stats(policy) == {}


def test_the_states_routes_measures_are_the_same_for_the_same_seed(hub):
    """``hubrl-bench routes --seed S`` repeated on the same weights measures the same states: the
    sampled actions of the play that collects them come from the seed, not from torch's generator
    wherever it stands (which made a repeat read Alien's TV 0.434, then 0.423). The caller's
    generator is left as it was."""
    from hubrl.route_analysis import collect_states

    policy = _policy(hub)
    th.manual_seed(123)
    first = collect_states(policy, "Gopher", 96, seed=0, n_envs=2, every=2)
    after = th.rand(1)
    th.manual_seed(123)
    th.rand(7)  # the generator elsewhere: the states must not depend on it
    again = collect_states(policy, "Gopher", 96, seed=0, n_envs=2, every=2)
    assert (first == again).all()
    th.manual_seed(123)
    collect_states(policy, "Gopher", 96, seed=0, n_envs=2, every=2)
    assert th.equal(th.rand(1), after)  # the caller's generator as if no play had drawn from it
    other = collect_states(policy, "Gopher", 96, seed=1, n_envs=2, every=2)
    assert not (first == other).all()
