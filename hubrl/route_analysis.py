"""Does the route matter? The policies a trained Hub-Pathway acts with on the same states, one per expert.

At k = 1 a Hub-Pathway agent acts, on each state, with the policy of the expert its noisy gate
picked. The gate statistics of a run (``gates.jsonl``, the report's routing section) say *how*
states were routed; this module says *what that changed*: on states of the trained agent's own
play it forces every state through each expert in turn (the stored-route replay the update uses,
:class:`hubrl.agents.routing.Route`, so the forward pass is the acting one, see :func:`per_route_outputs`) and compares
the resulting action distributions and values:

* ``kl``: mean KL divergence between two experts' action distributions, over states and ordered
  pairs of experts (nats);
* ``tv``: mean total-variation distance (0: same distribution, 1: disjoint);
* ``argmax_differs``: share of states where the most likely action differs (what deterministic
  evaluation would play);
* ``value_gap`` / ``value_scale``: mean |V_i - V_j| against mean |V|;
* ``clean_share`` / ``acting_share``: share of the states each expert gets noise-free
  (``predict``, evaluation) and with the gate noise of acting in training.

Read together: a gate whose routes lead to clearly different policies (large ``tv``) while its
acting shares sit near 1/K acts with a per-state coin toss between policies; one that routes by
state would show different noise-free shares on different states and a ``tv`` the route choice
explains. Only k = 1 is defined (at k > 1 every state mixes experts).

:mod:`hubrl.route_report` runs it on the ``model.zip`` of every Hub-Pathway trial of a grid
(``hubrl-bench routes ROOT``); :class:`hubrl.callbacks.GateUsageCallback` logs
:func:`route_distances` on each rollout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import permutations
from typing import Any

import numpy as np
import torch as th

__all__ = ["RouteDivergence", "per_route_outputs", "policy_distances", "route_distances", "route_shares",
           "route_divergence", "collect_states"]


@dataclass
class RouteDivergence:
    """How much the route changes a routed policy's output on a set of states (module docstring)."""

    states: int
    kl: float
    tv: float
    argmax_differs: float
    value_gap: float
    value_scale: float
    clean_share: list[float]
    acting_share: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def per_route_outputs(policy, observations: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """Action log-probabilities (K, B, A) and values (K, B) of a k = 1 :class:`~hubrl.policies.HubPathwayPolicy`
    with every state routed to expert 0, then 1, ... (the acting forward pass with a forced route and
    zero noise: exactly the acting one under the default straight-through weight; under
    ``k1_weight="prob"`` the expert's weight is its noise-free probability, not the acting draw's)."""
    from hubrl.agents.routing import Route

    n_experts, top_k = policy.route_shape
    if top_k != 1:
        raise ValueError(f"route divergence compares single-expert routes: the policy routes each state to k={top_k} "
                         "experts at once (k=1 only).")
    batch = observations.shape[0]
    logits, values = [], []
    with th.no_grad():
        for i in range(n_experts):
            route = Route(th.zeros(batch, n_experts, device=observations.device),
                          th.full((batch, 1), i, dtype=th.long, device=observations.device))
            distribution, value, _ = policy._outputs(observations, route=route)
            logits.append(distribution.distribution.logits)  # torch's Categorical keeps them normalised
            values.append(value.reshape(-1))
    return th.stack(logits), th.stack(values)


def policy_distances(logits: th.Tensor, values: th.Tensor) -> dict[str, float]:
    """``kl``, ``tv``, ``argmax_differs``, ``value_gap`` and ``value_scale`` (module docstring) of
    :func:`per_route_outputs`' logits (K, B, A) and values (K, B), averaged over ordered expert pairs."""
    n_experts = values.shape[0]
    log_p = logits.log_softmax(-1)
    p = log_p.exp()
    pairs = list(permutations(range(n_experts), 2))
    if not pairs:  # one expert: one route, which differs from no other
        return {"kl": 0.0, "tv": 0.0, "argmax_differs": 0.0, "value_gap": 0.0, "value_scale": float(values.abs().mean())}
    argmax = logits.argmax(-1)
    return {
        "kl": float(np.mean([float((p[i] * (log_p[i] - log_p[j])).sum(-1).mean()) for i, j in pairs])),
        "tv": float(np.mean([float(0.5 * (p[i] - p[j]).abs().sum(-1).mean()) for i, j in pairs])),
        "argmax_differs": float(np.mean([float((argmax[i] != argmax[j]).float().mean()) for i, j in pairs])),
        "value_gap": float(np.mean([float((values[i] - values[j]).abs().mean()) for i, j in pairs])),
        "value_scale": float(values.abs().mean()),
    }


def route_distances(policy, observations: th.Tensor) -> tuple[float, float]:
    """Mean KL and total-variation distance between the routes' action distributions on
    ``observations``: the lean part of :func:`route_divergence` that training logs every rollout."""
    distances = policy_distances(*per_route_outputs(policy, observations))
    return distances["kl"], distances["tv"]


def route_shares(policy, observations: th.Tensor, seed: int = 0) -> tuple[list[float], list[float]]:
    """Share of ``observations`` each expert gets noise-free (``predict``, evaluation) and with one
    draw of the acting gate noise (seeded by ``seed``; torch's global generators, the GPUs' too, are left as they were)."""
    gate = policy.extractor.gate
    with th.no_grad():
        x = policy.preprocess(observations)
        clean = gate(x, explore=False).selected[:, 0]
        # th.manual_seed seeds every GPU's generator too: all of them are restored with the CPU's
        with th.random.fork_rng(devices=range(th.cuda.device_count()) if x.device.type == "cuda" else []):
            th.manual_seed(seed)
            acting = gate(x, explore=True).selected[:, 0]

    def shares(selected: th.Tensor) -> list[float]:
        return [float((selected == i).float().mean()) for i in range(gate.n_experts)]

    return shares(clean), shares(acting)


def route_divergence(policy, observations: th.Tensor, seed: int = 0) -> RouteDivergence:
    """Compare the per-expert policies of ``policy`` on ``observations`` (frames as the env gives
    them, uint8, or float with the same values as SB3's rollout buffer keeps them); ``seed`` fixes
    the acting noise draw of ``acting_share``."""
    logits, values = per_route_outputs(policy, observations)
    clean, acting = route_shares(policy, observations, seed)
    return RouteDivergence(values.shape[1], **policy_distances(logits, values), clean_share=clean, acting_share=acting)


def collect_states(model, game: str, n_states: int, seed: int = 0, n_envs: int = 8, every: int = 4) -> np.ndarray:
    """``n_states`` observations (uint8) of ``model`` playing ``game`` with sampled actions, one
    vector step in ``every`` kept (consecutive frames are nearly the same state). ``seed`` seeds
    the games and the sampled actions (:func:`hubrl.evaluation.seeded_actions`): the same weights
    and seed give the same states, and the caller's torch generator is left as it was."""
    from hubrl.envs import make_atari_vec_env
    from hubrl.evaluation import seeded_actions

    if n_states < 1:
        raise ValueError(f"n_states must be positive, got {n_states}.")
    env = make_atari_vec_env(game, n_envs, seed=seed)
    try:
        obs, kept, step = env.reset(), [], 0
        with seeded_actions(model, seed):
            while sum(len(k) for k in kept) < n_states:
                if step % every == 0:
                    kept.append(obs.copy())
                actions, _ = model.predict(obs, deterministic=False)
                obs, *_ = env.step(actions)
                step += 1
    finally:
        env.close()
    return np.concatenate(kept)[:n_states]
