"""Pretrain one source expert (PPO or A2C on one game) and export it into a hub folder.

Everything a run needs lives in ``<hub>/<name>/``: the exported expert (``expert.json`` +
``weights.safetensors``, written when training completes), the training state under ``train/``
(``checkpoint.pt``, ``config.yaml``) and, unless told otherwise, TensorBoard events under ``tb/``.
Interrupted runs resume from ``train/checkpoint.pt`` with their saved configuration.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch as th
import yaml

from agents import AGENT_CLASSES, resolve_hyperparams
from envs import action_meanings, make_atari_vec_env, resolve_game
from hubrl.checkpoint import atomic_write, load_training_checkpoint
from hubrl.evaluation import make_eval_env
from hubrl.experts import ExpertManifest, save_expert
from hubrl.training import TrainingOutcome, run_training

__all__ = ["PretrainConfig", "PretrainResult", "expert_name", "pretrain_expert", "UsageError"]


class UsageError(ValueError):
    """A user mistake that the command line reports as one line (no traceback)."""


@dataclass
class PretrainConfig:
    """Settings of one pretraining run (the resolved form is saved as ``train/config.yaml``)."""

    game: str
    algo: str = "ppo"
    timesteps: int = 10_000_000
    n_envs: int | None = None  # None: the preset's
    seed: int = 0
    device: str = "auto"
    out: str = "hub"
    tensorboard_log: str | None = None  # None: <out>/<name>/tb
    eval_freq: int = 250_000
    eval_episodes: int = 10
    checkpoint_freq: int = 100_000
    repeat_action_probability: float = 0.25
    hyperparams: dict[str, Any] = field(default_factory=dict)
    export_dtype: str = "float32"


@dataclass
class PretrainResult:
    name: str
    folder: Path
    outcome: TrainingOutcome
    manifest: ExpertManifest | None


def expert_name(game: str, algo: str) -> str:
    """Folder name of an expert: ``seaquest-ppo``."""
    return f"{resolve_game(game)}-{algo.lower()}"


def _validate(cfg: PretrainConfig) -> None:
    resolve_game(cfg.game)  # UnknownGameError names close matches
    if cfg.algo.lower() not in AGENT_CLASSES:
        raise UsageError(f"Unknown algo {cfg.algo!r}: choose one of {', '.join(AGENT_CLASSES)}.")
    if cfg.timesteps <= 0:
        raise UsageError(f"--timesteps must be positive, got {cfg.timesteps}.")
    if cfg.n_envs is not None and cfg.n_envs <= 0:
        raise UsageError(f"--n-envs must be positive, got {cfg.n_envs}.")
    if cfg.eval_episodes <= 0 or cfg.checkpoint_freq <= 0:
        raise UsageError("--eval-episodes and --checkpoint-freq must be positive.")


def prepare_folder(out: str | Path, name: str, resume: bool, force: bool) -> Path:
    """Create ``<out>/<name>`` and apply the overwrite rules; return the folder."""
    root = Path(out)
    folder = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".hubrl-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"Cannot write to --out {root}: {exc.strerror}. Choose a writable folder.") from exc
    existing = folder.exists() and any(folder.iterdir())
    if resume:
        if not (folder / "train" / "checkpoint.pt").is_file():
            raise UsageError(f"Nothing to resume for {name}: no checkpoint in {folder / 'train'}. Run without --resume to start it.")
    elif existing:
        if not force:
            raise UsageError(f"Expert {name} already exists in {folder}: pass --resume to continue its training or --force to start over.")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pretrain_expert(cfg: PretrainConfig, resume: bool = False, force: bool = False, progress_bar: bool = True, verbose: int = 1) -> PretrainResult:
    """Train (or resume) one expert and export it when its budget is reached."""
    from hubrl import __version__

    _validate(cfg)
    name = expert_name(cfg.game, cfg.algo)
    folder = prepare_folder(cfg.out, name, resume, force)
    train_dir = folder / "train"
    checkpoint = train_dir / "checkpoint.pt"
    resume_state = None
    if resume:
        resume_state = load_training_checkpoint(checkpoint)
        saved = yaml.safe_load((train_dir / "config.yaml").read_text())
        # The saved config wins, except for the budget and where things run / are logged.
        keep = {"timesteps": cfg.timesteps, "device": cfg.device, "out": cfg.out, "tensorboard_log": cfg.tensorboard_log}
        cfg = PretrainConfig(**{**saved["run"], **{k: v for k, v in keep.items() if v is not None}})
    game = resolve_game(cfg.game)
    algo = cfg.algo.lower()
    plain, kwargs = resolve_hyperparams(algo, {**cfg.hyperparams, **({"n_envs": cfg.n_envs} if cfg.n_envs else {})})
    cfg.n_envs = int(plain["n_envs"])
    cfg.hyperparams = {k: v for k, v in plain.items() if k != "n_envs"}
    env_options = {"repeat_action_probability": cfg.repeat_action_probability}
    tb_dir = cfg.tensorboard_log or str(folder / "tb")
    atomic_write(train_dir / "config.yaml", lambda h: yaml.safe_dump({"run": asdict(cfg), "resolved_hyperparams": plain}, h, sort_keys=False), mode="w")

    env = make_atari_vec_env(game, cfg.n_envs, seed=cfg.seed, **env_options)
    eval_env = make_eval_env(game, n_envs=min(cfg.eval_episodes, 8), seed=cfg.seed + 10_000, **env_options)
    model = AGENT_CLASSES[algo]("CnnPolicy", env, seed=cfg.seed, device=cfg.device, tensorboard_log=tb_dir, verbose=0, **kwargs)
    try:
        outcome = run_training(
            model,
            cfg.timesteps,
            checkpoint,
            eval_env=eval_env,
            eval_freq=cfg.eval_freq,
            eval_episodes=cfg.eval_episodes,
            checkpoint_freq=cfg.checkpoint_freq,
            resume_state=resume_state,
            progress_bar=progress_bar,
            tb_log_name=name,
            verbose=verbose,
        )
        manifest = None
        if outcome.completed:
            last = outcome.history.points[-1]
            manifest = ExpertManifest(
                name=name,
                game=game,
                algo=algo,
                timesteps=outcome.num_timesteps,
                observation_shape=list(env.observation_space.shape),
                action_meanings=list(action_meanings(game)),
                eval={"mean": last["mean"], "std": last["std"], "episodes": last["episodes"], "deterministic": False, "sticky_actions": cfg.repeat_action_probability},
                env_options=env_options,
                hyperparameters=plain,
                seed=cfg.seed,
                hubrl_version=__version__,
            )
            save_expert(folder, model.policy.state_dict(), manifest, dtype=getattr(th, cfg.export_dtype))
    finally:
        env.close()
        eval_env.close()
    return PretrainResult(name, folder, outcome, manifest)
