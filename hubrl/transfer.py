"""Fine-tune an agent on a target game from a hub (the library side of ``scripts/transfer.py``).

All methods (:mod:`hubrl.methods`: ``hub-pathway``, ``scratch``, ``finetune``, ``zoo-tuning``,
``select``) run through :func:`run_transfer`: same envs, agent presets, evaluation, checkpoints,
resume and logging, so their runs compare one to one. A run folder holds ``model.zip`` (opens
with stock ``PPO.load``/``A2C.load`` after ``import hubrl``), ``config.yaml`` (everything
resolved, and the system it ran on: :mod:`hubrl.provenance`), ``checkpoint.pt`` (resume
state; the one before it kept as ``checkpoint.prev.pt``), ``evaluations.json`` (every evaluation's
raw scores), for hub methods ``gates.jsonl`` (gate statistics per rollout:
:class:`hubrl.callbacks.GateUsageCallback`), ``learning_curve.png``
(:func:`hubrl.report.plot_run_curve`, redrawn when a run ends or stops) and TensorBoard events under
``tb/`` unless ``tensorboard_log`` says otherwise. Tags shared by all methods:
``rollout/ep_rew_mean`` (raw score), ``eval/mean_reward``; Hub-Pathway adds
``pathway/weight_mean/<expert>``, ``pathway/selection_freq/<expert>``,
``train/exploration_loss``, ``train/exploitation_loss``; Zoo-Tuning adds ``zoo/weight_mean/<expert>``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from agents import AGENT_CLASSES, resolve_hyperparams
from envs import make_atari_vec_env, resolve_game
from hubrl.atomic import atomic_write
from hubrl.callbacks import GateUsageCallback
from hubrl.checkpoint import load_resume_checkpoint, previous_checkpoint
from hubrl.errors import UsageError
from hubrl.evaluation import make_eval_env
from hubrl.hub import Hub, resolve_hub
from hubrl.losses import EXPLORATION_LOSSES
from hubrl.methods import HUB_METHODS, METHODS, method_label, plan_method
from hubrl.pathway import K1_WEIGHTS
from hubrl.policies import AGGREGATIONS, DEFAULT_EXPLORATION_COEF, DEFAULT_K1_WEIGHT, DEFAULT_NOISE_FLOOR
from hubrl.provenance import system_info
from hubrl.runconfig import check_device, check_finite, check_resume, read_saved_run
from hubrl.runtime import PRECISIONS, apply_precision, configure_threads, runtime_line
from hubrl.training import TrainingOutcome, early_eval_step, run_training

__all__ = ["METHODS", "TransferConfig", "TransferResult", "check_resumable", "run_transfer"]


@dataclass
class TransferConfig:
    """Settings of one transfer run (saved as ``config.yaml`` in the run folder).

    Resuming a run continues these settings as saved (:mod:`hubrl.runconfig`); only those in
    ``RESUME_MAY_CHANGE`` may differ (where and on how many threads it runs, where it logs, and
    the step budget).
    """

    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset({"timesteps", "device", "threads", "out", "tensorboard_log"})
    #: Fields whose command-line flag is not ``--field-name`` (for messages).
    FLAGS: ClassVar[dict[str, str]] = {"repeat_action_probability": "--sticky-actions"}

    env: str
    method: str = "hub-pathway"
    source: str | None = None  # finetune: the expert whose encoder initialises the agent
    lite: bool = False  # zoo-tuning: batch-mean gates, merged into one NatureCNN for model.zip
    select_frames: int = 20_000  # select: target frames the proxy ranks experts on
    hub: str | None = None
    sources: list[str] = field(default_factory=list)
    algo: str = "ppo"
    timesteps: int = 1_000_000
    n_envs: int | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None: hubrl.runtime.DEFAULT_THREADS (1)
    precision: str = "fp32"  # "bf16": encoders under bfloat16 autocast (hubrl.runtime.apply_precision)
    out: str | None = None  # None: runs/<env>-<method>-<algo>-s<seed>
    tensorboard_log: str | None = None
    top_k: int = 1
    noise: str | float = "learned"
    noise_floor: float = DEFAULT_NOISE_FLOOR
    k1_weight: str = DEFAULT_K1_WEIGHT
    aggregation: str = "features"
    exploration_loss: str = "switch"
    exploration_coef: float = DEFAULT_EXPLORATION_COEF
    exploitation_coef: float = 0.5
    freeze_experts: bool = False
    eval_freq: int = 100_000
    eval_episodes: int = 10
    early_eval: bool = False  # one extra evaluation on 3 games at 10% of the budget (<= 25k steps); the CLI's default
    checkpoint_freq: int = 100_000
    repeat_action_probability: float = 0.25
    hyperparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class TransferResult:
    folder: Path
    outcome: TrainingOutcome
    hub: Hub | None


def default_run_folder(cfg: TransferConfig) -> Path:
    return Path("runs") / f"{resolve_game(cfg.env)}-{method_label(cfg)}-{cfg.algo}-s{cfg.seed}"


def validate_config(cfg: TransferConfig) -> None:
    """Refuse a config that cannot run, in one line naming the flag (before anything is built or written)."""
    resolve_game(cfg.env)
    if cfg.method not in METHODS:
        raise UsageError(f"Unknown method {cfg.method!r}: choose one of {', '.join(METHODS)}.")
    if cfg.lite and cfg.method != "zoo-tuning":
        raise UsageError(f"--lite is an option of --method zoo-tuning, not of {cfg.method}.")
    if cfg.source is not None and cfg.method != "finetune":
        raise UsageError(f"--source picks the expert of --method finetune; {cfg.method} does not take it.")
    if cfg.method == "scratch" and (cfg.hub or cfg.sources):
        raise UsageError("--method scratch uses no hub: drop --hub/--sources.")
    if cfg.algo not in AGENT_CLASSES:
        raise UsageError(f"Unknown algo {cfg.algo!r}: choose one of {', '.join(AGENT_CLASSES)}.")
    if cfg.aggregation not in AGGREGATIONS:
        raise UsageError(f"--aggregation must be one of {', '.join(AGGREGATIONS)}.")
    check_finite(cfg, TransferConfig.FLAGS)
    for name in ("timesteps", "select_frames", "eval_freq", "eval_episodes", "checkpoint_freq"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")
    for name in ("n_envs", "threads"):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise UsageError(f"--seed must be a whole number from 0 to 2**32 - 1, got {cfg.seed!r}.")
    if cfg.noise != "learned" and (isinstance(cfg.noise, (str, bool)) or cfg.noise < 0):
        raise UsageError(f"--noise must be 'learned' or a standard deviation >= 0, got {cfg.noise!r}.")
    for name in ("exploration_coef", "exploitation_coef"):
        if getattr(cfg, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}.")
    if not 0 <= cfg.repeat_action_probability <= 1:
        raise UsageError(f"--sticky-actions is a probability in [0, 1], got {cfg.repeat_action_probability}.")
    if isinstance(cfg.top_k, bool) or not isinstance(cfg.top_k, int) or cfg.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {cfg.top_k!r}.")
    if cfg.exploration_loss not in EXPLORATION_LOSSES:
        raise UsageError(f"--exploration-loss must be one of {', '.join(EXPLORATION_LOSSES)}, got {cfg.exploration_loss!r}.")
    if cfg.k1_weight not in K1_WEIGHTS:
        raise UsageError(f"--k1-weight must be one of {', '.join(K1_WEIGHTS)}, got {cfg.k1_weight!r}.")
    if cfg.precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}.")
    if not 0 <= cfg.noise_floor < float("inf"):
        raise UsageError(f"--noise-floor must be a finite number >= 0, got {cfg.noise_floor}.")
    check_device(cfg.device)


def check_resumable(folder: Path) -> None:
    """Refuse ``--resume`` of a folder that holds no run to continue."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file, not a run folder.")
    checkpoint = folder / "checkpoint.pt"
    if not checkpoint.is_file() and not previous_checkpoint(checkpoint).is_file():
        raise UsageError(f"Nothing to resume in {folder}: no checkpoint.pt. Run without --resume to start it.")


def run_transfer(
    cfg: TransferConfig, resume: bool = False, progress_bar: bool = True, verbose: int = 1, pause_at: int | None = None
) -> TransferResult:
    """Build the env, hub and agent for ``cfg``; train (or resume) it; save ``model.zip``.

    ``pause_at`` stops at that many agent steps in all, with a checkpoint, while the schedules
    still follow ``cfg.timesteps``: ``resume=True`` later continues as one run would have.
    """
    validate_config(cfg)
    hub = resolve_hub(cfg.hub, cfg.sources) if cfg.method in HUB_METHODS else None
    if hub is not None and cfg.source is not None:
        cfg.source = hub.get(cfg.source).name  # --source Seaquest -> seaquest-ppo: same folder, label and config
    folder = Path(cfg.out) if cfg.out else default_run_folder(cfg)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file, not a folder: choose a folder for the run.")
    checkpoint = folder / "checkpoint.pt"
    game = resolve_game(cfg.env)
    plain, kwargs = resolve_hyperparams(cfg.algo, {**cfg.hyperparams, **({"n_envs": cfg.n_envs} if cfg.n_envs else {})})
    cfg.n_envs = int(plain["n_envs"])
    previous: dict[str, Any] | None = None
    resume_state = None
    if resume:
        check_resumable(folder)
        # The run continues as it was saved: refuse, before writing anything, what would change it.
        check_resume(cfg, read_saved_run(folder / "config.yaml"), folder / "config.yaml", TransferConfig.FLAGS)
        previous = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("method")
        resume_state = load_resume_checkpoint(checkpoint)
    elif folder.exists() and any(folder.iterdir()):
        raise UsageError(f"Run folder {folder} already exists: pass --resume to continue it or choose another --out.")
    if verbose:
        print(f"Run folder: {folder}", flush=True)
    configure_threads(cfg.threads)
    env_options = {"repeat_action_probability": cfg.repeat_action_probability}
    env = make_atari_vec_env(game, cfg.n_envs, seed=cfg.seed, **env_options)
    eval_env = None
    try:
        if hub is not None:
            hub.validate(env.observation_space.shape)
        plan = plan_method(cfg, hub, game, previous)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"Cannot create run folder {folder}: {exc.strerror}.") from exc
        eval_env = make_eval_env(game, n_envs=min(cfg.eval_episodes, 8), seed=cfg.seed + 10_000, **env_options)
        preset_policy_kwargs = kwargs.pop("policy_kwargs", {})
        tensorboard_log = cfg.tensorboard_log or str(folder / "tb")

        def make_agent(policy_class):
            """The agent for ``policy_class`` with the run's preset (the plan's kwargs for its own policy)."""
            extra = plan.policy_kwargs if policy_class is plan.policy else {}
            return AGENT_CLASSES[cfg.algo](
                policy_class, env, seed=cfg.seed, device=cfg.device, verbose=0,
                tensorboard_log=tensorboard_log, policy_kwargs={**preset_policy_kwargs, **extra}, **kwargs,
            )

        for callback in plan.callbacks:
            if isinstance(callback, GateUsageCallback):
                callback.history_path = folder / "gates.jsonl"
        model = make_agent(plan.policy)
        if not resume:
            plan.init(model.policy)
        apply_precision(model.policy, cfg.precision)
        if verbose:
            line = runtime_line(model.device, cfg.precision)
            print(line[0].upper() + line[1:], flush=True)  # Device cpu, 1 torch thread, fp32 encoders
        resolved = {
            "run": asdict(cfg),
            "resolved_hyperparams": plain,
            "method": plan.notes,
            "hub": [{"name": e.name, "source": e.source, "game": e.game, **e.meta} for e in hub] if hub is not None else [],
            "system": system_info(),
        }
        atomic_write(folder / "config.yaml", lambda h: yaml.safe_dump(resolved, h, sort_keys=False), mode="w")
        outcome = run_training(
            model, cfg.timesteps, checkpoint,
            eval_env=eval_env, eval_freq=cfg.eval_freq, eval_episodes=cfg.eval_episodes, checkpoint_freq=cfg.checkpoint_freq,
            resume_state=resume_state,
            callbacks=plan.callbacks, progress_bar=progress_bar, tb_log_name=f"{game}-{method_label(cfg)}", verbose=verbose,
            pause_at=pause_at,
            first_eval_at=early_eval_step(cfg.timesteps, cfg.eval_freq) if cfg.early_eval else None,
        )
        final = plan.finalize(model, make_agent) if plan.finalize is not None else model
        atomic_write(folder / "model.zip", lambda h: final.save(h))
    finally:
        env.close()
        if eval_env is not None:
            eval_env.close()
    _plot(folder, verbose)
    return TransferResult(folder, outcome, hub)


def _plot(folder: Path, verbose: int) -> None:
    """Redraw ``learning_curve.png``; a plot that fails costs a warning, never the finished run."""
    from hubrl.plots import NothingToPlot, plot_run_curve

    try:
        path = plot_run_curve(folder)
    except NothingToPlot:
        if verbose:
            print("No learning curve yet: no evaluation and no finished game so far.", flush=True)
        return
    except Exception as exc:  # noqa: BLE001  (the model and checkpoint are saved already)
        print(f"warning: could not draw {folder / 'learning_curve.png'}: {exc}", flush=True)
        return
    if verbose:
        print(f"Learning curve {path}", flush=True)
