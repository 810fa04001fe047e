"""The hyperparameter presets ship as YAML in RL Zoo's format (agents/hyperparams/<algo>.yml)."""

from __future__ import annotations

from typing import Any

import pytest

from hubrl.agents import preset, resolve_hyperparams
from hubrl.agents.presets import ALGOS, load_presets_file, presets_file

# agents/presets.py's Python presets before they moved to YAML (issue 16), verbatim: the YAML must
# give exactly these values, types and key order (the order of a run's resolved config.yaml).
PYTHON_PRESETS: dict[str, dict[str, Any]] = {
    "ppo": {
        "n_envs": 8,
        "n_steps": 128,
        "n_epochs": 4,
        "batch_size": 256,
        "learning_rate": "lin_2.5e-4",
        "clip_range": "lin_0.1",
        "ent_coef": 0.01,
        "vf_coef": 0.5,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "max_grad_norm": 0.5,
    },
    "a2c": {
        "n_envs": 16,
        "n_steps": 5,
        "learning_rate": 7e-4,
        "ent_coef": 0.01,
        "vf_coef": 0.25,
        "gamma": 0.99,
        "gae_lambda": 1.0,
        "max_grad_norm": 0.5,
        # RMSprop as in the original A2C (TF-like epsilon handling), RL Zoo's Atari choice.
        "policy_kwargs": {"optimizer": "RMSpropTFLike", "optimizer_kwargs": {"eps": 1e-5}},
    },
}


def _typed(value: Any) -> Any:
    """``value`` with the type of every leaf, in order: ``1`` and ``1.0`` differ, so do key orders."""
    if isinstance(value, dict):
        return [(key, _typed(item)) for key, item in value.items()]
    return (type(value).__name__, value)


@pytest.mark.parametrize("algo", ALGOS)
def test_the_yaml_presets_are_the_python_presets(algo):
    assert _typed(load_presets_file(algo)["atari"]) == _typed(PYTHON_PRESETS[algo])
    assert _typed(preset(algo)) == _typed(PYTHON_PRESETS[algo])
    assert list(load_presets_file(algo)) == ["atari"]  # RL Zoo's layout: env id -> hyperparameters


def test_presets_are_fresh_copies_and_an_env_section_falls_back_to_atari():
    first = preset("ppo")
    first["n_steps"] = 1
    first_a2c = preset("A2C")
    first_a2c["policy_kwargs"]["optimizer_kwargs"]["eps"] = 1.0
    assert preset("ppo")["n_steps"] == 128 and preset("a2c")["policy_kwargs"]["optimizer_kwargs"]["eps"] == 1e-5
    assert preset("ppo", "SeaquestNoFrameskip-v4") == preset("ppo")
    assert presets_file("ppo").name == "ppo.yml" and presets_file("ppo").is_file()


def test_hyperparams_overrides_still_apply_over_the_yaml_presets():
    plain, kwargs = resolve_hyperparams("ppo", {"n_steps": 64, "learning_rate": "lin_1e-3"})
    assert plain["n_steps"] == kwargs["n_steps"] == 64 and plain["batch_size"] == 256
    assert kwargs["learning_rate"](1.0) == pytest.approx(1e-3) and "n_envs" not in kwargs
    plain, kwargs = resolve_hyperparams("a2c", {"policy_kwargs": {"optimizer_kwargs": {"eps": 1e-3}}})
    assert kwargs["policy_kwargs"]["optimizer_kwargs"] == {"eps": 1e-3}
    assert kwargs["policy_kwargs"]["optimizer_class"].__name__ == "RMSpropTFLike"


def test_an_rl_zoo_file_is_refused_with_where_hubrl_takes_its_run_settings(tmp_path):
    """RL Zoo's Atari entry pasted as --hyperparams: its sections and run settings are named, with the fix."""
    from hubrl.agents import load_overrides
    from hubrl.errors import UsageError

    zoo = tmp_path / "zoo.yml"
    zoo.write_text("atari:\n  n_steps: 128\n  n_timesteps: !!float 1e7\n")
    with pytest.raises(UsageError, match=r"holds sections \(atari\), as RL Zoo's files do: put the keys of one section"):
        load_overrides(zoo, algo="ppo")
    zoo.write_text("n_steps: 128\nn_timesteps: !!float 1e7\npolicy: CnnPolicy\nframe_stack: 4\n")
    with pytest.raises(UsageError, match=r"n_timesteps, policy, frame_stack in hyperparameter file .*RL Zoo run setting.*"
                                         r"n_timesteps: the budget is --timesteps; policy: the policy follows from --method"):
        load_overrides(zoo, algo="ppo")
    zoo.write_text("n_steps: 64\npolicy_kwargs: {net_arch: []}\n")  # a dict value that is a hyperparameter
    assert load_overrides(zoo, algo="ppo") == {"n_steps": 64, "policy_kwargs": {"net_arch": []}}


def test_linear_schedules_stop_at_zero_past_the_budget():
    """A run ends at the first rollout boundary past its budget (progress remaining below 0): the last
    update must not train with a negative learning rate or clip range, nor may an old zip's schedule."""
    from hubrl.agents.presets import _Linear, linear_schedule

    for schedule in (linear_schedule(2.5e-4), _Linear(2.5e-4)):
        assert schedule(1.0) == pytest.approx(2.5e-4) and schedule(0.5) == pytest.approx(1.25e-4)
        assert schedule(0.0) == 0.0 and schedule(-0.3) == 0.0


def test_a_saved_scratch_model_loads_with_sb3_alone(tmp_path, tiny_ppo):
    """A run's ``model.zip`` with a stock SB3 policy (scratch, finetune) pickles no hubrl class: stock
    SB3 loads it where hubrl is not installed (here: its import blocked in a fresh interpreter)."""
    import subprocess
    import sys

    from hubrl.agents import HubPPO
    from hubrl.envs import make_atari_vec_env

    env = make_atari_vec_env("Gopher", 1, seed=0)
    _, kwargs = resolve_hyperparams("ppo", {**tiny_ppo, "batch_size": 32})
    HubPPO("CnnPolicy", env, seed=0, device="cpu", **kwargs).save(tmp_path / "model.zip")
    env.close()
    script = ("import sys; sys.modules['hubrl'] = None; sys.modules['agents'] = None\n"
              "from stable_baselines3 import PPO\n"
              "m = PPO.load('model.zip', device='cpu')\n"
              "assert m.lr_schedule(-0.01) == 0.0 and m.clip_range(-0.01) == 0.0\n"
              "print(type(m.policy).__name__)")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ActorCriticCnnPolicy"


@pytest.mark.parametrize("policy_kwargs, named", [
    ({"foo": 1}, "foo: not one; known are activation_fn"),
    ({"optimizer_class": "Adamm"}, "optimizer_class one of RMSpropTFLike, Adam"),
    ({"optimizer": "RMSpropTFLike", "optimizer_class": "Adam"}, "one of optimizer and optimizer_class, not both"),
    ({"activation_fn": "nn.Swish"}, "activation_fn one of ReLU, Tanh"),
    ({"features_extractor_class": "NatureCNN"}, "--method sets the feature extractor"),
    ({"optimizer": "Adam", "optimizer_kwargs": {"momentum": 0.9}}, "optimizer_kwargs that Adam takes .*momentum: not one"),
    ({"optimizer_kwargs": {"alpha": 0.9}}, "optimizer_kwargs that Adam takes \\(alpha: not one"),  # PPO: SB3's Adam
    ({"activation_fn": __import__("torch").nn.ReLU}, "activation_fn one of ReLU, Tanh, ELU, LeakyReLU, GELU, SiLU \\(by name"),
])
def test_policy_kwargs_a_run_cannot_use_are_refused_before_anything_is_built(policy_kwargs, named):
    """A ``policy_kwargs`` that SB3 would take for a class (``optimizer_class: RMSpropTFLike`` read as
    a string) or refuse mid-build used to end in a traceback; it is one line naming the key."""
    from hubrl.errors import UsageError

    with pytest.raises(UsageError, match=f"Hyperparameter policy_kwargs.* expected .*{named}"):
        resolve_hyperparams("ppo", {"policy_kwargs": policy_kwargs})


def test_policy_kwargs_name_optimizers_and_activations_as_rl_zoo_users_write_them():
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
    from torch import nn, optim

    for key in ("optimizer", "optimizer_class"):  # hubrl's key and SB3's
        _, kwargs = resolve_hyperparams("ppo", {"policy_kwargs": {key: "RMSpropTFLike", "activation_fn": "nn.Tanh"}})
        assert kwargs["policy_kwargs"]["optimizer_class"] is RMSpropTFLike and "optimizer" not in kwargs["policy_kwargs"]
        assert kwargs["policy_kwargs"]["activation_fn"] is nn.Tanh
    _, kwargs = resolve_hyperparams("ppo", {"policy_kwargs": {"optimizer_class": "AdamW"}})
    assert kwargs["policy_kwargs"]["optimizer_class"] is optim.AdamW
    # over A2C's preset (optimizer: RMSpropTFLike, eps 1e-5) the user's optimizer wins, under either key, without
    # the preset's arguments for RMSprop (SGD takes no eps)
    for key in ("optimizer", "optimizer_class"):
        plain, kwargs = resolve_hyperparams("a2c", {"policy_kwargs": {key: "SGD", "optimizer_kwargs": {"lr": 0.1}}})
        assert kwargs["policy_kwargs"]["optimizer_class"] is optim.SGD
        assert plain["policy_kwargs"] == {key: "SGD", "optimizer_kwargs": {"lr": 0.1}}
    _, kwargs = resolve_hyperparams("a2c", {"policy_kwargs": {"optimizer": "SGD"}})
    assert "optimizer_kwargs" not in kwargs["policy_kwargs"]
    # naming the preset's own optimizer (README's example) keeps its arguments: A2C's RMSprop stays at eps 1e-5
    for key in ("optimizer", "optimizer_class"):
        plain, kwargs = resolve_hyperparams("a2c", {"policy_kwargs": {key: "RMSpropTFLike", "activation_fn": "nn.Tanh"}})
        assert kwargs["policy_kwargs"]["optimizer_class"] is RMSpropTFLike
        assert plain["policy_kwargs"] == {key: "RMSpropTFLike", "optimizer_kwargs": {"eps": 1e-5}, "activation_fn": "nn.Tanh"}


def test_optimizer_kwargs_merged_over_the_a2c_preset_must_fit_its_optimizer():
    """A2C's preset trains with RMSpropTFLike: kwargs it does not take are refused once merged over it."""
    from hubrl.errors import UsageError

    with pytest.raises(UsageError, match="merged over the a2c preset's .* expected optimizer_kwargs that RMSpropTFLike takes"):
        resolve_hyperparams("a2c", {"policy_kwargs": {"optimizer_kwargs": {"betas": (0.9, 0.99)}}})
    _, kwargs = resolve_hyperparams("a2c", {"policy_kwargs": {"optimizer_kwargs": {"alpha": 0.95}}})
    assert kwargs["policy_kwargs"]["optimizer_kwargs"] == {"alpha": 0.95}  # replaces the preset's (eps), as a key does


@pytest.mark.parametrize("n_steps, batch_size, n_envs, fixes", [
    (128, 256, 1, "pass --n-envs 2, or batch_size: 128 in a --hyperparams file."),
    (128, 100_000, 8, "each epoch is one mini-batch of 1024: batch_size: 1024 in a --hyperparams file."),  # no --n-envs
    (128, 96, 8, "each epoch ends with a mini-batch of 64: pass --n-envs 9, or batch_size: 32 in a --hyperparams file."),
])
def test_the_minibatch_warning_names_only_fixes_that_work(n_steps, batch_size, n_envs, fixes):
    """It suggested --n-envs 3125 for a batch_size of 100,000, a count --n-envs refuses (at most
    1024), and batch_size: 32 where the whole rollout, 1024, is what fits."""
    from hubrl.agents.presets import minibatch_warning

    assert minibatch_warning("ppo", {"n_steps": n_steps, "batch_size": batch_size, "n_envs": n_envs}).endswith(fixes)
    assert minibatch_warning("ppo", {"n_steps": 128, "batch_size": 256, "n_envs": 2}) is None
