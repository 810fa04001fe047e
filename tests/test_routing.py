"""Hub-Pathway really routes (issue 14): even start, acting routes replayed in the update,
balancing on actual assignments, routes surviving save/load, gate diagnostics."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure

import hubrl  # noqa: F401
from hubrl.agents import HubA2C, HubPPO
from hubrl.agents.routing import RoutedRolloutBuffer, fuse_adam
from hubrl.envs import make_atari_vec_env
from hubrl.hub import resolve_hub
from hubrl.losses import entropy_balance_loss, exploration_loss, importance_load_loss, switch_balance_loss
from hubrl.pathway import PathwayGenerator
from hubrl.policies import HubPathwayPolicy, load_hub_weights

TINY = {HubPPO: dict(n_steps=32, batch_size=64, n_epochs=2), HubA2C: dict(n_steps=8)}


def _agent(algo, hub, tmp_path, lr=0.0, n_envs=4, seed=0, **policy_kwargs):
    env = make_atari_vec_env("Gopher", n_envs, seed=seed)
    model = algo(HubPathwayPolicy, env, learning_rate=lr, seed=seed, device="cpu",
                 policy_kwargs=dict(expert_names=hub.names, **policy_kwargs), **TINY[algo])
    load_hub_weights(model.policy, hub)
    model.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    return model


def _collect(model):
    """One rollout into the model's buffer, as learn() does it."""
    model._setup_learn(total_timesteps=10**6)
    from stable_baselines3.common.callbacks import BaseCallback

    class Nothing(BaseCallback):
        def _on_step(self):
            return True

    callback = Nothing()
    callback.init_callback(model)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


@pytest.fixture
def hub(tiny_hub):
    return resolve_hub(str(tiny_hub), [])


@pytest.mark.parametrize("algo", [HubPPO, HubA2C])
@pytest.mark.parametrize("policy_kwargs", [{}, {"top_k": 2}, {"noise": "learned", "aggregation": "heads"}])
def test_update_sees_exactly_the_acting_policy(algo, policy_kwargs, hub, tmp_path):
    """Before any gradient step, the update's log-probabilities are the acting ones (ratio exactly 1)."""
    model = _agent(algo, hub, tmp_path, **policy_kwargs)
    _collect(model)
    assert isinstance(model.rollout_buffer, RoutedRolloutBuffer)
    model.policy.set_training_mode(True)  # as train() does: noise on, so only the stored route can match
    for data in model.rollout_buffer.get(64):
        _, log_prob, _ = model._evaluate(data, data.actions.long().flatten())
        # equal up to float32 rounding of different batch sizes (a plain CnnPolicy shows the same)
        assert th.allclose(log_prob, data.old_log_prob, rtol=0, atol=2e-6)
        # and this is the stored route's doing: fresh noise in the update gives other pathways
        _, fresh, _ = model.policy.evaluate_actions(data.observations, data.actions.long().flatten())
        assert (fresh - data.old_log_prob).abs().max() > 1e-4


@pytest.mark.parametrize("algo", [HubPPO, HubA2C])
def test_train_evaluates_every_batch_on_its_stored_routes(algo, hub, tmp_path):
    """The algorithms' own ``train()`` (not only the helper above) hands each batch's stored routes to
    ``evaluate_actions``: at learning rate 0 every batch's log-probabilities are the acting ones."""
    model = _agent(algo, hub, tmp_path)
    _collect(model)
    buffer, policy = model.rollout_buffer, model.policy
    batches, seen = [], []
    get, evaluate = buffer.get, policy.evaluate_actions

    def recording_get(*args, **kwargs):
        for data in get(*args, **kwargs):
            batches.append(data)
            yield data

    def spy(observations, actions, *args, **kwargs):
        out = evaluate(observations, actions, *args, **kwargs)
        seen.append((kwargs.get("route"), out[1].detach()))
        return out

    buffer.get, policy.evaluate_actions = recording_get, spy
    model.train()
    assert len(seen) == len(batches) > 0
    for (route, log_prob), data in zip(seen, batches):
        assert route is not None
        assert th.allclose(log_prob, data.old_log_prob, rtol=0, atol=2e-6)


@pytest.mark.parametrize("algo", [HubPPO, HubA2C])
def test_gae_bootstrap_values_come_from_acting_routes(algo, hub, tmp_path):
    """SB3 bootstraps GAE with ``predict_values`` on the rollout's last observations: the values
    of one acting draw of the route, as every stored value is, not of the noise-free route."""
    model = _agent(algo, hub, tmp_path)
    policy, seen = model.policy, []
    noise_free = policy.predict_values

    def spy(obs):
        seen.append(policy.values_as_acting)
        return noise_free(obs)

    policy.predict_values = spy
    _collect(model)
    assert seen and all(seen)
    assert not policy.values_as_acting  # outside the rollout, values are noise-free again
    policy.eval()
    obs = th.randint(0, 255, (64, 4, 84, 84), dtype=th.uint8)
    with th.no_grad():
        th.manual_seed(5)
        _, acting, _ = policy(obs)
        route = policy.pop_acting_route()
        th.manual_seed(5)
        with policy.acting_values():
            bootstrap = noise_free(obs)
        deterministic = noise_free(obs)
    assert th.equal(bootstrap, acting)  # the same draw gives the acting values exactly
    greedy = policy.extractor.gate(policy.preprocess(obs)).selected
    assert (route.selected != greedy).any() and not th.allclose(deterministic, acting)
    with pytest.raises(RuntimeError, match="acting route"):
        policy.pop_acting_route()  # a bootstrap value is not an acting step: no route for the buffer


def test_ppo_with_learning_rate_zero_logs_kl_and_clip_fraction_zero(hub, tmp_path):
    model = _agent(HubPPO, hub, tmp_path, top_k=1)
    model.learn(256)
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "log" / "progress.csv")) if r.get("train/approx_kl")]
    assert rows and all(float(r["train/approx_kl"]) == 0.0 and float(r["train/clip_fraction"]) == 0.0 for r in rows)
    assert all(float(r["train/gate_reroute_frac"]) == 0.0 for r in rows)


def test_acting_draws_noise_and_predict_is_noise_free(hub, tmp_path):
    policy = _agent(HubPPO, hub, tmp_path).policy.eval()
    obs = th.randint(0, 255, (64, 4, 84, 84), dtype=th.uint8)
    with th.no_grad():
        policy(obs)
        first = policy.pop_acting_route()
        policy(obs)
        second = policy.pop_acting_route()
    assert not th.equal(first.noise, second.noise)
    assert (first.selected != second.selected).any()  # the noise decides routes at an even start
    a, _ = policy.predict(obs.numpy(), deterministic=True)
    b, _ = policy.predict(obs.numpy(), deterministic=True)
    assert np.array_equal(a, b)
    with pytest.raises(RuntimeError, match="acting route"):
        policy.pop_acting_route()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gate_starts_even_after_sb3_init(hub, tmp_path, seed):
    """SB3's orthogonal init used to leave a fixed logit gap (>= 96.9% of frames to one expert)."""
    policy = _agent(HubPPO, hub, tmp_path, seed=seed).policy.eval()  # SB3 seeds torch: each seed its own init
    th.manual_seed(seed)
    obs = th.randint(0, 255, (512, 4, 84, 84), dtype=th.uint8)
    with th.no_grad():
        routing = policy.extractor.gate(policy.preprocess(obs))
        policy(obs)
    assert (routing.clean.max(1).values - routing.clean.min(1).values).max() < 1e-2
    assert th.allclose(routing.probs, th.full_like(routing.probs, 0.5), atol=1e-2)
    share = [stats["selection_freq"] for stats in policy.usage().values()]
    assert all(0.4 < s < 0.6 for s in share), share


def test_selection_frequency_counts_the_gates_selections_not_nonzero_weights(hub, tmp_path):
    """With top-k 2 of 2 experts every state selects both; a logit gap past float32's range gives
    the second a weight of exactly 0, and it is still selected (its encoder runs, its route is
    stored): ``selection_freq`` is 1 for each, not the share of states where its weight is non-zero."""
    policy = _agent(HubPPO, hub, tmp_path, top_k=2).policy.eval()
    with th.no_grad():
        policy.extractor.gate.w_gate.bias.copy_(th.tensor([0.0, -200.0]))
        policy(th.randint(0, 255, (8, 4, 84, 84), dtype=th.uint8))
    policy.pop_acting_route()
    usage = policy.usage()
    assert usage[hub.names[1]]["weight_mean"] == 0.0
    assert [stats["selection_freq"] for stats in usage.values()] == [1.0, 1.0]


def test_switch_loss_sees_collapsed_assignments_that_entropy_misses():
    batch = 100
    probs = th.tensor([[0.6, 0.4]]).repeat(batch, 1)
    collapsed = th.zeros(batch, 1, dtype=th.long)
    balanced = th.arange(batch).remainder(2).unsqueeze(1)
    assert entropy_balance_loss(probs).item() < 0.05
    assert switch_balance_loss(probs, collapsed).item() == pytest.approx(1.2)
    assert switch_balance_loss(th.full((batch, 2), 0.5), balanced).item() == pytest.approx(1.0)
    # its gradient pushes probability away from the over-used expert
    logits = th.log(probs).clone().requires_grad_(True)
    switch_balance_loss(th.softmax(logits, 1), collapsed).backward()
    assert logits.grad[:, 0].sum() > 0 > logits.grad[:, 1].sum()


def test_with_every_expert_selected_the_switch_loss_is_constant_and_the_others_still_balance():
    """k = K: f_i = 1/K whatever the gate does, so the switch loss is 1 with no gradient even for a
    gate leaning 0.9 / 0.1; the importance and entropy forms still push the weights back to even
    (why a --top-k equal to the hub size warns with the switch loss)."""
    gate = PathwayGenerator(4, 2, 2, noise=1.0)
    with th.no_grad():
        gate.w_gate.bias.copy_(th.tensor([2.2, 0.0]))
    routing = gate(th.rand(32, 4, 84, 84), explore=True)
    assert routing.selected.shape == (32, 2)
    switch = exploration_loss(routing, "switch")
    assert switch.item() == pytest.approx(1.0)
    (grad,) = th.autograd.grad(switch, gate.w_gate.bias, allow_unused=True)
    assert grad is None or grad.abs().max() < 1e-7
    for kind in ("importance-load", "entropy"):
        (grad,) = th.autograd.grad(exploration_loss(gate(th.rand(32, 4, 84, 84), explore=True), kind), gate.w_gate.bias)
        assert grad[0] > 0 > grad[1], (kind, grad)  # descent lowers the favoured expert's logit


def test_cv_squared_is_shazeers_with_the_population_variance():
    """``cv_squared`` of tensor2tensor's noisy top-k gating (``tf.nn.moments``: population variance),
    so ``--exploration-loss importance-load`` weighs its terms as the paper does (the unbiased
    variance doubles them at K = 2)."""
    from hubrl.losses import cv_squared

    assert cv_squared(th.tensor([3.0, 1.0])).item() == pytest.approx(0.25)  # mean 2, variance 1
    assert cv_squared(th.tensor([1.0, 1.0, 1.0])).item() == 0.0
    assert cv_squared(th.tensor([5.0])).item() == 0.0


def test_importance_load_loss_is_larger_for_a_collapsed_gate():
    gate = PathwayGenerator(4, 3, 1, noise="learned")
    obs = th.rand(64, 4, 84, 84)
    even = gate(obs, explore=True)
    with th.no_grad():
        gate.w_gate.bias.copy_(th.tensor([5.0, 0.0, 0.0]))
    collapsed = gate(obs, explore=True)
    assert importance_load_loss(collapsed).item() > importance_load_loss(even).item() + 0.5
    importance_load_loss(collapsed).backward()
    assert gate.w_gate.bias.grad.abs().sum() > 0 and gate.w_noise.bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="choose one of"):
        exploration_loss(collapsed, "nope")


def test_importance_load_compares_each_expert_with_the_others_under_a_replayed_route():
    """The load term's threshold for expert i is the k-th largest of the *other* experts' noisy
    logits. Under a replayed route the stored selection may no longer be the current top k; the
    order statistic must follow the current logits, else an expert is measured against its own logit."""
    from hubrl.pathway import Routing

    clean = th.tensor([[1.0, 2.0, 0.0]])
    std = th.ones_like(clean)
    weights = th.tensor([[1.0, 0.0, 0.0]])

    def routing(selected):
        return Routing(weights, th.tensor([[selected]]), th.softmax(clean, 1), clean, clean, std, th.zeros_like(clean))

    # the current top 1 is expert 1: P(in top) = Phi(1 - 2), Phi(2 - 1), Phi(0 - 2)
    normal = th.distributions.Normal(0.0, 1.0)
    load = normal.cdf(th.tensor([-1.0, 1.0, -2.0]))
    expected = (weights.sum(0).var(unbiased=False) / weights.sum(0).mean() ** 2
                + load.var(unbiased=False) / load.mean() ** 2)
    assert importance_load_loss(routing(1)).item() == pytest.approx(expected.item(), rel=1e-5)
    assert importance_load_loss(routing(0)).item() == pytest.approx(expected.item(), rel=1e-5)  # acted on expert 0


def test_replayed_route_keeps_selection_and_gradient():
    gate = PathwayGenerator(4, 4, 2, noise="learned", noise_floor=0.3)
    obs = th.rand(16, 4, 84, 84)
    acted = gate(obs, explore=True)
    with th.no_grad():
        gate.w_gate.bias.add_(th.tensor([3.0, 0.0, 0.0, -3.0]))  # the gate moves in the update
    replay = gate(obs, noise=acted.noise, selected=acted.selected)
    assert th.equal(replay.selected, acted.selected)
    (replay.weights * th.randn_like(replay.weights)).sum().backward()
    assert gate.w_gate.weight.grad.abs().sum() > 0
    # the noise std never falls below the floor
    with th.no_grad():
        gate.w_noise.bias.fill_(-50.0)
    assert gate(obs, explore=True).noise_std.min().item() == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize("k1_weight", ["straight-through", "prob"])
def test_task_loss_does_not_train_the_noise_std(k1_weight):
    """The selected expert's noise draw is positive on average, so through the weights a larger std
    means more weight for it: the task loss would tune the std as a scale (it grew to 46 in the 1M
    grid). Only a balancing loss that looks at the std may train it."""
    th.manual_seed(0)
    gate = PathwayGenerator(4, 2, 1, noise="learned", noise_floor=0.3, k1_weight=k1_weight)
    obs = th.rand(256, 4, 84, 84)
    routing = gate(obs, explore=True)
    (-routing.weights.gather(1, routing.selected).mean()).backward()  # "more weight on the winner"
    assert gate.w_gate.weight.grad.abs().sum() > 0
    assert gate.w_noise.weight.grad is None or gate.w_noise.weight.grad.abs().sum() == 0
    assert gate.w_noise.bias.grad is None or gate.w_noise.bias.grad.abs().sum() == 0
    gate.zero_grad()
    importance_load_loss(gate(obs, explore=True)).backward()
    assert gate.w_noise.bias.grad.abs().sum() > 0


def test_default_gate_noise_is_a_fixed_std():
    gate = PathwayGenerator(4, 2, 1)
    assert gate.w_noise is None and gate.noise_std == 1.0
    routing = gate(th.rand(8, 4, 84, 84), explore=True)
    assert th.equal(routing.noise_std, th.ones(8, 2))


def test_straight_through_weight_is_one_with_the_gate_gradient():
    gate = PathwayGenerator(4, 2, 1, noise=0.0, k1_weight="straight-through")
    routing = gate(th.rand(8, 4, 84, 84))
    assert th.equal(routing.weights.sum(1), th.ones(8))
    (routing.weights * th.randn_like(routing.weights)).sum().backward()
    assert gate.w_gate.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_routes_survive_save_load_and_stock_ppo_still_opens(hub, tmp_path):
    model = _agent(HubPPO, hub, tmp_path, top_k=2, noise_floor=0.5, k1_weight="straight-through",
                   exploration_loss="importance-load")
    model.learn(128)
    model.save(tmp_path / "model.zip")
    loaded = HubPPO.load(tmp_path / "model.zip", env=make_atari_vec_env("Gopher", 4, seed=3), device="cpu")
    assert isinstance(loaded.rollout_buffer, RoutedRolloutBuffer) and loaded.rollout_buffer.top_k == 2
    gate = loaded.policy.extractor.gate
    assert (gate.noise_floor, gate.k1_weight, loaded.policy.exploration_kind) == (0.5, "straight-through", "importance-load")
    loaded.learning_rate = 0.0
    loaded._setup_lr_schedule()
    loaded.set_logger(configure(str(tmp_path / "log2"), ["csv"]))
    loaded.learn(256, reset_num_timesteps=False)
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "log2" / "progress.csv")) if r.get("train/approx_kl")]
    assert rows and all(float(r["train/approx_kl"]) == 0.0 for r in rows)
    stock = PPO.load(tmp_path / "model.zip", device="cpu")
    assert type(stock.policy) is HubPathwayPolicy


def test_gate_stats_measure_spread_across_states_and_drift_in_time(hub, tmp_path):
    policy = _agent(HubPPO, hub, tmp_path).policy.eval()
    obs = th.randint(0, 255, (32, 4, 84, 84), dtype=th.uint8)
    with th.no_grad():
        policy(obs)
    first = policy.gate_stats()
    assert set(first) == {"noise_std", "logit_spread"}
    assert first["noise_std"] == pytest.approx(1.0, rel=1e-6)  # the default fixed std
    policy.reset_usage()
    with th.no_grad():
        policy.extractor.gate.w_gate.bias.copy_(th.tensor([1.0, -1.0]))
        policy(obs)
    second = policy.gate_stats()
    assert second["logit_drift"] == pytest.approx(1.0, abs=1e-3)  # each centred logit moved by 1
    assert second["logit_spread"] == pytest.approx(first["logit_spread"], abs=1e-6)  # a bias moves no state apart


def test_adam_is_fused_where_torch_offers_it(hub, tmp_path):
    model = _agent(HubPPO, hub, tmp_path)
    optimizer = model.policy.optimizer
    assert optimizer.defaults["eps"] == 1e-5  # SB3's Adam epsilon kept
    from hubrl.agents.routing import fused_adam_available

    assert optimizer.defaults.get("fused") is (True if fused_adam_available("cpu") else None)
    assert fuse_adam(model.policy) is False  # idempotent


def test_a_fused_optimizer_state_loads_where_fused_adam_is_missing(hub, tmp_path, monkeypatch):
    """A model saved with fused Adam (torch >= 2.4 on a CPU, or a GPU) keeps training where this
    torch has none for the device (torch 2.3 on a CPU): ``load`` and a checkpoint's resume turn the
    loaded state's ``fused`` flag off instead of failing at the first step."""
    import hubrl.agents.routing as routing
    from hubrl.checkpoint import load_training_checkpoint, restore_training_state, save_training_checkpoint

    model = _agent(HubPPO, hub, tmp_path)
    model.policy.optimizer.param_groups[0]["fused"] = True  # as saved where fused Adam exists
    model.save(tmp_path / "model.zip")
    checkpoint = save_training_checkpoint(model, tmp_path / "checkpoint.pt")
    monkeypatch.setattr(routing, "fused_adam_available", lambda device_type: False)
    loaded = HubPPO.load(tmp_path / "model.zip", env=model.get_env(), device="cpu")
    assert [g["fused"] for g in loaded.policy.optimizer.param_groups] == [False]
    fresh = _agent(HubPPO, hub, tmp_path)
    fresh.policy.optimizer.param_groups[0]["fused"] = True  # the flag the checkpoint's state brings
    restore_training_state(fresh, load_training_checkpoint(checkpoint))
    assert [g["fused"] for g in fresh.policy.optimizer.param_groups] == [False]
    loaded.learn(64)  # trains
    fresh.learn(64)  # trains (that the state itself is restored: test_resume.py)


def test_bf16_precision_autocasts_only_the_encoders(hub, tmp_path):
    from hubrl.runtime import apply_precision

    model = _agent(HubPPO, hub, tmp_path)
    policy = model.policy.eval()
    obs = th.randint(0, 255, (8, 4, 84, 84), dtype=th.uint8)
    x = policy.preprocess(obs)
    expert = policy.extractor.experts[0]
    fp32 = expert(x)
    assert apply_precision(policy, "fp32") == 0
    assert apply_precision(policy, "bf16") == 2 and apply_precision(policy, "bf16") == 0  # once per encoder
    bf16 = expert(x)
    assert bf16.dtype == th.float32 and not th.equal(bf16, fp32)  # computed in bf16, handed on as float32
    assert th.allclose(bf16, fp32, atol=0.05, rtol=0.05)
    assert policy.extractor.gate(x).logits.dtype == th.float32
    assert all(v.dtype == th.float32 for v in policy.state_dict().values() if v.is_floating_point())
    model.learn(64)  # trains end to end
    with pytest.raises(ValueError, match="--precision"):
        apply_precision(policy, "fp8")


def test_threads_default_leaves_torchs_setting_and_a_number_sets_it():
    """A single run keeps torch's default (one thread per core, or OMP_NUM_THREADS): 1.76x faster PPO
    than 1 thread on an idle 2-core VM (BENCHMARKS.md); ``--threads N`` sets N."""
    from hubrl.runtime import DEFAULT_THREADS, configure_threads

    before = th.get_num_threads()
    try:
        assert DEFAULT_THREADS is None
        th.set_num_threads(2)
        assert configure_threads(None) == 2 and th.get_num_threads() == 2
        assert configure_threads(1) == 1 and th.get_num_threads() == 1
        with pytest.raises(ValueError, match="at least 1"):
            configure_threads(0)
    finally:
        th.set_num_threads(before)


def test_a_run_at_default_threads_on_busy_cores_is_told_to_take_fewer():
    """Torch's 2 threads beside two grid trials on 2 cores trained PPO at 57-58 agent steps/s
    against 134-151 with one (BENCHMARKS.md): a CPU run left at the default on a machine already
    that busy is told, in one line, to pass --threads 1. Not changed behind its back (the thread
    count changes a run's sums), and nothing is said for a chosen --threads, a GPU, or idle cores."""
    from hubrl.runtime import busy_cores_warning

    before = th.get_num_threads()
    try:
        th.set_num_threads(2)
        said = busy_cores_warning(None, "cpu", load=2.1, cores=2)
        assert said is not None and said.startswith("this machine is busy (load 2.1 on 2 cores)") and "--threads 1" in said
        assert busy_cores_warning(None, "cpu", load=1.2, cores=2) is not None  # one core left: 2 threads would share it
        assert busy_cores_warning(None, "cpu", load=0.6, cores=2) is None  # idle but for this run's own start
        assert busy_cores_warning(2, "cpu", load=3.0, cores=2) is None  # chosen
        assert busy_cores_warning(None, "cuda", load=3.0, cores=2) is None
        assert busy_cores_warning(None, "cpu", load=4.0, cores=16) is None  # 12 idle cores for 2 threads
        th.set_num_threads(1)
        assert busy_cores_warning(None, "cpu", load=3.0, cores=2) is None  # one thread stalls nothing
    finally:
        th.set_num_threads(before)
