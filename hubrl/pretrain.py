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

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch as th
import yaml

from hubrl.checkpoint import load_resume_checkpoint
from hubrl.envs import action_meanings, resolve_game
from hubrl.errors import HubError, UsageError
from hubrl.evaluation import evaluate_model, make_eval_env
from hubrl.experts import MANIFEST_NAME, ExpertManifest, read_manifest, save_expert
from hubrl.harness import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    FLAGS,
    PATH_FIELDS,
    RESUME_MAY_CHANGE,
    draw_learning_curve,
    start_run,
    validate_run_settings,
    writable_folder_problem,
)
from hubrl.runconfig import is_pretraining_run, read_saved_run, resume_config
from hubrl.runtime import apply_precision
from hubrl.training import TrainingOutcome

__all__ = ["PretrainConfig", "PretrainResult", "expert_name", "run_folder", "expert_folder", "export_expert", "games_in",
           "check_export_target", "check_new_run", "pretrain_expert", "UsageError"]


@dataclass
class PretrainConfig:
    """Settings of one pretraining run (the resolved form is saved as ``config.yaml`` in its run folder).

    Resuming continues these settings as saved (:mod:`hubrl.harness`); only those in
    ``RESUME_MAY_CHANGE`` may differ: the step budget, where the run runs and logs, and the hub
    it exports into.
    """

    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = RESUME_MAY_CHANGE | {"hub"}
    #: Fields whose command-line flag is not ``--field-name`` (for messages).
    FLAGS: ClassVar[Mapping[str, str]] = FLAGS
    #: Saved absolute (:func:`hubrl.harness.absolute_paths`): resumed from elsewhere, the expert goes to its hub.
    PATH_FIELDS: ClassVar[frozenset[str]] = PATH_FIELDS | {"hub"}

    game: str
    algo: str = "ppo"
    timesteps: int = 10_000_000
    n_envs: int | None = None  # None: the preset's
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None: torch's default (one per core, or OMP_NUM_THREADS)
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
    #: Set when the run starts, written into each expert it exports (``expert.json``'s ``run_id``), so an
    #: export replaces only its own run's expert in a hub; None: a run saved before it existed.
    run_id: str | None = None


@dataclass
class PretrainResult:
    """How a pretraining call ended: the run folder, and the exported expert once training completed."""

    name: str
    folder: Path  # the run folder, <out>/<name>
    outcome: TrainingOutcome
    manifest: ExpertManifest | None  # None until the budget is reached (paused or stopped)
    expert: Path | None = None  # <hub>/<name> once exported
    budget: int | None = None  # the run's budget: its saved one when resumed (not the command line's default)


def expert_name(game: str, algo: str) -> str:
    """Folder name of an expert: ``seaquest-ppo``."""
    return f"{resolve_game(game)}-{algo.lower()}"


def run_folder(out: str | Path, game: str, algo: str) -> Path:
    """The folder the pretraining run of ``game`` with ``algo`` trains in: ``<out>/<name>``
    (``runs/pretrain/seaquest-ppo``), where every command that trains, resumes, exports or plots it looks."""
    return Path(out) / expert_name(game, algo)


def games_in(out: str | Path, algo: str) -> list[str]:
    """The games of the ``algo`` pretraining runs in ``out`` (``<out>/<game>-<algo>/config.yaml``),
    in folder order: what ``--resume``, ``--export`` and ``--plot`` work on when no ``--env`` is given.

    :raises CheckpointError: a ``config.yaml`` there that cannot be read (corrupt, or no ``run``
        section), named as ``--env GAME`` names it: skipped, its run would be left out without a word.
    """
    games = []
    for config in sorted(Path(out).glob(f"*-{algo.lower()}/{CONFIG_NAME}")):
        run = read_saved_run(config)
        if is_pretraining_run(run) and str(run.get("algo", "")).lower() == algo.lower():  # not a transfer run's folder
            games.append(run["game"])
    return games


EXPORT_DTYPES = ("float32", "float16")


def _validate(cfg: PretrainConfig) -> None:
    resolve_game(cfg.game)  # UnknownGameError names close matches
    validate_run_settings(cfg)
    if cfg.export_dtype not in EXPORT_DTYPES:
        raise UsageError(f"--export-dtype must be one of {', '.join(EXPORT_DTYPES)}, got {cfg.export_dtype!r}.")


def _check_writable(root: Path, flag: str) -> None:
    """Make sure files can be written in ``root`` (before hours of training), leaving nothing behind."""
    problem = writable_folder_problem(root)
    if problem:
        raise UsageError(f"{flag} {root} {problem}: choose a writable folder.")


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
    budget is reached. Resuming one already trained and exported there does nothing but say so
    (``outcome.already_done``, :func:`hubrl.harness.start_run`; the manifest is the exported one).

    ``pause_at`` stops at that many agent steps with a checkpoint (schedules still follow
    ``cfg.timesteps``), so a long budget can be trained in sessions with ``resume=True``; one past
    the run's budget is refused (the run would finish without pausing).
    ``force`` clears an existing run of the same name; otherwise it is refused unless resumed.

    On resume the saved run wins: ``given`` holds the settings asked for explicitly (the
    command line's flags), and one that contradicts the saved run is refused. Without
    ``given``, ``cfg``'s budget, device and folders (those not None) are applied.
    """
    cfg.algo = cfg.algo.lower()
    _validate(cfg)
    name = expert_name(cfg.game, cfg.algo)
    if resume and given is None:
        given = {k: getattr(cfg, k) for k in sorted(PretrainConfig.RESUME_MAY_CHANGE) if getattr(cfg, k) is not None}
    run = start_run(cfg, run_folder(cfg.out, cfg.game, cfg.algo), resume=resume, given=given, force=force, verbose=verbose,
                    written=lambda r: _exported_steps(Path(r.cfg.hub) / name) == r.steps_done, pause_at=pause_at)
    with run:  # the folder's lock (another process on this run is refused) until the expert is exported
        cfg = run.cfg
        if not resume and cfg.run_id is None:
            cfg.run_id = uuid.uuid4().hex
        if not force:  # a resumed run may have been given another --hub
            _refuse_replacing_an_expert(Path(cfg.hub) / name, cfg if resume else None,
                                        replace="move that expert away" if resume else "--force to replace it")
        if run.already_done:  # trained and exported: its expert stays as it is (--export re-exports on demand)
            expert = Path(cfg.hub) / name
            return PretrainResult(name, run.folder, run.outcome_so_far(), read_manifest(expert), expert, cfg.timesteps)
        cfg.hyperparams = {k: v for k, v in run.hyperparams.items() if k != "n_envs"}  # saved resolved, preset included
        _check_writable(Path(cfg.hub), "--hub")  # the export comes at the end of training
        run.save_config()
        expert = manifest = None
        with run.envs(resolve_game(cfg.game)) as (env, eval_env):
            model = run.make_agent("CnnPolicy", env)
            run.apply_runtime(model, verbose)
            outcome = run.train(model, eval_env, tb_log_name=name, progress_bar=progress_bar, verbose=verbose)
            if outcome.completed:
                expert = Path(cfg.hub) / name
                manifest = _write_expert(expert, cfg, run.hyperparams, model.policy, outcome.num_timesteps, eval_env,
                                         seed=cfg.seed + 20_000, force=force,
                                         replace=f"this run's checkpoint is kept: export it with hubrl-pretrain --export "
                                                 f"--env {cfg.game} --out {cfg.out} and --hub DIR (elsewhere) or "
                                                 "--force (over that expert)")
    from hubrl.plots import plot_expert_curve

    draw_learning_curve(run.folder, plot_expert_curve, verbose)
    return PretrainResult(name, run.folder, outcome, manifest, expert, cfg.timesteps)


def check_new_run(cfg: PretrainConfig, force: bool = False, pause_at: int | None = None) -> None:
    """Refuse now a new run of ``cfg`` that :func:`pretrain_expert` would refuse only when its turn
    came: a bad setting, a run folder that holds another run, is in use by another process or cannot
    be written (:func:`hubrl.harness.start_run`'s checks), an expert in its hub that its export would
    replace (without ``force``), a hub it cannot write in. A command over several games checks each
    game first, so none is refused after hours of another's training. Writes nothing but the lock
    file of a run folder already there (as the run itself would)."""
    import dataclasses
    from contextlib import ExitStack

    from hubrl.harness import check_fresh_start, hold_run_folder

    cfg = dataclasses.replace(cfg, algo=cfg.algo.lower())  # as pretrain_expert takes it; the caller's is left as it is
    _validate(cfg)
    folder = run_folder(cfg.out, cfg.game, cfg.algo)
    check_fresh_start(cfg, folder, force, pause_at)
    if folder.is_dir():  # a run there (replaced with --force) that another process is training
        with ExitStack() as probe:
            hold_run_folder(folder, probe)
    if not force:
        _refuse_replacing_an_expert(Path(cfg.hub) / expert_name(cfg.game, cfg.algo))
    _check_writable(Path(cfg.hub), "--hub")


def _refuse_replacing_an_expert(expert: Path, run: PretrainConfig | None = None,
                                replace: str = "--force to replace it") -> None:
    """Refuse an export that would replace an expert of another run already in the hub: that expert
    may be hours of training, and the export overwrites it without a word.

    ``run`` None (a new run): any expert there is another run's. Otherwise the expert is the run's
    own (a resumed run or ``--export`` refreshing it) when its manifest carries the run's
    ``run_id``. A run with a ``run_id`` writes it into every export, so where only one of the two
    has one, the expert is another run's; only where neither has (a run and an expert from before
    ``run_id`` existed) does the expert count as the run's own when its game, algorithm and seed are
    the run's. ``replace``: how the user replaces it, for the message.
    """
    if not (expert / MANIFEST_NAME).is_file():
        return
    try:
        manifest = read_manifest(expert)
    except HubError as exc:  # whose it was cannot be told, so it is not replaced unasked
        raise UsageError(f"--hub {expert.parent} holds an expert {expert.name} whose manifest cannot be read ({exc}): "
                         f"give another --hub, or {replace}.") from exc
    if run is not None:
        if manifest.run_id or run.run_id:
            if manifest.run_id == (run.run_id or ""):
                return
        elif (manifest.game, manifest.algo, manifest.seed) == (resolve_game(run.game), run.algo.lower(), run.seed):
            return
    raise UsageError(f"--hub {expert.parent} already holds the expert {expert.name} ({manifest.timesteps:,} steps)"
                     + (", which this new run would replace when it ends" if run is None
                        else f", exported by another run than {run.out}/{expert.name}, which this would replace")
                     + f": give another --hub, or {replace}.")


def check_export_target(folder: str | Path, hub: str | Path | None = None, replace: str = "--force to replace it") -> None:
    """Refuse, before anything trains or is evaluated, an export of the run in ``folder`` (into ``hub``,
    default the run's own) that would replace another run's expert (:func:`_refuse_replacing_an_expert`);
    a command over several games checks each game's run first, so none is refused after hours of another's."""
    cfg = resume_config(PretrainConfig, Path(folder) / CONFIG_NAME)
    _refuse_replacing_an_expert(_expert_path(cfg, hub), cfg, replace)


def _exported_steps(folder: Path) -> int | None:
    """The agent steps of the expert exported in ``folder`` (its manifest), ``None`` if there is none."""
    try:
        return read_manifest(folder).timesteps
    except (HubError, OSError):
        return None


def _write_expert(
    folder: Path, cfg: PretrainConfig, plain: dict[str, Any], policy, num_timesteps: int, eval_env, seed: int,
    force: bool = False, replace: str = "--force to replace it",
) -> ExpertManifest:
    """Round ``policy`` to the export dtype, evaluate that (in float32, as it runs once loaded), and
    write weights + manifest into the expert folder ``folder`` (nothing else).

    Unless ``force``, the folder is looked at again under the expert's lock, just before the write:
    an expert another run exported there since this one started (two seeds of a game ending hours
    apart into one hub), or a later export of this run (a finishing run beside an ``--export`` of
    an older checkpoint), is refused, not replaced (``replace``: how the user replaces it)."""
    from hubrl import __version__

    dtype = getattr(th, cfg.export_dtype)
    policy.set_training_mode(False)
    _round_in_place(policy, dtype)  # evaluate exactly what gets written ...
    apply_precision(policy, "fp32")  # ... as it runs wherever it is loaded (and --export scores it), whatever it trained in
    state = policy.state_dict()  # SB3's pi_/vf_features_extractor aliases stay aliases: save_expert writes them once
    result = evaluate_model(policy, eval_env, cfg.eval_episodes, seed=seed)  # the recorded seed repeats the score
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
        run_id=cfg.run_id or "",
        hubrl_version=__version__,
    )
    def still_ours() -> None:
        if force:
            return
        _refuse_replacing_an_expert(folder, cfg, replace)
        later = _exported_steps(folder)
        if later is not None and later > num_timesteps:
            raise UsageError(f"--hub {folder.parent} already holds a later export of this run ({folder.name} at "
                             f"{later:,} steps, this one {num_timesteps:,}): it is kept; {replace}.")

    save_expert(folder, state, manifest, dtype=dtype, check=still_ours)
    return manifest


def _round_in_place(policy, dtype: th.dtype) -> None:
    """Round ``policy``'s floating-point weights and buffers to ``dtype`` and back, in place.

    In place, so tensors that share memory keep sharing it: SB3 lists the shared encoder three
    times in ``state_dict()`` (``features_extractor``, ``pi_`` and ``vf_features_extractor``), and
    :func:`hubrl.experts.canonical_state_dict` drops the copies only where they are one tensor
    (rounded copies, one per key, were all written: a float16 expert bigger than a float32 one).
    Rounding a shared tensor once per name it has is harmless: a rounded value rounds to itself."""
    if dtype == th.float32:
        return
    with th.no_grad():
        for tensor in policy.state_dict().values():  # detached views of the policy's own tensors
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype))


def expert_folder(run_folder: str | Path, hub: str | Path | None = None) -> Path:
    """Where the run in ``run_folder`` exports its expert: ``<hub>/<name>``, by default into the
    hub the run was started with (its saved ``config.yaml``)."""
    return _expert_path(resume_config(PretrainConfig, Path(run_folder) / CONFIG_NAME), hub)


def _expert_path(cfg: PretrainConfig, hub: str | Path | None = None) -> Path:
    """``<hub>/<name>`` of the run ``cfg`` (its own hub without ``hub``)."""
    return Path(hub or cfg.hub) / expert_name(cfg.game, cfg.algo)


def export_expert(
    folder: str | Path, dtype: str | None = None, eval_episodes: int | None = None, device: str = "cpu",
    hub: str | Path | None = None, force: bool = False,
) -> ExpertManifest:
    """Export the run in ``folder`` (its ``checkpoint.pt``, finished or not) as an expert of ``hub``
    (default: the hub the run was started with), into ``<hub>/<name>``. An expert another run
    exported there is replaced only with ``force`` (:func:`_refuse_replacing_an_expert`).

    The exported weights are evaluated first (``eval_episodes`` whole games, sticky actions,
    stochastic policy); ``expert.json`` records the agent steps, the run's budget and that score.
    ``dtype`` and ``eval_episodes`` None: the run's own (its ``--export-dtype`` and ``--eval-episodes``).
    A damaged ``checkpoint.pt`` gives way to the previous one kept beside it, said on stderr.
    """
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    folder = Path(folder)
    if not (folder / CHECKPOINT_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise UsageError(f"Nothing to export in {folder}: no {CHECKPOINT_NAME} and {CONFIG_NAME} of a pretraining run.")
    cfg = resume_config(PretrainConfig, folder / CONFIG_NAME)
    expert = _expert_path(cfg, hub)
    if not force:  # before the checkpoint is read or anything evaluated
        _refuse_replacing_an_expert(expert, cfg)
    _check_writable(expert.parent, "--hub")  # ... as is a hub it cannot write in
    # a damaged checkpoint.pt: the previous one, with a warning naming its steps (expert.json records them too)
    state = load_resume_checkpoint(folder / CHECKPOINT_NAME, start_again="nothing is left to export: train the "
                                   "expert again (pretrain without --resume, in a new --out)")
    saved = yaml.safe_load((folder / CONFIG_NAME).read_text())
    if dtype:
        cfg.export_dtype = dtype
    if eval_episodes:
        cfg.eval_episodes = eval_episodes
    game = resolve_game(cfg.game)
    eval_env = make_eval_env(game, n_envs=min(cfg.eval_episodes, 8), seed=cfg.seed + 20_000,
                             repeat_action_probability=cfg.repeat_action_probability)
    try:
        policy = ActorCriticCnnPolicy(eval_env.observation_space, eval_env.action_space, lambda _: 0.0).to(device)
        try:
            policy.load_state_dict(state["policy"])
        except RuntimeError as exc:
            raise UsageError(f"{folder / CHECKPOINT_NAME} is not a CnnPolicy checkpoint of {game} ({exc}).") from exc
        return _write_expert(expert, cfg, saved.get("resolved_hyperparams", {}), policy, int(state["num_timesteps"]),
                             eval_env, seed=cfg.seed + 20_000, force=force)
    finally:
        eval_env.close()
