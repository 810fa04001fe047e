"""Expert selection before training: target data, the ridge proxy, rank_experts and scripts/rank_hub.py."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.torch_layers import NatureCNN

from hubrl import selection
from hubrl.envs import make_atari_vec_env
from hubrl.hub import Expert, Hub, HubError, load_hub
from hubrl.selection import (
    RANDOM_BASELINE,
    TargetData,
    collect_target_data,
    discounted_returns,
    proxy_score,
    random_baseline,
    rank_experts,
    ridge_cv_r2,
)
from tests.conftest import make_tiny_hub, run_script

SPACE = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


def _random_state(seed: int) -> dict[str, th.Tensor]:
    th.manual_seed(seed)
    return {k: v.clone() for k, v in NatureCNN(SPACE).state_dict().items()}


def _patch_reader(seed: int) -> dict[str, th.Tensor]:
    """A random-init NatureCNN whose feature 0 is set by hand to the mean of the top-left 8x8 patch of frame 0."""
    state = _random_state(seed)
    for layer in ("cnn.0", "cnn.2", "cnn.4", "linear.0"):
        state[f"{layer}.weight"][0] = 0.0
        state[f"{layer}.bias"][0] = 0.0
    state["cnn.0.weight"][0, 0] = 1.0 / 64  # conv1 at (0, 0) averages pixels [0:8, 0:8] of frame 0
    state["cnn.2.weight"][0, 0, 0, 0] = 1.0  # conv2, conv3 copy channel 0 at (0, 0) onward
    state["cnn.4.weight"][0, 0, 0, 0] = 1.0
    state["linear.0.weight"][0, 0] = 1.0  # flattened index 0 = channel 0 at (0, 0)
    return state


def _patch_data(seed: int = 0, n: int = 1200, length: int = 40) -> TargetData:
    """Noise frames whose return is a known function of the image: 10 x the brightness of one 8x8 patch.

    The brightness follows a random walk within each episode, as a return does; everything else is
    uniform noise, so an encoder blind to that patch cannot predict the return.
    """
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 256, size=(n, 4, 84, 84), dtype=np.uint8)
    level = np.concatenate([
        np.clip(rng.uniform(0.2, 0.8) + np.cumsum(rng.normal(0, 0.03, length)), 0, 1) for _ in range(n // length)
    ])
    obs[:, 0, :8, :8] = np.round(level * 255).astype(np.uint8)[:, None, None]
    return TargetData.from_observations(obs, 10 * level, np.arange(n) // length)


def test_discounted_returns_by_hand():
    rewards = np.array([1, 0, 1, 1, 0, 1], dtype=np.float32)
    dones = np.array([0, 0, 1, 0, 0, 0], dtype=bool)
    returns, to_end = discounted_returns(rewards, dones, gamma=0.5)
    np.testing.assert_allclose(returns, [1 + 0.25, 0.5, 1, 1 + 0.25, 0.5, 1])
    np.testing.assert_array_equal(to_end, [3, 2, 1, -3, -2, -1])  # negative: episode unfinished
    _, to_end = discounted_returns(rewards, dones, gamma=0.5, truncated=np.array([0, 0, 1, 0, 0, 0], dtype=bool))
    assert (to_end[:3] < 0).all()  # a time-limit truncation leaves the return unknown too


@pytest.mark.slow
def test_collected_frames_rebuild_the_exact_observations():
    """The de-duplicated frame store gives back, bit for bit, the stacks the env produced."""
    game, frames, n_envs, seed = "Alien", 1200, 3, 5
    data = collect_target_data(game, frames, seed, n_envs, max_tail_weight=0.999)  # keeps every step
    env = make_atari_vec_env(game, n_envs=n_envs, seed=seed)
    rng = np.random.default_rng(seed)
    obs, raw, rewards, dones = env.reset(), [], [], []
    for _ in range(frames // n_envs):
        raw.append(obs)
        obs, reward, done, _ = env.step(rng.integers(0, env.action_space.n, size=n_envs))
        rewards.append(reward)
        dones.append(done)
    env.close()
    assert len(data) == frames and data.info["dropped"] == 0
    np.testing.assert_array_equal(data.observations(), np.stack(raw).reshape(-1, 4, 84, 84))
    assert data.frames.nbytes < 0.3 * frames * 4 * 84 * 84  # about one frame per step, not four
    returns = np.stack([discounted_returns(r, d)[0] for r, d in zip(np.stack(rewards).T, np.stack(dones).T)], axis=1)
    np.testing.assert_allclose(data.returns, returns.reshape(-1), rtol=1e-6)
    assert data.observations(np.array([3, 1])).shape == (2, 4, 84, 84)


def test_unfinished_episode_tails_are_dropped():
    data = collect_target_data("Alien", 1200, seed=5, n_envs=3)  # default: unseen tail may weigh <= 0.1
    assert 0 < len(data) < 1200 and data.info["dropped"] == 1200 - len(data)
    assert data.returns.dtype == np.float32 and data.episodes.dtype == np.int64


def test_proxy_ranks_the_informative_encoder_far_above_a_random_one():
    data = _patch_data()
    informative = Expert("patch-reader", _patch_reader(0), "constructed")
    blind = Expert("random-init", _random_state(0), "constructed")
    good, bad = proxy_score(informative, data), proxy_score(blind, data)
    assert good > 0.95 and bad < 0.3, (good, bad)
    # The score is earned: the same encoder on returns shuffled across episodes predicts nothing.
    rng = np.random.default_rng(1)
    episodes = np.unique(data.episodes)
    shuffled = TargetData(data.frames, data.stack_index,
                          data.returns.reshape(len(episodes), -1)[rng.permutation(len(episodes))].reshape(-1), data.episodes)
    assert proxy_score(informative, shuffled) < 0.3
    # The kNN cross-check agrees on this case.
    assert proxy_score(informative, data, probe="knn") > proxy_score(blind, data, probe="knn") + 0.5


def test_folds_split_by_episode_so_memorising_an_episode_does_not_score():
    """Features that only identify the episode and a return constant per episode: a frame-level
    split would score R² ~ 1 by memorisation; an episode-level split must not."""
    rng = np.random.default_rng(0)
    episodes = np.repeat(np.arange(40), 30)
    features = rng.normal(size=(40, 64))[episodes] + 0.01 * rng.normal(size=(len(episodes), 64))
    returns = rng.normal(size=40)[episodes]
    assert ridge_cv_r2(features, returns, episodes)[0] < 0.2
    assert ridge_cv_r2(features, returns, np.arange(len(episodes)))[0] > 0.9  # the leak the split prevents


def test_constant_returns_and_bad_probe_are_clear_errors():
    data = _patch_data(n=200)
    expert = Expert("e", _random_state(0), "constructed")
    flat = TargetData(data.frames, data.stack_index, np.zeros(len(data), np.float32), data.episodes)
    with pytest.raises(ValueError, match="constant"):
        proxy_score(expert, flat)
    with pytest.raises(ValueError, match="probe"):
        proxy_score(expert, data, probe="svm")


@pytest.mark.slow
def test_rank_experts_scores_every_expert_best_first(tmp_path):
    hub = load_hub(make_tiny_hub(tmp_path / "hub", names=("a-ppo", "b-ppo", "c-ppo")))
    rankings = rank_experts(hub, "Alien", frames=1500, seed=1, n_envs=3)
    assert sorted(r.name for r in rankings) == ["a-ppo", "b-ppo", "c-ppo"]
    proxies = [r.proxy for r in rankings]
    assert all(np.isfinite(p) for p in proxies) and proxies == sorted(proxies, reverse=True)
    assert all(r.seconds > 0 for r in rankings)


def test_an_expert_whose_score_is_not_a_number_is_ranked_last(tmp_path, monkeypatch, capsys):
    """Sorting on -proxy left a NaN score anywhere, first included: select would fine-tune a
    damaged expert. It is ranked last now, with a warning."""
    hub = load_hub(make_tiny_hub(tmp_path / "hub", names=("a-ppo", "b-ppo", "c-ppo")))
    scores = {"a-ppo": float("nan"), "b-ppo": 0.2, "c-ppo": 0.3}
    monkeypatch.setattr(selection, "proxy_score", lambda expert, data, probe="ridge": scores[expert.name])
    rankings = rank_experts(hub, "Alien", frames=1500, seed=1, n_envs=3)
    assert [r.name for r in rankings] == ["c-ppo", "b-ppo", "a-ppo"]
    assert "a-ppo scored nan" in capsys.readouterr().err


def test_rank_experts_hub_of_one_and_wrong_frame_stack(tmp_path):
    one = Hub([Expert("only", _random_state(0), "constructed")])
    rankings = rank_experts(one, "Alien")  # nothing to rank: no data are collected
    assert [(r.name, r.proxy) for r in rankings] == [("only", None)]
    three = load_hub(make_tiny_hub(tmp_path / "hub", in_channels=3))
    with pytest.raises(HubError, match="stacked frames"):
        rank_experts(three, "Alien")


@pytest.mark.slow
def test_rank_hub_script_lists_every_expert(tmp_path):
    hub = make_tiny_hub(tmp_path / "hub")
    out = tmp_path / "not" / "yet" / "ranking.json"  # its folders are made, as enjoy --video makes its own
    proc = run_script("rank_hub.py", "--env", "Alien", "--hub", str(hub), "--timesteps", "1.5k", "--n-envs", "3",
                      "--seed", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in ("seaquest-ppo", "riverraid-ppo"):
        assert name in proc.stdout
    assert "proxy (R²)" in proc.stdout and "Total" in proc.stdout
    report = json.loads(out.read_text())
    assert [r["rank"] for r in report["rankings"]] == [1, 2] and report["game"] == "alien"
    assert all(np.isfinite(r["proxy"]) for r in report["rankings"])


@pytest.mark.slow
def test_rank_names_the_expert_select_would_fine_tune_for_a_runs_seed_and_sticky_actions(tmp_path):
    """select ranks with its run's seed and sticky actions (``rank_experts`` as plan_method calls
    it); hubrl rank with the same --seed and --sticky-actions gives the same scores. It had no
    --sticky-actions, so for a run at another setting it ranked on other frames."""
    from hubrl.cli.rank import main

    hub = make_tiny_hub(tmp_path / "hub")
    out = tmp_path / "ranking.json"
    assert main(["--env", "Alien", "--hub", str(hub), "--timesteps", "3k", "--seed", "1", "--sticky-actions", "0",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    select = rank_experts(load_hub(hub), "Alien", frames=3000, seed=1, repeat_action_probability=0.0)
    assert report["repeat_action_probability"] == 0.0
    assert [(r["name"], r["proxy"]) for r in report["rankings"]] == [(r.name, pytest.approx(r.proxy)) for r in select]


@pytest.mark.parametrize("args, message", [
    (["--env", "NotAGame"], "Unknown Atari game"),
    (["--env", "Alien", "--hub", "/nonexistent/hub"], "does not exist"),
])
@pytest.mark.slow
def test_rank_hub_script_bad_input_is_one_line(tmp_path, args, message):
    proc = run_script("rank_hub.py", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_random_baseline_is_a_seeded_nature_cnn_scored_like_an_expert():
    data = _patch_data(n=400)
    rng_state = th.random.get_rng_state()
    reference = random_baseline(data, seed=3)
    assert th.equal(th.random.get_rng_state(), rng_state)  # seeded without touching the global RNG
    assert reference.baseline and reference.name == RANDOM_BASELINE and reference.seconds > 0
    # The encoder scratch starts from (NatureCNN, then SB3's orthogonal init with gain sqrt(2)) under
    # manual_seed(3), scored through the expert path: the same score.
    from functools import partial

    from stable_baselines3.common.policies import BasePolicy

    th.manual_seed(3)
    scratch = NatureCNN(SPACE)
    scratch.apply(partial(BasePolicy.init_weights, gain=np.sqrt(2)))
    assert not th.equal(scratch.cnn[0].weight, NatureCNN(SPACE).cnn[0].weight)
    assert reference.proxy == pytest.approx(proxy_score(Expert("seed3", scratch.state_dict(), "constructed"), data))
    assert random_baseline(data, seed=3).proxy == reference.proxy
    with pytest.raises(ValueError, match="probe"):
        random_baseline(data, probe="svm")


def _blind_hub(root: Path) -> Path:
    """A tiny hub whose experts' encoders are all zeros: constant features, which any random encoder beats."""
    from safetensors.torch import load_file

    from hubrl.experts import read_manifest, save_expert

    make_tiny_hub(root)
    for folder in root.iterdir():
        manifest = read_manifest(folder)
        state = load_file(folder / manifest.weights_file)
        save_expert(folder, {k: th.zeros_like(v) if "features_extractor" in k else v for k, v in state.items()}, manifest)
    return root


@pytest.mark.slow
def test_rank_hub_script_random_baseline_is_a_marked_reference_never_best(tmp_path):
    assert "rank_hub.py --env <Game> --probe ridge|knn --random-baseline" in selection.__doc__
    out = tmp_path / "ranking.json"
    proc = run_script("rank_hub.py", "--env", "Alien", "--hub", str(_blind_hub(tmp_path / "hub")), "--timesteps", "1.5k",
                      "--n-envs", "3", "--seed", "1", "--random-baseline", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if "-ppo" in line or RANDOM_BASELINE in line]
    assert [row[0] for row in rows[:3]] == ["ref", "1", "2"]  # in score order: the reference outscores both experts
    assert "Best: " in proc.stdout and "Best: random" not in proc.stdout
    assert "0 of 2 experts beat the random-init reference" in proc.stdout
    report = json.loads(out.read_text())
    experts, reference = report["rankings"][:2], report["rankings"][2]
    assert [(r["rank"], r["baseline"]) for r in experts] == [(1, False), (2, False)]
    assert reference["name"] == RANDOM_BASELINE and reference["baseline"] is True and reference["rank"] is None
    assert reference["proxy"] > max(r["proxy"] for r in experts)


def test_rank_hub_script_single_expert(tmp_path):
    hub = make_tiny_hub(tmp_path / "hub", names=("seaquest-ppo",))
    proc = run_script("rank_hub.py", "--env", "Alien", "--sources", str(hub / "seaquest-ppo"))
    assert proc.returncode == 0, proc.stderr
    assert "Only one expert (seaquest-ppo)" in proc.stdout
