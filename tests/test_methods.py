"""The baseline methods in the transfer harness: tiny runs, what each loads, stock SB3 loading, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticCnnPolicy

import hubrl  # noqa: F401
from hubrl.envs import make_atari_vec_env
from hubrl.hub import HubError, load_hub
from hubrl.pretrain import UsageError
from hubrl.transfer import TransferConfig, run_transfer
from tests.conftest import TINY_PPO, make_tiny_hub, run_script


def _cfg(tmp_path, method, env="Gopher", out="run", **kw):
    base = dict(env=env, method=method, timesteps=64, n_envs=2, out=str(tmp_path / out), eval_freq=10**9, eval_episodes=1,
                checkpoint_freq=10**9, hyperparams=dict(TINY_PPO), device="cpu")
    base.update(kw)
    return TransferConfig(**base)


def _same_actions(model_a, model_b, game="Gopher", steps=5):
    env = make_atari_vec_env(game, 2, seed=3)
    obs = env.reset()
    for _ in range(steps):
        a, _ = model_a.predict(obs, deterministic=True)
        b, _ = model_b.predict(obs, deterministic=True)
        assert np.array_equal(a, b)
        obs = env.step(a)[0]
    env.close()


def test_scratch_is_a_plain_cnn_policy_without_hub(tmp_path):
    result = run_transfer(_cfg(tmp_path, "scratch"), progress_bar=False, verbose=0)
    assert result.hub is None and result.outcome.num_timesteps == 64
    model = PPO.load(result.folder / "model.zip", device="cpu")
    assert type(model.policy) is ActorCriticCnnPolicy and model.action_space.n == 8
    assert (result.folder / "evaluations.json").is_file()
    with pytest.raises(UsageError, match="no hub"):
        run_transfer(_cfg(tmp_path, "scratch", out="r2", hub="somewhere"), progress_bar=False)


def test_finetune_starts_from_the_named_expert(tmp_path, tiny_hub):
    hub = load_hub(tiny_hub)
    cfg = _cfg(tmp_path, "finetune", hub=str(tiny_hub), source="seaquest-ppo", hyperparams={**TINY_PPO, "learning_rate": 0.0})
    result = run_transfer(cfg, progress_bar=False, verbose=0)
    model = PPO.load(result.folder / "model.zip", device="cpu")
    assert type(model.policy) is ActorCriticCnnPolicy and model.action_space.n == 8
    extractor = model.policy.features_extractor.state_dict()
    for key, value in hub.get("seaquest-ppo").encoder_state.items():  # lr 0: still the expert's weights
        assert th.equal(extractor[key], value), key
    assert not th.equal(extractor["cnn.0.weight"], hub.get("riverraid-ppo").encoder_state["cnn.0.weight"])
    assert yaml.safe_load((result.folder / "config.yaml").read_text())["method"]["source"] == "seaquest-ppo"


def test_finetune_source_errors_list_the_experts(tmp_path, tiny_hub):
    with pytest.raises(HubError, match="riverraid-ppo, seaquest-ppo"):
        run_transfer(_cfg(tmp_path, "finetune", hub=str(tiny_hub), source="pong-ppo"), progress_bar=False)
    with pytest.raises(HubError, match="needs --source"):
        run_transfer(_cfg(tmp_path, "finetune", hub=str(tiny_hub)), progress_bar=False)
    assert not (tmp_path / "run").exists()  # nothing half-made


def test_select_on_a_hub_of_one_fine_tunes_it(tmp_path, capsys):
    hub = make_tiny_hub(tmp_path / "hub1", names=("seaquest-ppo",))
    result = run_transfer(_cfg(tmp_path, "select", hub=str(hub)), progress_bar=False, verbose=0)
    assert "only one expert" in capsys.readouterr().out
    assert yaml.safe_load((result.folder / "config.yaml").read_text())["method"]["source"] == "seaquest-ppo"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="finetune", lite=True), "--lite is an option of --method zoo-tuning"),
        (dict(method="hub-pathway", source="seaquest-ppo"), "--source picks the expert of --method finetune"),
        (dict(method="magic"), "choose one of hub-pathway, scratch, finetune, zoo-tuning, select"),
    ],
)
def test_method_option_mismatches(tmp_path, tiny_hub, kwargs, message):
    with pytest.raises(UsageError, match=message):
        run_transfer(_cfg(tmp_path, hub=str(tiny_hub), **kwargs), progress_bar=False)


def test_cli_finetune_unknown_source_one_line(tmp_path, tiny_hub):
    result = run_script("transfer.py", "--env", "Gopher", "--method", "finetune", "--source", "nope", "--hub", str(tiny_hub),
                        "--out", str(tmp_path / "cli"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "No expert named 'nope'" in result.stderr and "seaquest-ppo" in result.stderr


@pytest.mark.slow
def test_zoo_tuning_runs_and_logs_its_gates(tmp_path, tiny_hub):
    from hubrl.zoo_tuning import ZooTuningPolicy
    from tests.test_transfer import _scalars

    result = run_transfer(_cfg(tmp_path, "zoo-tuning", hub=str(tiny_hub)), progress_bar=False, verbose=0)
    model = PPO.load(result.folder / "model.zip", device="cpu")
    assert type(model.policy) is ZooTuningPolicy and model.policy.extractor.n_experts == 2
    tags = _scalars(result.folder)
    assert {"zoo/weight_mean/seaquest-ppo", "zoo/weight_mean/riverraid-ppo", "eval/mean_reward"} <= tags


@pytest.mark.slow
def test_zoo_tuning_lite_saves_one_merged_nature_cnn(tmp_path, tiny_hub):
    from hubrl.zoo_tuning import ZooTuningPolicy

    result = run_transfer(_cfg(tmp_path, "zoo-tuning", hub=str(tiny_hub), lite=True), progress_bar=False, verbose=0)
    assert result.folder.name == "run" and result.outcome.num_timesteps == 64
    merged = PPO.load(result.folder / "model.zip", device="cpu")
    assert type(merged.policy) is ActorCriticCnnPolicy and merged.num_timesteps == 64
    lite = ZooTuningPolicy(merged.observation_space, merged.action_space, lambda _: 0.0,
                           expert_names=["riverraid-ppo", "seaquest-ppo"], lite=True)
    lite.load_state_dict(th.load(result.folder / "checkpoint.pt", weights_only=True)["policy"])
    lite.set_training_mode(False)
    env = make_atari_vec_env("Gopher", 4, seed=5)
    obs = th.as_tensor(env.reset())
    env.close()
    with th.no_grad():
        a, b = lite.get_distribution(obs).distribution.logits, merged.policy.get_distribution(obs).distribution.logits
        assert (a - b).abs().max() <= 1e-5
        assert (lite.predict_values(obs) - merged.policy.predict_values(obs)).abs().max() <= 1e-4


@pytest.mark.slow
def test_select_ranks_the_hub_then_keeps_its_choice_on_resume(tmp_path, tiny_hub):
    cfg = _cfg(tmp_path, "select", env="Alien", hub=str(tiny_hub), select_frames=4000)
    result = run_transfer(cfg, progress_bar=False, verbose=0)
    notes = yaml.safe_load((result.folder / "config.yaml").read_text())["method"]
    assert {r["expert"] for r in notes["ranking"]} == {"seaquest-ppo", "riverraid-ppo"}
    assert notes["source"] == notes["ranking"][0]["expert"]
    assert type(PPO.load(result.folder / "model.zip", device="cpu").policy) is ActorCriticCnnPolicy
    resumed = run_transfer(_cfg(tmp_path, "select", env="Alien", hub=str(tiny_hub), select_frames=4000, timesteps=128),
                           resume=True, progress_bar=False, verbose=0)
    assert resumed.outcome.num_timesteps == 128
    again = yaml.safe_load((result.folder / "config.yaml").read_text())["method"]
    assert again["source"] == notes["source"] and again["ranking"] == notes["ranking"]


@pytest.mark.parametrize("sticky", [0.0, 0.25])
def test_select_ranks_on_frames_of_the_runs_own_sticky_actions(tmp_path, monkeypatch, sticky):
    """The proxy's random-policy frames come from the run's env: --sticky-actions 0 (the v4
    protocol) must not be ranked on frames played with 0.25."""
    import hubrl.selection
    from hubrl.hub import resolve_hub
    from hubrl.methods import plan_method

    seen = {}

    def collect(game, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("collected")

    monkeypatch.setattr(hubrl.selection, "collect_target_data", collect)
    hub = resolve_hub(str(make_tiny_hub(tmp_path / "hub")), [])
    with pytest.raises(RuntimeError, match="collected"):
        plan_method(_cfg(tmp_path, "select", repeat_action_probability=sticky), hub, "Gopher")
    assert seen["repeat_action_probability"] == sticky
