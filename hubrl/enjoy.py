"""Watch an agent play: a run folder's model, a hub expert or an SB3 checkpoint; scores and video.

The library side of ``scripts/enjoy.py`` (RL Zoo's ``enjoy.py`` + ``record_video`` in one).

What can play (:func:`load_player`):

* a **run folder** of ``scripts/transfer.py`` (or its ``model.zip``): its policy (hubrl's own
  classes too: Hub-Pathway, Zoo-Tuning) rebuilt as data by :func:`hubrl.saved_model.load_saved_policy`
  (the class read off the zip without unpickling it, plain kwargs, ``policy.pth`` weights only), so
  a run folder someone else made cannot run code either;
* a **hub expert** by name or by game (``seaquest-ppo``, ``Seaquest``) from the shipped hub or
  ``hub=DIR``: its NatureCNN encoder and its policy/value heads (hub folders store the whole
  ``CnnPolicy`` state_dict) are put into a fresh SB3 ``CnnPolicy``;
* any other **SB3 zip** (e.g. RL Zoo's published Atari agents): read as weights only, as
  ``--sources`` does (:func:`hubrl.hub.load_sb3_zip`: ``policy.pth`` with ``weights_only=True``,
  ``data`` never unpickled), so a third-party file cannot run code. It must be a NatureCNN
  ``CnnPolicy``; an SB3 zip does not say which game it plays, so ``env`` is needed.

The agent sees exactly what it saw in training and evaluation: hubrl's :class:`hubrl.envs.AtariVecEnv`
with the evaluation settings (whole games, raw rewards, sticky actions). The video shows the
game as a person sees it: ``render_mode="rgb_array"`` keeps the 210x160 RGB screen of the same
game in lockstep (see :class:`hubrl.envs.AtariVecEnv`), one frame per agent step, i.e. 15 frames per
second of play (60 Hz emulator, frame skip 4).

Video files: MP4 through ``imageio-ffmpeg``, the optional ``[video]`` extra: a small Python
wrapper around the static ffmpeg binary it ships (about 170 MB installed, hence optional), so no
system ffmpeg is needed, and without moviepy, which gymnasium's ``RecordVideo`` and SB3's
``VecVideoRecorder`` pull in on top of it and which wrap one ``gym.Env`` rather than ale-py's
vector env. Without it, or for a ``.gif`` file name, an animated GIF through Pillow (a core
dependency, matplotlib's too).
"""

from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from hubrl.atomic import open_partial, probe_writable
from hubrl.envs import make_atari_vec_env, resolve_game
from hubrl.evaluation import seeded_actions
from hubrl.hub import HubError, load_sb3_zip, resolve_hub
from hubrl.pretrain import UsageError
from hubrl.saved_model import load_saved_policy

__all__ = ["Player", "PlayResult", "load_player", "play", "VideoWriter", "check_video_path", "mp4_available",
           "FRAMES_PER_SECOND"]

FRAMES_PER_SECOND = 15  # agent steps per second of real play: 60 Hz / frame skip 4


@dataclass
class Player:
    """Something that acts (``predict(obs, deterministic=...)``) on one game, and where it came from."""

    policy: Any
    game: str
    label: str
    repeat_action_probability: float = 0.25
    trained_steps: int | None = None  # agent steps the policy was trained for, where its file says


@dataclass
class PlayResult:
    """Raw game scores of the finished games, and what was played in all."""

    scores: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    steps: int = 0
    unfinished_score: float | None = None  # the game still running when the step limit (or a stop) came
    video: Path | None = None
    interrupted_by: int | None = None  # the signal (Ctrl-C: SIGINT, SIGTERM) that stopped the play early


def _expert_policy(expert, game: str, device: str) -> Any:
    """A stock SB3 ``CnnPolicy`` holding ``expert``'s encoder and heads, for ``game``'s actions."""
    import gymnasium as gym
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    from hubrl.envs import OBSERVATION_SHAPE, action_meanings
    from hubrl.hub import Hub

    Hub([expert]).validate(OBSERVATION_SHAPE)  # the frames the game gives: refused as transfer refuses it
    state = expert.policy_state()
    n_actions = int(state["action_net.weight"].shape[0])
    wanted = len(action_meanings(game))
    if n_actions != wanted:
        raise HubError(f"Expert {expert.name!r} has {n_actions} actions but {game} has {wanted}: "
                       f"play it on a game with {n_actions} actions.")
    space = gym.spaces.Box(0, 255, (expert.in_channels, 84, 84), np.uint8)
    policy = ActorCriticCnnPolicy(space, gym.spaces.Discrete(n_actions), lambda _: 0.0)
    missing, unexpected = policy.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("pi_features_extractor.", "vf_features_extractor."))]
    if missing or unexpected:
        raise HubError(f"Expert {expert.name!r} does not fit a NatureCNN CnnPolicy "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    return policy.to(device).eval()


def _run_folder_player(folder: Path, env: str | None, device: str) -> Player:
    from hubrl.agents import AGENT_CLASSES
    from hubrl.grid import read_yaml_object
    from hubrl.runconfig import export_command, is_pretraining_run

    config = read_yaml_object(folder / "config.yaml")
    run = config.get("run") if config is not None else None
    if not isinstance(run, dict):
        raise UsageError(f"{folder / 'config.yaml'} is not a run's config (unreadable, not YAML, or no 'run' section): "
                         "give a folder that hubrl-transfer or hubrl-bench wrote.")
    algo = str(run.get("algo", "ppo")).lower()
    if algo not in AGENT_CLASSES:
        raise UsageError(f"{folder / 'config.yaml'} names algo {algo!r}: expected one of {', '.join(AGENT_CLASSES)}.")
    if not (folder / "model.zip").is_file():
        if is_pretraining_run(run):  # hubrl-pretrain's config: its expert goes to a hub, not to a model.zip
            hub = f" --hub {shlex.quote(str(run['hub']))}" if run.get("hub") else ""
            play_it = f"play the expert with --expert {folder.name}{hub}"
            if run.get("hub") and not (Path(str(run["hub"])) / folder.name / "expert.json").is_file():
                # paused or stopped before its budget: nothing exported yet, so --expert alone would not find it
                export = export_command(folder.parent, [str(run["game"])], str(run.get("algo") or "ppo"))
                raise UsageError(f"{folder} is a pretraining run whose expert is not exported yet: export its latest "
                                 f"checkpoint with {export}, then {play_it}.")
            raise UsageError(f"{folder} is a pretraining run: it exports its expert to a hub instead of writing a "
                             f"model.zip; {play_it}.")
        raise UsageError(f"{folder} has no model.zip yet: the run saves it when it ends or is stopped.")
    sticky = _saved_probability(run.get("repeat_action_probability", 0.25), folder / "config.yaml",
                                "run.repeat_action_probability", UsageError)
    saved = load_saved_policy(folder / "model.zip", device=device)  # weights only: nothing in the zip runs
    if env is None and not run.get("env"):
        raise UsageError(f"{folder / 'config.yaml'} does not name the game: add --env GAME.")
    game = resolve_game(env or run["env"])
    from hubrl.envs import action_meanings

    n_actions, wanted = int(saved.policy.action_space.n), len(action_meanings(game))
    if n_actions != wanted:
        raise UsageError(f"{folder.name} was trained on {run.get('env', '?')} with {n_actions} actions but {game} has "
                         f"{wanted}: play it on a game with {n_actions} actions, e.g. its own (drop --env).")
    steps = "?" if saved.num_timesteps is None else f"{saved.num_timesteps:,}"
    label = f"{folder.name} ({run.get('method', '?')}, {algo}, {steps} steps)"
    return Player(saved.policy, game, label, sticky, saved.num_timesteps)


def _saved_probability(value: Any, path: str | Path, name: str, error: type[Exception]) -> float:
    """``value``, the probability ``name`` as the file ``path`` saved it (sticky actions), as a float.

    The file is untrusted: anything but a finite number in [0, 1] (a string, ``nan``, ``7``) raises
    ``error`` naming the file and the field, instead of a ``ValueError`` traceback or a game played
    with that number.
    """
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or not 0 <= number <= 1:  # nan fails every comparison; a huge int is compared exactly
        raise error(f"{path}: {name} is {value!r}, not a probability in [0, 1]: the file is damaged or was not "
                    "written by hubrl; mend the field (0.25 is the default), or play another run or expert.")
    return float(number)


def load_player(model: str | Path | None = None, *, expert: str | None = None, hub: str | Path | None = None,
                env: str | None = None, device: str = "cpu") -> Player:
    """What plays: a run folder / SB3 zip (``model``) or a hub expert (``expert``, from ``hub``).

    :param env: the game to play; default: the run's or the expert's own game (needed for a zip).
    """
    if (model is None) == (expert is None):
        raise UsageError("Give what plays: a run folder or .zip, or --expert NAME (not both).")
    if model is not None and hub is not None:
        raise UsageError(f"--hub picks the hub of --expert; {model} plays with the weights it holds: drop --hub.")
    if expert is not None:
        found = resolve_hub(hub).get(expert)
        game = resolve_game(env or found.game or "")
        sticky = (found.meta.get("eval") or {}).get("sticky_actions", 0.25)  # as the expert was evaluated
        sticky = _saved_probability(sticky, Path(found.source) / "expert.json", "eval.sticky_actions", HubError)
        return Player(_expert_policy(found, game, device), game, f"expert {found.name}", sticky)
    path = Path(model)
    if path.is_dir() and (path / "config.yaml").is_file():
        return _run_folder_player(path, env, device)
    if path.name == "model.zip" and (path.parent / "config.yaml").is_file():
        return _run_folder_player(path.parent, env, device)  # a run's zip may hold hubrl's own policy classes
    if path.is_dir():
        raise UsageError(f"{path} is not a run folder (no config.yaml): give a transfer run folder, a .zip or --expert NAME.")
    source = load_sb3_zip(path)  # weights only: a third-party zip cannot run code
    if env is None:
        raise UsageError(f"An SB3 zip does not say which game it plays: add --env GAME for {path.name}.")
    game = resolve_game(env)
    return Player(_expert_policy(source, game, device), game, f"{path.name} (weights only)")


def mp4_available() -> bool:
    """Whether MP4 can be written (the ``[video]`` extra, ``imageio-ffmpeg``, is installed)."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def check_video_path(path: str | Path) -> Path:
    """``path`` as a video file name (``.mp4`` or ``.gif``), refused otherwise: the command checks it
    before it loads the agent and starts the game, so a wrong name costs nothing."""
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".gif"):
        raise UsageError(f"--video {path}: give a .mp4 or .gif file name.")
    if path.is_dir():  # the video could not be renamed over it: found out now, not after the play
        raise UsageError(f"--video {path} is a folder: give a file name, e.g. {path / ('play' + path.suffix)}")
    above = next((p for p in path.absolute().parents if p.exists()), None)  # the nearest part that exists
    if above is not None and not above.is_dir():  # no folder can be made inside a file: found out now, too
        raise UsageError(f"--video {path}: {above} is a file, not a folder: give a path whose folders are folders.")
    gif = path.with_suffix(".gif")
    if path.suffix.lower() == ".mp4" and not mp4_available() and gif.exists():  # the fallback must not replace a file
        raise UsageError(f"--video {path}: without imageio-ffmpeg the video is written as {gif}, which exists and "
                         f"would be replaced: pip install -e \".[video]\" for MP4, or give another name.")
    return path


class VideoWriter:
    """Stream RGB frames into an MP4 (imageio-ffmpeg) or collect them into an animated GIF (Pillow).

    MP4 frames go straight to ffmpeg (constant memory) at ``scale`` x the screen size (nearest
    neighbour, 420x320 for 2); a GIF keeps every frame in memory as a palette image (210x160
    bytes, 33.6 kB, per agent step) until :meth:`close` writes it, at the screen's own size.
    A ``.mp4`` path without ``imageio-ffmpeg`` is written as a GIF next to it (``.gif``).
    """

    def __init__(self, path: str | Path, fps: int = FRAMES_PER_SECOND, scale: int = 2) -> None:
        path = check_video_path(path)
        self.fell_back = path.suffix.lower() == ".mp4" and not mp4_available()
        self.path = path.with_suffix(".gif") if self.fell_back else path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        probe_writable(self.path)  # a folder it cannot write in is refused now, not after the play
        # Frames go to a hidden file of this writer's own beside the video, renamed over it by close():
        # a play killed mid-way leaves the previous video with that name whole, never a torn one.
        self._partial: Path | None = None
        self.fps, self.frames = fps, 0
        self.gif = self.path.suffix.lower() == ".gif"
        self.scale = 1 if self.gif else max(int(scale), 1)
        self._images: list[Any] = []
        self._mp4: Iterator | None = None

    def add(self, frame: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 frame."""
        if self.scale > 1:
            frame = frame.repeat(self.scale, axis=0).repeat(self.scale, axis=1)
        if self.gif:
            from PIL import Image

            # Atari screens have far fewer than 256 colours: the palette is exact, no dithering needed.
            self._images.append(
                Image.fromarray(frame).quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE))
        else:
            if self._mp4 is None:
                import imageio_ffmpeg

                height, width = frame.shape[:2]
                self._mp4 = imageio_ffmpeg.write_frames(str(self._partial_file()), (width, height), fps=self.fps,
                                                        macro_block_size=2, quality=7)
                self._mp4.send(None)
            self._mp4.send(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> Path:
        """Finish the file (renamed over ``path`` once complete); returns its path. A failure leaves
        the previous video and no partial file."""
        try:
            if self._mp4 is not None:
                mp4, self._mp4 = self._mp4, None
                mp4.close()
            if self.gif and self._images:
                first, *rest = self._images
                self._images = []
                first.save(self._partial_file(), format="GIF", save_all=True, append_images=rest,
                           duration=round(1000 / self.fps), loop=0, optimize=False)
            if self._partial is not None:
                os.replace(self._partial, self.path)
                self._partial = None
        finally:
            if self._partial is not None:
                self._partial.unlink(missing_ok=True)
                self._partial = None
        return self.path

    def _partial_file(self) -> Path:
        """This writer's hidden file beside the video (made once, unique: two plays do not share it)."""
        if self._partial is None:
            fd, name = open_partial(self.path, suffix=f".partial{self.path.suffix}")  # the encoder picks by suffix
            os.close(fd)
            self._partial = Path(name)
        return self._partial


def play(player: Player, *, steps: int | None = None, episodes: int | None = 1, seed: int = 0, deterministic: bool = False,
         video: str | Path | None = None, repeat_action_probability: float | None = None, gate_noise: bool = False,
         on_game_end: Callable[[int, float, int], None] | None = None, stop_on_signal: bool = False) -> PlayResult:
    """Play ``player`` on its game until ``episodes`` games end or ``steps`` agent steps pass (the first).

    Evaluation settings (:func:`hubrl.evaluation.make_eval_env`): whole games, raw rewards,
    sticky actions as the player was trained with (or ``repeat_action_probability``), actions sampled unless ``deterministic``
    (RL Zoo's choice for Atari). ``seed`` seeds the game and the sampled actions: the same seed
    plays the same games. ``gate_noise``: a Hub-Pathway player routes with its acting gate noise
    (:func:`hubrl.policies.predict_with_gate_noise`). ``on_game_end(index, score, length)`` is
    called as each game ends. ``stop_on_signal`` (``hubrl-enjoy``): Ctrl-C / SIGTERM end the play
    after the current step, with ``interrupted_by`` set, the games so far and the video kept;
    otherwise (a caller that plays many) Ctrl-C raises ``KeyboardInterrupt`` as usual.
    """
    if steps is None and episodes is None:
        raise UsageError("Give a number of --timesteps or --episodes to play.")
    if (steps is not None and steps < 1) or (episodes is not None and episodes < 1):
        raise UsageError("--timesteps and --episodes must be positive.")
    writer = VideoWriter(video) if video is not None else None
    env = make_atari_vec_env(player.game, 1, seed=seed, terminal_on_life_loss=False, clip_reward=False,
                             repeat_action_probability=(player.repeat_action_probability if repeat_action_probability is None
                                                        else repeat_action_probability),
                             render_mode="rgb_array" if video is not None else None)
    from hubrl.training import StopOnSignal

    result = PlayResult()
    try:
        # stop_on_signal: Ctrl-C / SIGTERM end the play after the current step; the games so far and the video are kept
        then = "stopping" + (", then writing the video" if writer is not None else "")
        stop = StopOnSignal(then) if stop_on_signal else None
        with stop if stop is not None else contextlib.nullcontext(), \
                seeded_actions(player.policy, seed, gate_noise):  # a seed repeats the games, the caller's generator is kept
            _play_games(player, env, writer, result, steps, episodes, deterministic, on_game_end, stop)
        result.interrupted_by = stop.received if stop is not None else None
    finally:
        env.close()
        if writer is not None:
            result.video = writer.close()
    return result


def _play_games(player: Player, env, writer: VideoWriter | None, result: PlayResult, steps: int | None,
                episodes: int | None, deterministic: bool, on_game_end: Callable[[int, float, int], None] | None,
                stop: Any = None) -> None:
    """The game loop of :func:`play`: fills ``result`` (and ``writer``) in place, until the limits or
    until ``stop.received`` (a signal, :class:`hubrl.training.StopOnSignal`)."""
    obs = env.reset()
    running, game_over = 0.0, False
    if writer is not None:
        writer.add(env.get_images()[0])
    while ((steps is None or result.steps < steps) and (episodes is None or len(result.scores) < episodes)
           and (stop is None or stop.received is None)):
        action, _ = player.policy.predict(obs, deterministic=deterministic)
        obs, reward, _, infos = env.step(action)
        result.steps += 1
        running += float(reward[0])
        if writer is not None:
            writer.add(env.get_images()[0])
        episode = infos[0].get("episode")
        game_over = episode is not None
        if game_over:
            result.scores.append(float(episode["r"]))
            result.lengths.append(int(episode["l"]))
            running = 0.0
            if on_game_end is not None:
                on_game_end(len(result.scores), result.scores[-1], result.lengths[-1])
    if result.steps and not game_over:
        result.unfinished_score = running
