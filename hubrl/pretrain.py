"""Pretrain one source expert (PPO or A2C on one game) and export it into a hub folder.

A run and its expert live apart. The run folder ``<out>/<name>/`` holds the training state:
``checkpoint.pt`` (resume state), ``config.yaml`` (the resolved settings), ``evaluations.json``,
``learning_curve.png`` and, unless told otherwise, TensorBoard events under ``tb/``; interrupted
runs resume from it with their saved configuration. The hub folder ``<hub>/<name>/`` receives
only what a hub ships: ``expert.json`` + ``weights.safetensors``, written when training completes
or on :func:`export_expert`. So the package's own hub (``hubrl/default_hub``) holds just the
experts, and their runs are kept elsewhere (``benchmarks/pretrain``).

:func:`export_expert` also exports an expert whose training is not finished (its latest
checkpoint), after evaluating exactly the weights it writes (rounded to float16 if asked), so a
manifest's score always describes the file next to it.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch as th
import yaml

from agents import AGENT_CLASSES, resolve_hyperparams
from envs import action_meanings, make_atari_vec_env, resolve_game
from hubrl.atomic import atomic_write
from hubrl.checkpoint import load_resume_checkpoint, load_training_checkpoint
from hubrl.errors import UsageError
from hubrl.evaluation import evaluate_model, make_eval_env
from hubrl.experts import ExpertManifest, save_expert
from hubrl.provenance import system_info
from hubrl.runconfig import read_saved_run, resume_config
from hubrl.runtime import apply_precision, configure_threads
from hubrl.training import TrainingOutcome, run_training

__all__ = ["PretrainConfig", "PretrainResult", "expert_name", "expert_folder", "export_expert", "pretrain_expert",
           "UsageError"]


@dataclass
class PretrainConfig:
    """Settings of one pretraining run (the resolved form is saved as ``config.yaml`` in its run folder).

    Resuming continues these settings as saved (:mod:`hubrl.runconfig`); only those in
    ``RESUME_MAY_CHANGE`` may differ: the step budget, where the run runs and logs, and the hub
    it exports into.
    """

    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset(
        {"timesteps", "device", "threads", "out", "hub", "tensorboard_log"})

    game: str
    algo: str = "ppo"
    timesteps: int = 10_000_000
    n_envs: int | None = None  # None: the preset's
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None: hubrl.runtime.DEFAULT_THREADS (1)
    precision: str = "fp32"  # "bf16": the encoder under bfloat16 autocast (hubrl.runtime.apply_precision)
    out: str = "runs/pretrain"  # the runs' folder: this run trains in <out>/<name>
    hub: str = "hub"  # the hub folder: the finished expert is exported to <hub>/<name>
    tensorboard_log: str | None = None  # None: <out>/<name>/tb
    eval_freq: int = 250_000
    eval_episodes: int = 10
    checkpoint_freq: int = 100_000
    repeat_action_probability: float = 0.25
    hyperparams: dict[str, Any] = field(default_factory=dict)
    export_dtype: str = "float32"


@dataclass
class PretrainResult:
    """How a pretraining call ended: the run folder, and the exported expert once training completed."""

    name: str
    folder: Path  # the run folder, <out>/<name>
    outcome: TrainingOutcome
    manifest: ExpertManifest | None  # None until the budget is reached (paused or stopped)
    expert: Path | None = None  # <hub>/<name> once exported


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


def _check_writable(root: Path, flag: str) -> None:
    """Create ``root`` and make sure files can be written there (before hours of training)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".hubrl-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"Cannot write to {flag} {root}: {exc.strerror}. Choose a writable folder.") from exc


def prepare_folder(out: str | Path, name: str, resume: bool, force: bool) -> Path:
    """Create the run folder ``<out>/<name>`` and apply the overwrite rules; return the folder."""
    root = Path(out)
    folder = root / name
    _check_writable(root, "--out")
    existing = folder.exists() and any(folder.iterdir())
    if resume:
        if not (folder / "checkpoint.pt").is_file():
            raise UsageError(f"Nothing to resume for {name}: no checkpoint.pt in {folder}. "
                             "Run without --resume to start it.")
    elif existing:
        if not force:
            raise UsageError(f"Expert {name} already has a run in {folder}: "
                             "pass --resume to continue its training or --force to start over.")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pretrain_expert(
    cfg: PretrainConfig,
    resume: bool = False,
    force: bool = False,
    progress_bar: bool = True,
    verbose: int = 1,
    pause_at: int | None = None,
    given: Mapping[str, Any] | None = None,
) -> PretrainResult:
    """Train (or resume) one expert in ``<out>/<name>`` and export it to ``<hub>/<name>`` when its
    budget is reached.

    ``pause_at`` stops at that many agent steps with a checkpoint (schedules still follow
    ``cfg.timesteps``), so a long budget can be trained in sessions with ``resume=True``.

    On resume the saved run wins: ``given`` holds the settings asked for explicitly (the
    command line's flags), and one that contradicts the saved run is refused. Without
    ``given``, ``cfg``'s budget, device and folders (those not None) are applied.
    """
    _validate(cfg)
    name = expert_name(cfg.game, cfg.algo)
    folder = prepare_folder(cfg.out, name, resume, force)
    checkpoint = folder / "checkpoint.pt"
    resume_state = None
    if resume:
        read_saved_run(folder / "config.yaml")  # a missing or corrupt config names itself before the checkpoint is read
        resume_state = load_resume_checkpoint(checkpoint)
        if given is None:
            given = {k: getattr(cfg, k) for k in sorted(PretrainConfig.RESUME_MAY_CHANGE) if getattr(cfg, k) is not None}
        cfg = resume_config(PretrainConfig, folder / "config.yaml", given)
    _check_writable(Path(cfg.hub), "--hub")
    game = resolve_game(cfg.game)
    configure_threads(cfg.threads)
    algo = cfg.algo.lower()
    plain, kwargs = resolve_hyperparams(algo, {**cfg.hyperparams, **({"n_envs": cfg.n_envs} if cfg.n_envs else {})})
    cfg.n_envs = int(plain["n_envs"])
    cfg.hyperparams = {k: v for k, v in plain.items() if k != "n_envs"}
    env_options = {"repeat_action_probability": cfg.repeat_action_probability}
    tb_dir = cfg.tensorboard_log or str(folder / "tb")
    atomic_write(folder / "config.yaml",
                 lambda h: yaml.safe_dump({"run": asdict(cfg), "resolved_hyperparams": plain, "system": system_info()}, h,
                                          sort_keys=False), mode="w")

    env = make_atari_vec_env(game, cfg.n_envs, seed=cfg.seed, **env_options)
    eval_env = make_eval_env(game, n_envs=min(cfg.eval_episodes, 8), seed=cfg.seed + 10_000, **env_options)
    model = AGENT_CLASSES[algo]("CnnPolicy", env, seed=cfg.seed, device=cfg.device, tensorboard_log=tb_dir, verbose=0,
                                **kwargs)
    apply_precision(model.policy, cfg.precision)
    expert = None
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
            pause_at=pause_at,
        )
        manifest = None
        if outcome.completed:
            expert = Path(cfg.hub) / name
            manifest = _write_expert(expert, cfg, plain, model.policy, outcome.num_timesteps, eval_env, seed=cfg.seed + 20_000)
    finally:
        env.close()
        eval_env.close()
    return PretrainResult(name, folder, outcome, manifest, expert)


def _write_expert(
    folder: Path, cfg: PretrainConfig, plain: dict[str, Any], policy, num_timesteps: int, eval_env, seed: int,
) -> ExpertManifest:
    """Round ``policy`` to the export dtype, evaluate that, and write weights + manifest into the
    expert folder ``folder`` (nothing else)."""
    from hubrl import __version__

    dtype = getattr(th, cfg.export_dtype)
    policy.set_training_mode(False)
    state = {k: v.detach().to(dtype).to(v.dtype) if v.is_floating_point() else v for k, v in policy.state_dict().items()}
    policy.load_state_dict(state)  # evaluate exactly what gets written
    eval_env.seed(seed)
    result = evaluate_model(policy, eval_env, cfg.eval_episodes)
    game = resolve_game(cfg.game)
    manifest = ExpertManifest(
        name=expert_name(game, cfg.algo),
        game=game,
        algo=cfg.algo.lower(),
        timesteps=int(num_timesteps),
        training_budget=int(cfg.timesteps),
        observation_shape=list(eval_env.observation_space.shape),
        action_meanings=list(action_meanings(game)),
        eval={
            "mean": result.mean, "std": result.std, "episodes": result.episodes, "scores": result.scores,
            "deterministic": False, "sticky_actions": cfg.repeat_action_probability, "seed": seed,
        },
        env_options={"repeat_action_probability": cfg.repeat_action_probability},
        hyperparameters=plain,
        seed=cfg.seed,
        hubrl_version=__version__,
    )
    save_expert(folder, state, manifest, dtype=dtype)
    return manifest


def expert_folder(run_folder: str | Path, hub: str | Path | None = None) -> Path:
    """Where the run in ``run_folder`` exports its expert: ``<hub>/<name>``, by default into the
    hub the run was started with (its saved ``config.yaml``)."""
    cfg = resume_config(PretrainConfig, Path(run_folder) / "config.yaml")
    return Path(hub or cfg.hub) / expert_name(cfg.game, cfg.algo)


def export_expert(
    folder: str | Path, dtype: str | None = None, eval_episodes: int | None = None, device: str = "cpu",
    hub: str | Path | None = None,
) -> ExpertManifest:
    """Export the run in ``folder`` (its ``checkpoint.pt``, finished or not) as an expert of ``hub``
    (default: the hub the run was started with), into ``<hub>/<name>``.

    The exported weights are evaluated first (``eval_episodes`` whole games, sticky actions,
    stochastic policy); ``expert.json`` records the agent steps, the run's budget and that score.
    """
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    folder = Path(folder)
    if not (folder / "checkpoint.pt").is_file() or not (folder / "config.yaml").is_file():
        raise UsageError(f"Nothing to export in {folder}: no checkpoint.pt and config.yaml of a pretraining run.")
    state = load_training_checkpoint(folder / "checkpoint.pt")
    cfg = resume_config(PretrainConfig, folder / "config.yaml")
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    if dtype:
        cfg.export_dtype = dtype
    if eval_episodes:
        cfg.eval_episodes = eval_episodes
    expert = expert_folder(folder, hub)
    game = resolve_game(cfg.game)
    eval_env = make_eval_env(game, n_envs=min(cfg.eval_episodes, 8), seed=cfg.seed + 20_000,
                             repeat_action_probability=cfg.repeat_action_probability)
    try:
        policy = ActorCriticCnnPolicy(eval_env.observation_space, eval_env.action_space, lambda _: 0.0).to(device)
        try:
            policy.load_state_dict(state["policy"])
        except RuntimeError as exc:
            raise UsageError(f"{folder / 'checkpoint.pt'} is not a CnnPolicy checkpoint of {game} ({exc}).") from exc
        return _write_expert(expert, cfg, saved.get("resolved_hyperparams", {}), policy, int(state["num_timesteps"]),
                             eval_env, seed=cfg.seed + 20_000)
    finally:
        eval_env.close()
