"""TensorBoard logging of the pathway: which expert each game state routes to."""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["GateUsageCallback"]


class GateUsageCallback(BaseCallback):
    """After each rollout, log per-expert ``pathway/weight_mean/<name>`` and
    ``pathway/selection_freq/<name>`` over the rollout's states, then reset the counters."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        policy = self.model.policy
        if not hasattr(policy, "usage"):
            return
        for name, stats in policy.usage().items():
            for key, value in stats.items():
                self.logger.record(f"pathway/{key}/{name}", value)
        policy.reset_usage()
