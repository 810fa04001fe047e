"""A model.zip's policy rebuilt as data (hubrl.saved_model): the same policy as SB3's load gives,
and nothing in the file runs."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from hubrl.errors import CheckpointError
from hubrl.saved_model import load_saved_policy, pickled_global, saved_model_steps
from tests.conftest import forbid_unpickling

SPACE = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


class _Frames(gym.Env):
    """Random Atari-shaped frames: an env to build and save an agent without the emulator."""

    observation_space, action_space = SPACE, gym.spaces.Discrete(18)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def _save_agent(path: Path, policy: str | type, algo: str = "ppo", **policy_kwargs) -> object:
    from stable_baselines3.common.vec_env import DummyVecEnv

    from hubrl.agents import HubA2C, HubPPO

    th.manual_seed(0)
    sizes = {"n_steps": 8, "batch_size": 8} if algo == "ppo" else {"n_steps": 5}
    agent = HubPPO if algo == "ppo" else HubA2C
    model = agent(policy, DummyVecEnv([_Frames]), device="cpu", policy_kwargs=policy_kwargs, **sizes)
    model.num_timesteps = 1234
    model.save(path)
    return model


def _rewrite(path: Path, edit_data=None, members: dict[str, bytes] | None = None) -> Path:
    """A copy of the zip at ``path`` with its ``data`` JSON edited and/or members replaced."""
    with zipfile.ZipFile(path) as archive:
        content = {name: archive.read(name) for name in archive.namelist()}
    if edit_data is not None:
        data = json.loads(content["data"])
        edit_data(data)
        content["data"] = json.dumps(data).encode()
    content.update(members or {})
    out = path.with_name("edited.zip")
    with zipfile.ZipFile(out, "w") as archive:
        for name, raw in content.items():
            archive.writestr(name, raw)
    return out


#: A2C's preset optimizer (agents/hyperparams/a2c.yml), and an activation a preset may name: classes,
#: so SB3 pickles such kwargs and writes their entries beside the pickle as text.
_A2C_KWARGS = {"optimizer_class": "RMSpropTFLike", "optimizer_kwargs": {"alpha": 0.99, "eps": 1e-5, "weight_decay": 0}}


@pytest.mark.parametrize("policy, algo, kwargs", [
    ("CnnPolicy", "ppo", {}),
    ("hubrl.policies.HubPathwayPolicy", "ppo", {"expert_names": ["a", "b"], "top_k": 1}),
    ("hubrl.zoo_tuning.ZooTuningPolicy", "ppo", {"expert_names": ["a", "b"]}),
    ("CnnPolicy", "a2c", _A2C_KWARGS),
    ("hubrl.policies.HubPathwayPolicy", "a2c", {"expert_names": ["a", "b"], **_A2C_KWARGS, "activation_fn": "Tanh"}),
], ids=["cnn", "hub-pathway", "zoo-tuning", "a2c-cnn", "a2c-hub-pathway-tanh"])
def test_each_saved_policy_class_comes_back_with_its_weights_and_actions_without_unpickling(tmp_path, monkeypatch,
                                                                                            policy, algo, kwargs):
    import importlib

    from hubrl.agents.presets import _resolve_policy_kwargs

    if "." in policy:
        module, _, name = policy.rpartition(".")
        policy = getattr(importlib.import_module(module), name)
    model = _save_agent(tmp_path / "model.zip", policy, algo, **_resolve_policy_kwargs(kwargs))
    forbid_unpickling(monkeypatch)
    saved = load_saved_policy(tmp_path / "model.zip")
    assert type(saved.policy) is type(model.policy) and not saved.policy.training
    assert saved.policy.activation_fn is model.policy.activation_fn
    assert (saved.num_timesteps, saved.n_envs) == (1234, 1)
    want = model.policy.state_dict()
    got = saved.policy.state_dict()
    assert want.keys() == got.keys() and all(th.equal(want[k], got[k]) for k in want)
    obs = np.stack([SPACE.sample() for _ in range(6)])
    model.policy.set_training_mode(False)
    assert np.array_equal(saved.policy.predict(obs, deterministic=True)[0], model.policy.predict(obs, deterministic=True)[0])
    assert saved_model_steps(tmp_path / "model.zip") == 1234


def test_a_policy_class_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    _save_agent(tmp_path / "model.zip", "CnnPolicy")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    hostile = base64.b64encode(pickle.dumps(Payload())).decode()
    edited = _rewrite(tmp_path / "model.zip", lambda d: d["policy_class"].__setitem__(":serialized:", hostile))
    with pytest.raises(CheckpointError, match="not a plain class reference .*does more than name a class.*refusing it"):
        load_saved_policy(edited)
    assert not marker.exists()


def test_a_class_that_hubrl_does_not_save_is_refused_by_name(tmp_path):
    _save_agent(tmp_path / "model.zip", "CnnPolicy")
    other = base64.b64encode(pickle.dumps(zipfile.ZipFile)).decode()
    edited = _rewrite(tmp_path / "model.zip", lambda d: d["policy_class"].__setitem__(":serialized:", other))
    with pytest.raises(CheckpointError, match="policy class zipfile.ZipFile is not one that hubrl saves"):
        load_saved_policy(edited)


def test_pickled_kwargs_weights_that_do_not_fit_and_a_torn_zip_are_refused_with_the_file_named(tmp_path):
    from hubrl.policies import HubPathwayPolicy

    _save_agent(tmp_path / "model.zip", HubPathwayPolicy, expert_names=["a", "b"])
    pickled = _rewrite(tmp_path / "model.zip", lambda d: d["policy_kwargs"].__setitem__(
        "activation_fn", {":type:": "<class 'type'>", ":serialized:": "gAWV"}))
    with pytest.raises(CheckpointError, match="policy_kwargs hold a pickle inside an entry"):
        load_saved_policy(pickled)
    _save_agent(tmp_path / "a2c.zip", "CnnPolicy", "a2c", optimizer_class=th.optim.RMSprop)
    other = _rewrite(tmp_path / "a2c.zip", lambda d: d["policy_kwargs"].__setitem__(
        "features_extractor_class", "<class 'evil.Extractor'>"))
    with pytest.raises(CheckpointError, match=r"hold objects that only unpickling would rebuild \(features_extractor_class\)"):
        load_saved_policy(other)
    three = _rewrite(tmp_path / "model.zip", lambda d: d["policy_kwargs"].__setitem__("expert_names", ["a", "b", "c"]))
    with pytest.raises(CheckpointError, match="do not fit this version's HubPathwayPolicy"):
        load_saved_policy(three)
    raw = (tmp_path / "model.zip").read_bytes()
    (tmp_path / "torn.zip").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="torn.zip"):
        load_saved_policy(tmp_path / "torn.zip")
    assert saved_model_steps(tmp_path / "torn.zip") is None


@pytest.mark.parametrize("space, value, message", [
    ("observation_space", "[4, 40000, 40000]", "not stacked 84x84 uint8 frames"),  # 6 GB of buffers, before any weight
    ("observation_space", "[100000, 84, 84]", "not stacked 84x84 uint8 frames"),
    ("action_space", "100000", "not a discrete one of 1-18 actions"),
])
def test_spaces_that_would_size_huge_buffers_are_refused_before_anything_is_built(tmp_path, space, value, message):
    """A model.zip is untrusted: its spaces size what is built to play it, so a hostile one made
    ``enjoy`` allocate gigabytes and die with a MemoryError traceback."""
    _save_agent(tmp_path / "model.zip", "CnnPolicy")

    def edit(data):
        for key in ("_shape", "shape") if space == "observation_space" else ("n",):
            if key in data[space]:
                data[space][key] = value if key != "n" else int(value)

    with pytest.raises(CheckpointError, match=message):
        load_saved_policy(_rewrite(tmp_path / "model.zip", edit))


@pytest.mark.parametrize("kwargs, message", [
    ({"expert_names": [f"e{i}" for i in range(5000)]}, "expert_names has 5,000 entries for"),  # 5,000 NatureCNNs
    ({"expert_names": ["a", "b"], "features_dim": 10**7}, "features_dim is 10,000,000, larger than any dimension"),
    ({"expert_names": ["a", "b"], "net_arch": {"pi": [10**6]}}, r"net_arch\.pi is 1,000,000"),
])
def test_policy_kwargs_that_would_build_more_than_the_weights_are_refused_before_building(tmp_path, monkeypatch,
                                                                                         kwargs, message):
    """A model.zip is untrusted: its policy_kwargs size what is built before the strict load checks
    the weights, so a 1 KB file naming thousands of experts allocated an encoder for each (hours
    and gigabytes, then a MemoryError). Sizes beyond the saved weights are refused unbuilt."""
    from hubrl import policies

    _save_agent(tmp_path / "model.zip", policies.HubPathwayPolicy, expert_names=["a", "b"])

    def built(*args, **kw):
        raise AssertionError("the policy was built")

    monkeypatch.setattr(policies.HubPathwayPolicy, "__init__", built)
    with pytest.raises(CheckpointError, match=message):
        load_saved_policy(_rewrite(tmp_path / "model.zip", lambda data: data["policy_kwargs"].update(kwargs)))


def test_settings_and_weights_come_from_one_opening_of_a_model_replaced_meanwhile(tmp_path, monkeypatch):
    """A run that saves its final model while another process loads it (``enjoy`` during a grid)
    replaces the file between any two openings: the settings and the weights must come from one file."""
    from hubrl.policies import HubPathwayPolicy

    _save_agent(tmp_path / "model.zip", HubPathwayPolicy, expert_names=["a", "b"])
    _save_agent(tmp_path / "newer.zip", "CnnPolicy")
    real = zipfile.ZipFile

    def open_then_replace(*args, **kwargs):
        archive = real(*args, **kwargs)
        if (tmp_path / "newer.zip").exists():  # the first opening: the file is replaced right after it
            os.replace(tmp_path / "newer.zip", tmp_path / "model.zip")
        return archive

    monkeypatch.setattr(zipfile, "ZipFile", open_then_replace)
    assert type(load_saved_policy(tmp_path / "model.zip").policy) is HubPathwayPolicy


def test_pickled_global_reads_both_protocols_and_nothing_else():
    for protocol in (2, 5):
        text = base64.b64encode(pickle.dumps(zipfile.ZipFile, protocol=protocol)).decode()
        assert pickled_global(text) == ("zipfile", "ZipFile")
    for bad, message in ((base64.b64encode(pickle.dumps([1, 2])).decode(), "does more than name a class"),
                         ("not base64!", "not base64 text"),
                         (base64.b64encode(b"\x80\x05junk").decode(), "not a readable pickle")):
        with pytest.raises(ValueError, match=message):
            pickled_global(bad)
