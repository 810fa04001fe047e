"""GPU readiness, checked on a CPU (issue 18): what goes wrong on a GPU and passes every CPU test.

* **A tensor made without ``device=``** lands on torch's default device (the CPU) while the model
  is on the GPU: the op where they meet raises, or, for a 0-d tensor, copies it over. On a CPU-only
  machine both are CPU tensors and nothing shows. The *trap* here keeps the model on the CPU and
  makes ``meta`` torch's default device while the code under test runs (``with th.device("meta")``):
  a tensor made without ``device=`` is then a meta tensor, and the first op that meets the model's
  CPU tensors raises ("Tensor on device meta is not on the expected device cpu", or the op's own
  device check). Meta is stricter than CUDA (it refuses 0-d tensors too). Modules must be built
  outside the trap: their parameters would be meta tensors.
* **Host syncs.** On a GPU, ``.item()``, ``.cpu()``, ``float(t)``, ``bool(t)`` ... wait for every
  queued kernel. SB3 reads a few values back per acting step and per minibatch; the counts here
  hold hubrl's policies to what routing must read on top of that (the acting route for the
  rollout buffer; ``nonzero`` per expert, whose output size is data-dependent).
* **bf16 autocast** must use the device type of the tensors it computes on.
* **Checkpoints** written on a GPU must open on a CPU-only machine.

The device flags' one-line errors (``--device cuda`` without a GPU, in every command) are rows of
``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import ActorCriticCnnPolicy
from torch.overrides import TorchFunctionMode

import hubrl  # noqa: F401
from hubrl.agents import HubA2C, HubPPO
from hubrl.envs import make_atari_vec_env
from hubrl.hub import load_hub
from hubrl.methods import plan_method
from hubrl.runtime import apply_precision
from hubrl.transfer import TransferConfig
from tests.conftest import ROOT

TRAP = "meta"


@contextlib.contextmanager
def default_device_trap():
    """Make ``meta`` torch's default device: a tensor made without ``device=`` cannot meet the model's."""
    with th.device(TRAP):
        yield


def test_the_trap_catches_a_tensor_made_without_device():
    weights = th.ones(3)
    with default_device_trap(), pytest.raises((RuntimeError, NotImplementedError)):
        weights + th.zeros(3)  # the bug: th.zeros(3, device=weights.device) was meant
    with default_device_trap():
        assert th.equal(weights + th.zeros_like(weights), weights)  # made where its input is: fine


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from tests.conftest import make_tiny_hub

    return load_hub(make_tiny_hub(tmp_path_factory.mktemp("hub")))


@pytest.fixture(scope="module")
def env():
    env = make_atari_vec_env("Gopher", 2, seed=0)
    yield env
    env.close()


# (id, method, TransferConfig overrides, precision): every policy and loss a transfer can build
METHOD_CASES = [
    ("scratch", "scratch", {}, "fp32"),
    ("finetune", "finetune", {"source": "seaquest-ppo"}, "fp32"),
    ("zoo-tuning", "zoo-tuning", {}, "fp32"),
    ("zoo-tuning-lite", "zoo-tuning", {"lite": True}, "fp32"),
    ("hub-pathway", "hub-pathway", {}, "bf16"),
    ("hub-pathway-k2-heads-importance-load", "hub-pathway",
     {"top_k": 2, "aggregation": "heads", "exploration_loss": "importance-load", "noise": 0.5, "k1_weight": "prob"}, "fp32"),
    ("hub-pathway-entropy-frozen", "hub-pathway", {"exploration_loss": "entropy", "freeze_experts": True}, "fp32"),
]
TINY = {HubPPO: dict(n_steps=8, batch_size=8, n_epochs=2), HubA2C: dict(n_steps=8)}


def _agent(algo, env, hub, method, overrides, precision):
    """The agent ``hubrl.transfer`` builds for ``method`` (its plan: policy, kwargs, callbacks), built
    on the CPU outside the trap; returns it with the plan."""
    cfg = TransferConfig(env="Gopher", method=method, **overrides)
    plan = plan_method(cfg, hub if method != "scratch" else None, "gopher")
    model = algo(plan.policy, env, seed=0, device="cpu", policy_kwargs=plan.policy_kwargs, **TINY[algo])
    model.set_logger(configure(None, [""]))
    apply_precision(model.policy, precision)
    return model, plan


@pytest.mark.parametrize("algo", [HubPPO, HubA2C], ids=["ppo", "a2c"])
@pytest.mark.parametrize("method, overrides, precision", [c[1:] for c in METHOD_CASES], ids=[c[0] for c in METHOD_CASES])
def test_training_makes_no_tensor_off_the_model_device(algo, method, overrides, precision, env, hub):
    """Loading the hub's weights, rollouts with the methods' callbacks, updates with the auxiliary
    losses and replayed routes, predict: all under the trap."""
    model, plan = _agent(algo, env, hub, method, overrides, precision)
    obs = env.reset()
    with default_device_trap():
        plan.init(model.policy)
        model.learn(32, callback=CallbackList(list(plan.callbacks)))
        model.predict(obs, deterministic=True)
        model.policy.predict_values(th.as_tensor(obs, device=model.device))
        if overrides.get("lite"):
            from hubrl.zoo_tuning import merge_lite

            merge_lite(model.policy)


def _random_target_data():
    from hubrl.selection import TargetData

    frames = np.random.default_rng(0).integers(0, 255, (6, 4, 84, 84), dtype=np.uint8)
    return TargetData.from_observations(frames, np.arange(6.0), np.arange(6) // 3)


def test_select_features_make_no_tensor_off_the_encoder_device():
    from hubrl.selection import encoder_features, random_encoder

    data = _random_target_data()
    encoder = random_encoder(data.observation_shape)
    with default_device_trap():
        features = encoder_features(encoder, data, batch_size=4)
    assert features.shape == (6, 512) and features.dtype == np.float32


@pytest.mark.slow
def test_a_transfer_run_trains_checkpoints_evaluates_and_resumes_inside_the_trap(tmp_path, hub, monkeypatch):
    """``run_training`` (restore, rollouts, evaluation, checkpoints, gate logging) inside the trap;
    the agent and envs are built by ``run_transfer`` outside it."""
    import hubrl.harness
    from hubrl.training import run_training
    from hubrl.transfer import run_transfer
    from tests.conftest import TINY_PPO

    def trapped(*args, **kwargs):
        with default_device_trap():
            return run_training(*args, **kwargs)

    monkeypatch.setattr(hubrl.harness, "run_training", trapped)
    hub_dir = Path(hub.experts[0].source).parent
    cfg = dict(env="Gopher", method="hub-pathway", hub=str(hub_dir), timesteps=128, n_envs=2, out=str(tmp_path / "run"),
               eval_freq=64, eval_episodes=1, checkpoint_freq=64, hyperparams=dict(TINY_PPO), device="cpu")
    first = run_transfer(TransferConfig(**cfg), progress_bar=False, verbose=0, pause_at=64)
    assert first.outcome.paused
    resumed = run_transfer(TransferConfig(**cfg), resume=True, progress_bar=False, verbose=0)
    assert resumed.outcome.completed and resumed.outcome.num_timesteps == 128


# ----------------------------------------------------------------------------- host syncs

#: Tensor reads that make the host wait for the GPU (``numpy`` needs a ``cpu`` first there).
SYNCS = {"item", "cpu", "tolist", "__float__", "__int__", "__bool__", "__index__"}


#: Ops whose output size depends on the data: on a GPU they read it back to size the output.
DATA_SIZED = {"nonzero", "bincount", "unique", "masked_select", "repeat_interleave"}


class CountHostReads(TorchFunctionMode):
    """Counts the torch calls that read a tensor back to the host (:data:`SYNCS`), and those whose
    output size depends on the data (:data:`DATA_SIZED`, ``nonzero`` for routing)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs = self.nonzero = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        self.syncs += name in SYNCS
        self.nonzero += name in DATA_SIZED
        return func(*args, **(kwargs or {}))


class _Nothing(BaseCallback):
    def _on_step(self) -> bool:
        return True


def _reads(model, steps: int) -> tuple[CountHostReads, CountHostReads]:
    """Host reads of one rollout of ``steps`` vector steps, then of its update."""
    model._setup_learn(total_timesteps=10**6)
    callback = _Nothing()
    callback.init_callback(model)
    with CountHostReads() as rollout:
        model.collect_rollouts(model.env, callback, model.rollout_buffer, steps)
    with CountHostReads() as update:
        model.train()
    return rollout, update


@pytest.mark.parametrize("method, overrides", [
    ("hub-pathway", {}),
    ("hub-pathway", {"top_k": 2, "aggregation": "heads", "exploration_loss": "entropy"}),
    ("hub-pathway", {"exploration_loss": "importance-load"}),
    ("zoo-tuning", {}),
], ids=["hub-pathway", "hub-pathway-k2-heads-entropy", "hub-pathway-importance-load", "zoo-tuning"])
def test_hub_policies_read_back_only_what_routing_needs(method, overrides, env, hub):
    """Against stock ``CnnPolicy`` in the same agent: Hub-Pathway may add 2 reads per acting step
    (its route's noise and experts, into the numpy rollout buffer) and ``nonzero`` once per expert and
    forward pass; Zoo-Tuning nothing. The update may add one read, of all its logged auxiliary
    scalars at once, once per update (not per minibatch, nor per scalar). A per-step ``.item()`` or
    ``float()`` (gate statistics, loss logs), a distribution's argument checks or a ``bincount`` per
    minibatch fail this."""
    steps, tiny = 16, dict(n_steps=16, batch_size=8, n_epochs=2)  # 4 minibatches per epoch, 8 in all
    stock = HubPPO("CnnPolicy", env, seed=0, device="cpu", **tiny)
    cfg = TransferConfig(env="Gopher", method=method, **overrides)
    plan = plan_method(cfg, hub, "gopher")
    ours = HubPPO(plan.policy, env, seed=0, device="cpu", policy_kwargs=plan.policy_kwargs, **tiny)
    for model in (stock, ours):
        model.set_logger(configure(None, [""]))
    stock_rollout, stock_update = _reads(stock, steps)
    rollout, update = _reads(ours, steps)
    route_reads = 2 if method == "hub-pathway" else 0
    assert rollout.syncs - stock_rollout.syncs <= route_reads * steps + 2, (rollout.syncs, stock_rollout.syncs)
    assert update.syncs - stock_update.syncs <= 1, (update.syncs, stock_update.syncs)
    experts = len(hub) if method == "hub-pathway" else 0
    assert rollout.nonzero <= experts * (steps + 1) and update.nonzero <= experts * 8


# ----------------------------------------------------------------------------- bf16 autocast


def test_bf16_autocasts_on_the_device_the_encoder_computes_on(monkeypatch):
    """The encoder is wrapped on the CPU, then the policy moves (as when a model is built on one
    device and moved, or loaded and moved): autocast must follow the input, else ``autocast("cpu")``
    around CUDA kernels would leave them silently in float32."""
    entered = []

    class RecordingAutocast:
        def __init__(self, device_type, dtype=None, **kwargs):
            entered.append((device_type, dtype))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    policy = ActorCriticCnnPolicy(space, gym.spaces.Discrete(6), lambda _: 0.0)
    assert apply_precision(policy, "bf16") == 1
    policy.to(TRAP)  # another device than the one it was wrapped on
    monkeypatch.setattr(th, "autocast", RecordingAutocast)
    features = policy.features_extractor(th.zeros(2, 4, 84, 84, device=TRAP))
    assert entered == [(TRAP, th.bfloat16)] and features.dtype == th.float32


# ----------------------------------------------------------------------------- checkpoints


def test_every_torch_load_maps_to_the_cpu_and_reads_weights_only():
    """A checkpoint written on a GPU holds CUDA tensors: ``torch.load`` without ``map_location``
    fails on a CPU-only machine (and an unmapped load is the pickle path that runs code)."""
    calls = []
    for folder in ("hubrl", "agents", "envs"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                func = getattr(node, "func", None)
                if (isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr == "load"
                        and isinstance(func.value, ast.Name) and func.value.id in ("th", "torch")):
                    keywords = {k.arg: k.value for k in node.keywords}
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    calls.append(where)
                    assert "map_location" in keywords, f"{where}: torch.load without map_location"
                    weights_only = keywords.get("weights_only")
                    assert isinstance(weights_only, ast.Constant) and weights_only.value is True, where
    assert calls, calls  # hubrl.hub.load_weights_only, which every reader of checkpoints and zips calls
    assert "load_weights_only(io.BytesIO(data))" in (ROOT / "hubrl" / "checkpoint.py").read_text()  # the bytes CRC-checked


# ----------------------------------------------------------------------------- on a GPU (scripts/gpu_check.sh)

cuda = pytest.mark.skipif(not th.cuda.is_available(),
                          reason="needs a CUDA GPU: scripts/gpu_check.sh runs these where one is lent")


@cuda
@pytest.mark.parametrize("method, overrides, precision", [c[1:] for c in METHOD_CASES], ids=[c[0] for c in METHOD_CASES])
def test_on_cuda_every_method_trains_and_acts_on_the_gpu(method, overrides, precision, env, hub):
    cfg = TransferConfig(env="Gopher", method=method, **overrides)
    plan = plan_method(cfg, hub if method != "scratch" else None, "gopher")
    model = HubPPO(plan.policy, env, seed=0, device="cuda", policy_kwargs=plan.policy_kwargs, **TINY[HubPPO])
    model.set_logger(configure(None, [""]))
    plan.init(model.policy)
    apply_precision(model.policy, precision)
    model.learn(32, callback=CallbackList(list(plan.callbacks)))
    assert {p.device.type for p in model.policy.parameters()} == {"cuda"}
    assert model.policy.optimizer.defaults.get("fused") is True  # fused Adam where torch offers it: CUDA does
    actions, _ = model.predict(env.reset())
    assert isinstance(actions, np.ndarray) and actions.shape == (2,)


@cuda
def test_on_cuda_bf16_runs_the_encoder_convolutions_in_bfloat16():
    """Wrapped on the CPU, moved to the GPU: the convolutions must see CUDA autocast."""
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    policy = ActorCriticCnnPolicy(space, gym.spaces.Discrete(6), lambda _: 0.0)
    apply_precision(policy, "bf16")
    policy.to("cuda")
    seen = []
    policy.features_extractor.cnn[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    features = policy.features_extractor(th.rand(2, 4, 84, 84, device="cuda"))
    assert seen == [th.bfloat16] and features.dtype == th.float32


@cuda
@pytest.mark.slow
def test_on_cuda_a_run_paused_on_the_gpu_resumes_on_the_cpu(tmp_path):
    """Its checkpoint holds CUDA tensors (fused Adam's step counters too): it must open and train on."""
    from hubrl.checkpoint import load_training_checkpoint
    from hubrl.transfer import run_transfer
    from tests.conftest import TINY_PPO

    cfg = dict(env="Gopher", method="hub-pathway", timesteps=128, n_envs=2, out=str(tmp_path / "run"), eval_freq=10**9,
               eval_episodes=1, checkpoint_freq=10**9, hyperparams=dict(TINY_PPO))
    assert run_transfer(TransferConfig(**cfg, device="cuda"), progress_bar=False, verbose=0, pause_at=64).outcome.paused
    state = load_training_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert {t.device.type for t in state["policy"].values()} == {"cpu"}
    resumed = run_transfer(TransferConfig(**cfg, device="cpu"), resume=True, progress_bar=False, verbose=0)
    assert resumed.outcome.completed


@cuda
def test_on_cuda_route_shares_leave_the_gpu_generator_as_it_was(hub, env):
    from hubrl.route_analysis import route_shares

    cfg = TransferConfig(env="Gopher", method="hub-pathway")
    plan = plan_method(cfg, hub, "gopher")
    model = HubPPO(plan.policy, env, seed=0, device="cuda", policy_kwargs=plan.policy_kwargs, **TINY[HubPPO])
    plan.init(model.policy)
    frames = th.randint(0, 256, (16, 4, 84, 84), dtype=th.uint8, device="cuda")  # drawn before the state is read
    generator = th.cuda.get_rng_state()
    route_shares(model.policy, frames, seed=3)
    assert th.equal(th.cuda.get_rng_state(), generator)


@cuda
def test_on_cuda_select_features_of_a_gpu_encoder_match_the_cpu():
    from hubrl.selection import encoder_features, random_encoder

    data = _random_target_data()
    encoder = random_encoder(data.observation_shape)
    on_cpu = encoder_features(encoder, data)
    on_gpu = encoder_features(encoder.to("cuda"), data)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-2, atol=1e-2 * float(np.abs(on_cpu).max()))  # cuDNN convs: TF32


def test_logged_means_keeps_each_keys_values_apart():
    """All keys' tensors are read back in one transfer, and each mean takes its own key's values in order."""
    from hubrl.agents.auxiliary import logged_means

    logs = {"a": [th.tensor(1.0), th.tensor(3.0)], "b": [2.0, th.tensor(5.0, dtype=th.float64)], "c": [0.5]}
    assert logged_means(logs) == {"a": 2.0, "b": 3.5, "c": 0.5}
    assert logged_means({}) == {}


def test_gate_usage_sums_avoid_float64_on_mps():
    """MPS has no float64: the gate-usage sums kept on the device over a rollout must be float32 there
    (a ``.double()`` on an MPS tensor raises), float64 elsewhere."""
    from hubrl.policies import usage_dtype

    assert usage_dtype(th.device("mps")) == th.float32
    assert usage_dtype(th.device("cpu")) == th.float64 and usage_dtype(th.device("cuda", 0)) == th.float64
