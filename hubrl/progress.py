"""A training progress bar in absolute agent steps, with a time estimate that does not swing.

SB3's ``progress_bar=True`` (``ProgressBarCallback``) counts the steps of one ``learn()`` call:
on resume it starts at 0 and ends at the *remaining* steps, so nothing says where in the budget
the run is; and its total is the budget, while ``learn()`` goes on to the end of the rollout that
crosses it. Its time estimate is rich's, from the speed over the last 30 s: PPO stops stepping
the envs for each update (seconds on a CPU), so the estimate swings between the rollout speed
and the update stall (21 min to 2.5 h on the README's 100k run). This bar counts from the
resumed step to the step the run really ends at (:func:`hubrl.training.steps_at_end`), and
estimates speed and time left from the average since this session started, which includes the
updates in their true proportion.
"""

from __future__ import annotations

from datetime import timedelta

from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["StepProgressBar"]


def _session_rate(task) -> float | None:
    """Agent steps per second since this session started (``None`` before the first step)."""
    done = task.completed - task.fields.get("initial", 0)
    elapsed = task.elapsed
    return done / elapsed if elapsed and done > 0 else None


class StepProgressBar(BaseCallback):
    """Rich progress bar up to ``total_timesteps`` in all (the step the run ends at, not its
    budget: :func:`hubrl.training.steps_at_end`) that starts at the model's step count.

    ``12,288/100,000 ━━━━━━━ 0:01:05 < 0:08:10 • 154 steps/s``: steps in all (a resumed run
    starts where it stopped), elapsed time of this session, time left and speed from this
    session's average.
    """

    def __init__(self, total_timesteps: int, description: str = "steps", close_at_training_end: bool = True) -> None:
        super().__init__()
        self.total_timesteps = int(total_timesteps)
        self.description = description
        #: False: the caller closes it (:meth:`close`) once it knows the step the session really ends at
        self.close_at_training_end = close_at_training_end
        self.progress = None
        self.task_id = None

    def _on_training_start(self) -> None:
        from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        class Remaining(ProgressColumn):
            def render(self, task) -> Text:
                rate = _session_rate(task)
                left = "-:--:--" if rate is None else str(timedelta(seconds=int((task.total - task.completed) / rate)))
                return Text(left, style="progress.remaining")

        class Rate(ProgressColumn):
            def render(self, task) -> Text:
                rate = _session_rate(task)
                return Text("? steps/s" if rate is None else f"{rate:,.0f} steps/s", style="progress.data.speed")

        start = int(self.model.num_timesteps)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TimeElapsedColumn(), TextColumn("<"), Remaining(), TextColumn("•"), Rate(),
        )
        self.progress.start()
        self.task_id = self.progress.add_task(self.description, total=self.total_timesteps, completed=start, initial=start)

    def _on_step(self) -> bool:
        self.progress.update(self.task_id, completed=min(self.num_timesteps, self.total_timesteps))
        return True

    def _on_training_end(self) -> None:
        if self.close_at_training_end:
            self.close()

    def close(self, final_step: int | None = None) -> None:
        """Draw the last state and release the terminal (safe to call twice, e.g. after an exception).

        :param final_step: the step count the run ends this session at, when it differs from the last
            one counted: a pause or a signal inside a rollout takes the count back to the rollout's
            start (its steps were never trained on), and the bar must say the same as the message after it.
        """
        if self.progress is not None and self.progress.live.is_started:
            if final_step is not None:
                self.progress.update(self.task_id, completed=min(int(final_step), self.total_timesteps))
            self.progress.refresh()
            self.progress.stop()
