"""Watching agents: hub experts, run folders and SB3 zips play; raw scores printed; MP4 / GIF written."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from hubrl import enjoy
from hubrl.enjoy import load_player, play
from hubrl.pretrain import UsageError
from tests.conftest import TINY_PPO, forbid_unpickling, make_sb3_zip, make_tiny_hub, run_script


@pytest.mark.slow
def test_cli_plays_a_hub_expert_by_game_and_prints_each_game_score(tiny_hub):
    result = run_script("enjoy.py", "--expert", "Seaquest", "--hub", str(tiny_hub), "--episodes", "1", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Playing Seaquest with expert seaquest-ppo" in result.stdout
    assert "Seaquest game 1: score " in result.stdout and "Seaquest: 1 game(s), raw score mean" in result.stdout


@pytest.mark.slow
def test_cli_records_an_mp4_of_the_rgb_screen(tmp_path, tiny_hub):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="MP4 needs the [video] extra: pip install -e '.[video]'")
    video = tmp_path / "out" / "seaquest.mp4"
    result = run_script("enjoy.py", "--expert", "seaquest-ppo", "--hub", str(tiny_hub), "--timesteps", "200",
                        "--video", str(video), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "game unfinished after 200 steps, score so far" in result.stdout and f"Video: {video}" in result.stdout
    frames = imageio_ffmpeg.read_frames(str(video))
    meta = next(frames)
    assert tuple(meta["size"]) == (320, 420) and meta["fps"] == 15  # 2x the 160x210 screen, 15 steps per second
    assert sum(1 for _ in frames) == 201  # the reset screen and one per agent step


def test_mp4_falls_back_to_a_gif_without_imageio_ffmpeg(tmp_path, tiny_hub, monkeypatch):
    monkeypatch.setattr(enjoy, "mp4_available", lambda: False)
    player = load_player(expert="Riverraid", hub=tiny_hub)
    result = play(player, steps=120, video=tmp_path / "rr.mp4")
    assert result.video == tmp_path / "rr.gif" and not (tmp_path / "rr.mp4").exists()
    assert result.steps == 120 and result.unfinished_score is not None
    with Image.open(result.video) as gif:
        assert gif.format == "GIF" and gif.size == (160, 210) and gif.n_frames > 10
        gif.seek(gif.n_frames - 1)
        frame = np.asarray(gif.convert("RGB"))
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 4  # a game screen in colour, not a blank frame


@pytest.mark.slow
def test_a_run_folder_plays_with_its_own_policy_and_game(tmp_path, monkeypatch):
    from hubrl.transfer import TransferConfig, run_transfer

    cfg = TransferConfig(env="Gopher", method="scratch", timesteps=64, n_envs=2, out=str(tmp_path / "run"), eval_freq=10**9,
                         eval_episodes=1, checkpoint_freq=10**9, hyperparams=dict(TINY_PPO), device="cpu")
    folder = run_transfer(cfg, progress_bar=False, verbose=0).folder
    forbid_unpickling(monkeypatch)  # a run's model.zip is rebuilt as weights only too
    for target in (folder, folder / "model.zip"):
        player = load_player(target)
        assert player.game == "gopher" and type(player.policy).__name__ == "ActorCriticCnnPolicy"
        assert player.trained_steps == 64 and "64 steps" in player.label
        assert play(player, steps=30).steps == 30
    with pytest.raises(UsageError, match="with 8 actions but pong has 6: play it on a game with 8 actions"):
        load_player(folder, env="Pong")  # ale-py would hang on Gopher's actions 6 and 7


def test_a_pretraining_run_folder_names_the_expert_to_play(tmp_path):
    """hubrl-pretrain's run folders export their expert to a hub and never write a model.zip."""
    import re

    import yaml

    folder = tmp_path / "runs" / "riverraid-ppo"
    folder.mkdir(parents=True)
    hub = tmp_path / "my hub"
    (folder / "config.yaml").write_text(yaml.safe_dump({"run": {"game": "riverraid", "algo": "ppo", "hub": str(hub)}}))
    # paused before its budget: nothing in the hub yet, so the way to play it starts with --export
    with pytest.raises(UsageError, match=re.escape(
            f"is a pretraining run whose expert is not exported yet: export its latest checkpoint with python -m hubrl "
            f"pretrain --export --out {tmp_path / 'runs'} --env riverraid, then play the expert with --expert riverraid-ppo "
            f"--hub '{hub}'.")):
        load_player(folder)
    a2c = tmp_path / "runs" / "riverraid-a2c"  # an A2C run's export names its algorithm: without it, it would look
    a2c.mkdir()  # for riverraid-ppo
    (a2c / "config.yaml").write_text(yaml.safe_dump({"run": {"game": "riverraid", "algo": "a2c", "hub": str(hub)}}))
    with pytest.raises(UsageError, match=re.escape(f"--out {tmp_path / 'runs'} --env riverraid --algo a2c, then play the "
                                                   "expert with --expert riverraid-a2c")):
        load_player(a2c)
    make_tiny_hub(hub, names=("riverraid-ppo",))  # exported
    with pytest.raises(UsageError, match=re.escape("is a pretraining run: it exports its expert to a hub instead of "
                                                   f"writing a model.zip; play the expert with --expert riverraid-ppo "
                                                   f"--hub '{hub}'.")):
        load_player(folder)


def test_a_wrong_video_name_is_refused_before_the_agent_is_loaded(monkeypatch, capsys):
    """``--video clip.avi`` is refused first, not after the agent was loaded, the game started and
    "recording clip.avi" printed."""
    from hubrl.cli.enjoy import main

    def loaded(*args, **kwargs):
        raise AssertionError("the agent was loaded before --video was checked")

    monkeypatch.setattr(enjoy, "load_player", loaded)
    with pytest.raises(UsageError, match=r"--video clip.avi: give a .mp4 or .gif file name"):
        main(["--expert", "Seaquest", "--timesteps", "5", "--video", "clip.avi"])
    assert capsys.readouterr().out == ""


def test_a_video_path_that_is_a_folder_is_refused_before_the_agent_is_loaded(monkeypatch, capsys, tmp_path):
    """``--video clip.mp4`` with clip.mp4 a folder played the whole game, then failed naming a hidden
    temporary file, the scores never printed: it is refused first, by the name given."""
    from hubrl.cli.enjoy import main

    def loaded(*args, **kwargs):
        raise AssertionError("the agent was loaded before --video was checked")

    monkeypatch.setattr(enjoy, "load_player", loaded)
    video = tmp_path / "clip.mp4"
    video.mkdir()
    with pytest.raises(UsageError) as refused:
        main(["--expert", "Seaquest", "--timesteps", "5", "--video", str(video)])
    assert str(refused.value) == f"--video {video} is a folder: give a file name, e.g. {video / 'play.mp4'}"
    assert capsys.readouterr().out == "" and list(video.iterdir()) == []


@pytest.mark.parametrize("below", ["clip.mp4", "sub/clip.mp4"], ids=["in-a-file", "deeper-in-a-file"])
def test_a_video_path_inside_a_file_is_refused_before_the_agent_is_loaded(monkeypatch, capsys, tmp_path, below):
    """``--video notes.txt/clip.mp4`` (a "folder" that is a file) loaded the agent first, then failed making
    the folder: it is refused first, naming the file in the way, and the file is left as it was."""
    from hubrl.cli.enjoy import main

    def loaded(*args, **kwargs):
        raise AssertionError("the agent was loaded before --video was checked")

    monkeypatch.setattr(enjoy, "load_player", loaded)
    (tmp_path / "notes.txt").write_text("keep me")
    video = tmp_path / "notes.txt" / below
    with pytest.raises(UsageError) as refused:
        main(["--expert", "Seaquest", "--timesteps", "5", "--video", str(video)])
    assert str(refused.value) == (f"--video {video}: {tmp_path / 'notes.txt'} is a file, not a folder: "
                                  "give a path whose folders are folders.")
    assert capsys.readouterr().out == "" and (tmp_path / "notes.txt").read_text() == "keep me"


def test_the_gif_fallback_of_an_mp4_does_not_replace_an_existing_gif(monkeypatch, tmp_path):
    """Without imageio-ffmpeg ``--video clip.mp4`` is written as clip.gif: an existing clip.gif, which
    the user did not name, is refused rather than overwritten."""
    monkeypatch.setattr(enjoy, "mp4_available", lambda: False)
    (tmp_path / "clip.gif").write_bytes(b"GIF89a keep me")
    with pytest.raises(UsageError, match=r"written as .*clip.gif, which exists and would be replaced"):
        enjoy.check_video_path(tmp_path / "clip.mp4")
    assert (tmp_path / "clip.gif").read_bytes() == b"GIF89a keep me"
    assert enjoy.check_video_path(tmp_path / "other.mp4") == tmp_path / "other.mp4"  # nothing to replace: accepted


def test_gate_noise_on_a_policy_that_does_not_route_is_refused_before_it_plays(monkeypatch, capsys, tiny_hub):
    """``--gate-noise`` on an expert (no gate) is refused before "Playing ..." is printed and the game starts."""
    from hubrl.cli.enjoy import main

    def played(*args, **kwargs):
        raise AssertionError("the game started before --gate-noise was checked")

    monkeypatch.setattr(enjoy, "play", played)
    with pytest.raises(UsageError, match="Gate noise needs a Hub-Pathway policy.*does not route: drop --gate-noise"):
        main(["--expert", "Seaquest", "--hub", str(tiny_hub), "--gate-noise"])
    assert capsys.readouterr().out == ""


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--env", "Pong"], "error: Expert 'seaquest-ppo' has 18 actions but pong has 6: play it on a game with 18 actions."),
    (["--gate-noise"], "error: Gate noise needs a Hub-Pathway policy with a noisy gate; ActorCriticCnnPolicy does not route"),
])
def test_a_refused_play_prints_only_its_error(tiny_hub, args, message):
    """Refused once the game's actions were looked up: stderr holds the one error line, not ALE's banner before it."""
    result = run_script("enjoy.py", "--expert", "Seaquest", "--hub", str(tiny_hub), "--timesteps", "5", *args, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


def test_ctrl_c_stops_the_play_reports_the_games_and_writes_the_video(monkeypatch, capsys, tmp_path, tiny_hub):
    """Ctrl-C while watching ends the play after the current step, as the training commands stop: the
    games so far and the video are reported and the exit code is 128 + SIGINT, not a traceback."""
    import os
    import signal

    from hubrl.cli.enjoy import main

    player = load_player(expert="Seaquest", hub=tiny_hub)
    predict, calls = player.policy.predict, []

    def predict_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return predict(*args, **kwargs)

    player.policy.predict = predict_then_ctrl_c
    monkeypatch.setattr(enjoy, "load_player", lambda *args, **kwargs: player)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup / a background job
    assert main(["--expert", "Seaquest", "--timesteps", "1000", "--video", str(tmp_path / "v.gif")]) == 128 + signal.SIGINT
    out = capsys.readouterr().out
    assert "Received SIGINT: stopping, then writing the video (again to abort)." in out
    assert "Seaquest: game unfinished after 5 steps" in out and f"Video: {tmp_path / 'v.gif'}" in out
    assert Image.open(tmp_path / "v.gif").n_frames == 6  # the first screen and one per step
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_third_party_zip_is_read_as_weights_only(tmp_path, monkeypatch):
    path = make_sb3_zip(tmp_path / "ppo-Seaquest.zip")
    forbid_unpickling(monkeypatch)
    with pytest.raises(UsageError, match="add --env GAME"):
        load_player(path)
    player = load_player(path, env="Alien")
    assert player.label == "ppo-Seaquest.zip (weights only)" and player.game == "alien"
    assert play(player, steps=20).steps == 20


def test_an_action_outside_the_games_set_is_refused_not_sent_to_the_emulator():
    """ale-py's vector env hangs (and ignores Ctrl-C) on an action past the game's set."""
    from hubrl.envs import make_atari_vec_env

    env = make_atari_vec_env("Pong", 2, seed=0)
    try:
        env.reset()
        with pytest.raises(ValueError, match="Action 7 is not one of pong's 6 actions"):
            env.step(np.array([0, 7]))
        with pytest.raises(ValueError, match="Action -1 is not one of"):
            env.step(np.array([-1, 0]))
        env.step(np.array([5, 0]))  # a valid step still works afterwards
    finally:
        env.close()


def test_the_same_seed_plays_the_same_game_and_leaves_the_callers_generator_alone(tiny_hub):
    import torch as th

    player = load_player(expert="Seaquest", hub=tiny_hub)
    real = player.policy.predict

    def actions_of(seed: int) -> list[int]:
        taken: list[int] = []

        def predict(obs, deterministic=False):
            out = real(obs, deterministic=deterministic)
            taken.append(int(out[0][0]))
            return out

        player.policy.predict = predict
        play(player, steps=60, seed=seed)
        return taken

    th.manual_seed(123)
    expected = th.rand(1)
    th.manual_seed(123)
    first = actions_of(1)
    assert th.equal(th.rand(1), expected)  # the caller's generator is where it was before play
    th.rand(100)  # wherever the caller's generator stands, a seed plays the same games
    assert actions_of(1) == first and actions_of(2) != first


def test_seeded_actions_forks_the_generator_for_a_seed_and_draws_from_the_callers_without():
    """What play and evaluate_model act under: a seed draws the same numbers wherever the caller's
    generator stands and leaves it as it was; ``None`` draws from the caller's generator itself."""
    import torch as th

    from hubrl.evaluation import seeded_actions

    policy = object()
    th.manual_seed(123)
    expected = th.rand(2)
    th.manual_seed(123)
    with seeded_actions(policy, 7):
        drawn = th.rand(3)
    assert th.equal(th.rand(2), expected)  # the caller's generator is where it was
    with seeded_actions(policy, 7):
        assert th.equal(th.rand(3), drawn)  # the same seed, the same draws
    th.manual_seed(123)
    with seeded_actions(policy, None):
        assert th.equal(th.rand(2), expected)  # no seed: the caller's generator
    with pytest.raises(UsageError, match="does not route: drop --gate-noise"), seeded_actions(policy, 7, gate_noise=True):
        pass


def test_hub_with_a_run_folder_or_zip_is_refused_not_ignored(tmp_path, tiny_hub):
    path = make_sb3_zip(tmp_path / "ppo-Seaquest.zip")
    with pytest.raises(UsageError, match="--hub picks the hub of --expert; .*ppo-Seaquest.zip plays with the weights it "
                                         "holds: drop --hub"):
        load_player(path, hub=tiny_hub, env="Alien")


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_a_video_replaces_the_previous_one_only_when_complete(tmp_path, suffix):
    """A play killed mid-way must leave the video already at that name whole: frames go to a hidden
    partial file, renamed over the name by ``close``."""
    if suffix == ".mp4":
        pytest.importorskip("imageio_ffmpeg", reason="MP4 needs the [video] extra: pip install -e '.[video]'")
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(b"the previous video")
    writer = enjoy.VideoWriter(path)
    frame = np.zeros((210, 160, 3), np.uint8)
    for value in range(0, 200, 10):
        writer.add(frame + value)
    assert path.read_bytes() == b"the previous video"  # a kill here loses nothing the user had
    assert writer.close() == path
    assert path.read_bytes() != b"the previous video" and path.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left beside it
    umask = os.umask(0o022)  # the usual one, whatever the test runner's (under 077 the check could not fail)
    try:
        path.unlink()
        writer = enjoy.VideoWriter(path)
        writer.add(frame)
        assert writer.close() == path and path.stat().st_mode & 0o777 == 0o644  # mkstemp's would be 0600
    finally:
        os.umask(umask)


def test_a_video_that_fails_to_finish_leaves_the_previous_one_and_no_partial_file(tmp_path, monkeypatch):
    """Two writers of one name do not share a partial file; one whose encoder fails at ``close``
    leaves the previous video and nothing beside it."""
    from PIL import Image

    path = tmp_path / "clip.gif"
    path.write_bytes(b"the previous video")
    frame = np.zeros((210, 160, 3), np.uint8)
    first, second = enjoy.VideoWriter(path), enjoy.VideoWriter(path)
    for writer in (first, second):
        writer.add(frame)
    assert first._partial_file() != second._partial_file()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        first.close()
    assert path.read_bytes() == b"the previous video"
    monkeypatch.undo()
    assert second.close() == path and path.read_bytes()[:3] == b"GIF"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]


@pytest.mark.parametrize("value", ["abc", 7, -0.5, float("nan"), float("inf"), None, True, 10**400],
                         ids=["a-string", "7", "negative", "nan", "inf", "null", "true", "a-huge-int"])
def test_a_saved_sticky_probability_that_is_not_one_is_refused_naming_the_file(tmp_path, tiny_hub, value):
    """A run's ``config.yaml`` or an expert's ``expert.json`` is untrusted: its sticky-action probability
    ("abc": a ValueError traceback; 7: a game played with p=7) must be a number in [0, 1]."""
    import json

    import yaml

    from hubrl.hub import HubError

    manifest = tiny_hub / "seaquest-ppo" / "expert.json"
    raw = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**raw, "eval": {"sticky_actions": value}}))
    with pytest.raises(HubError, match=r"seaquest-ppo/expert.json: eval.sticky_actions is .*, not a probability in \[0, 1\]"):
        load_player(expert="seaquest-ppo", hub=tiny_hub)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"run": {"env": "Gopher", "algo": "ppo",
                                                             "repeat_action_probability": value}}))
    (run / "model.zip").write_bytes(b"never read: the config is refused first")
    with pytest.raises(UsageError, match=r"run/config.yaml: run.repeat_action_probability is .*, not a probability"):
        load_player(run)


def test_a_saved_sticky_probability_in_range_is_played_with(tiny_hub):
    import json

    manifest = tiny_hub / "seaquest-ppo" / "expert.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "eval": {"sticky_actions": 0}}))
    assert load_player(expert="seaquest-ppo", hub=tiny_hub).repeat_action_probability == 0.0
