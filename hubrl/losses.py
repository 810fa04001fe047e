"""Hub-Pathway's auxiliary losses.

**Exploration (load balancing)** works against the pathway generator collapsing onto one expert.
Three forms, chosen with ``kind`` (``--exploration-loss``):

* ``"switch"`` (default) — Switch Transformer's ``K * sum_i f_i * P_i`` (Fedus et al. 2021), where
  ``f_i`` is the fraction of the batch's routing slots *actually assigned* to expert i (the acting
  routes) and ``P_i`` the batch mean of the gate's clean softmax. It is 1 for balanced use and K
  when one expert takes everything, and it sees a collapse of the *assignments* even when the mean
  probabilities stay near 0.6 / 0.4 — which the entropy form cannot (measured in issue 14: 0.02 and
  gradient 0.1 for the entropy form against 1.2 and 0.48 for this one).
* ``"entropy"`` — ``log K - H(p_bar)``, ``p_bar`` the batch-mean clean softmax: 0 when the
  probabilities are balanced on average, ``log K`` when every sample prefers the same expert.
* ``"importance-load"`` — Shazeer et al. (2017): ``CV^2(importance) + CV^2(load)``, importance the
  batch sum of pathway weights, load the batch sum of each expert's probability of being in the
  top k under the gate noise (a smooth estimate of the assignment counts).

**Exploitation** (:func:`exploitation_loss`) trains each selected expert, through its own head, on
the samples that activated it, with the agent's own objective: PPO's clipped surrogate (or A2C's
policy gradient) plus a value regression, averaged over all (sample, selected expert) pairs.

**Route policy gradient** (:func:`route_policy_loss`, off by default): the gate's noisy top-1 choice
is a sampled decision like the action, so the agent's own surrogate can train it: the acting
route's probability ratio times the advantage. At k = 1 the task loss reaches the gate only as
"should the chosen expert's output be larger", never comparing the experts; this term does compare
them: routes whose steps earned above-average advantage become more likely in those states.
"""

from __future__ import annotations

import math

import torch as th
from torch.distributions import Categorical, Normal
from torch.nn import functional as F

from hubrl.pathway import Routing

__all__ = [
    "EXPLORATION_LOSSES",
    "cv_squared",
    "entropy_balance_loss",
    "switch_balance_loss",
    "importance_load_loss",
    "exploration_loss",
    "exploitation_loss",
    "exploitation_ratio_stats",
    "route_policy_loss",
    "policy_surrogate",
]

EXPLORATION_LOSSES = ("switch", "entropy", "importance-load")


def entropy_balance_loss(probs: th.Tensor) -> th.Tensor:
    """``log K - entropy(mean_b probs[b])`` for gate probabilities of shape (B, K)."""
    mean = probs.mean(dim=0)
    entropy = -(mean * th.log(mean.clamp_min(1e-12))).sum()
    return math.log(probs.shape[1]) - entropy


def assignment_fractions(selected: th.Tensor, n_experts: int) -> th.Tensor:
    """(K,) fraction of the batch's B*k routing slots that went to each expert (no gradient)."""
    flat = selected.reshape(-1)
    # a fixed-size sum, not th.bincount: on a GPU bincount reads the largest index back to size its output
    ones = th.ones_like(flat, dtype=th.float32)
    counts = th.zeros(n_experts, dtype=th.float32, device=flat.device).index_add_(0, flat, ones)
    return counts / max(selected.numel(), 1)


def switch_balance_loss(probs: th.Tensor, selected: th.Tensor) -> th.Tensor:
    """``K * sum_i f_i * P_i``: ``f_i`` from the actual assignments ``selected`` (B, k), ``P_i`` the
    batch mean of ``probs`` (B, K). 1 when balanced, K when collapsed onto one expert.

    A constant (1, no gradient) when every expert is selected for every sample (k = K): there is no
    load to balance then; :func:`importance_load_loss` and :func:`entropy_balance_loss` still
    balance the weights."""
    n_experts = probs.shape[1]
    fractions = assignment_fractions(selected, n_experts).to(probs.device)
    return n_experts * (fractions * probs.mean(dim=0)).sum()


def cv_squared(x: th.Tensor) -> th.Tensor:
    """Squared coefficient of variation ``Var(x) / mean(x)^2`` of a vector, with the population
    variance as Shazeer et al.'s ``cv_squared`` (``tf.nn.moments``); 0 for fewer than two values."""
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.float().var(unbiased=False) / (x.float().mean() ** 2 + 1e-10)


def importance_load_loss(routing: Routing) -> th.Tensor:
    """Shazeer et al.'s ``CV^2(importance) + CV^2(load)`` (:func:`cv_squared`, their population
    variance), with one difference from their code: the threshold is detached, so the load term
    moves each expert's own clean logit, not the others'.

    ``load_i = sum_b Phi((clean_bi - threshold_bi) / std_bi)``: the probability, under fresh
    noise on expert i only, that i lands in the top k given the other experts' noisy logits
    (the threshold is the k-th largest of the others' logits). Without gate noise the load term
    is the hard assignment count (no gradient).
    """
    importance = routing.weights.sum(dim=0)
    batch, n_experts = routing.logits.shape
    k = routing.selected.shape[1]
    if routing.noise_std is None or k >= n_experts:
        load = assignment_fractions(routing.selected, n_experts).to(importance.device) * batch
        return cv_squared(importance) + cv_squared(load)
    top = routing.logits.topk(k + 1, dim=1)  # (B, k+1)
    # for an expert in the top k of these logits the others' k-th largest is the (k+1)-th overall, otherwise the
    # k-th. In the top k *of these logits*: a replayed batch's stored selection is the acting gate's, which the
    # current gate may no longer agree with, and compared with the wrong order statistic an expert would be
    # measured against its own logit.
    in_top = th.zeros_like(routing.logits, dtype=th.bool).scatter(1, top.indices[:, :k], True)
    threshold = th.where(in_top, top.values[:, k : k + 1], top.values[:, k - 1 : k])
    normal = Normal(routing.clean.new_zeros(()), routing.clean.new_ones(()), validate_args=False)  # no read-back checks
    prob_in = normal.cdf((routing.clean - threshold.detach()) / routing.noise_std.clamp_min(1e-6))
    return cv_squared(importance) + cv_squared(prob_in.sum(dim=0))


def exploration_loss(routing: Routing, kind: str = "switch") -> th.Tensor:
    """The load-balancing loss ``kind`` (one of :data:`EXPLORATION_LOSSES`) of a batch's routing."""
    if kind == "switch":
        return switch_balance_loss(routing.probs, routing.selected)
    if kind == "entropy":
        return entropy_balance_loss(routing.probs)
    if kind == "importance-load":
        return importance_load_loss(routing)
    raise ValueError(f"Unknown exploration loss {kind!r}: choose one of {', '.join(EXPLORATION_LOSSES)}.")


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

    The actions were drawn by the acting policy, not by the head, so the head's policy term is
    importance-weighted by ``pi_head / pi_acting``: PPO's clipped ratio surrogate, or under A2C
    (``clip_range`` ``None``) the unclipped ``-A * ratio``, whose gradient is the head's policy
    gradient on the acting policy's samples (A2C's own ``-A * log pi`` assumes its samples came
    from the policy it trains, which holds for the acting policy but not for a head).

    :param per_expert_outputs: expert -> (sample indices, action logits, values) of its head.
    :param clip_range: PPO clip range, or ``None`` for A2C.
    """
    total, count = None, 0
    for idx, logits, values in per_expert_outputs.values():
        log_prob = _head_log_prob(logits, actions[idx])
        # A2C: the unclipped ratio surrogate (an infinite clip range), not A2C's on-policy -A log pi
        pg = policy_surrogate(log_prob, old_log_prob[idx], advantages[idx], math.inf if clip_range is None else clip_range)
        vf = F.mse_loss(values.flatten(), returns[idx], reduction="none")
        term = (pg + vf_coef * vf).sum()
        total = term if total is None else total + term
        count += idx.numel()
    if total is None:
        return actions.new_zeros((), dtype=th.float32)
    return total / count


def _head_log_prob(logits: th.Tensor, actions: th.Tensor) -> th.Tensor:
    # validate_args=False: the check of logits and actions reads them back to the host (a GPU stall per expert)
    return Categorical(logits=logits, validate_args=False).log_prob(actions)


@th.no_grad()
def exploitation_ratio_stats(
    per_expert_outputs: dict[int, tuple[th.Tensor, th.Tensor, th.Tensor]],
    actions: th.Tensor,
    old_log_prob: th.Tensor,
    clip_range: float | None,
) -> dict[str, th.Tensor]:
    """How far the experts' own heads are from the acting policy on the samples routed to them.

    The exploitation loss's surrogate takes each head's probability of the action over the
    *acting* policy's (with ``aggregation="features"`` the heads do not act), so where a head has
    drifted from the acting policy PPO's clip cuts its gradient, as SB3's ``train/clip_fraction``
    shows for the main policy. Returned as 0-d tensors over all (sample, selected expert) pairs:

    * ``exploitation_approx_kl``: ``mean((r - 1) - log r)``, SB3's estimator of KL(acting || head);
    * ``exploitation_clip_fraction`` (PPO only): the fraction with ``|r - 1| > clip_range``.
    """
    log_ratios = [
        _head_log_prob(logits, actions[idx]) - old_log_prob[idx] for idx, logits, _ in per_expert_outputs.values()
    ]
    if not log_ratios:
        return {}
    log_ratio = th.cat(log_ratios)
    ratio = th.exp(log_ratio)
    stats = {"exploitation_approx_kl": ((ratio - 1) - log_ratio).mean()}
    if clip_range is not None:
        stats["exploitation_clip_fraction"] = ((ratio - 1).abs() > clip_range).float().mean()
    return stats


def route_policy_loss(
    route_log_prob: th.Tensor, old_route_log_prob: th.Tensor, advantages: th.Tensor, clip_range: float | None,
) -> th.Tensor:
    """The agent's policy-gradient surrogate applied to the gate's route choice.

    :param route_log_prob: (B,) log-probability of the acting routes under the current gate.
    :param old_route_log_prob: (B,) the same under the gate that acted (stored in the rollout).
    :param advantages: (B,) each route's advantage against a baseline that does not depend on the
        sampled route (:meth:`hubrl.policies.HubPathwayPolicy._route_advantages`: the return minus
        the noise-free route's value), not the agent's advantages, whose baseline is the sampled
        route's own value.
    :param clip_range: PPO's clip range (clipped ratio surrogate), or ``None`` for A2C's plain
        ``-advantage * log-probability``.
    """
    return policy_surrogate(route_log_prob, old_route_log_prob, advantages, clip_range).mean()


def policy_surrogate(
    log_prob: th.Tensor, old_log_prob: th.Tensor, advantages: th.Tensor, clip_range: float | None,
) -> th.Tensor:
    """Per-sample policy loss of the agent's objective: PPO's clipped surrogate
    ``-min(A r, A clip(r, 1 - eps, 1 + eps))`` with ``r = exp(log_prob - old_log_prob)`` (``-A r``
    for an infinite ``clip_range``), or A2C's on-policy ``-A log_prob`` when ``clip_range`` is ``None``
    (shared by both auxiliary policy terms)."""
    if clip_range is None:
        return -(advantages * log_prob)
    ratio = th.exp(log_prob - old_log_prob)
    return -th.min(advantages * ratio, advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range))
