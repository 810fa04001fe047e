"""The hook through which a policy adds auxiliary losses to the PPO/A2C objective.

SB3 builds its loss inside ``train()`` with no extension point, so :class:`hubrl.agents.ppo.HubPPO` and
:class:`hubrl.agents.a2c.HubA2C` reproduce SB3's ``train()`` and, right after
``policy.evaluate_actions`` on each minibatch, ask the policy for extra loss terms computed from
that same forward pass. A policy opts in by defining ``auxiliary_loss(batch)``; any other policy
(SB3's own ``CnnPolicy`` included) trains exactly as in SB3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch as th

__all__ = ["AuxiliaryBatch", "AuxiliaryLossPolicy", "AuxiliaryTerms", "logged_means"]


@dataclass
class AuxiliaryBatch:
    """What the agent knows about the minibatch that the policy just evaluated.

    :param actions: actions taken (long, shape ``(B,)``).
    :param old_log_prob: log-probability of the actions under the behaviour policy.
    :param advantages: advantages, normalised exactly as the main loss uses them.
    :param returns: TD(lambda) value targets.
    :param clip_range: PPO's current clip range; ``None`` for A2C (plain policy gradient).
    :param normalize_advantage: whether the agent normalised ``advantages`` over the minibatch (a
        policy that builds other advantages, e.g. for the route's policy gradient, does the same).
    """

    actions: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    clip_range: float | None
    normalize_advantage: bool = False


@dataclass
class AuxiliaryTerms:
    """Auxiliary loss (already weighted by its coefficients) and scalars to log under ``train/``.

    A logged scalar may be a 0-d tensor on the policy's device: the agent reads the logs back once
    per update (:func:`logged_means`), so the update does not wait on the GPU for them each minibatch.
    """

    loss: th.Tensor
    logs: dict[str, float | th.Tensor]


def logged_means(logs: Mapping[str, Sequence[float | th.Tensor]]) -> dict[str, float]:
    """The mean of each key's logged scalars (floats or 0-d tensors), with every tensor among them
    read back from the device in one transfer: one wait on the GPU per update, however many
    scalars the policy logs. Each mean is the same number as ``np.mean`` of the values' ``.item()``."""
    tensors = [v.detach().reshape(()).float() for values in logs.values() for v in values if isinstance(v, th.Tensor)]
    host = iter(th.stack(tensors).cpu().double().numpy()) if tensors else iter(())
    return {key: float(np.mean([next(host) if isinstance(v, th.Tensor) else float(v) for v in values]))
            for key, values in logs.items()}


@runtime_checkable
class AuxiliaryLossPolicy(Protocol):
    def auxiliary_loss(self, batch: AuxiliaryBatch) -> AuxiliaryTerms | None:
        """Extra loss for the minibatch evaluated by the latest ``evaluate_actions`` call."""
