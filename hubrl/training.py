"""The training loop shared by pretraining and transfer: evaluation, checkpoints, resume, stop.

:func:`run_training` drives ``model.learn`` to a total step budget with

* periodic evaluation on raw game scores, logged as ``eval/mean_reward`` (+ std, length), and
  optionally one early evaluation on a few games (:func:`early_eval_step`) so a long run shows a
  score within minutes;
* a checkpoint every ``checkpoint_freq`` agent steps, and one when the run ends or is stopped
  (Ctrl-C / SIGTERM): written atomically, holding weights, optimizer state, step counter and the
  evaluation history;
* resume from that checkpoint with the step counter, the schedules and the curves intact;
* a progress bar in absolute steps, up to the step the run really ends at (:func:`steps_at_end`:
  :class:`hubrl.progress.StepProgressBar`) and, on resume, one line saying from which step.

Checkpoints hold a rollout boundary. SB3's ``learn`` alternates ``collect_rollouts`` (the
callbacks' ``on_step`` runs here, and returning ``False`` stops ``learn`` before the update) and
``train()``. A periodic checkpoint is therefore written at the start of the next rollout, after
the update of the one that crossed ``checkpoint_freq``; a run stopped inside a rollout (signal,
pause, crash) is saved with the step counter of that rollout's start, because its steps were
never learned from, and so is one stopped inside that rollout's update (a second Ctrl-C, a crash
in ``train()``), with the weights and optimizer state the update started from
(:class:`RolloutBoundary`). Resuming then collects that rollout again and makes its update: a run
stopped and resumed any number of times makes its updates at the same step counts, with the same
schedules, as one run in one go. The numbers are not bit for bit those of an uninterrupted run:
the environments start new games, and the random generators (gate noise, sampled actions, the
games' no-op starts and sticky actions) go on re-seeded from the run's seed and the step it resumes
at (:func:`resume_seed`), not from where they stood: so a resumed part does not replay the random
numbers of the run's first steps, and resuming at the same checkpoint twice gives the same run.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from hubrl.atomic import atomic_write
from hubrl.checkpoint import DivergedWeights, restore_training_state, save_training_checkpoint
from hubrl.evaluation import EvalResult, EvaluationStopped, evaluate_model
from hubrl.progress import StepProgressBar
from hubrl.signals import SignalStop

__all__ = [
    "EvalHistory", "early_eval_step", "eval_seed", "resume_seed", "RawScoreEvalCallback", "RolloutBoundary",
    "CheckpointEveryCallback", "PurgeLaterTensorBoardPoints", "StopOnSignal", "PauseAtStepCallback", "TrainingOutcome",
    "steps_at_end", "run_training",
]


@dataclass
class EvalHistory:
    """Evaluation points of one run: agent steps, mean, std, episodes and every game's raw score.

    Saved in the checkpoint (for resume) and as ``evaluations.json`` beside it, the plain file
    that reports and plots read (the counterpart of SB3's ``evaluations.npz``).
    """

    points: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: int, result: EvalResult) -> None:
        self.points.append(
            {"step": int(step), "mean": result.mean, "std": result.std, "episodes": result.episodes,
             "scores": list(result.scores)}
        )

    def save(self, path: Path) -> None:
        """Write ``{"points": [...]}`` atomically."""
        atomic_write(Path(path), lambda h: json.dump({"points": self.points}, h, indent=1), mode="w")


EARLY_EVAL_FRACTION = 0.1  # of the budget
EARLY_EVAL_MAX_STEP = 25_000  # ~3 min of PPO on 2 CPU cores: a 10M run still shows a score early
EARLY_EVAL_EPISODES = 3


def early_eval_step(budget: int, eval_freq: int) -> int | None:
    """When a run's early evaluation comes: 10% of the budget, at most 25k steps; ``None`` when
    the first regular evaluation (``eval_freq``) would come no later, or the budget is tiny."""
    step = min(int(budget * EARLY_EVAL_FRACTION), EARLY_EVAL_MAX_STEP)
    return step if 0 < step < eval_freq else None


def resume_seed(run_seed: int | None, step: int) -> int | None:
    """The seed a run resumed at ``step`` re-seeds its generators and training games with (torch,
    numpy, ``random``, the action space, the envs' next reset): rebuilt from the run's seed, they
    would otherwise replay the gate noise, sampled actions and games of the run's first steps.
    Drawn apart from the run's seed and from :func:`eval_seed`'s; ``None`` (an unseeded run): none."""
    if run_seed is None:
        return None
    return int(np.random.SeedSequence([int(run_seed) % 2**63, int(step), 0x7E5]).generate_state(1)[0] % 2**31)


def eval_seed(run_seed: int | None, step: int) -> int | None:
    """The seed of a run's evaluation at ``step``: its own per run and step, drawn from neither
    training's generator nor another evaluation's. ``None`` (an unseeded run): the caller's
    generator, as before."""
    return None if run_seed is None else (int(run_seed) * 1_000_003 + int(step)) % 2**63


class RawScoreEvalCallback(BaseCallback):
    """Evaluate every ``eval_freq`` agent steps on a separate env and log the raw score.

    With ``first_eval_at``, one extra evaluation on ``first_eval_episodes`` games comes at that
    step, unless a resumed run is past it: feedback minutes into a long run. It is an extra
    point in the history (its ``episodes`` says how many games); the regular points stay at the
    multiples of ``eval_freq``, on resume too.

    With ``budget`` set, an evaluation due at or past the budget is left to the caller's final
    evaluation: ``learn()`` overshoots the budget to the end of its last rollout and then updates
    the policy once more, so an evaluation inside that rollout would score weights that are not
    the ones saved, and cost a second evaluation a few hundred steps later.

    Each evaluation samples its actions from a generator of its own, seeded with the run's seed
    and the step (:func:`eval_seed`), not from training's: a run's training is then the same
    whatever its evaluation settings (``eval_freq``, games, an early evaluation), so two runs of
    one seed that differ only in those stay paired, and an evaluation is repeatable from its
    weights: the games are seeded from it too, so a resumed run (a fresh eval env) scores the same
    weights as the run it resumes would have.
    """

    def __init__(
        self,
        eval_env,
        eval_freq: int,
        n_episodes: int,
        history: EvalHistory,
        verbose: int = 0,
        history_path: Path | None = None,
        budget: int | None = None,
        first_eval_at: int | None = None,
        first_eval_episodes: int = EARLY_EVAL_EPISODES,
    ) -> None:
        super().__init__(verbose)
        self.budget = budget
        self.first_eval_at = first_eval_at
        self.first_eval_episodes = min(first_eval_episodes, n_episodes)
        self._early: int | None = None
        self.history_path = history_path
        self.eval_env = eval_env
        self.eval_freq = int(eval_freq)
        self.n_episodes = n_episodes
        self.history = history
        self._next = 0
        #: The run's stop (:class:`StopOnSignal`), set by :func:`run_training`: once it has a signal no
        #: evaluation starts, and one under way ends at its next step.
        self.stop: SignalStop | None = None

    def _on_training_start(self) -> None:
        done = self.history.points[-1]["step"] if self.history.points else 0
        self._next = (done // self.eval_freq + 1) * self.eval_freq if self.eval_freq > 0 else float("inf")
        early = self.first_eval_at
        due = early is not None and self.num_timesteps < early < min(self._next, self.budget or early + 1)
        self._early = early if due else None

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.received is not None

    def evaluate(self, n_episodes: int | None = None) -> EvalResult | None:
        """Play ``n_episodes`` games (default: the run's), record and log their raw scores; None when
        the run was stopped meanwhile (:attr:`stop`): an evaluation inside the rollout a stop ends is
        discarded with it (:class:`RolloutBoundary`) and made again on resume, so its games are not
        played out."""
        try:
            result = evaluate_model(self.model, self.eval_env, n_episodes or self.n_episodes,
                                    seed=eval_seed(self.model.seed, self.num_timesteps), stop=self._stopping)
        except EvaluationStopped:
            if self.verbose:
                print(f"[eval] step {self.num_timesteps}: cut short by the stop; made again on resume", flush=True)
            return None
        self.history.add(self.num_timesteps, result)
        if self.history_path is not None:
            self.history.save(self.history_path)
        dump_alone(self.logger, self.num_timesteps, {
            "eval/mean_reward": result.mean, "eval/std_reward": result.std,
            "eval/mean_ep_length": sum(result.lengths) / max(len(result.lengths), 1)})
        if self.verbose:
            print(f"[eval] step {self.num_timesteps}: {result}", flush=True)
        return result

    def _on_step(self) -> bool:
        if self._stopping():  # stopped: the rollout's evaluation would be discarded with it (see evaluate)
            return True
        if self._early is not None and self.num_timesteps >= self._early:
            self._early = None
            self.evaluate(self.first_eval_episodes)
        if self.num_timesteps >= self._next:
            if self.budget is not None and self._next >= self.budget:
                self._next = float("inf")  # the final evaluation after learn() scores the saved weights
            else:
                self.evaluate()
                self._next += self.eval_freq
        return True


def dump_alone(logger: Any, step: int, values: dict[str, float]) -> None:
    """Write ``values`` to ``logger`` at ``step`` on their own, keeping what it holds back for its
    next dump: SB3 logs each update's ``train/*`` values at the next rollout's dump, and an
    evaluation dumping them early wrote them at its step instead, and after the last update, at the
    step the last rollout had already logged (two values at that step on every ``train/*`` curve)."""
    tables = (logger.name_to_value, logger.name_to_count, logger.name_to_excluded)
    held = [dict(table) for table in tables]
    for table in tables:
        table.clear()
    for key, value in values.items():
        logger.record(key, value)
    logger.dump(step)
    for table, kept in zip(tables, held):
        table.update(kept)


class RolloutBoundary(BaseCallback):
    """Track where ``learn`` stands against its rollout boundaries, so that a run ended between two
    of them is saved at the one before: the step counter at the start of the current rollout,
    whether ``learn`` is inside a rollout (its steps taken, its update not made yet) or inside its
    update (:attr:`updating`), and, during the update, the weights and optimizer state it started
    from (:meth:`undo_update`).

    An update ended part-way (a second Ctrl-C, which raises at once, or an error in ``train()``)
    leaves weights that some minibatches moved and others did not, possibly in the middle of one
    optimizer step: no state a run in one go ever had. Undone, the run is saved at the rollout's
    start, like one stopped inside the rollout, and resuming collects it again. Keeping the state
    costs one copy of the weights and optimizer state per rollout: about 1% of a PPO rollout of
    1,024 steps here. An update of one optimizer step (A2C's) is not kept: its rollouts are short
    (80 steps at the preset), where the copy would cost 10-20% of the forward passes, and the
    window a second Ctrl-C could land in is that one step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.start_timesteps = 0
        self.inside = False
        self.updating = False
        self._before_update: tuple[dict[str, Any], dict[str, Any], int] | None = None

    @property
    def untrained(self) -> bool:
        """Whether ``learn`` is between a rollout's start and the end of its update: the steps of
        that rollout (from :attr:`start_timesteps`) are not learned from yet."""
        return self.inside or self.updating

    def _on_training_start(self) -> None:
        self.start_timesteps = int(self.model.num_timesteps)

    def _on_rollout_start(self) -> None:
        self.start_timesteps = int(self.model.num_timesteps)
        self.inside, self.updating, self._before_update = True, False, None

    def _on_rollout_end(self) -> None:
        if _optimizer_steps_per_update(self.model) <= 1:
            self.inside = False  # trained in one step: nothing kept to undo (class docstring)
            return
        policy = self.model.policy
        self._before_update = ({name: value.detach().clone() for name, value in policy.state_dict().items()},
                               copy.deepcopy(policy.optimizer.state_dict()), int(getattr(self.model, "_n_updates", 0)))
        self.inside, self.updating = False, True  # set last: stopped while copying, the update had not begun

    def _on_training_end(self) -> None:
        self.updating, self._before_update = False, None

    def undo_update(self) -> None:
        """Put back the weights, optimizer state and update count the current update started from."""
        if self._before_update is None:
            return
        weights, optimizer, n_updates = self._before_update
        self.model.policy.load_state_dict(weights)
        self.model.policy.optimizer.load_state_dict(optimizer)
        self.model._n_updates = n_updates
        self.updating, self._before_update = False, None

    def _on_step(self) -> bool:
        return True


def _optimizer_steps_per_update(model: BaseAlgorithm) -> int:
    """How many optimizer steps one ``train()`` of ``model`` makes: PPO's epochs times minibatches, else 1 (A2C)."""
    n_epochs, batch_size = getattr(model, "n_epochs", None), getattr(model, "batch_size", None)
    if not n_epochs or not batch_size:
        return 1
    samples = int(getattr(model, "n_steps", 1)) * int(getattr(model, "n_envs", 1))
    return int(n_epochs) * max(1, math.ceil(samples / int(batch_size)))


class CheckpointEveryCallback(BaseCallback):
    """Atomically checkpoint every ``save_freq`` agent steps, after the update of the rollout
    that crossed the mark (at the start of the next rollout), so no update is lost on resume."""

    def __init__(self, path: Path, save_freq: int, extra: Any) -> None:
        super().__init__()
        self.path = Path(path)
        self.save_freq = int(save_freq)
        self.extra = extra  # callable returning the extra dict, evaluated at save time
        self._next = 0
        self._due = False

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._due = True
        return True

    def _on_rollout_start(self) -> None:
        # Called by collect_rollouts after the previous rollout's train(): weights and counter agree.
        if self._due:
            save_training_checkpoint(self.model, self.path, self.extra())
            self._next = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq
            self._due = False


class StopOnSignal(SignalStop, BaseCallback):
    """Stop ``learn()`` at the next env step after SIGINT / SIGTERM / SIGHUP (the caller then
    checkpoints): :class:`hubrl.signals.SignalStop` as an SB3 callback.

    Also a plain context manager for any loop that checks :attr:`received` (``hubrl-enjoy`` writes
    its video); ``then`` says what the caller does before it stops.
    """

    def __init__(self, then: str = "saving a checkpoint, then stopping") -> None:
        BaseCallback.__init__(self)
        SignalStop.__init__(self, then)

    def __enter__(self) -> "StopOnSignal":
        SignalStop.__enter__(self)
        return self

    def _on_step(self) -> bool:
        return self.received is None


class PurgeLaterTensorBoardPoints(BaseCallback):
    """On a resumed run's start, have TensorBoard hide what the run's log holds past the step it
    resumes at (TensorBoard's purge, ``SummaryWriter(purge_step=...)``): the run logged those steps
    before it stopped (an evaluation inside the rollout the stop discarded; everything since the last
    checkpoint after a kill) and logs them again from its checkpoint, which drew two values at each
    such step, zigzagging the curve. Points up to the step resumed at are kept."""

    def _on_training_start(self) -> None:
        from stable_baselines3.common.logger import TensorBoardOutputFormat
        from torch.utils.tensorboard import SummaryWriter

        for output in self.model.logger.output_formats:
            if isinstance(output, TensorBoardOutputFormat):
                log_dir = output.writer.log_dir
                output.writer.close()
                output.writer = SummaryWriter(log_dir=log_dir, purge_step=int(self.model.num_timesteps) + 1)

    def _on_step(self) -> bool:
        return True


class PauseAtStepCallback(BaseCallback):
    """Stop ``learn()`` at the first rollout boundary at or after ``pause_at`` agent steps,
    without touching the budget.

    Calling ``learn()`` with a smaller ``total_timesteps`` would also stop early, but SB3 computes
    the schedules' progress (learning rate, clip range) against that total, so a run trained in
    sessions would decay its schedule differently from one trained in one go. This callback keeps
    the full budget: the rollout that crosses ``pause_at`` is completed and trained on, and the
    next one is stopped at its first step (``run_training`` saves the counter of its start).
    """

    def __init__(self, pause_at: int) -> None:
        super().__init__()
        self.pause_at = int(pause_at)
        self.reached = False

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps >= self.pause_at:
            self.reached = True

    def _on_step(self) -> bool:
        return not self.reached


@dataclass
class TrainingOutcome:
    """How a call to :func:`run_training` ended."""

    num_timesteps: int
    completed: bool
    interrupted_by: int | None
    seconds: float
    history: EvalHistory
    final_eval: EvalResult | None = None
    paused: bool = False
    rollout_score: float | None = None  # mean raw score of the last (up to 100) training games
    already_done: bool = False  # resumed at its budget with all written: nothing ran (hubrl.harness.Run.already_done)
    already_paused: bool = False  # resumed at or past ``pause_at``: paused without training a step


def steps_at_end(model: BaseAlgorithm, budget: int) -> int:
    """The step count ``model`` ends at when trained from where it stands to ``budget``.

    An on-policy ``learn`` (PPO, A2C) collects whole rollouts of ``n_steps`` x ``n_envs`` agent
    steps, so it ends at the first rollout end at or past the budget: 128 for a budget of 100
    with 2 envs x 32 steps, counted from the (resumed) start.
    """
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    start = int(model.num_timesteps)
    if start >= budget or not isinstance(model, OnPolicyAlgorithm):
        return max(start, int(budget))
    rollout = int(model.n_steps) * int(model.n_envs)
    return start + -(-(int(budget) - start) // rollout) * rollout


def _ready_without_learn(model: BaseAlgorithm, callback: BaseCallback, tb_log_name: str) -> None:
    """Set ``callback`` up as ``learn()`` would, for a call that has nothing left to train: the
    model's logger (TensorBoard's run folder continued, as a resumed ``learn()`` does), the
    callback's model and step counter."""
    from stable_baselines3.common.utils import configure_logger

    if getattr(model, "_logger", None) is None:
        model.set_logger(configure_logger(model.verbose, model.tensorboard_log, tb_log_name, reset_num_timesteps=False))
    callback.init_callback(model)
    callback.num_timesteps = int(model.num_timesteps)


def run_training(
    model: BaseAlgorithm,
    total_timesteps: int,
    checkpoint_path: Path,
    *,
    eval_env=None,
    eval_freq: int = 100_000,
    eval_episodes: int = 10,
    checkpoint_freq: int = 100_000,
    resume_state: dict[str, Any] | None = None,
    callbacks: list[BaseCallback] | None = None,
    progress_bar: bool = True,
    tb_log_name: str = "run",
    extra_state: dict[str, Any] | None = None,
    verbose: int = 1,
    pause_at: int | None = None,
    first_eval_at: int | None = None,
) -> TrainingOutcome:
    """Train ``model`` until it has taken ``total_timesteps`` agent steps in all, resumably.

    With ``resume_state`` (from :func:`hubrl.checkpoint.load_training_checkpoint`) the weights,
    optimizer and counters are restored first and only the remaining steps are run; SB3 then
    computes the schedules' progress against the same total budget as the original run.

    ``pause_at`` ends this call once the model has taken that many agent steps in all (with a
    checkpoint, ``paused=True`` and ``completed=False``), for budgets trained over several
    sessions: resuming later continues the same schedules as one uninterrupted run would.

    ``first_eval_at`` adds one early evaluation on a few games (see :func:`early_eval_step`).
    With ``verbose``, a resumed run prints the step it resumes from.
    """
    history = EvalHistory()
    history_path = Path(checkpoint_path).with_name("evaluations.json")
    if resume_state is not None:
        restore_training_state(model, resume_state)
        if model.num_timesteps > 0:  # not the run's first steps again: fresh random numbers from here on
            model.set_random_seed(resume_seed(model.seed, model.num_timesteps))
        # (a checkpoint of an older hubrl may hold an evaluation from a rollout it discarded: made again below)
        history.points = [p for p in resume_state.get("extra", {}).get("eval_history", [])
                          if int(p.get("step", 0)) <= model.num_timesteps]
        # evaluations.json as of the checkpoint (what the run goes on from): a damaged or lost one is mended, also
        # for a run with nothing left to train, which writes no evaluation after this
        history.save(history_path)
        if verbose:
            print(f"Resuming at step {model.num_timesteps:,} of {int(total_timesteps):,}", flush=True)

    def extra() -> dict[str, Any]:
        return {**(extra_state or {}), "eval_history": history.points, "total_timesteps": int(total_timesteps)}

    remaining = int(total_timesteps) - int(model.num_timesteps)
    if pause_at is not None and pause_at <= 0:
        raise ValueError(f"pause_at must be positive, got {pause_at}.")
    pauser = PauseAtStepCallback(pause_at) if pause_at is not None and pause_at < total_timesteps else None
    already_paused = pauser is not None and model.num_timesteps >= pauser.pause_at
    if already_paused:
        remaining, pauser.reached = 0, True  # already there: nothing to train in this call
    start = time.time()
    evaluator = (RawScoreEvalCallback(eval_env, eval_freq, eval_episodes, history, verbose, history_path,
                                      budget=int(total_timesteps), first_eval_at=first_eval_at)
                 if eval_env is not None else None)
    interrupted_by = None
    if remaining > 0:
        boundary = RolloutBoundary()
        with StopOnSignal() as stopper:
            cbs: list[BaseCallback] = [boundary, stopper, CheckpointEveryCallback(checkpoint_path, checkpoint_freq, extra)]
            if model.num_timesteps > 0:  # resumed: one value per step in its TensorBoard log
                cbs.append(PurgeLaterTensorBoardPoints())
            if pauser is not None:
                cbs.append(pauser)
            if evaluator is not None:
                evaluator.stop = stopper
                cbs.append(evaluator)
            cbs.extend(callbacks or [])
            # SB3's bar counts this call's steps only, to the budget; this one all steps, to where learn() really ends
            bar = (StepProgressBar(steps_at_end(model, int(total_timesteps)), close_at_training_end=False)
                   if progress_bar else None)
            if bar is not None:
                cbs.append(bar)
            try:
                model.learn(
                    total_timesteps=remaining,
                    callback=CallbackList(cbs),
                    reset_num_timesteps=resume_state is None and model.num_timesteps == 0,
                    tb_log_name=tb_log_name,
                    progress_bar=False,
                )
            finally:
                # Whatever ended learn() — done, signal, or an exception — keep what was learned (a second
                # Ctrl-C meanwhile aborts once it is kept: stopper.finishing()).
                with stopper.finishing():
                    discarded = boundary.untrained and any(p["step"] > boundary.start_timesteps for p in history.points)
                    if boundary.untrained:  # stopped inside a rollout or its update: its steps are not trained on
                        boundary.undo_update()  # an update ended part-way: the weights it started from
                        model.num_timesteps = boundary.start_timesteps
                        # and an evaluation made in it is made again at its step on resume: one point per step
                        history.points = [p for p in history.points if p["step"] <= model.num_timesteps]
                    try:
                        save_training_checkpoint(model, checkpoint_path, extra())  # first: nothing below may cost it
                    except DivergedWeights as exc:  # the last sound checkpoint stays; whatever ended learn() goes on up
                        print(f"warning: {exc}", file=sys.stderr)
                    if discarded and evaluator is not None:
                        history.save(history_path)
                    if bar is not None:
                        bar.close(final_step=model.num_timesteps)  # the count the pause or stop message gives
            interrupted_by = stopper.received
    completed = interrupted_by is None and model.num_timesteps >= total_timesteps
    paused = not completed and interrupted_by is None and pauser is not None and pauser.reached
    final_eval = None
    if completed and evaluator is not None:
        if not history.points or history.points[-1]["step"] != model.num_timesteps:
            if remaining <= 0:  # resumed at the budget, its final evaluation missing (stopped in it, or an older checkpoint)
                _ready_without_learn(model, evaluator, tb_log_name)
            final_eval = evaluator.evaluate()
        save_training_checkpoint(model, checkpoint_path, extra())
    games = [float(ep["r"]) for ep in (model.ep_info_buffer or [])]
    rollout_score = sum(games) / len(games) if games else None
    return TrainingOutcome(int(model.num_timesteps), completed, interrupted_by, time.time() - start, history, final_eval,
                           paused, rollout_score, already_paused=already_paused and paused)
