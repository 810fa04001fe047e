"""TensorBoard logging of the gates: how much each expert is used on the game states seen."""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["GateUsageCallback"]


class GateUsageCallback(BaseCallback):
    """After each rollout, log the policy's per-expert gate statistics over the rollout's states
    as ``<prefix>/<statistic>/<expert>`` (Hub-Pathway: ``pathway/weight_mean/<name>`` and
    ``pathway/selection_freq/<name>``; Zoo-Tuning: ``zoo/weight_mean/<name>``), then reset them.

    Works with any policy that has ``usage() -> {expert: {statistic: value}}`` and ``reset_usage()``.
    """

    def __init__(self, prefix: str = "pathway") -> None:
        super().__init__()
        self.prefix = prefix

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        policy = self.model.policy
        if not hasattr(policy, "usage"):
            return
        for name, stats in policy.usage().items():
            for key, value in stats.items():
                self.logger.record(f"{self.prefix}/{key}/{name}", value)
        policy.reset_usage()
