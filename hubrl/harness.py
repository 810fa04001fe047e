"""The run harness shared by pretraining (:mod:`hubrl.pretrain`) and transfer (:mod:`hubrl.transfer`).

A run lives in one folder: ``config.yaml`` (its resolved settings under ``run:``, the agent's
hyperparameters, the system it ran on), ``checkpoint.pt`` (resume state), ``evaluations.json``,
``learning_curve.png`` and TensorBoard events under ``tb/``. Both kinds of run are set up,
resumed and trained here, in the same steps, so they behave alike:

1. :func:`start_run` checks the folder before anything is written (a new run needs an empty one,
   or ``force``, which deletes the old run only at the new one's first write; a resumed one a
   checkpoint), takes the folder's lock (``.lock``: a second process on the same run is refused,
   naming the first, instead of both overwriting one checkpoint; the caller holds the run
   ``with run:`` until it has written what it makes), that a ``--tensorboard-log`` elsewhere can be
   written (:func:`check_tensorboard_log`) and that a ``--pause-at`` is not past the run's budget
   (:func:`hubrl.runconfig.check_pause_at`), resolves the agent's preset, and on resume continues
   the *saved* run (:mod:`hubrl.runconfig`: a setting that contradicts it is refused), with the
   hyperparameters it was started with even where a preset changed since, from its checkpoint;
   it sets torch's CPU threads. A resumed run that has reached its budget with all
   it makes written is :attr:`Run.already_done`: the caller does nothing more.
2. :meth:`Run.envs` opens the training and evaluation envs, :meth:`Run.make_agent` builds the
   SB3 agent with the run's preset, seed, device and TensorBoard folder, and
   :meth:`Run.apply_runtime` sets the encoders' precision and says how the run uses the machine.
3. :meth:`Run.create_folder` creates the folder and prints ``Run folder: ...`` (only then: a run
   refused while it is built leaves nothing behind and names no folder), :meth:`Run.save_config`
   writes ``config.yaml``, and :meth:`Run.train` runs :func:`hubrl.training.run_training` with the
   run's budget, evaluation and checkpoint settings.
4. :func:`draw_learning_curve` redraws ``learning_curve.png`` when the run ends or stops.

The settings are a dataclass with the fields of :class:`RunConfig` (:class:`hubrl.pretrain.PretrainConfig`,
:class:`hubrl.transfer.TransferConfig`); :func:`validate_run_settings` refuses the shared ones
that cannot run, naming the flag.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shlex
import shutil
import sys
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Iterator, Mapping, Protocol, Sequence, TypeVar

import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from hubrl.agents import AGENT_CLASSES, resolve_hyperparams
from hubrl.agents.presets import agent_kwargs, minibatch_warning
from hubrl.atomic import atomic_write, probe_writable
from hubrl.checkpoint import load_resume_checkpoint
from hubrl.envs import make_atari_vec_env
from hubrl.errors import CheckpointError, UsageError
from hubrl.evaluation import make_eval_env
from hubrl.grid import has_checkpoint
from hubrl.locks import LockHeld, exclusive_lock
from hubrl.provenance import system_info
from hubrl.runconfig import (
    check_device,
    check_finite,
    check_pause_at,
    check_resume,
    flag_name,
    read_saved_config,
    resume_config,
    resume_conflicts,
    tensorboard_name,
)
from hubrl.runtime import PRECISIONS, apply_precision, busy_cores_warning, configure_threads, runtime_line
from hubrl.training import EvalHistory, TrainingOutcome, run_training

__all__ = [
    "CONFIG_NAME", "CHECKPOINT_NAME", "RUN_LOCK_NAME", "RESUME_MAY_CHANGE", "FLAGS", "PATH_FIELDS", "RunConfig", "Run",
    "absolute_paths", "validate_run_settings", "check_resumable", "check_run_folder", "check_tensorboard_log",
    "hold_run_folder", "check_n_envs_given_once", "resolve_run_hyperparams",
    "check_fresh_start", "start_run", "draw_learning_curve", "writable_folder_problem",
]

CONFIG_NAME = "config.yaml"
CHECKPOINT_NAME = "checkpoint.pt"
#: The run folder's lock file (:func:`hold_run_folder`), held by the process training the run.
RUN_LOCK_NAME = ".lock"

#: Settings a resumed run may change: its step budget, and where it runs and logs.
RESUME_MAY_CHANGE: frozenset[str] = frozenset({"timesteps", "device", "threads", "out", "tensorboard_log"})
#: Settings whose command-line flag is not ``--field-name`` (for messages).
FLAGS: Mapping[str, str] = {"repeat_action_probability": "--sticky-actions"}
#: Settings that name files or folders outside the run folder: made absolute when a run starts
#: (:func:`absolute_paths`), so the run resumed or exported from another directory finds them.
PATH_FIELDS: frozenset[str] = frozenset({"tensorboard_log"})

C = TypeVar("C", bound="RunConfig")


class RunConfig(Protocol):
    """What the harness reads of a run's settings dataclass (the fields both kinds of run have)."""

    RESUME_MAY_CHANGE: ClassVar[frozenset[str]]  # the settings a resume may change (the others: the saved run's)
    FLAGS: ClassVar[Mapping[str, str]]  # field -> flag, where the flag is not --field-name
    PATH_FIELDS: ClassVar[frozenset[str]]  # the settings that are paths outside the run folder (absolute_paths)

    algo: str  # a key of hubrl.agents.AGENT_CLASSES
    timesteps: int  # the budget in agent steps; the schedules follow it
    n_envs: int | None  # None: the preset's
    seed: int
    device: str
    threads: int | None  # None: torch's default (hubrl.runtime.DEFAULT_THREADS)
    precision: str  # hubrl.runtime.PRECISIONS
    out: Any  # where the run's folder is (each kind says how)
    tensorboard_log: str | None  # None: <run folder>/tb
    eval_freq: int
    eval_episodes: int
    checkpoint_freq: int
    repeat_action_probability: float
    hyperparams: dict[str, Any]  # overrides of the preset (hubrl.agents.resolve_hyperparams)


def validate_run_settings(cfg: RunConfig, device_saved_in: Path | None = None) -> None:
    """Refuse a shared setting that cannot run, in one line naming its flag (before anything is built).

    ``device_saved_in``: the ``config.yaml`` the device comes from when a resumed run keeps the
    device it was saved with, named in the message if this machine lacks it."""
    flags = type(cfg).FLAGS
    if cfg.algo not in AGENT_CLASSES:
        raise UsageError(f"Unknown algo {cfg.algo!r}: choose one of {', '.join(AGENT_CLASSES)}.")
    check_finite(cfg, flags)
    for name in ("timesteps", "eval_freq", "eval_episodes", "checkpoint_freq", "n_envs", "threads"):
        value = getattr(cfg, name)
        if value is None and name in ("n_envs", "threads"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{flag_name(name, flags)} must be a positive integer, got {value!r}.")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise UsageError(f"--seed must be a whole number from 0 to 2**32 - 1, got {cfg.seed!r}.")
    if not 0 <= cfg.repeat_action_probability <= 1:
        raise UsageError(f"{flag_name('repeat_action_probability', flags)} is a probability in [0, 1], "
                         f"got {cfg.repeat_action_probability}.")
    if cfg.precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}.")
    check_device(cfg.device, saved_in=device_saved_in)


def check_resumable(folder: Path, has_force: bool = False) -> None:
    """Refuse ``--resume`` of a folder that holds no run to continue, saying what to do instead.

    ``has_force``: the command has ``--force`` (start over in place); otherwise a folder that
    holds a run stopped before its first checkpoint is to be restarted in another ``--out``.
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file, not a run folder.")
    if has_checkpoint(folder):
        return
    nothing = f"Nothing to resume in {folder}: no {CHECKPOINT_NAME}"
    if not folder.exists() or not any(folder.iterdir()):
        raise UsageError(f"{nothing} (the folder {'is empty' if folder.exists() else 'does not exist'}). "
                         "Run without --resume to start a run there.")
    if (folder / "model.zip").is_file():  # its checkpoints deleted (to save space, say): its trained model stays
        raise UsageError(f"{nothing}, but its trained model.zip is there (its checkpoints were deleted?), and a run "
                         f"continues only from a checkpoint. The model is kept: play it with hubrl-enjoy "
                         f"{shlex.quote(str(folder))}, or train a new run in another --out.")
    again = "with --force instead of --resume" if has_force else f"in another --out (or after deleting {folder})"
    raise UsageError(f"{nothing}: the run there stopped before its first checkpoint, so it cannot continue. "
                     f"Start it again {again}.")


def check_run_folder(folder: Path, resume: bool, force: bool | None = None) -> bool:
    """Apply the overwrite rules to ``folder`` before anything is written; whether the new run
    replaces what is there (the caller clears it only at the run's first write: :meth:`Run.create_folder`).

    A resumed run needs a checkpoint there. A new run needs the folder empty or missing: an
    existing run is replaced with ``force=True`` and refused otherwise (``force=None``: the command
    has no ``--force``, so the message suggests another ``--out``). A new run's folder must be
    writable, so a bad ``--out`` is refused now rather than after what a run does before its
    first write (a proxy ranking experts, building the agent).
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file, not a folder: choose a folder for the run.")
    blocker = next((p for p in folder.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():  # pretraining's run folder is <--out>/<game>-<algo>
        raise UsageError(f"--out {folder}: {blocker} is a file, not a folder; choose another --out.")
    occupied = not resume and _holds_a_run(folder)
    if resume:
        check_resumable(folder, has_force=force is not None)
    elif occupied:
        if not force:
            instead = "--force to start over" if force is not None else "choose another --out"
            if not has_checkpoint(folder):  # --resume would be refused too: no advice that goes round in a circle
                raise UsageError(f"Run folder {folder} already exists and holds no {CHECKPOINT_NAME} to continue from: "
                                 f"{instead}" + ("" if force is not None else f" (or delete {folder})") + ".")
            raise UsageError(f"Run folder {folder} already exists: pass --resume to continue it or {instead}.")
    if not resume:
        problem = writable_folder_problem(folder)
        if problem:
            raise UsageError(f"Cannot create run folder {folder}: it {problem}; choose another --out.")
    return occupied


def _holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` holds anything but its lock file (which outlives the process that held it)."""
    return folder.is_dir() and any(p.name != RUN_LOCK_NAME for p in folder.iterdir())


def hold_run_folder(folder: Path, stack: ExitStack) -> None:
    """Take ``folder``'s lock (:data:`RUN_LOCK_NAME`) until ``stack`` closes: two processes on one
    run (a second ``--resume`` of it, a ``--force`` over it, a grid trial resumed by hand) would
    overwrite each other's checkpoints and files.

    :raises UsageError: another process holds it, named by its pid and host.
    """
    try:
        stack.enter_context(exclusive_lock(folder / RUN_LOCK_NAME))
    except LockHeld as exc:
        raise UsageError(f"Run folder {folder} is in use by another process ({exc.holder or 'pid unknown'}): wait for "
                         "it to end or stop it; two processes on one run would overwrite each other's checkpoints.") from None


def check_tensorboard_log(tensorboard_log: str | Path | None) -> None:
    """Refuse a ``--tensorboard-log`` folder that cannot be created or written, before the run writes anything.

    SB3 creates it only when training starts, after the run folder, ``config.yaml`` and the first
    checkpoint are written: a bad one would leave a run that fails again on ``--resume`` (its path
    is saved). So the folder is made here and a file written and removed in it; the folders made
    for the test are removed again (SB3 makes them anew), so a refused run leaves nothing behind.
    ``None`` (the run folder's ``tb/``) is checked with the run folder when it is made.
    """
    if tensorboard_log is None:
        return
    problem = writable_folder_problem(Path(tensorboard_log))
    if problem:
        raise UsageError(f"--tensorboard-log {tensorboard_log} {problem}: pass a writable --tensorboard-log, "
                         "or drop it to log under the run folder's tb/.")


def writable_folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` ("is not a folder", "cannot be written (...)"), or
    None: it is made and a file written and removed in it, and the folders made for the test are
    removed again (the writer makes them anew), so a refused command leaves nothing behind."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # the folders this check creates, deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_writable(folder / ".hubrl-write-test")  # a new file of a unique name: never one already there (a link)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            return "is not a folder" if blocker == folder else f"cannot be made: {blocker} is a file"
        return f"cannot be written ({exc.strerror})"
    finally:
        for path in made:
            try:
                path.rmdir()
            except FileNotFoundError:
                continue  # the mkdir stopped above it
            except OSError:
                break  # not empty (another writer): left as it is, with the folders above it
    return None


def check_n_envs_given_once(cfg: RunConfig) -> None:
    """Refuse a new run given ``n_envs`` both as the flag and in its ``--hyperparams`` with two values
    (the flag would win without a word). Not checked on resume: a run saved before this check ran
    with the flag's number, and keeps it."""
    given = cfg.hyperparams.get("n_envs") if isinstance(cfg.hyperparams, dict) else None
    if cfg.n_envs and given is not None and given != cfg.n_envs:
        flag = flag_name("n_envs", type(cfg).FLAGS)
        raise UsageError(f"{flag} {cfg.n_envs} and the --hyperparams n_envs: {given!r} disagree: give the number of "
                         f"parallel games once (drop one of them).")


def resolve_run_hyperparams(cfg: RunConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The preset with ``cfg``'s overrides (and ``n_envs``, which wins over the overrides' own), as
    plain values and as agent kwargs; sets ``cfg.n_envs`` to the number used."""
    plain, kwargs = resolve_hyperparams(cfg.algo, {**cfg.hyperparams, **({"n_envs": cfg.n_envs} if cfg.n_envs else {})})
    cfg.n_envs = int(plain["n_envs"])
    return plain, kwargs


@dataclass
class Run(Generic[C]):
    """One run being built and trained in its folder (made by :func:`start_run`)."""

    cfg: C  # the settings it runs with (on resume: the saved run's)
    folder: Path
    hyperparams: dict[str, Any]  # the resolved preset, n_envs included (config.yaml's resolved_hyperparams)
    agent_kwargs: dict[str, Any]  # the agent constructor's kwargs for those
    saved: dict[str, Any] | None = None  # a resumed run's config.yaml as it was
    resume_state: dict[str, Any] | None = None  # the checkpoint it resumes from
    verbose: int = 1  # print the run folder when it is created
    already_done: bool = False  # resumed at its budget with everything written: nothing to do (see start_run)
    pause_at: int | None = None  # stop training at the first rollout boundary at or past this many agent steps
    notes: list[str] = field(default_factory=list)  # said as training starts, e.g. a resume's kept hyperparameters
    replaces: bool = False  # a forced new run over an old one: the old one is deleted at the first write, not before
    held: ExitStack | None = field(default=None, repr=False)  # the folder's lock, once taken (hold_run_folder)
    _announced: bool = field(default=False, init=False, repr=False)

    def __enter__(self) -> Run[C]:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def release(self) -> None:
        """Let go of the run folder's lock: the run has written what it makes (``with run:`` does this)."""
        if self.held is not None:
            self.held.close()
            self.held = None

    @property
    def resumed(self) -> bool:
        return self.resume_state is not None

    @property
    def steps_done(self) -> int:
        """Agent steps trained so far (0 for a new run)."""
        return int(self.resume_state["num_timesteps"]) if self.resume_state is not None else 0

    def outcome_so_far(self) -> TrainingOutcome:
        """The outcome of a run that is :attr:`already_done`, as the checkpoint holds it, without
        training or evaluating anything (``already_done=True``, no time spent)."""
        history = EvalHistory(list((self.resume_state or {}).get("extra", {}).get("eval_history", [])))
        return TrainingOutcome(self.steps_done, completed=True, interrupted_by=None, seconds=0.0, history=history,
                               already_done=True)

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT_NAME

    @property
    def tensorboard_log(self) -> str:
        return self.cfg.tensorboard_log or str(self.folder / "tb")

    @contextmanager
    def envs(self, game: str) -> Iterator[tuple[VecEnv, VecEnv]]:
        """The training env (``n_envs`` games, the run's seed) and the evaluation env (up to 8
        whole games, raw scores, seed + 10000), both with the run's sticky actions; closed on exit."""
        options = {"repeat_action_probability": self.cfg.repeat_action_probability}
        env = make_atari_vec_env(game, self.cfg.n_envs, seed=self.cfg.seed, **options)
        eval_env = None
        try:
            eval_env = make_eval_env(game, n_envs=min(self.cfg.eval_episodes, 8), seed=self.cfg.seed + 10_000, **options)
            yield env, eval_env
        finally:
            env.close()
            if eval_env is not None:
                eval_env.close()

    def make_agent(self, policy: str | type, env: VecEnv, policy_kwargs: Mapping[str, Any] | None = None) -> BaseAlgorithm:
        """A fresh agent of the run's algorithm and preset, seed and device, logging to the run's
        TensorBoard folder; ``policy_kwargs`` are merged over the preset's."""
        kwargs = dict(self.agent_kwargs)
        preset = kwargs.pop("policy_kwargs", {})
        with warnings.catch_warnings():  # train() says it in one line (hubrl.agents.presets.minibatch_warning)
            warnings.filterwarnings("ignore", message="You have specified a mini-batch size", category=UserWarning)
            return AGENT_CLASSES[self.cfg.algo](
                policy, env, seed=self.cfg.seed, device=self.cfg.device, verbose=0, tensorboard_log=self.tensorboard_log,
                policy_kwargs={**preset, **(policy_kwargs or {})}, **kwargs,
            )

    def apply_runtime(self, model: BaseAlgorithm, verbose: int = 1) -> None:
        """Run ``model``'s encoders in the run's precision and, with ``verbose``, say how the run
        uses the machine (``Device cpu, 1 torch thread, fp32 encoders``), with a warning when its
        default threads would share busy cores (:func:`hubrl.runtime.busy_cores_warning`)."""
        changed = apply_precision(model.policy, self.cfg.precision)
        if verbose:  # the precision the encoders really run in: fp32 when none took the setting
            line = runtime_line(model.device, self.cfg.precision if changed else "fp32")
            print(line[0].upper() + line[1:], flush=True)
            busy = busy_cores_warning(self.cfg.threads, model.device)
            if busy:
                print(f"warning: {busy}", file=sys.stderr, flush=True)

    def create_folder(self) -> Path:
        """Create the run folder: the first thing a run writes, once what it needs is built; with
        ``verbose``, say where it is (once), so a run refused before never names a folder.

        A forced run (:attr:`replaces`) deletes the old run here, so a refusal anywhere before
        (hyperparameters, a hub that cannot be written, a method that cannot plan) loses nothing.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.held is None:  # a new run's folder, made just now: locked before anything is written in it
                self.held = ExitStack()
                hold_run_folder(self.folder, self.held)
            if self.replaces:  # the old run's files go; its lock file stays, held by this run since start_run
                for child in self.folder.iterdir():
                    if child.name != RUN_LOCK_NAME:
                        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            self.replaces = False
        except OSError as exc:
            raise UsageError(f"Cannot create run folder {self.folder}: {exc.strerror}.") from exc
        if self.verbose and not self._announced:
            print(f"Run folder: {self.folder}", flush=True)
        self._announced = True
        return self.folder

    def save_config(self, **sections: Any) -> Path:
        """Write ``config.yaml`` (creating the folder if need be): ``run`` (the settings),
        ``resolved_hyperparams``, the caller's ``sections`` in order, and ``system``."""
        self.create_folder()
        resolved = {"run": dataclasses.asdict(self.cfg), "resolved_hyperparams": self.hyperparams, **sections,
                    "system": system_info()}
        return atomic_write(self.folder / CONFIG_NAME, lambda h: yaml.safe_dump(resolved, h, sort_keys=False), mode="w")

    def train(
        self,
        model: BaseAlgorithm,
        eval_env: VecEnv,
        *,
        tb_log_name: str,
        callbacks: list[BaseCallback] | None = None,
        progress_bar: bool = True,
        verbose: int = 1,
        first_eval_at: int | None = None,
        warnings: Sequence[str] = (),
    ) -> TrainingOutcome:
        """Train ``model`` to the run's budget from where it stands, with the run's evaluation and
        checkpoint settings (:func:`hubrl.training.run_training`), pausing at :attr:`pause_at`.

        Settings that run but do less than asked are said here, one line each, as training starts:
        :attr:`notes`, ``warnings`` (e.g. a method's, :attr:`hubrl.methods.MethodPlan.warnings`) and a PPO
        ``batch_size`` that does not divide the rollout (:func:`hubrl.agents.presets.minibatch_warning`;
        :meth:`make_agent` silences SB3's paragraph) and a budget below one rollout (SB3 trains a whole one),
        so a run refused or failing before says nothing but why."""
        cfg = self.cfg
        for warning in [*self.notes, *warnings, minibatch_warning(cfg.algo, self.hyperparams),
                        _short_budget_warning(model, cfg.timesteps)]:
            if warning is not None:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        return run_training(
            model, cfg.timesteps, self.checkpoint,
            eval_env=eval_env, eval_freq=cfg.eval_freq, eval_episodes=cfg.eval_episodes, checkpoint_freq=cfg.checkpoint_freq,
            resume_state=self.resume_state, callbacks=callbacks, progress_bar=progress_bar,
            tb_log_name=tensorboard_name(self.folder, cfg.tensorboard_log, tb_log_name),
            verbose=verbose, pause_at=self.pause_at, first_eval_at=first_eval_at,
        )


def _short_budget_warning(model: BaseAlgorithm, timesteps: int) -> str | None:
    """A budget below one rollout: SB3 collects whole rollouts, so the run trains one anyway."""
    rollout = int(getattr(model, "n_steps", 0) or 0) * int(model.n_envs)
    if not 0 < timesteps < rollout:
        return None
    return (f"--timesteps {timesteps:,} is less than one rollout ({rollout:,} agent steps: n_steps {model.n_steps} x "
            f"{model.n_envs} envs): the run trains one whole rollout, {rollout:,} steps.")


def check_fresh_start(cfg: Any, folder: Path, force: bool | None, pause_at: int | None) -> bool:
    """What :func:`start_run` refuses of a new run (not a resume) of ``cfg`` in ``folder`` before its
    lock is taken: its settings first (``n_envs`` given once, the TensorBoard folder, ``pause_at``
    within the budget), then, unless ``force``, another run already in the folder, and the folder
    itself (:func:`check_run_folder`). Writes nothing. Return whether the run replaces one there
    (``force``). A command that starts several runs in turn checks each with this before the first."""
    check_n_envs_given_once(cfg)
    check_tensorboard_log(cfg.tensorboard_log)
    check_pause_at(pause_at, int(cfg.timesteps), type(cfg).FLAGS)
    if not force:
        _refuse_another_run(cfg, folder, force is not None)
    return check_run_folder(folder, False, force)


def start_run(
    cfg: C,
    folder: str | Path,
    *,
    resume: bool = False,
    given: Mapping[str, Any] | None = None,
    force: bool | None = None,
    verbose: int = 1,
    written: Callable[[Run[C]], bool] | None = None,
    pause_at: int | None = None,
) -> Run[C]:
    """Start the run of ``cfg`` in ``folder``, or resume the one saved there; writes nothing yet
    (a forced run deletes the old one at its first write: :meth:`Run.create_folder`).

    ``pause_at``: where :meth:`Run.train` pauses (agent steps in all); one past the run's budget
    (the resumed run's, when resumed) is refused (:func:`hubrl.runconfig.check_pause_at`).

    A resumed run continues the saved settings: with ``given`` (the settings asked for
    explicitly, e.g. the command line's flags), the saved run with those laid over it; without,
    ``cfg`` itself, which must equal the saved run except in ``RESUME_MAY_CHANGE``. Either way a
    contradiction is refused, naming both values, before anything is written.

    A resumed run that has reached its budget, made its final evaluation and, by ``written(run)``,
    written what it makes (``model.zip``, the exported expert) is :attr:`Run.already_done`: this
    says so in one line and the caller writes nothing (:meth:`Run.outcome_so_far`). One stopped
    between its last checkpoint and those files is not: resuming it finishes them.
    """
    folder = Path(folder)
    flags = type(cfg).FLAGS
    replaces = check_run_folder(folder, resume, force) if resume else check_fresh_start(cfg, folder, force, pause_at)
    held = ExitStack() if resume or replaces else None  # a run is in the folder: locked before its files are read
    with ExitStack() as refused:  # a refusal below lets the lock go
        if held is not None:
            refused.callback(held.close)
            hold_run_folder(folder, held)
        saved = read_saved_config(folder / CONFIG_NAME) if resume else None  # a missing or corrupt one names itself
        if saved is not None and given is not None:
            cfg = resume_config(type(cfg), folder / CONFIG_NAME, given, flags)
        absolute_paths(cfg)
        plain, kwargs = resolve_run_hyperparams(cfg)
        if saved is not None and given is None:
            check_resume(cfg, saved["run"], folder / CONFIG_NAME, flags)  # n_envs resolved: compared like with like
        if saved is not None and (given is None or "device" not in given):  # the saved run's device: is it here?
            check_device(cfg.device, saved_in=folder / CONFIG_NAME)
        if saved is not None:
            check_tensorboard_log(cfg.tensorboard_log)  # the resumed run's: saved, or given anew
            check_pause_at(pause_at, int(cfg.timesteps), flags)  # against the resumed run's budget
        notes = []
        if saved is not None:
            plain, kwargs, kept = _keep_saved_hyperparams(cfg.algo, plain, kwargs, saved.get("resolved_hyperparams"),
                                                          folder / CONFIG_NAME)
            notes = [kept] if kept else []
        resume_state = load_resume_checkpoint(folder / CHECKPOINT_NAME) if saved is not None else None
        run = Run(cfg, folder, plain, kwargs, saved, resume_state, verbose, pause_at=pause_at, notes=notes,
                  replaces=replaces, held=held)
        if resume_state is not None:
            _check_steps_left(folder, run.steps_done, int(cfg.timesteps), saved["run"].get("timesteps"))
            stretched = _new_budget_note(run.steps_done, int(cfg.timesteps), saved["run"].get("timesteps"), flags)
            run.notes += [stretched] if stretched else []
            run.already_done = _final_evaluation_done(resume_state, int(cfg.timesteps)) and (written is None or written(run))
        if run.already_done:
            if verbose:
                print(f"{folder} has already trained {run.steps_done:,} of its {int(cfg.timesteps):,} agent steps: "
                      f"nothing to do (a larger {flag_name('timesteps', flags)} trains it further).", flush=True)
        else:
            configure_threads(cfg.threads)
        refused.pop_all()  # started: the run holds the lock until the caller's ``with run:`` ends
    return run


def _refuse_another_run(cfg: RunConfig, folder: Path, has_force: bool) -> None:
    """A new run whose folder holds a run of other settings is refused as such, naming what differs.

    The default run folder names the game, method, algorithm and seed, not ``--top-k``, the
    aggregation, the hyperparameters ...: a second run that differs only there lands in the first
    one's folder, where "pass --resume" (:func:`check_run_folder`'s advice for the same run) would
    only be refused in turn. Settings a resume may change (the budget, where it runs and logs) do not
    count; the experts do (a resume may find them moved, but a new run with other experts is another
    run), and so does each hyperparameter this run overrides (``--hyperparams``, ``--set``) whose
    value differs from the one the saved run trained with (its ``resolved_hyperparams``; one this
    run leaves to the preset is not compared: a resume keeps the saved ones,
    :func:`_keep_saved_hyperparams`). A folder whose ``config.yaml`` cannot be read is left to
    :func:`check_run_folder`.
    """
    path = folder / CONFIG_NAME
    if not path.is_file() or not has_checkpoint(folder):  # no checkpoint: check_run_folder offers no --resume
        return
    probe = copy.deepcopy(cfg)
    try:
        config = read_saved_config(path)
        saved = config["run"]
        plain, _ = resolve_run_hyperparams(probe)  # n_envs as saved: the preset's number, not None
        absolute_paths(probe)
        paths = getattr(type(cfg), "PATH_FIELDS", PATH_FIELDS)
        saved = {k: _absolute(v) if k in paths else v for k, v in saved.items()}  # a run saved with relative ones
        # None: the run decides (run_id); hyperparams: the run section holds the preset resolved for some commands
        # and the overrides for others, so they are compared by value below, against what the run trained with
        chosen = {k: v for k, v in dataclasses.asdict(probe).items() if v is not None and k != "hyperparams"}
        conflicts = resume_conflicts(type(cfg), saved, chosen, path, may_change=RESUME_MAY_CHANGE)
        conflicts += _hyperparam_conflicts(probe.hyperparams, plain, config.get("resolved_hyperparams"))
    except (CheckpointError, UsageError, ValueError, TypeError):
        return
    if conflicts:
        flags = type(cfg).FLAGS
        differ = "; ".join(f"{flag_name(n, flags)} {_said(n, s)} there, {_said(n, w)} here" for n, w, s in conflicts)
        raise UsageError(f"Run folder {folder} already holds another run ({differ}): to continue that one, pass "
                         f"--resume --out {shlex.quote(str(folder))} (its own settings); to start this one, give it "
                         "another --out" + (", or --force to replace that one." if has_force else "."))


def _said(name: str, value: Any) -> str:
    """A setting's value as the conflict message says it: ``'x'``, or what ``None`` means for it
    (``--hub``: the shipped hub; otherwise the default)."""
    if value is None:
        return "the shipped hub" if name == "hub" else "the default"
    return repr(value)


def _as_saved(plain: Mapping[str, Any]) -> Any:
    """``plain`` hyperparameters as ``config.yaml`` holds them (a YAML round trip: tuples become lists),
    so that they compare with a saved run's ``resolved_hyperparams``."""
    return yaml.safe_load(yaml.safe_dump(dict(plain)))


def _hyperparam_conflicts(overrides: Mapping[str, Any], plain: Mapping[str, Any],
                          saved: Any) -> list[tuple[str, Any, Any]]:
    """``("hyperparams", "key: here", "key: there")`` for each hyperparameter in ``overrides`` whose
    resolved value (``plain``, as ``config.yaml`` holds it) differs from the ``saved`` run's
    ``resolved_hyperparams`` (nothing where that section is missing: a run from before it)."""
    if not isinstance(saved, dict):
        return []
    current = _as_saved(plain)
    return [("hyperparams", f"{key}: {current[key]!r}", f"{key}: {saved.get(key, 'unset')!r}")
            for key in sorted(overrides) if key in current and current[key] != saved.get(key, "unset")]


def absolute_paths(cfg: RunConfig) -> None:
    """Make ``cfg``'s settings that name files or folders (its class's ``PATH_FIELDS``: the hub,
    the sources, the TensorBoard folder) absolute, against the current directory, in place.

    ``config.yaml`` then records where they are, not where they were from the directory the run
    was started in: resumed or exported from another directory, a run saved with ``--hub hub``
    would otherwise look for its experts there, or export a finished expert into a new ``hub``
    folder beside the user, and log to a second TensorBoard folder. A run saved before this
    (relative paths) keeps the old reading: against the directory it is resumed from.
    """
    for name in getattr(type(cfg), "PATH_FIELDS", PATH_FIELDS):
        setattr(cfg, name, _absolute(getattr(cfg, name)))


def _absolute(value: Any) -> Any:
    """A path setting made absolute: one path, or a list of them; unset (None, empty) as it is."""
    if isinstance(value, (list, tuple)):
        return [os.path.abspath(v) for v in value]
    return os.path.abspath(value) if value else value


def _keep_saved_hyperparams(
    algo: str, plain: dict[str, Any], kwargs: dict[str, Any], saved: Any, source: Path,
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """The hyperparameters a resumed run continues with: those it was started with.

    ``plain``/``kwargs`` are what this version of hubrl resolves the saved settings to; they differ
    from the run's saved ``resolved_hyperparams`` when a preset changed since the run began (an
    RL Zoo value corrected, an optimizer's ``eps``). Resuming with the new ones would change the
    run half-way, and silently in part: the checkpoint's optimizer state brings back its own
    ``eps``, ``alpha`` or ``betas`` whatever the preset says, while ``config.yaml`` would record the
    preset's. So the saved values win, and a note (said as training starts) names each difference.
    A key the run's preset lacked stays unset (SB3's default, as then). A run saved before
    ``resolved_hyperparams`` were recorded keeps this version's, as before.
    """
    if not isinstance(saved, dict):
        return plain, kwargs, None
    current = _as_saved(plain)
    if current == saved:
        return plain, kwargs, None
    saved = {"n_envs": current.get("n_envs"), **saved}  # a section without it: the run's own n_envs, which resolved here
    try:
        kept = agent_kwargs(saved, algo, where=f"{source}'s resolved_hyperparams")
    except (UsageError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"{exc} The run continues the hyperparameters it was started with: mend that section of "
                         f"{source.name}, or start a new run with another --out.") from None
    unset = "unset (SB3's default)"  # a key the preset of the run's day did not have, or has no more
    changed = [f"{key} {saved.get(key, unset)!r} (now {current.get(key, unset)!r})".replace(repr(unset), unset)
               for key in sorted(set(current) | set(saved)) if current.get(key, unset) != saved.get(key, unset)]
    return saved, kept, (f"{source.parent} continues the hyperparameters it was started with, not this version of "
                         f"hubrl's {algo} preset: {'; '.join(changed)}." if changed else None)


def _final_evaluation_done(state: Mapping[str, Any], budget: int) -> bool:
    """Whether the checkpoint ``state`` holds a run at ``budget`` that made its final evaluation:
    the last point of its history is at its step count (periodic evaluations stop short of the
    budget, :class:`hubrl.training.RawScoreEvalCallback`)."""
    done = int(state["num_timesteps"])
    points = state.get("extra", {}).get("eval_history") or []
    return done >= budget and bool(points) and int(points[-1].get("step", -1)) == done


def _check_steps_left(folder: Path, done: int, budget: int, saved_budget: Any) -> None:
    """Refuse a resume to a new budget below the steps already trained: its schedules would be
    past their end, and the run (or the expert it exports) would record a budget smaller than
    what it trained. (Its own budget, already reached, is a run :attr:`Run.already_done`.)"""
    if done > budget and saved_budget is not None and int(saved_budget) != budget:
        raise UsageError(f"{folder} has trained {done:,} agent steps, more than --timesteps {budget:,}: give a budget "
                         f"above {done:,} to train it further, or drop --timesteps to keep its {int(saved_budget):,}.")


def _new_budget_note(done: int, budget: int, saved_budget: Any, flags: Mapping[str, str]) -> str | None:
    """What a resume to another budget does to the schedules, or None: SB3's schedules follow the
    fraction of the budget left, so a linear one (PPO's learning rate and clip range in the Atari
    presets) jumps where the run resumes. Said, not refused: training a finished run further is
    what a larger budget is for."""
    if isinstance(saved_budget, bool) or not isinstance(saved_budget, int) or saved_budget == budget or saved_budget < 1:
        return None
    before, after = max(1 - done / saved_budget, 0.0), 1 - done / budget
    return (f"resumed with {flag_name('timesteps', flags)} {budget:,} instead of the run's {saved_budget:,}: the schedules "
            f"now run over {budget:,} steps, so at step {done:,} a linear one (the learning rate, PPO's clip range) goes "
            f"from {before:.0%} to {after:.0%} of its start value (--pause-at keeps one schedule across sessions).")


def draw_learning_curve(folder: Path, plot: Callable[[Path], Path], verbose: int = 1) -> Path | None:
    """Redraw the run's ``learning_curve.png`` with ``plot`` (:mod:`hubrl.plots`); a plot that
    fails costs a warning, never the finished run."""
    from hubrl.plots import NothingToPlot

    try:
        path = plot(folder)
    except NothingToPlot:
        if verbose:
            print("No learning curve yet: no evaluation and no finished game so far.", flush=True)
        return None
    except Exception as exc:  # noqa: BLE001  (the model and checkpoint are saved already)
        print(f"warning: could not draw {folder / 'learning_curve.png'}: {exc}", flush=True)
        return None
    if verbose:
        print(f"Learning curve {path}", flush=True)
    return path
