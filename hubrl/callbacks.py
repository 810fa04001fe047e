"""Gate logging: how much each expert is used on the game states seen, per rollout.

:class:`GateUsageCallback` writes the statistics to TensorBoard and, when given a path, appends them
to a JSON-lines file in the run folder (``gates.jsonl``), which is small, survives the removal of
TensorBoard logs (benchmark grids are committed without them) and is what the report's routing
section and plots read (:func:`read_gate_history`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["GateUsageCallback", "gate_shares", "gate_summary", "read_gate_history", "ROUTE_SAMPLE", "ROUTE_EVERY"]

#: Rollout states on which a k = 1 routed policy's routes are compared (``route_tv``).
ROUTE_SAMPLE = 64
#: Agent steps between two ``route_tv`` measurements: every rollout of the PPO preset (8 envs x
#: 128 steps), every 13th of A2C's 80-step rollouts, where measuring each one took 17% of training.
ROUTE_EVERY = 1024


class GateUsageCallback(BaseCallback):
    """After each rollout, log the policy's per-expert gate statistics over the rollout's states
    as ``<prefix>/<statistic>/<expert>`` (Hub-Pathway: ``pathway/weight_mean/<name>`` and
    ``pathway/selection_freq/<name>``; Zoo-Tuning: ``zoo/weight_mean/<name>``), then reset them.

    Works with any policy that has ``usage() -> {expert: {statistic: value}}`` and ``reset_usage()``;
    a policy with ``gate_stats() -> {statistic: value}`` also gets ``<prefix>/<statistic>``
    (Hub-Pathway: ``noise_std``, ``logit_spread``, ``logit_drift``). A k = 1 routed policy also gets
    ``route_tv`` and ``route_kl``: on :data:`ROUTE_SAMPLE` states of the rollout, how different its
    policies are when each state is routed to one expert or another
    (:func:`hubrl.route_analysis.route_distances`; 0 when the route does not matter), on the first
    rollout and then once ``route_every`` agent steps have passed (two forward passes per expert:
    cheap next to PPO's rollout, not next to A2C's).

    :param prefix: TensorBoard tag prefix.
    :param history_path: JSON-lines file that gets one ``{"step": ..., "<tag>": value}`` line per
        rollout (tags without the prefix); ``None``: TensorBoard only.
    :param route_every: agent steps between two ``route_tv`` measurements (:data:`ROUTE_EVERY`).
    :param report_every: with ``verbose``, print a one-line summary of the gate (:func:`gate_summary`)
        at the first rollout end at or past every multiple of this many agent steps (a transfer
        uses its evaluation interval: a line beside each ``[eval]`` line); ``None``: never.
    :param verbose: print the summaries (0: silent).
    """

    def __init__(self, prefix: str = "pathway", history_path: str | Path | None = None,
                 route_every: int = ROUTE_EVERY, report_every: int | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        if route_every < 1:
            raise ValueError(f"route_every must be a positive number of agent steps, got {route_every}.")
        if report_every is not None and report_every < 1:
            raise ValueError(f"report_every must be a positive number of agent steps or None, got {report_every}.")
        self.prefix = prefix
        self.history_path = Path(history_path) if history_path is not None else None
        self.route_every = int(route_every)
        self.report_every = report_every
        self._route_measured_at: int | None = None
        self._next_report: int | None = None

    def _on_training_start(self) -> None:
        self._schedule_next_report()  # a resumed run reports at the next multiple, not at once

    def _schedule_next_report(self) -> None:
        """The next report at the first multiple of ``report_every`` past the current step (none without it)."""
        if self.report_every is not None:
            self._next_report = (self.num_timesteps // self.report_every + 1) * self.report_every

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        policy = self.model.policy
        if not hasattr(policy, "usage"):
            return
        row: dict[str, Any] = {"step": int(self.num_timesteps)}
        for name, stats in policy.usage().items():
            for key, value in stats.items():
                row[f"{key}/{name}"] = float(value)
        for key, value in (policy.gate_stats() if hasattr(policy, "gate_stats") else {}).items():
            row[key] = float(value)
        if self._route_measured_at is None or self.num_timesteps - self._route_measured_at >= self.route_every:
            route_stats = self._route_stats(policy)
            if route_stats:
                self._route_measured_at = int(self.num_timesteps)
                row.update(route_stats)
        for key, value in row.items():
            if key != "step":
                self.logger.record(f"{self.prefix}/{key}", value)
        if self.history_path is not None:
            with open(self.history_path, "a") as handle:  # one short line per rollout: a torn last line is skipped on read
                handle.write(json.dumps(row) + "\n")
        if self._next_report is not None and self.num_timesteps >= self._next_report:
            self._schedule_next_report()
            if self.verbose:
                print(gate_summary(row), flush=True)
        policy.reset_usage()

    def _route_stats(self, policy) -> dict[str, float]:
        """``route_tv`` / ``route_kl`` on evenly spaced states of the rollout buffer (k = 1 routed policies of
        two experts or more)."""
        import torch as th

        from hubrl.route_analysis import route_distances

        buffer = getattr(self.model, "rollout_buffer", None)
        observations = getattr(buffer, "observations", None)
        n_experts, top_k = getattr(policy, "route_shape", (0, 0))
        if top_k != 1 or n_experts < 2 or observations is None:  # one expert: a single route, nothing to compare
            return {}
        states = observations.reshape(-1, *buffer.obs_shape)  # (steps, envs, ...) here; flat once the update read it
        states = states[np.linspace(0, len(states) - 1, min(ROUTE_SAMPLE, len(states))).astype(int)]
        kl, tv = route_distances(policy, th.as_tensor(states, device=policy.device))
        return {"route_tv": tv, "route_kl": kl}


def gate_shares(row: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The per-expert statistic that says where a :class:`GateUsageCallback` row's gate sent the
    states, and its experts, in the row's order: ``("selection_freq", ...)`` for a top-1 gate (each
    expert's share of the states), else ``("weight_mean", ...)``: a soft gate's (Zoo-Tuning: each
    expert's mean weight) and a top-k gate's with k >= 2, whose selection frequencies sum to k and,
    at k = K, are 1 for every expert whatever the gate does (its weights carry the routing); no
    experts when the row has neither."""
    selected = [key.split("/", 1)[1] for key in row if key.startswith("selection_freq/")]
    weighted = [key.split("/", 1)[1] for key in row if key.startswith("weight_mean/")]
    if selected and (not weighted or sum(float(row[f"selection_freq/{name}"]) for name in selected) <= 1 + 1e-6):
        return "selection_freq", selected
    return ("weight_mean", weighted) if weighted else ("selection_freq", [])


def gate_summary(row: dict[str, Any]) -> str:
    """One line on what the gate did in a rollout, from a :class:`GateUsageCallback` row: each
    expert's share of the states (``selection_freq``) or, for a soft gate (Zoo-Tuning) or a top-k
    gate with k >= 2, its mean weight (:func:`gate_shares`); then how far the clean logits spread
    across states against the gate noise (routing by state needs a spread comparable to the noise
    and no expert pinned at 0 or 1: the example is a gate collapsed onto one expert), e.g.
    ``[gate] step 100352: seaquest-ppo 1.00, riverraid-ppo 0.00 of the states; logit spread 7.39, noise std 1.00``.
    """
    statistic, experts = gate_shares(row)
    shares = {name: row[f"{statistic}/{name}"] for name in experts}
    what = "of the states" if statistic == "selection_freq" else "mean gate weight"
    line = f"[gate] step {row['step']}: " + ", ".join(f"{name} {value:.2f}" for name, value in shares.items())
    line += f" {what}" if shares else "no expert statistics"
    if "logit_spread" in row:
        line += f"; logit spread {row['logit_spread']:.2f}"
        if "noise_std" in row:
            line += f", noise std {row['noise_std']:.2f}"
    return line


def read_gate_history(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``gates.jsonl`` by step; for a step logged twice (a resumed run re-does the steps
    after its checkpoint) the last line wins. Unreadable lines are skipped; a missing file gives ``[]``."""
    rows: dict[int, dict[str, Any]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
            step = int(row.pop("step"))
            clean = {str(k): float(v) for k, v in row.items() if v is not None}  # a foreign or damaged value: skip the line
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            continue
        rows[step] = {"step": step, **clean}
    return [rows[step] for step in sorted(rows)]
