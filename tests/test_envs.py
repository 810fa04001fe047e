"""Semantics of the fast Atari VecEnv: what SB3 and the agent rely on."""

from __future__ import annotations

import numpy as np
import pytest

from hubrl.envs import (
    OBSERVATION_SHAPE,
    UnknownGameError,
    action_meanings,
    human_normalized_score,
    make_atari_vec_env,
    resolve_game,
)


def _random_actions(env, rng):
    return rng.integers(0, env.action_space.n, size=env.num_envs)


def test_observation_shape_dtype_and_space():
    env = make_atari_vec_env("Seaquest", 3, seed=0)
    obs = env.reset()
    assert obs.shape == (3, 4, 84, 84) and obs.dtype == np.uint8
    assert env.observation_space.shape == OBSERVATION_SHAPE == (4, 84, 84)  # what a hub is checked against
    assert env.action_space.n == 18
    env.close()


def test_frame_stack_is_oldest_first():
    env = make_atari_vec_env("Seaquest", 2, seed=1)
    rng = np.random.default_rng(0)
    obs = env.reset()
    for _ in range(30):
        new, _, dones, _ = env.step(_random_actions(env, rng))
        live = ~dones
        # the stack shifts left by one frame: new[:, :3] are old[:, 1:]
        np.testing.assert_array_equal(new[live, :3], obs[live, 1:])
        obs = new
    env.close()


def test_auto_reset_reports_raw_score_and_terminal_observation():
    env = make_atari_vec_env("Seaquest", 2, seed=0, terminal_on_life_loss=False, clip_reward=True)
    rng = np.random.default_rng(0)
    env.reset()
    clipped = np.zeros(2)
    finished = []
    for _ in range(5000):
        obs, rewards, dones, infos = env.step(_random_actions(env, rng))
        assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}
        clipped += rewards
        for i in np.flatnonzero(dones):
            info = infos[i]
            assert "episode" in info and "terminal_observation" in info
            assert info["terminal_observation"].shape == (4, 84, 84)
            assert info["TimeLimit.truncated"] is False
            # Seaquest pays 20 per kill: the raw score is 20x the clipped sum.
            assert info["episode"]["r"] == pytest.approx(20 * clipped[i])
            assert info["episode"]["l"] > 0
            finished.append(info["episode"]["r"])
            clipped[i] = 0
        if len(finished) >= 2:
            break
    assert len(finished) >= 2
    env.close()


def test_unclipped_rewards_sum_to_the_episode_score():
    env = make_atari_vec_env("Seaquest", 1, seed=3, terminal_on_life_loss=False, clip_reward=False)
    rng = np.random.default_rng(1)
    env.reset()
    total = 0.0
    for _ in range(5000):
        _, rewards, dones, infos = env.step(_random_actions(env, rng))
        total += rewards[0]
        if dones[0]:
            assert infos[0]["episode"]["r"] == pytest.approx(total)
            return
    pytest.fail("no episode ended")


def test_life_loss_ends_agent_episode_but_not_the_game():
    env = make_atari_vec_env("Seaquest", 1, seed=0, terminal_on_life_loss=True)
    rng = np.random.default_rng(0)
    env.reset()
    life_dones = 0
    for _ in range(5000):
        _, _, dones, infos = env.step(_random_actions(env, rng))
        if dones[0]:
            if "episode" in infos[0]:
                break
            life_dones += 1
            assert "terminal_observation" in infos[0]
    assert life_dones >= 1, "losing a life should end the agent's episode"
    assert "episode" in infos[0], "the game should still end and report its score"
    env.close()


def test_truncation_flags_time_limit():
    env = make_atari_vec_env("Seaquest", 2, seed=0, terminal_on_life_loss=False, max_episode_frames=200)
    env.reset()
    for _ in range(200):
        _, _, dones, infos = env.step(np.zeros(2, dtype=np.int64))  # NOOP: no death within 200 frames
        if dones.any():
            break
    assert dones.all()
    assert all(info["TimeLimit.truncated"] for info in infos)
    assert all("episode" in info for info in infos)
    env.close()


def _seaquest_frames(seed: int, steps: int) -> np.ndarray:
    """The observations of 2 Seaquest envs seeded ``seed`` under ``steps`` fixed random actions."""
    env = make_atari_vec_env("Seaquest", 2, seed=seed)
    rng = np.random.default_rng(0)
    frames = [env.reset()]
    for _ in range(steps):
        frames.append(env.step(_random_actions(env, rng))[0])
    env.close()
    return np.stack(frames)


def test_same_seed_same_trajectory():
    np.testing.assert_array_equal(_seaquest_frames(7, 50), _seaquest_frames(7, 50))


def test_a_seed_past_int32_plays_the_games_of_that_seed_modulo_2_to_the_31():
    """ale-py takes int32 seeds only: a run's evaluation seed (run seed x 1,000,003 + step) passes 2**31 from
    run seed 2148 on, and ``--seed 2148`` crashed at its first evaluation (as any seed near 2**31 did at its
    first reset), on a resume too. Seeds are taken modulo 2**31: those below play the games they did."""
    big = 2148 * 1_000_003 + 50_000  # run seed 2148's evaluation at 50k
    np.testing.assert_array_equal(_seaquest_frames(big, 40), _seaquest_frames(big % 2**31, 40))
    np.testing.assert_array_equal(_seaquest_frames(2**31 + 7, 40), _seaquest_frames(7, 40))


@pytest.mark.parametrize("name", ["Alien", "alien", "ALE/Alien-v5", "AlienNoFrameskip-v4", "Alien-v5"])
def test_game_name_forms(name):
    assert resolve_game(name) == "alien"


@pytest.mark.parametrize("name", ["ALE/Alien-v9", "Alien-v1", "AlienNoFrameskip-v6"])
def test_a_version_ale_does_not_have_is_refused(name):
    with pytest.raises(UnknownGameError, match="no v\\d+ environments .*v0, v4 and v5"):
        resolve_game(name)


def test_camel_case_games():
    assert resolve_game("MsPacman") == "ms_pacman"
    assert resolve_game("ms_pacman") == "ms_pacman"


def test_unknown_game_suggests_close_match():
    with pytest.raises(UnknownGameError, match="Did you mean Seaquest"):
        resolve_game("Seaqest")
    with pytest.raises(UnknownGameError):
        make_atari_vec_env("NotAGame", 1)


def test_action_meanings_minimal_and_full():
    gopher = action_meanings("Gopher")
    assert len(gopher) == 8 and gopher[:2] == ("NOOP", "FIRE")
    assert len(action_meanings("Gopher", full_action_space=True)) == 18
    env = make_atari_vec_env("Gopher", 1)
    assert env.action_space.n == 8 and env.get_action_meanings() == gopher
    env.close()


def test_looking_up_a_games_actions_prints_nothing():
    """Not ALE's banner either (its emulator's constructor prints it unless told before): a command refused
    on the game's actions (``hubrl-enjoy --env`` of another game) prints only its error. In a fresh process,
    as ALE's logger setting is process-wide."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = "from hubrl.envs import action_meanings; action_meanings('Pong'); action_meanings('Alien', full_action_space=True)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and (result.stdout, result.stderr) == ("", "")


def test_bad_n_envs():
    with pytest.raises(ValueError, match="n_envs"):
        make_atari_vec_env("Alien", 0)


def test_human_normalized_score():
    assert human_normalized_score("Alien", 227.8) == pytest.approx(0.0)
    assert human_normalized_score("ALE/Alien-v5", 7127.7) == pytest.approx(1.0)


@pytest.mark.slow
def test_sb3_evaluate_policy_reads_raw_scores():
    from stable_baselines3.common.evaluation import evaluate_policy

    class Random:
        def predict(self, obs, state=None, episode_start=None, deterministic=False):
            return np.random.default_rng(0).integers(0, 18, size=len(obs)), None

    env = make_atari_vec_env("Seaquest", 2, seed=0, terminal_on_life_loss=False, clip_reward=False)
    scores, lengths = evaluate_policy(Random(), env, n_eval_episodes=2, return_episode_rewards=True)
    assert len(scores) == 2 and all(s % 20 == 0 for s in scores)
    assert all(n > 50 for n in lengths)  # whole games, not single lives


def test_rgb_screen_plays_the_same_game_as_the_agent_observation():
    """render_mode="rgb_array" keeps a person's view (210x160 RGB) in lockstep with the agent's
    84x84 frames, and leaves those frames exactly as without it."""
    from PIL import Image

    def agent_view(rgb):  # the agent's preprocessing, approximately: luminance, area resize
        gray = Image.fromarray((rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.float32), mode="F")
        return np.asarray(gray.resize((84, 84), Image.BOX), dtype=np.float64)

    env = make_atari_vec_env("Seaquest", 2, seed=1, render_mode="rgb_array", terminal_on_life_loss=False)
    plain = make_atari_vec_env("Seaquest", 2, seed=1, terminal_on_life_loss=False)
    assert plain.get_images() == [None, None]
    np.testing.assert_array_equal(env.reset(), plain.reset())
    rng = np.random.default_rng(0)
    before, games, compared, closer = env.get_images(), 0, 0, 0
    for _ in range(500):  # seed 1: a game ends at step 359
        actions = _random_actions(env, rng)
        obs, _, dones, infos = env.step(actions)
        np.testing.assert_array_equal(obs, plain.step(actions)[0])
        games += sum("episode" in info for info in infos)
        now = env.get_images()
        assert now[0].shape == (210, 160, 3) and now[0].dtype == np.uint8
        for k in range(2):  # the current screen explains the newest frame better than the last one does
            err_now, err_before = (np.abs(agent_view(s[k]) - obs[k, -1]).mean() for s in (now, before))
            compared += err_now != err_before
            closer += err_now < err_before
        before = now
    assert games >= 1 and compared > 400  # across an automatic reset too
    assert closer / compared > 0.97  # (all but a few near-still frames, where the approximate view's error dominates)
    env.close()
    plain.close()
