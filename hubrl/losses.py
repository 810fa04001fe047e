"""Hub-Pathway's auxiliary losses.

* :func:`exploration_loss` works against the pathway generator collapsing onto one expert: it is
  ``log K - H(p_bar)``, where ``p_bar`` is the batch mean of the gate's (noise-free) softmax over
  all K experts. It is 0 exactly when the batch uses the experts equally and grows to ``log K``
  when every sample prefers the same expert; per-sample routing can still be sharp, since only the
  batch average is pushed towards uniform.
* :func:`exploitation_loss` trains each selected expert, through its own head, on the samples
  that activated it, with the agent's own objective: PPO's clipped surrogate (or A2C's policy
  gradient) plus a value regression, averaged over all (sample, selected expert) pairs.
"""

from __future__ import annotations

import math

import torch as th
from torch.distributions import Categorical
from torch.nn import functional as F

__all__ = ["exploration_loss", "exploitation_loss"]


def exploration_loss(probs: th.Tensor) -> th.Tensor:
    """``log K - entropy(mean_b probs[b])`` for gate probabilities of shape (B, K)."""
    mean = probs.mean(dim=0)
    entropy = -(mean * th.log(mean.clamp_min(1e-12))).sum()
    return math.log(probs.shape[1]) - entropy


def exploitation_loss(
    per_expert_outputs: dict[int, tuple[th.Tensor, th.Tensor, th.Tensor]],
    actions: th.Tensor,
    old_log_prob: th.Tensor,
    advantages: th.Tensor,
    returns: th.Tensor,
    clip_range: float | None,
    vf_coef: float = 0.5,
) -> th.Tensor:
    """Policy + value loss of each expert's own head on the samples routed to it.

    :param per_expert_outputs: expert -> (sample indices, action logits, values) of its head.
    :param clip_range: PPO clip range, or ``None`` for A2C's unclipped policy gradient.
    """
    total, count = None, 0
    for idx, logits, values in per_expert_outputs.values():
        log_prob = Categorical(logits=logits).log_prob(actions[idx])
        adv = advantages[idx]
        if clip_range is None:
            pg = -(adv * log_prob)
        else:
            ratio = th.exp(log_prob - old_log_prob[idx])
            pg = -th.min(adv * ratio, adv * th.clamp(ratio, 1 - clip_range, 1 + clip_range))
        vf = F.mse_loss(values.flatten(), returns[idx], reduction="none")
        term = (pg + vf_coef * vf).sum()
        total = term if total is None else total + term
        count += idx.numel()
    if total is None:
        return actions.new_zeros((), dtype=th.float32)
    return total / count
