"""``gate_lr_scale``: Hub-Pathway's gate trained at a multiple of the agent's learning rate, in its own
optimizer parameter group, kept through the schedule, save/load, fused Adam and resume."""

from __future__ import annotations

import pytest
import torch as th
from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

import hubrl  # noqa: F401
from hubrl.agents import HubA2C, HubPPO
from hubrl.agents.routing import fused_adam_available
from hubrl.envs import make_atari_vec_env
from hubrl.errors import UsageError
from hubrl.hub import resolve_hub
from hubrl.policies import HubPathwayPolicy
from tests.test_routing import _agent, _collect


@pytest.fixture
def hub(tiny_hub):
    return resolve_hub(str(tiny_hub), [])


def _gate(model) -> th.Tensor:
    return th.cat([p.detach().flatten().clone() for p in model.policy.extractor.gate.parameters()])


def _rest(model) -> th.Tensor:
    gate = {id(p) for p in model.policy.extractor.gate.parameters()}
    return th.cat([p.detach().flatten().clone() for p in model.policy.parameters() if id(p) not in gate])


@pytest.mark.parametrize("algo, optimizer", [(HubA2C, None), (HubA2C, "RMSpropTFLike"), (HubPPO, None)])
def test_the_gate_moves_at_its_multiple_of_the_learning_rate(algo, optimizer, hub, tmp_path):
    """Same seed, same rollout, one optimizer step (PPO: one epoch over one minibatch): the gate's
    first Adam/RMSprop step is lr-proportional, so a scale of 10 moves it ten times as far, while the
    other parameters move as before."""
    moves = {}
    for scale in (1.0, 10.0):
        preset = {} if optimizer is None else dict(optimizer_class=RMSpropTFLike,  # RL Zoo's A2C preset
                                                   optimizer_kwargs=dict(alpha=0.99, eps=1e-5, weight_decay=0))
        model = _agent(algo, hub, tmp_path / str(scale), lr=lambda progress: 1e-4 * progress, gate_lr_scale=scale,
                       **preset)
        if algo is HubPPO:
            model.n_epochs, model.batch_size = 1, model.n_steps * model.n_envs
        _collect(model)
        gate, rest = _gate(model), _rest(model)
        model.train()
        lrs = [group["lr"] for group in model.policy.optimizer.param_groups]
        schedule = model.lr_schedule(model._current_progress_remaining)
        assert lrs == pytest.approx([schedule] if scale == 1.0 else [schedule, schedule * scale])
        if scale != 1.0:  # TensorBoard's train/learning_rate is the schedule's; the gate's has its own tag
            assert model.logger.name_to_value["train/learning_rate_gate"] == pytest.approx(schedule * scale)
        moves[scale] = ((_gate(model) - gate).norm().item(), (_rest(model) - rest).norm().item())
    gate_ratio, rest_ratio = moves[10.0][0] / moves[1.0][0], moves[10.0][1] / moves[1.0][1]
    assert gate_ratio == pytest.approx(10, rel=0.02), moves
    assert rest_ratio == pytest.approx(1, rel=0.02), moves


def test_the_scale_survives_save_load_and_fused_adam(hub, tmp_path):
    model = _agent(HubPPO, hub, tmp_path, lr=lambda progress: 1e-3 * (1 + progress) / 2, gate_lr_scale=5.0)
    optimizer = model.policy.optimizer
    assert [group.get("lr_scale") for group in optimizer.param_groups] == [None, 5.0]
    assert optimizer.param_groups[1]["params"] == list(model.policy.extractor.gate.parameters())
    if fused_adam_available("cpu"):
        assert all(group["fused"] for group in optimizer.param_groups)  # fuse_adam kept both groups
    model.learn(256)
    model.save(tmp_path / "model.zip")
    loaded = HubPPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy.gate_lr_scale == 5.0
    assert [group.get("lr_scale") for group in loaded.policy.optimizer.param_groups] == [None, 5.0]
    saved = [group["lr"] for group in model.policy.optimizer.param_groups]  # the schedule's value at the last update
    assert saved == pytest.approx([5e-4, 2.5e-3])  # progress 0 at the last update, then the gate's 5x
    assert [group["lr"] for group in loaded.policy.optimizer.param_groups] == pytest.approx(saved)  # restored, not rebuilt


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan")])
def test_a_scale_that_is_not_a_positive_number_is_refused(scale, hub):
    with pytest.raises(ValueError, match="gate_lr_scale must be a finite number > 0"):
        HubPPO(HubPathwayPolicy, make_atari_vec_env("Gopher", 1, seed=0), device="cpu",
               policy_kwargs=dict(expert_names=hub.names, gate_lr_scale=scale))


def test_the_transfer_flag_reaches_the_gate_resumes_with_it_and_refuses_bad_values(tmp_path, tiny_hub):
    from hubrl.transfer import run_transfer
    from tests.test_transfer import _cfg

    cfg = _cfg(tmp_path, hub=str(tiny_hub), gate_lr_scale=3.0)
    result = run_transfer(cfg, progress_bar=False, verbose=0, pause_at=cfg.timesteps // 2)
    resumed = run_transfer(cfg, resume=True, progress_bar=False, verbose=0)
    loaded = HubPPO.load(resumed.folder / "model.zip", device="cpu")
    assert resumed.folder == result.folder and loaded.policy.gate_lr_scale == 3.0
    assert [group.get("lr_scale") for group in loaded.policy.optimizer.param_groups] == [None, 3.0]
    for bad in (0.0, -2.0, float("inf")):
        with pytest.raises(UsageError, match="--gate-lr-scale must be a finite number"):
            run_transfer(_cfg(tmp_path, hub=str(tiny_hub), gate_lr_scale=bad, out=str(tmp_path / "bad")),
                         progress_bar=False, verbose=0)
    assert not (tmp_path / "bad").exists()  # the command line's refusals: tests/test_bad_inputs.py
