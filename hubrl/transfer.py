"""Fine-tune an agent on a target game from a hub (the library side of ``scripts/transfer.py``).

All methods (:mod:`hubrl.methods`: ``hub-pathway``, ``scratch``, ``finetune``, ``zoo-tuning``,
``select``) run through :func:`run_transfer`: same envs, agent presets, evaluation, checkpoints,
resume and logging, so their runs compare one to one. A run folder holds ``model.zip`` (opens
with stock ``PPO.load``/``A2C.load`` after ``import hubrl``), ``config.yaml`` (everything
resolved, and the system it ran on: :mod:`hubrl.provenance`), ``checkpoint.pt`` (resume
state; the one before it kept as ``checkpoint.prev.pt``), ``evaluations.json`` (every evaluation's
raw scores), for hub methods ``gates.jsonl`` (gate statistics per rollout:
:class:`hubrl.callbacks.GateUsageCallback`), ``learning_curve.png``
(:func:`hubrl.plots.plot_run_curve`, redrawn when a run ends or stops) and TensorBoard events under
``tb/`` unless ``tensorboard_log`` says otherwise. Tags shared by all methods:
``rollout/ep_rew_mean`` (raw score), ``eval/mean_reward``; Hub-Pathway adds
``pathway/weight_mean/<expert>``, ``pathway/selection_freq/<expert>``,
``train/exploration_loss``, ``train/exploitation_loss``; Zoo-Tuning adds ``zoo/weight_mean/<expert>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from hubrl.atomic import atomic_write
from hubrl.callbacks import GateUsageCallback
from hubrl.envs import resolve_game
from hubrl.errors import CheckpointError, UsageError
from hubrl.harness import (
    CONFIG_NAME,
    FLAGS,
    PATH_FIELDS,
    RESUME_MAY_CHANGE,
    check_resumable,
    draw_learning_curve,
    start_run,
    validate_run_settings,
)
from hubrl.hub import Hub, resolve_hub
from hubrl.losses import EXPLORATION_LOSSES
from hubrl.methods import HUB_METHODS, HUB_PATHWAY_OPTIONS, METHODS, check_hub_serves, method_label, plan_method
from hubrl.pathway import DEFAULT_NOISE, K1_WEIGHTS
from hubrl.policies import AGGREGATIONS, DEFAULT_EXPLORATION_COEF, DEFAULT_K1_WEIGHT, DEFAULT_NOISE_FLOOR, uses_net_arch
from hubrl.runconfig import flag_name, read_saved_config
from hubrl.saved_model import saved_model_steps
from hubrl.training import TrainingOutcome, early_eval_step

__all__ = [
    "METHODS", "METHOD_OPTIONS", "METHOD_ONLY_SETTINGS", "TransferConfig", "TransferResult", "check_resumable",
    "refuse_options_of_other_methods",
    "run_transfer", "saved_source_name",
]


@dataclass
class TransferConfig:
    """Settings of one transfer run (saved as ``config.yaml`` in the run folder).

    Resuming a run continues these settings as saved (:mod:`hubrl.harness`); only those in
    ``RESUME_MAY_CHANGE`` may differ (where and on how many threads it runs, where it logs, the
    step budget, and where its experts are: a hub moved or copied elsewhere, as long as it holds
    the experts the run was started with, :func:`resumed_hub`).
    """

    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = RESUME_MAY_CHANGE | {"hub", "sources"}
    #: Fields whose command-line flag is not ``--field-name`` (for messages).
    FLAGS: ClassVar[Mapping[str, str]] = {**FLAGS, "select_frames": "--select-timesteps"}
    #: Saved absolute (:func:`hubrl.harness.absolute_paths`): resumed from elsewhere, the run finds its experts.
    PATH_FIELDS: ClassVar[frozenset[str]] = PATH_FIELDS | {"hub", "sources"}

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
    threads: int | None = None  # torch CPU threads; None: torch's default (one per core, or OMP_NUM_THREADS)
    precision: str = "fp32"  # "bf16": encoders under bfloat16 autocast (hubrl.runtime.apply_precision)
    out: str | None = None  # None: runs/<env>-<method>-<algo>-s<seed>
    tensorboard_log: str | None = None
    top_k: int = 1
    noise: str | float = DEFAULT_NOISE
    noise_floor: float = DEFAULT_NOISE_FLOOR
    k1_weight: str = DEFAULT_K1_WEIGHT
    aggregation: str = "features"
    exploration_loss: str = "switch"
    exploration_coef: float = DEFAULT_EXPLORATION_COEF
    exploitation_coef: float = 0.5
    freeze_experts: bool = False
    route_pg_coef: float = 0.0  # hub-pathway: the gate's route trained by the policy gradient (0: off, the paper's gate)
    gate_lr_scale: float = 1.0  # hub-pathway: the gate's learning rate as a multiple of the agent's
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


def hub_records(hub: Hub) -> list[dict[str, Any]]:
    """What ``config.yaml`` records of each expert of ``hub`` (its ``hub`` section): name, where it
    was read from, game and its manifest's description (steps, evaluation, ...)."""
    return [{"name": e.name, "source": e.source, "game": e.game, **e.meta} for e in hub]


def resumed_hub(cfg: TransferConfig, folder: Path) -> Hub:
    """The experts of the run resumed in ``folder``: ``cfg``'s hub or sources (the saved ones, or
    their new place given anew), which must hold the experts the run was started with, as
    ``config.yaml`` describes them (all but where they were read from): the policy is built on
    them, and their weights then come from the checkpoint.

    :raises HubError: when the hub or a source is not where ``cfg`` says (moved or deleted): the
        message asks for its new place instead of offering to pretrain a new hub.
    :raises UsageError: when it holds other experts than the run's.
    """
    from hubrl.errors import HubError

    check_resumable(folder)
    saved = [e for e in read_saved_config(folder / CONFIG_NAME).get("hub") or [] if isinstance(e, dict)]
    names = ", ".join(str(e.get("name")) for e in saved)
    where = [str(p) for p in ([cfg.hub] if cfg.hub else cfg.sources)]
    flag = "--hub" if cfg.hub else "--sources"
    missing = [p for p in where if not Path(p).exists()]
    if missing:
        raise HubError(f"Resuming {folder}: its {flag} {missing[0]} is not there any more; give the new place of the "
                       f"experts it was started with ({names}) with --hub DIR or --sources ...")
    hub = resolve_hub(cfg.hub, cfg.sources)
    if saved and unplaced_records(hub_records(hub)) != unplaced_records(saved):
        other = "its experts in another order" if sorted(hub.names) == sorted(str(e.get("name")) for e in saved) else \
            "other experts"
        raise UsageError(f"Resuming {folder}: {flag} {' '.join(where)} holds {other} ({', '.join(hub.names)}) than "
                         f"the run was started with ({names}, described in {folder / CONFIG_NAME}): give the hub it was "
                         "started with, or its new place.")
    return hub


def unplaced_records(records: Sequence[Any]) -> list[Any]:
    """Expert records (:func:`hub_records`, or a ``config.yaml``'s ``hub`` section) without where each
    was read from, as YAML reads them back: what a resume compares (:func:`resumed_hub`), so a hub
    moved elsewhere holding the same experts is the same hub."""
    import yaml

    return yaml.safe_load(yaml.safe_dump([{k: v for k, v in e.items() if k != "source"} for e in records
                                          if isinstance(e, dict)], sort_keys=False)) or []


def default_run_folder(cfg: TransferConfig) -> Path:
    return Path("runs") / f"{resolve_game(cfg.env)}-{method_label(cfg)}-{cfg.algo}-s{cfg.seed}"


#: Options only some methods read (the others would ignore them without a word): option -> those methods.
#: ``lite`` and ``source`` are also refused by value in :func:`validate_config` (their defaults mean "not
#: asked"), for configs built without knowing which options were given (the library, a grid's ``--set``).
METHOD_OPTIONS: Mapping[str, tuple[str, ...]] = {
    **{name: ("hub-pathway",) for name in HUB_PATHWAY_OPTIONS},
    "select_frames": ("select",),
    "lite": ("zoo-tuning",),
    "source": ("finetune",),
}


#: Settings only some methods take, which any other method refuses by value (:func:`validate_config`):
#: setting -> the methods that take it (the experts, and the two :data:`METHOD_OPTIONS` refused by value).
#: A grid's ``--hub``, ``--sources`` or ``--set source=...`` is meant for the arms that take it
#: (:func:`hubrl.benchmark.trial_settings`).
METHOD_ONLY_SETTINGS: Mapping[str, tuple[str, ...]] = {
    "hub": HUB_METHODS, "sources": HUB_METHODS, **{name: METHOD_OPTIONS[name] for name in ("source", "lite")},
}


def refuse_options_of_other_methods(method: str, given: Iterable[str], resuming: Path | None = None) -> None:
    """Refuse, in one line naming the flag, an option given explicitly (``given``: field names, as
    :func:`hubrl.cli.common.parse_given` or a grid's ``method:key=value`` give them) to a method
    that does not read it: ``--method finetune --freeze-experts`` would otherwise fine-tune the
    encoder anyway. Only explicit options: a saved run's config holds every option, at the
    defaults of its day.

    ``resuming``: the folder of the run being resumed, whose saved method ``method`` is; the
    message says so (``--top-k`` given to a resumed scratch run is not a change of its top-k).
    """
    for name in sorted(given):
        readers = METHOD_OPTIONS.get(name)
        if readers and method not in readers:
            flag = flag_name(name, TransferConfig.FLAGS)
            where = f"Resuming {resuming}: " if resuming is not None else ""
            reader = f"the run's method, {method}," if resuming is not None else method
            raise UsageError(f"{where}{flag} is an option of --method {' or '.join(readers)}; {reader} does not read it: "
                             "drop it.")


def validate_config(cfg: TransferConfig, device_saved_in: Path | None = None) -> None:
    """Refuse a config that cannot run, in one line naming the flag (before anything is built or written);
    ``device_saved_in``: see :func:`hubrl.harness.validate_run_settings`."""
    for f in fields(cfg):  # e.g. a grid variant "zoo-tuning:lite=yes" is no switch
        value = getattr(cfg, f.name)
        if f.type in ("bool", bool) and not isinstance(value, bool):
            raise UsageError(f"{f.name} (--{f.name.replace('_', '-')}) is a switch: true or false, got {value!r}.")
    resolve_game(cfg.env)
    if cfg.method not in METHODS:
        raise UsageError(f"Unknown method {cfg.method!r}: choose one of {', '.join(METHODS)}.")
    if cfg.lite and cfg.method != "zoo-tuning":
        raise UsageError(f"--lite is an option of --method zoo-tuning, not of {cfg.method}.")
    if cfg.source is not None and cfg.method != "finetune":
        raise UsageError(f"--source picks the expert of --method finetune; {cfg.method} does not take it.")
    if cfg.method == "scratch" and (cfg.hub or cfg.sources):
        raise UsageError("--method scratch uses no hub: drop --hub/--sources.")
    validate_run_settings(cfg, device_saved_in)  # algo, budget, evaluation, checkpoints, seed, sticky, precision, device
    if cfg.method == "zoo-tuning" and cfg.precision != "fp32":
        raise UsageError(f"--precision {cfg.precision} runs NatureCNN encoders in {cfg.precision}; Zoo-Tuning's adaptive "
                         "convolutions have none, so it would train in fp32 and be compared with methods trained in "
                         f"{cfg.precision}: drop --precision (compare the methods in fp32).")
    if cfg.aggregation not in AGGREGATIONS:
        raise UsageError(f"--aggregation must be one of {', '.join(AGGREGATIONS)}.")
    if isinstance(cfg.select_frames, bool) or not isinstance(cfg.select_frames, int) or cfg.select_frames < 1:
        raise UsageError(f"--select-timesteps must be a positive integer, got {cfg.select_frames!r}.")
    if cfg.noise != "learned" and (isinstance(cfg.noise, (str, bool)) or cfg.noise < 0):
        raise UsageError(f"--noise must be 'learned' or a standard deviation >= 0, got {cfg.noise!r}.")
    for name in ("exploration_coef", "exploitation_coef", "route_pg_coef"):
        if getattr(cfg, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}.")
    if isinstance(cfg.gate_lr_scale, bool) or not isinstance(cfg.gate_lr_scale, (int, float)) \
            or not 0 < cfg.gate_lr_scale < float("inf"):
        raise UsageError(f"--gate-lr-scale must be a finite number > 0, got {cfg.gate_lr_scale!r}.")
    if isinstance(cfg.top_k, bool) or not isinstance(cfg.top_k, int):
        raise UsageError(f"--top-k must be a whole number of experts, got {cfg.top_k!r}.")
    if cfg.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {cfg.top_k!r}.")
    if cfg.exploration_loss not in EXPLORATION_LOSSES:
        raise UsageError(f"--exploration-loss must be one of {', '.join(EXPLORATION_LOSSES)}, got {cfg.exploration_loss!r}.")
    if cfg.route_pg_coef > 0 and cfg.method == "hub-pathway" and (cfg.top_k != 1 or cfg.noise == 0):
        raise UsageError(f"--route-pg-coef trains the gate's sampled top-1 route: it needs --top-k 1 and gate noise > 0 "
                         f"(got --top-k {cfg.top_k}, --noise {cfg.noise}).")
    policy_kwargs = cfg.hyperparams.get("policy_kwargs") if isinstance(cfg.hyperparams, Mapping) else None
    if cfg.method == "hub-pathway" and isinstance(policy_kwargs, Mapping) and uses_net_arch(policy_kwargs.get("net_arch")):
        raise UsageError(f"--hyperparams: policy_kwargs net_arch {policy_kwargs['net_arch']!r} is not read by Hub-Pathway, "
                         "whose action and value heads read the experts' aggregated features directly: drop it.")
    if cfg.k1_weight not in K1_WEIGHTS:
        raise UsageError(f"--k1-weight must be one of {', '.join(K1_WEIGHTS)}, got {cfg.k1_weight!r}.")
    if not 0 <= cfg.noise_floor < float("inf"):
        raise UsageError(f"--noise-floor must be a finite number >= 0, got {cfg.noise_floor}.")


def saved_source_name(source: str, saved_config: Mapping[str, Any]) -> str:
    """``--source`` as a saved run names it: a new run stores the expert's name (``--source Seaquest``
    is saved as ``seaquest-ppo``), so resuming with the game name finds the expert of the saved
    run's hub trained on that game. A name the saved hub does not resolve is returned unchanged
    (the resume check then says what the run has)."""
    entries = [e for e in saved_config.get("hub") or [] if isinstance(e, Mapping)]
    if any(e.get("name") == source for e in entries):
        return source
    try:
        wanted = resolve_game(source)
    except UsageError:
        return source
    matches = []
    for entry in entries:
        try:
            if resolve_game(str(entry.get("game"))) == wanted:
                matches.append(str(entry.get("name")))
        except UsageError:
            continue
    return matches[0] if len(matches) == 1 else source


def _device_saved_in(folder: Path, device: str) -> Path | None:
    """The resumed run's ``config.yaml`` when ``device`` is the one saved there (so a missing GPU
    is reported as the run's, naming the file); ``None`` for a device given anew."""
    path = folder / CONFIG_NAME
    try:
        saved = read_saved_config(path)["run"].get("device")
    except CheckpointError:
        return None  # start_run reports the missing or corrupt file itself
    return path if saved == device else None


def run_transfer(
    cfg: TransferConfig, resume: bool = False, progress_bar: bool = True, verbose: int = 1, pause_at: int | None = None
) -> TransferResult:
    """Build the env, hub and agent for ``cfg``; train (or resume) it; save ``model.zip``.

    ``pause_at`` stops at that many agent steps in all, with a checkpoint, while the schedules
    still follow ``cfg.timesteps``: ``resume=True`` later continues as one run would have (one past
    the budget is refused: the run would finish without pausing). A
    resumed ``cfg`` must be the saved run (:func:`hubrl.harness.start_run`); one that has already
    trained its budget and saved ``model.zip`` does nothing but say so (``outcome.already_done``).
    """
    if resume:  # the folder as named before --source is resolved: a default folder may not be found yet
        validate_config(cfg, _device_saved_in(Path(cfg.out) if cfg.out else default_run_folder(cfg), cfg.device))
    else:
        validate_config(cfg)
    folder = Path(cfg.out) if cfg.out else default_run_folder(cfg)
    if cfg.method not in HUB_METHODS:
        hub = None
    else:
        hub = resumed_hub(cfg, folder) if resume else resolve_hub(cfg.hub, cfg.sources)
    if hub is not None:
        if cfg.source is not None:
            cfg.source = hub.get(cfg.source).name  # --source Seaquest -> seaquest-ppo: same folder, label and config
        check_hub_serves(cfg, hub)  # frame stack, --top-k, finetune's --source: refused before any emulator or agent is built
    run = start_run(cfg, Path(cfg.out) if cfg.out else default_run_folder(cfg), resume=resume, verbose=verbose,
                    written=lambda r: saved_model_steps(r.folder / "model.zip") == r.steps_done, pause_at=pause_at)
    with run:  # the folder's lock (another process on this run is refused) until model.zip is written
        if run.already_done:
            return TransferResult(run.folder, run.outcome_so_far(), hub)
        game = resolve_game(cfg.env)
        with run.envs(game) as (env, eval_env):
            plan = plan_method(cfg, hub, game, run.saved.get("method") if run.saved else None)
            for callback in plan.callbacks:
                if isinstance(callback, GateUsageCallback):
                    callback.history_path = run.folder / "gates.jsonl"
                    callback.report_every, callback.verbose = cfg.eval_freq, verbose  # a [gate] line beside each [eval]

            def make_agent(policy_class):
                """The agent for ``policy_class`` with the run's preset (the plan's kwargs for its own policy)."""
                return run.make_agent(policy_class, env, plan.policy_kwargs if policy_class is plan.policy else None)

            model = make_agent(plan.policy)
            if not run.resumed:
                plan.init(model.policy)
            run.save_config(  # creates the folder: everything that can refuse the run is behind
                method=plan.notes,
                hub=hub_records(hub) if hub is not None else [],
            )
            run.apply_runtime(model, verbose)
            outcome = run.train(
                model, eval_env, tb_log_name=f"{game}-{method_label(cfg)}", callbacks=plan.callbacks,
                progress_bar=progress_bar, verbose=verbose,
                first_eval_at=early_eval_step(cfg.timesteps, cfg.eval_freq) if cfg.early_eval else None,
                warnings=plan.warnings,
            )
            final = plan.finalize(model, make_agent) if plan.finalize is not None else model
            atomic_write(run.folder / "model.zip", lambda h: final.save(h))
    _plot(run.folder, verbose)
    return TransferResult(run.folder, outcome, hub)


def _plot(folder: Path, verbose: int) -> None:
    """Redraw ``learning_curve.png`` (:func:`hubrl.plots.plot_run_curve`); a failed plot is a warning."""
    from hubrl.plots import plot_run_curve

    draw_learning_curve(folder, plot_run_curve, verbose)
