"""Resume is the saved run, loses no update, and survives a damaged checkpoint.

Training here is stock SB3 PPO with 2 envs x 32 steps: one rollout is 64 agent steps and, with
one epoch of one minibatch, makes exactly one update, so ``n_updates * 64`` is the number of
steps a model has learned from.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch as th
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

import hubrl.evaluation
import hubrl.signals
import hubrl.training
from hubrl.checkpoint import (
    CheckpointError,
    load_resume_checkpoint,
    load_training_checkpoint,
    previous_checkpoint,
    save_training_checkpoint,
)
from hubrl.envs import make_atari_vec_env
from hubrl.training import run_training
from tests.conftest import ROOT, TINY_PPO, make_tiny_hub

ROLLOUT = 64  # 2 envs x 32 steps


def _model(seed: int = 0) -> PPO:
    env = make_atari_vec_env("Gopher", 2, seed=seed)
    return PPO("CnnPolicy", env, n_steps=32, batch_size=64, n_epochs=1, seed=seed, device="cpu")


class _Count(BaseCallback):
    """Agent steps taken in this learn() call and the step counter at each rollout start."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.steps, self.starts, self.fail_at = 0, [], fail_at

    def _on_rollout_start(self) -> None:
        self.starts.append(int(self.model.num_timesteps))

    def _on_step(self) -> bool:
        self.steps += self.training_env.num_envs
        if self.fail_at is not None and self.num_timesteps >= self.fail_at:
            raise RuntimeError("simulated crash inside a rollout")
        return True


def test_pause_then_resume_makes_the_same_updates_at_the_same_steps(tmp_path):
    """A pause inside a rollout (96 of 64..128) finishes that rollout's update; the resumed run
    continues the step counter (not from 0) and takes only the remaining steps."""
    ckpt = tmp_path / "checkpoint.pt"
    paused = run_training(_model(), 256, ckpt, checkpoint_freq=10**9, progress_bar=False, verbose=0, pause_at=96)
    state = load_training_checkpoint(ckpt)
    assert paused.paused and state["num_timesteps"] == 128 and state["n_updates"] * ROLLOUT == 128

    count = _Count()
    done = run_training(_model(), 256, ckpt, resume_state=load_training_checkpoint(ckpt), callbacks=[count],
                        checkpoint_freq=10**9, progress_bar=False, verbose=0)
    state = load_training_checkpoint(ckpt)
    assert count.starts[0] == 128 and count.steps == 128  # continues at 128: neither from 0 nor re-running
    assert done.completed and state["num_timesteps"] == 256 and state["n_updates"] * ROLLOUT == 256


def test_a_runs_training_does_not_depend_on_its_evaluations(tmp_path):
    """An evaluation used to sample its actions from training's generator, so the same seed
    trained other weights with another ``eval_freq`` (or an early evaluation): two runs that
    differ only in how they are scored were not paired. Now it draws from a generator of its own."""
    from hubrl.evaluation import make_eval_env

    def weights(eval_env) -> dict[str, th.Tensor]:
        model = _model()
        run_training(model, 128, tmp_path / f"{eval_env is not None}" / "checkpoint.pt", eval_env=eval_env,
                     eval_freq=ROLLOUT, eval_episodes=1, checkpoint_freq=10**9, progress_bar=False, verbose=0)
        return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}

    eval_env = make_eval_env("Gopher", n_envs=1)
    try:
        scored = weights(eval_env)  # an evaluation at 64, inside training, and the final one
    finally:
        eval_env.close()
    assert json.loads((tmp_path / "True" / "evaluations.json").read_text())["points"][0]["step"] == ROLLOUT
    unscored = weights(None)
    assert scored.keys() == unscored.keys()
    for key, value in unscored.items():
        assert th.equal(scored[key], value), key


def test_a_run_resumed_at_its_budget_without_its_final_evaluation_makes_it(tmp_path):
    """A run stopped during its final evaluation (or resumed from the previous checkpoint, saved
    before it) has its whole budget trained and no score at its last step: the resume used to fail
    with an AttributeError (the evaluator was never set up, as learn() did not run) and a grid
    failed that trial on every rerun. Now it makes the evaluation and records it at its step."""
    from hubrl.evaluation import make_eval_env

    ckpt = tmp_path / "checkpoint.pt"
    run_training(_model(), 128, ckpt, checkpoint_freq=10**9, progress_bar=False, verbose=0)
    state = load_training_checkpoint(ckpt)
    assert state["num_timesteps"] == 128 and not state["extra"]["eval_history"]
    eval_env = make_eval_env("Gopher", n_envs=1)
    try:
        outcome = run_training(_model(), 128, ckpt, resume_state=state, eval_env=eval_env, eval_episodes=1,
                               checkpoint_freq=10**9, progress_bar=False, verbose=0)
    finally:
        eval_env.close()
    assert outcome.completed and outcome.final_eval is not None
    assert [p["step"] for p in json.loads((tmp_path / "evaluations.json").read_text())["points"]] == [128]
    assert [p["step"] for p in load_training_checkpoint(ckpt)["extra"]["eval_history"]] == [128]


class _StateAtStart(BaseCallback):
    """The policy's weights and the optimizer's state as ``learn`` starts (after a resume restored them)."""

    def _on_training_start(self) -> None:
        self.policy = {k: v.detach().clone() for k, v in self.model.policy.state_dict().items()}
        self.optimizer = copy.deepcopy(self.model.policy.optimizer.state_dict())

    def _on_step(self) -> bool:
        return True


def test_a_resumed_run_starts_from_the_checkpoints_weights_and_optimizer_state(tmp_path):
    """Counters alone would pass the tests above: the resumed run must also start from the saved
    weights and Adam moments, not from a fresh model's."""
    ckpt = tmp_path / "checkpoint.pt"
    run_training(_model(seed=0), 256, ckpt, checkpoint_freq=10**9, progress_bar=False, verbose=0, pause_at=64)
    state = load_training_checkpoint(ckpt)
    saved_state = copy.deepcopy(state)  # torch's load_state_dict may keep the tensors of ``state``, which training moves
    fresh = _model(seed=1)  # other initial weights, and no Adam state yet
    assert not all(th.equal(v, state["policy"][k]) for k, v in fresh.policy.state_dict().items())
    start = _StateAtStart()
    run_training(fresh, 256, ckpt, resume_state=state, callbacks=[start], checkpoint_freq=10**9, progress_bar=False,
                 verbose=0, pause_at=128)
    assert start.policy.keys() == saved_state["policy"].keys()
    for key, value in saved_state["policy"].items():
        assert th.equal(start.policy[key], value), key
    saved, restored = saved_state["optimizer"]["state"], start.optimizer["state"]
    assert saved and saved.keys() == restored.keys()
    for index, moments in saved.items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert th.equal(th.as_tensor(restored[index][name]), th.as_tensor(moments[name])), (index, name)


class _RandomAtStart(BaseCallback):
    """torch's and numpy's generator states as the first rollout of this learn() call starts."""

    def _on_rollout_start(self) -> None:
        if not hasattr(self, "torch"):
            import numpy as np

            self.torch, self.numpy = th.get_rng_state(), np.random.get_state()[1].copy()

    def _on_step(self) -> bool:
        return True


@pytest.mark.slow
def test_a_resumed_run_does_not_replay_the_random_numbers_of_its_start(tmp_path):
    """The resumed agent is rebuilt with the run's seed, which re-seeded every generator as at step 0:
    the resumed part drew the gate noise, actions and games of the run's first steps again. It now
    goes on re-seeded from the seed and the step it resumes at: not the start's numbers, and the same
    for two resumes of one checkpoint."""
    ckpt = tmp_path / "checkpoint.pt"
    first = _RandomAtStart()
    run_training(_model(seed=0), 256, ckpt, callbacks=[first], checkpoint_freq=10**9, progress_bar=False, verbose=0,
                 pause_at=64)
    resumed = []
    for _ in range(2):
        at = _RandomAtStart()
        run_training(_model(seed=0), 256, tmp_path / "again" / "checkpoint.pt", resume_state=load_training_checkpoint(ckpt),
                     callbacks=[at], checkpoint_freq=10**9, progress_bar=False, verbose=0, pause_at=128)
        resumed.append(at)
    assert not th.equal(resumed[0].torch, first.torch) and not (resumed[0].numpy == first.numpy).all()
    assert th.equal(resumed[0].torch, resumed[1].torch) and (resumed[0].numpy == resumed[1].numpy).all()


@pytest.mark.slow
def test_a_second_ctrl_c_during_the_checkpoint_on_the_way_out_aborts_after_it_is_written(tmp_path, monkeypatch, capsys):
    """A first Ctrl-C stops the run, which saves its checkpoint on the way out; a second one that came during
    that write raised KeyboardInterrupt inside it, so the run was left at its last periodic checkpoint. It now
    aborts once the checkpoint is on disk."""
    import os
    import signal

    class CtrlC(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps >= 96 and not getattr(self, "sent", False):
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)  # the first: stop after this step
            return True

    saved = []

    def save_while_insisting(model, path, extra=None):
        if int(model.num_timesteps) == 64 and not saved:
            os.kill(os.getpid(), signal.SIGINT)  # the second, while the stop's checkpoint is being written
        saved.append(int(model.num_timesteps))
        return save_training_checkpoint(model, path, extra)

    monkeypatch.setattr(hubrl.training, "save_training_checkpoint", save_while_insisting)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        run_training(_model(), 512, ckpt, callbacks=[CtrlC()], checkpoint_freq=10**9, progress_bar=False, verbose=0)
    assert saved == [64] and load_training_checkpoint(ckpt)["num_timesteps"] == 64  # the stop's checkpoint, whole
    assert "again: aborting once the checkpoint is written" in capsys.readouterr().out


@pytest.mark.slow
def test_an_evaluation_scores_the_same_weights_the_same_whatever_its_env_played_before():
    """Each evaluation seeded its actions but not its games: an eval env that had played an earlier
    evaluation gave other games (no-op starts, sticky actions) than a fresh one, so a resumed run, with a
    fresh eval env, re-scored the same weights differently. The seed now starts the games too."""
    from hubrl.evaluation import evaluate_model, make_eval_env

    env = make_eval_env("Breakout", n_envs=2, seed=10_000)  # short games: a random policy loses in ~200 steps
    model = PPO("CnnPolicy", env, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    try:
        first = evaluate_model(model, env, 2, seed=7)
        assert evaluate_model(model, env, 2, seed=7).scores == first.scores  # after it has played
    finally:
        env.close()
    fresh = make_eval_env("Breakout", n_envs=2, seed=10_000)
    try:
        assert evaluate_model(model, fresh, 2, seed=7).scores == first.scores
    finally:
        fresh.close()


@pytest.mark.slow
def test_a_resumed_run_hides_the_points_its_log_holds_past_its_checkpoint(tmp_path):
    """What a run logged past its checkpoint before it stopped (an evaluation in the rollout a stop discards,
    everything since the last checkpoint after a kill) is logged again after the resume: TensorBoard drew
    two values at those steps. The resumed run's log now purges them; the points up to its checkpoint stay."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    def model() -> PPO:
        env = make_atari_vec_env("Gopher", 2, seed=0)
        return PPO("CnnPolicy", env, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu",
                   tensorboard_log=str(tmp_path / "tb"))

    ckpt = tmp_path / "checkpoint.pt"
    run_training(model(), 256, ckpt, checkpoint_freq=10**9, progress_bar=False, verbose=0, pause_at=64)
    (log,) = (tmp_path / "tb").iterdir()
    orphan = SummaryWriter(str(log))  # what the stopped run logged past its checkpoint at 64
    orphan.add_scalar("eval/mean_reward", 999.0, 100)
    orphan.add_scalar("time/fps", -1.0, 128)
    orphan.close()
    run_training(model(), 256, ckpt, resume_state=load_training_checkpoint(ckpt), checkpoint_freq=10**9,
                 progress_bar=False, verbose=0, pause_at=128)
    events = EventAccumulator(str(log))
    events.Reload()
    assert "eval/mean_reward" not in events.Tags()["scalars"] or events.Scalars("eval/mean_reward") == []
    assert [(e.step, e.value >= 0) for e in events.Scalars("time/fps")] == [(64, True), (128, True)]


@pytest.mark.slow
def test_a_log_holds_one_value_per_step_of_each_tag_through_the_final_evaluation(tmp_path):
    """SB3 logs an update's train/* values at the next rollout's dump; the evaluations' dumps took them along:
    the final one wrote the last update's values at the step the last rollout had logged, two values at that step
    on every train/* curve. Each evaluation now dumps its own values alone; train/* stays on SB3's steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hubrl.evaluation import make_eval_env

    env = make_atari_vec_env("Breakout", 2, seed=0)  # short games: the evaluations cost little
    model = PPO("CnnPolicy", env, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu",
                tensorboard_log=str(tmp_path / "tb"))
    eval_env = make_eval_env("Breakout", n_envs=1, seed=10_000)
    try:
        run_training(model, 192, tmp_path / "checkpoint.pt", eval_env=eval_env, eval_freq=96, eval_episodes=1,
                     checkpoint_freq=10**9, progress_bar=False, verbose=0)
    finally:
        eval_env.close()
    (log,) = (tmp_path / "tb").iterdir()
    events = EventAccumulator(str(log))
    events.Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert steps["eval/mean_reward"] == [96, 192] and steps["train/learning_rate"] == [128, 192]  # SB3's own steps
    assert all(len(s) == len(set(s)) for s in steps.values()), steps


@pytest.mark.slow
def test_a_stop_during_an_evaluation_cuts_it_short_instead_of_playing_it_out(tmp_path, capsys):
    """An evaluation under way when Ctrl-C came played all its games, printed their score, and was then discarded
    with the unfinished rollout it was made in. It now ends at its next step, says it is made again on resume,
    and the run stops with its checkpoint at the rollout's start."""
    import os
    import signal

    from hubrl.evaluation import make_eval_env

    played = []

    def evaluate_and_signal(model, env, n_episodes, **kwargs):
        stop = kwargs["stop"]

        def counted() -> bool:
            played.append(1)
            if len(played) == 5:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, five steps into the evaluation
            return stop()

        return hubrl.evaluation.evaluate_model(model, env, n_episodes, **{**kwargs, "stop": counted})

    eval_env = make_eval_env("Gopher", n_envs=1, seed=10_000)  # long games: played out, the test would take minutes
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(hubrl.training, "evaluate_model", evaluate_and_signal)
            outcome = run_training(_model(), 512, tmp_path / "checkpoint.pt", eval_env=eval_env, eval_freq=96,
                                   eval_episodes=10, checkpoint_freq=10**9, progress_bar=False, verbose=1)
    finally:
        eval_env.close()
    assert outcome.interrupted_by == signal.SIGINT and len(played) == 5  # stopped at the step the signal came
    assert outcome.num_timesteps == 64 and outcome.history.points == []  # saved at the rollout's start, nothing kept
    assert "[eval] step 96: cut short by the stop; made again on resume" in capsys.readouterr().out


def test_the_progress_bar_counts_to_the_step_learn_really_ends_at(tmp_path, monkeypatch):
    """A budget of 100 with 64-step rollouts trains to 128: the bar's total is 128, not 100, and a
    resumed run's bar starts at the steps already done (64)."""
    from hubrl.progress import StepProgressBar

    bars = []

    class Recorded(StepProgressBar):
        def _on_training_start(self) -> None:
            super()._on_training_start()
            bars.append(self)

    monkeypatch.setattr(hubrl.training, "StepProgressBar", Recorded)
    ckpt = tmp_path / "checkpoint.pt"
    run_training(_model(), 100, ckpt, checkpoint_freq=10**9, verbose=0, pause_at=64)
    model = _model()
    run_training(model, 100, ckpt, resume_state=load_training_checkpoint(ckpt), checkpoint_freq=10**9, verbose=0)
    (first,), (resumed,) = (bar.progress.tasks for bar in bars)
    assert (first.fields["initial"], first.total) == (0, 128)  # paused after one rollout, at 64
    assert first.completed == 64  # not the first step of the next rollout, which stopped it and was never trained on
    assert (resumed.fields["initial"], resumed.completed, resumed.total) == (64, 128, 128)
    assert model.num_timesteps == 128  # where SB3 really stops: the bar's total


def test_every_checkpoint_holds_a_rollout_boundary_after_its_update(tmp_path, monkeypatch):
    """The periodic checkpoint (due at 96, inside a rollout) and the one saved after a crash
    inside a rollout both hold weights and a step counter that agree: no update is skipped."""
    saved = []
    real = hubrl.training.save_training_checkpoint

    def spy(model, path, extra=None):
        saved.append((int(model.num_timesteps), int(model._n_updates)))
        return real(model, path, extra)

    monkeypatch.setattr(hubrl.training, "save_training_checkpoint", spy)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(_model(), 256, tmp_path / "checkpoint.pt", checkpoint_freq=96, callbacks=[_Count(fail_at=160)],
                     progress_bar=False, verbose=0)
    assert saved == [(128, 2), (128, 2)]  # periodic (after the 2nd update), then the crash's (160 rolled back to 128)
    state = load_training_checkpoint(tmp_path / "checkpoint.pt")
    assert (state["num_timesteps"], state["n_updates"]) == (128, 2)


def test_an_update_ended_part_way_is_undone_before_the_checkpoint(tmp_path):
    """A second Ctrl-C raises at once, also in the middle of an update: the checkpoint saved on the
    way out used to hold weights some of the update's minibatches had moved, counted as the whole
    rollout trained. It now holds the weights and optimizer state the update started from, at the
    rollout's start, so resuming collects the rollout again (two minibatches per update here)."""
    model = PPO("CnnPolicy", make_atari_vec_env("Gopher", 2, seed=0), n_steps=32, batch_size=32, n_epochs=1, seed=0,
                device="cpu")
    at_rollout_end: dict[int, dict[str, th.Tensor]] = {}

    class Weights(BaseCallback):
        def _on_rollout_end(self) -> None:
            at_rollout_end[int(self.model.num_timesteps)] = copy.deepcopy(self.model.policy.state_dict())

        def _on_step(self) -> bool:
            return True

    real_step, steps = model.policy.optimizer.step, []

    def step(*args, **kwargs):
        steps.append(1)
        if len(steps) == 4:  # the second minibatch of the second update
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    model.policy.optimizer.step = step
    with pytest.raises(KeyboardInterrupt):
        run_training(model, 256, tmp_path / "checkpoint.pt", checkpoint_freq=10**9, callbacks=[Weights()],
                     progress_bar=False, verbose=0)
    state = load_training_checkpoint(tmp_path / "checkpoint.pt")
    assert (state["num_timesteps"], state["n_updates"]) == (ROLLOUT, 1)  # the first update only
    assert all(th.equal(state["policy"][name], value) for name, value in at_rollout_end[2 * ROLLOUT].items())
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {2}  # Adam: the first update's 2 steps


def test_only_an_update_of_several_optimizer_steps_is_kept_to_undo():
    """The copy an update is undone from costs little beside PPO's rollouts and update (1,024 steps, many
    minibatches) but 10-20% of A2C's short ones, whose update is a single step: only the first is kept."""
    from stable_baselines3 import A2C

    from hubrl.training import _optimizer_steps_per_update

    env = make_atari_vec_env("Gopher", 2, seed=0)
    assert _optimizer_steps_per_update(A2C("CnnPolicy", env, n_steps=5, device="cpu")) == 1
    assert _optimizer_steps_per_update(_model()) == 1  # 2 envs x 32 steps in one minibatch of 64, one epoch
    assert _optimizer_steps_per_update(PPO("CnnPolicy", env, n_steps=32, batch_size=16, n_epochs=3, device="cpu")) == 12


def test_checkpoints_are_read_as_weights_only(tmp_path):
    """A checkpoint carrying a pickled object is refused; its payload never runs."""
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "checkpoint.pt"
    th.save({"format": "hubrl-training-checkpoint", "policy": {}, "num_timesteps": 0, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_training_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["torn", "empty"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    model = _model()
    path = tmp_path / "checkpoint.pt"
    save_training_checkpoint(model, path)
    model.num_timesteps = 64
    save_training_checkpoint(model, path)  # the first one is kept as checkpoint.prev.pt
    assert load_training_checkpoint(previous_checkpoint(path))["num_timesteps"] == 0
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "torn" else b"")
    state = load_resume_checkpoint(path)
    assert state["num_timesteps"] == 0
    err = capsys.readouterr().err
    assert str(path) in err and "checkpoint.prev.pt" in err and ("empty" in err) == (damage == "empty")
    previous_checkpoint(path).unlink()
    with pytest.raises(CheckpointError, match="No previous checkpoint"):
        load_resume_checkpoint(path)


def test_a_resume_keeps_the_games_lengths_as_well_as_their_returns(tmp_path):
    """Only the returns of the last games were saved, so after a resume SB3's rollout/ep_len_mean
    read 0-length games until about 100 new ones had ended; their lengths are kept now."""
    from collections import deque

    from hubrl.checkpoint import restore_training_state

    model = _model()
    model.ep_info_buffer = deque([{"r": 10.0, "l": 812, "t": 1.0}, {"r": 30.0, "l": 1204, "t": 2.0}], maxlen=100)
    save_training_checkpoint(model, tmp_path / "checkpoint.pt")
    resumed = _model()
    restore_training_state(resumed, load_training_checkpoint(tmp_path / "checkpoint.pt"))
    assert [(ep["r"], ep["l"]) for ep in resumed.ep_info_buffer] == [(10.0, 812), (30.0, 1204)]


def test_diverged_weights_never_replace_the_last_sound_checkpoint(tmp_path, capsys):
    """A run whose weights went NaN (an update diverged, then SB3's Categorical raised) saved them in
    learn()'s ``finally`` over its sound checkpoint, and a resume loaded them without a word; its
    first save then moved the NaN checkpoint over checkpoint.prev.pt: the last sound state was gone.
    Now NaN weights are never written, a NaN checkpoint (hubrl before this) counts as damaged, and a
    damaged checkpoint.pt does not take the sound previous one's place."""
    from hubrl.checkpoint import DivergedWeights

    class Diverge(BaseCallback):
        def _on_rollout_start(self) -> None:
            if self.model.num_timesteps >= ROLLOUT:  # after the first update: weights go NaN, then the crash
                with th.no_grad():
                    next(self.model.policy.parameters()).fill_(float("nan"))
                raise RuntimeError("simulated crash after a diverged update")

        def _on_step(self) -> bool:
            return True

    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(RuntimeError, match="diverged update"):  # the crash goes on up, not the refused save
        run_training(_model(), 256, ckpt, checkpoint_freq=ROLLOUT, callbacks=[Diverge()], progress_bar=False, verbose=0)
    assert "Training diverged by step 64" in capsys.readouterr().err
    assert load_training_checkpoint(ckpt)["num_timesteps"] == ROLLOUT  # the periodic one, before the NaN
    model = _model()
    with th.no_grad():
        next(model.policy.parameters()).fill_(float("nan"))
    with pytest.raises(DivergedWeights, match="NaN or inf"):
        save_training_checkpoint(model, ckpt)
    assert load_training_checkpoint(ckpt)["num_timesteps"] == ROLLOUT and not previous_checkpoint(ckpt).exists()

    # a NaN checkpoint written before this (beside a sound previous one): damaged, the previous one resumes
    save_training_checkpoint(_model(), ckpt)  # step 0 over step 64: 64 becomes checkpoint.prev.pt
    state = load_training_checkpoint(ckpt)
    state["policy"] = {k: th.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state["policy"].items()}
    th.save(state, ckpt)
    assert load_resume_checkpoint(ckpt)["num_timesteps"] == ROLLOUT
    assert "not finite" in capsys.readouterr().err
    resumed = _model()
    resumed.num_timesteps = 2 * ROLLOUT
    save_training_checkpoint(resumed, ckpt)  # the resumed run's first save: the NaN one is not kept as previous
    assert load_training_checkpoint(previous_checkpoint(ckpt))["num_timesteps"] == ROLLOUT
    assert load_training_checkpoint(ckpt)["num_timesteps"] == 2 * ROLLOUT


# ----------------------------------------------------------------------------- resume = the saved run


def _transfer_main():
    from hubrl.cli.transfer import main

    return main


@pytest.fixture(scope="module")
def _saved_run_template(tmp_path_factory) -> Path:
    """A finished 64-step Hub-Pathway run on Gopher with top-k 2, seed 3 and tiny hyperparameters
    (made once: its final evaluation is most of its cost)."""
    tmp = tmp_path_factory.mktemp("saved-run")
    hub = make_tiny_hub(tmp / "hub")
    hyper = tmp / "tiny.yaml"
    hyper.write_text(yaml.safe_dump(TINY_PPO))
    out = tmp / "run"
    code = _transfer_main()(["--env", "Gopher", "--hub", str(hub), "--top-k", "2", "--seed", "3", "--timesteps", "64",
                             "--n-envs", "2", "--hyperparams", str(hyper), "--eval-freq", "1e9", "--eval-episodes", "1",
                             "--checkpoint-freq", "1e9", "--device", "cpu", "--out", str(out), "--no-progress-bar"])
    assert code == 0
    return out


@pytest.fixture
def saved_run(_saved_run_template, tmp_path) -> Path:
    """A copy of the saved run for one test to resume (the tests using it are marked slow: the
    first one pays ~12 s for the template)."""
    return Path(shutil.copytree(_saved_run_template, tmp_path / "run"))


def _run_section(out: Path) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text())["run"]


@pytest.mark.slow
def test_resume_alone_continues_the_saved_run(saved_run, capsys):
    """``--resume --out DIR`` alone keeps the game, top-k, seed, hyperparameters and budget
    (the 1M default budget and top-k 1 are not applied): the run has its 64 steps already; a
    larger --timesteps alone trains it further with all the rest as saved."""
    before = _run_section(saved_run)
    assert _transfer_main()(["--resume", "--out", str(saved_run), "--no-progress-bar"]) == 0
    assert f"{saved_run} has already trained 64 of its 64 agent steps" in capsys.readouterr().out
    assert _transfer_main()(["--resume", "--out", str(saved_run), "--timesteps", "128", "--no-progress-bar"]) == 0
    assert _run_section(saved_run) == {**before, "out": str(saved_run), "timesteps": 128}
    assert before["top_k"] == 2 and before["timesteps"] == 64 and before["hyperparams"] == TINY_PPO
    assert load_training_checkpoint(saved_run / "checkpoint.pt")["num_timesteps"] == 128


@pytest.mark.slow
def test_a_resumed_run_keeps_the_hyperparameters_it_was_started_with(saved_run, capsys):
    """A run started under another preset (simulated: its saved ``resolved_hyperparams`` hold
    ent_coef 0.02 where this version's PPO preset has 0.01, and no vf_coef) resumes with its own
    values, not the preset's: the agent trains with them, config.yaml keeps recording them, and
    one line says what differs from the preset. A damaged section is refused, naming its file."""
    import json
    import zipfile

    config_path = saved_run / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    hyper = config["resolved_hyperparams"]
    assert hyper["ent_coef"] == 0.01 and hyper["vf_coef"] == 0.5  # this version's preset
    hyper["ent_coef"] = 0.02
    del hyper["vf_coef"]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert _transfer_main()(["--resume", "--out", str(saved_run), "--timesteps", "128", "--no-progress-bar"]) == 0
    err = capsys.readouterr().err
    assert (f"{saved_run} continues the hyperparameters it was started with, not this version of hubrl's ppo preset: "
            "ent_coef 0.02 (now 0.01); vf_coef unset (SB3's default) (now 0.5).") in err
    with zipfile.ZipFile(saved_run / "model.zip") as archive:  # the agent SB3 saved: the run's own values
        data = json.loads(archive.read("data"))
    assert data["ent_coef"] == 0.02 and data["num_timesteps"] == 128
    assert yaml.safe_load(config_path.read_text())["resolved_hyperparams"] == hyper

    from tests.test_bad_inputs import call

    for key, damage in (("n_steps", "many"), ("policy_kwargs", {"optimizer_kwargs": {"alpha": 0.99}})):  # Adam: no alpha
        config_path.write_text(yaml.safe_dump({**config, "resolved_hyperparams": {**hyper, key: damage}}, sort_keys=False))
        code, err = call("transfer", "--resume", "--out", str(saved_run), "--timesteps", "192")
        assert code == 2 and err.count("\n") == 1 and "resolved_hyperparams" in err and key in err, err


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time (but the lock file's, which names the
    process that last opened the run: each one rewrites it)."""
    from hubrl.harness import RUN_LOCK_NAME

    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and p.name != RUN_LOCK_NAME}


@pytest.mark.slow
def test_resuming_a_run_at_its_budget_says_so_and_writes_nothing(saved_run, capsys):
    """A run that has trained its budget, evaluated and saved model.zip is not evaluated or saved
    again: one line says so; every file keeps its bytes and time. One whose model.zip was never
    written (stopped after its last checkpoint) is finished by the resume, without training."""
    from hubrl.runconfig import resume_config
    from hubrl.saved_model import saved_model_steps
    from hubrl.transfer import TransferConfig, run_transfer

    def resume(verbose: int = 1):
        cfg = resume_config(TransferConfig, saved_run / "config.yaml", {"out": str(saved_run)})  # as --resume --out
        return run_transfer(cfg, resume=True, progress_bar=False, verbose=verbose)

    files = _files(saved_run)
    from hubrl.cli import command_main

    line = (f"{saved_run} has already trained 64 of its 64 agent steps: nothing to do "
            "(a larger --timesteps trains it further).\n")
    assert command_main("transfer")(["--resume", "--out", str(saved_run), "--no-progress-bar"]) == 0
    assert capsys.readouterr().out == line  # and no summary line after it
    result = resume()
    assert capsys.readouterr().out == line
    assert result.outcome.already_done and result.outcome.completed and result.outcome.num_timesteps == 64
    assert result.outcome.history.points[-1]["step"] == 64 and result.outcome.final_eval is None
    assert _files(saved_run) == files
    (saved_run / "model.zip").unlink()
    assert not resume(verbose=0).outcome.already_done
    assert saved_model_steps(saved_run / "model.zip") == 64
    assert load_training_checkpoint(saved_run / "checkpoint.pt")["num_timesteps"] == 64


@pytest.mark.slow
@pytest.mark.parametrize("flag, value, named", [
    ("--env", "Alien", "--env 'Alien' but the run has 'Gopher'"),
    ("--top-k", "1", "--top-k 1 but the run has 2"),
    ("--method", "scratch", "--method 'scratch' but the run has 'hub-pathway'"),
    ("--seed", "0", "--seed 0 but the run has 3"),
])
def test_resume_refuses_a_contradicting_flag_before_writing(saved_run, capsys, flag, value, named):
    from tests.test_bad_inputs import call

    files = {p.name: p.read_bytes() for p in saved_run.iterdir() if p.is_file()}
    code, err = call("transfer", "--resume", "--out", str(saved_run), flag, value)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:") and named in err
    assert {p.name: p.read_bytes() for p in saved_run.iterdir() if p.is_file()} == files  # nothing written


@pytest.mark.slow
def test_the_printed_resume_hint_works_as_printed(saved_run, capsys, monkeypatch):
    import hubrl.transfer

    real = hubrl.transfer.run_transfer

    def interrupted(*args, **kwargs):
        result = real(*args, **kwargs)
        result.outcome.interrupted_by = 2  # as after Ctrl-C (the saved run is finished: as if it had trained on)
        result.outcome.already_done = False
        return result

    monkeypatch.setattr(hubrl.transfer, "run_transfer", interrupted)
    monkeypatch.chdir(ROOT)
    # started as scripts/transfer.py starts it (tests/test_cli.py checks the prog of each way to start a command)
    assert _transfer_main()(["--resume", "--out", str(saved_run), "--no-progress-bar"],
                            prog="python scripts/transfer.py") == 130
    hint = capsys.readouterr().out.rsplit("Resume with: ", 1)[1].strip()
    argv = shlex.split(hint)
    assert argv[0] == "python" and (ROOT / argv[1]).resolve() == ROOT / "scripts" / "transfer.py"
    # started from Python: the hint is `python -m hubrl transfer ...`
    assert _transfer_main()(["--resume", "--out", str(saved_run), "--no-progress-bar"]) == 130
    hint = capsys.readouterr().out.rsplit("Resume with: ", 1)[1].strip()
    assert shlex.split(hint)[:4] == ["python", "-m", "hubrl", "transfer"]
    monkeypatch.setattr(hubrl.transfer, "run_transfer", real)
    assert _transfer_main()(argv[2:]) == 0  # the hint alone: no flag of the original command line needed


@pytest.mark.slow
def test_a_run_whose_hub_moved_resumes_from_its_new_place(saved_run, tmp_path):
    """The hub a run was started with has moved (another machine, a renamed folder): resuming asks
    for its new place, not to pretrain a hub; ``--hub NEW`` with the same experts continues the run
    (their weights come from the checkpoint) and another hub is refused, each before anything is written."""
    from tests.test_bad_inputs import call

    config = yaml.safe_load((saved_run / "config.yaml").read_text())
    moved = Path(shutil.copytree(config["run"]["hub"], tmp_path / "moved hub"))
    config["run"]["hub"] = str(tmp_path / "gone")  # where it was when the run started
    (saved_run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    files = _files(saved_run)
    code, err = call("transfer", "--resume", "--out", str(saved_run), "--timesteps", "128")
    assert code == 2 and err == (f"error: Resuming {saved_run}: its --hub {tmp_path / 'gone'} is not there any more; give "
                                 "the new place of the experts it was started with (riverraid-ppo, seaquest-ppo) with "
                                 "--hub DIR or --sources ...\n")
    other = make_tiny_hub(tmp_path / "other", names=("alien-ppo", "gopher-ppo"))
    code, err = call("transfer", "--resume", "--out", str(saved_run), "--timesteps", "128", "--hub", str(other))
    assert code == 2 and "holds other experts (alien-ppo, gopher-ppo) than the run was started with" in err
    assert _files(saved_run) == files
    assert _transfer_main()(["--resume", "--out", str(saved_run), "--timesteps", "128", "--hub", str(moved),
                             "--no-progress-bar"]) == 0
    assert load_training_checkpoint(saved_run / "checkpoint.pt")["num_timesteps"] == 128
    assert _run_section(saved_run)["hub"] == str(moved)


def test_resume_takes_any_name_of_the_saved_game():
    """``--resume --env gopher`` continues a run saved as ``Gopher`` (the names README says are one game)."""
    from pathlib import Path

    from hubrl.runconfig import resume_conflicts
    from hubrl.transfer import TransferConfig

    saved = {"env": "Gopher", "method": "scratch"}
    for name in ("gopher", "Gopher", "ALE/Gopher-v5"):
        assert resume_conflicts(TransferConfig, saved, {"env": name}, Path("config.yaml")) == []
    assert resume_conflicts(TransferConfig, saved, {"env": "Alien"}, Path("config.yaml")) == [("env", "Alien", "Gopher")]
    assert resume_conflicts(TransferConfig, saved, {"env": "Gophers"}, Path("config.yaml")) == [("env", "Gophers", "Gopher")]


@pytest.mark.slow
def test_resume_refuses_a_budget_below_the_steps_trained(saved_run, capsys):
    from tests.test_bad_inputs import call

    files = {p.name: p.read_bytes() for p in saved_run.iterdir() if p.is_file()}
    code, err = call("transfer", "--resume", "--out", str(saved_run), "--timesteps", "32")
    assert code == 2 and err.count("\n") == 1
    assert "has trained 64 agent steps, more than --timesteps 32: give a budget above 64" in err
    assert {p.name: p.read_bytes() for p in saved_run.iterdir() if p.is_file()} == files  # nothing written


def test_the_grid_names_the_checkpoints_the_harness_writes():
    """``hubrl.grid`` (kept free of torch) names a run's checkpoint files itself: the same names as
    the harness writes, so a grid trial and ``--resume`` agree on what can be resumed."""
    from hubrl.checkpoint import previous_checkpoint
    from hubrl.grid import _CHECKPOINT_FILES
    from hubrl.harness import CHECKPOINT_NAME

    assert _CHECKPOINT_FILES == (CHECKPOINT_NAME, previous_checkpoint(CHECKPOINT_NAME).name)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGHUP"), reason="SIGHUP is POSIX")
def test_a_closed_terminal_stops_a_run_cleanly_unless_it_runs_under_nohup(monkeypatch):
    """SIGHUP (terminal closed, ssh dropped) used to kill a run with nothing saved since the last
    periodic checkpoint; it now stops it like SIGTERM (the caller checkpoints). Under nohup, where
    SIGHUP is ignored, the run goes on: the stopper leaves that disposition alone."""
    import os
    import signal

    from hubrl.training import StopOnSignal

    before = signal.getsignal(signal.SIGHUP)
    silenced = []  # the real one would point this process's terminal output at /dev/null
    monkeypatch.setattr(hubrl.signals, "silence_terminal_output", lambda: silenced.append(True))
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with StopOnSignal() as stopper:
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGHUP)  # a closing terminal may hang up twice: not "again to abort"
        assert stopper.received == signal.SIGHUP and silenced == [True]
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # restored on exit
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
        with StopOnSignal() as stopper:
            os.kill(os.getpid(), signal.SIGHUP)
        assert stopper.received is None and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_checkpoint_of_another_agent_or_model_is_refused_in_one_line(tmp_path):
    """Resuming from another method's checkpoint printed torch's list of ~100 mismatched tensors; it
    now names what differs and what to do."""
    from stable_baselines3 import A2C

    from hubrl.checkpoint import restore_training_state

    env = make_atari_vec_env("Seaquest", 1, seed=0)
    try:
        ppo = PPO("CnnPolicy", env, n_steps=8, batch_size=8, device="cpu")
        state = load_training_checkpoint(save_training_checkpoint(ppo, tmp_path / "checkpoint.pt"))
        with pytest.raises(CheckpointError, match="saved by PPO, not A2C: it is not this run's own"):
            restore_training_state(A2C("CnnPolicy", env, n_steps=8, device="cpu"), state)
        other = PPO("CnnPolicy", env, n_steps=8, batch_size=8, device="cpu", policy_kwargs={"net_arch": [64]})
        with pytest.raises(CheckpointError, match=r"another model's weights than this ActorCriticCnnPolicy's: 4 of its "
                                                  r"tensors missing \(e.g. mlp_extractor\.") as refused:
            restore_training_state(other, state)
        assert len(str(refused.value)) < 400
        restore_training_state(PPO("CnnPolicy", env, n_steps=8, batch_size=8, device="cpu"), state)  # its own: fine
    finally:
        env.close()


@pytest.mark.parametrize("name, value", [("timesteps", "1M"), ("sources", 7), ("algo", ["ppo"]),
                                         ("repeat_action_probability", "abc")])
def test_a_hand_edited_config_yaml_value_of_the_wrong_type_is_named_with_its_file(tmp_path, name, value):
    """A resumed run's settings come from its config.yaml, which the docs invite users to mend by hand:
    a value of the wrong type blamed a flag the user never gave (``--timesteps must be a positive
    integer``, ``drop --hub/--sources``) or ended in a TypeError; now the file and the line are named."""
    from hubrl.errors import UsageError
    from hubrl.runconfig import resume_conflicts
    from hubrl.transfer import TransferConfig

    source = tmp_path / "config.yaml"
    saved = {"env": "Alien", "timesteps": 1000, name: value}
    with pytest.raises(UsageError, match=rf"{re.escape(str(source))}: the run's saved {name} is .*, not .*mend that line"):
        resume_conflicts(TransferConfig, saved, {}, source)
    assert resume_conflicts(TransferConfig, {"env": "Alien", "timesteps": 1000}, {}, source) == []


def test_a_progress_bar_that_cannot_write_does_not_cost_the_checkpoint(tmp_path, monkeypatch):
    """In a terminal that hung up every write fails with EIO, the progress bar's last refresh too: it
    was closed before the checkpoint was saved, so the stop on SIGHUP lost the steps since the last
    periodic checkpoint (seen with a real pty: the run exited 1 and left none). The checkpoint is
    now saved first."""

    class DeadTerminalBar(BaseCallback):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

        def _on_step(self) -> bool:
            return True

        def close(self, final_step: int | None = None) -> None:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(hubrl.training, "StepProgressBar", DeadTerminalBar)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(OSError, match="Input/output error"):
        run_training(_model(), 64, ckpt, checkpoint_freq=10**9, progress_bar=True, verbose=0)
    assert load_training_checkpoint(ckpt)["num_timesteps"] == 64


def test_a_resume_mends_a_damaged_evaluations_json_from_its_checkpoint(tmp_path):
    """A run already at its budget trains nothing when resumed, so it used to leave a torn
    evaluations.json torn (and a grid's report skipped the trial on every launch): the resume writes
    the checkpoint's evaluation history back first."""
    import json

    ckpt = tmp_path / "checkpoint.pt"
    eval_env = make_atari_vec_env("Gopher", 1, seed=1)
    try:
        run_training(_model(), 64, ckpt, eval_env=eval_env, eval_freq=64, eval_episodes=1, checkpoint_freq=10**9,
                     progress_bar=False, verbose=0)
        points = json.loads((tmp_path / "evaluations.json").read_text())["points"]
        assert points and points[-1]["step"] == 64
        (tmp_path / "evaluations.json").write_text('{"points": [{"step": 6')
        done = run_training(_model(), 64, ckpt, resume_state=load_training_checkpoint(ckpt), eval_env=eval_env,
                            eval_freq=64, eval_episodes=1, checkpoint_freq=10**9, progress_bar=False, verbose=0)
        assert done.completed and json.loads((tmp_path / "evaluations.json").read_text())["points"] == points
    finally:
        eval_env.close()


def test_an_evaluation_inside_a_discarded_rollout_is_redone_once_on_resume(tmp_path):
    """A run stopped inside a rollout goes back to the rollout's start (its steps were never
    trained on), but kept the evaluation made in it: on resume that evaluation was made again at
    the same step, and evaluations.json had two points at 10,000 (the README's first command,
    stopped at 9,216). Now the stopped run drops it, in the checkpoint and in evaluations.json, and
    the resumed run has one point per evaluation step, also from an older checkpoint that kept it."""
    import json

    ckpt = tmp_path / "checkpoint.pt"
    eval_env = make_atari_vec_env("Gopher", 1, seed=1)
    kw = dict(eval_env=eval_env, eval_freq=160, first_eval_at=80, eval_episodes=1, checkpoint_freq=10**9,
              progress_bar=False, verbose=0)  # the early evaluation at 80, as the README's at 10,000
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):  # evaluated at 80, then stopped at 96 of 64..128
            run_training(_model(), 192, ckpt, callbacks=[_Count(fail_at=96)], **kw)
        state = load_training_checkpoint(ckpt)
        assert state["num_timesteps"] == ROLLOUT and state["extra"]["eval_history"] == []
        assert json.loads((tmp_path / "evaluations.json").read_text())["points"] == []
        stale = {"step": 80, "mean": 1.0, "std": 0.0, "episodes": 1, "scores": [1.0]}  # as an older hubrl saved it
        state["extra"]["eval_history"].append(stale)
        done = run_training(_model(), 192, ckpt, resume_state=state, **kw)
        steps = [p["step"] for p in json.loads((tmp_path / "evaluations.json").read_text())["points"]]
        assert done.completed and steps == [80, 160, 192]
    finally:
        eval_env.close()
