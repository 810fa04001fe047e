"""SB3 actor-critic policy for Hub-Pathway transfer.

:class:`HubPathwayPolicy` is an ``ActorCriticPolicy`` whose features extractor is
:class:`hubrl.pathway.HubPathwayExtractor`, with one small head (policy logits + value) per
expert for the target's action set. Two aggregation forms:

* ``aggregation="features"`` (design card): the extractor's aggregated features feed SB3's usual
  ``action_net`` / ``value_net``; the per-expert heads serve the exploitation loss.
* ``aggregation="heads"`` (the paper's form): each selected expert's head makes its own logits
  and value, and these are aggregated with the pathway weights.

``features`` is the default by measurement: at 100k steps on Alien and Gopher (2 seeds each) it
tied on Alien and led on Gopher (IQM HNS 0.049 vs 0.025; BENCHMARKS.md).

The policy implements ``auxiliary_loss`` (see :mod:`hubrl.agents.auxiliary`), so ``HubPPO``/``HubA2C``
add ``exploration_coef * exploration_loss + exploitation_coef * exploitation_loss`` to the
objective. During rollouts it accumulates per-expert gate usage for
:class:`hubrl.callbacks.GateUsageCallback`. Its constructor takes plain kwargs only, and expert
weights live in the state_dict, so stock ``PPO.load`` rebuilds it after ``import hubrl``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch as th
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from hubrl.agents.auxiliary import AuxiliaryBatch, AuxiliaryTerms
from hubrl.errors import UsageError
from hubrl.hub import Hub
from hubrl.losses import (
    EXPLORATION_LOSSES,
    exploitation_loss,
    exploitation_ratio_stats,
    exploration_loss,
    route_policy_loss,
)
from hubrl.pathway import DEFAULT_NOISE, HubPathwayExtractor, Route, RoutedFeatures

__all__ = [
    "AGGREGATIONS", "DEFAULT_EXPLORATION_COEF", "DEFAULT_K1_WEIGHT", "DEFAULT_NOISE_FLOOR", "HubPathwayPolicy",
    "check_gate_noise", "load_hub_weights", "predict_with_gate_noise", "uses_net_arch",
]

AGGREGATIONS = ("features", "heads")
#: Defaults chosen by the stage-A measurement of issue 14 (BENCHMARKS.md, "Hub-Pathway routing").
DEFAULT_EXPLORATION_COEF = 0.1
DEFAULT_NOISE_FLOOR = 0.3
DEFAULT_K1_WEIGHT = "straight-through"


def uses_net_arch(net_arch: Any) -> bool:
    """Whether SB3's ``net_arch`` asks for hidden layers (``[64]``, ``dict(pi=[64], vf=[])``), which
    :class:`HubPathwayPolicy` does not have: its heads read the aggregated features directly."""
    if isinstance(net_arch, dict):
        return any(net_arch.values())
    return bool(net_arch)


class ExpertHead(nn.Module):
    """Policy logits and value from one expert's features."""

    def __init__(self, features_dim: int, n_actions: int) -> None:
        super().__init__()
        self.pi = nn.Linear(features_dim, n_actions)
        self.vf = nn.Linear(features_dim, 1)
        nn.init.orthogonal_(self.pi.weight, gain=0.01)
        nn.init.orthogonal_(self.vf.weight, gain=1.0)
        nn.init.zeros_(self.pi.bias)
        nn.init.zeros_(self.vf.bias)

    def forward(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.pi(features), self.vf(features)


def usage_dtype(device: th.device) -> th.dtype:
    """The dtype of the gate-usage sums kept on ``device`` over a rollout: float64, but float32 on
    Apple's MPS, which has no float64 (a rollout's few thousand terms keep float32's seven
    significant digits, more than the logged means show)."""
    return th.float32 if device.type == "mps" else th.float64


class HubPathwayPolicy(ActorCriticPolicy):
    """Actor-critic over a hub of experts routed by a noisy top-k pathway generator.

    **Acting vs updating.** ``forward`` (SB3 calls it to act in ``collect_rollouts``) draws the
    gate noise and keeps the resulting :class:`~hubrl.pathway.Route` for the rollout buffer
    (:func:`pop_acting_route`, read by :class:`hubrl.agents.routing.RoutedRolloutBuffer`).
    ``evaluate_actions(obs, actions, route=...)`` replays it in the update, so PPO's ratio and
    both auxiliary losses see the pathway that acted. ``predict`` / evaluation are noise-free.
    Without a stored route (e.g. trained by stock SB3 PPO) the update draws fresh noise.

    :param expert_names: names of the hub's experts (K = their number).
    :param top_k: experts per sample (default 1: the compute of one encoder plus the gate).
    :param noise: gate noise when acting in training: a fixed std (default 1.0) or ``"learned"``.
    :param noise_floor: minimum std of the learned noise (keeps route exploration alive).
    :param k1_weight: ``"prob"`` or ``"straight-through"`` weight of the expert at k = 1.
    :param aggregation: ``"features"`` or ``"heads"`` (see module docstring).
    :param exploration_loss: load-balancing form, one of :data:`hubrl.losses.EXPLORATION_LOSSES`.
    :param exploration_coef: weight of the exploration loss.
    :param exploitation_coef: weight of the exploitation loss. With ``aggregation="heads"`` at
        k = 1 and the straight-through weight, the acting head is the chosen expert's own, so this
        loss repeats the task loss on every sample (the policy term counted 1 + coef times, the
        value term ``vf_coef + coef * exploitation_vf_coef``): not extra signal, a reweighting.
    :param exploitation_vf_coef: weight of the value term inside the exploitation loss.
    :param freeze_experts: keep the expert encoders fixed (default: fine-tune them).
    :param route_pg_coef: weight of the route policy gradient (:func:`hubrl.losses.route_policy_loss`):
        the gate's noisy top-1 choice trained by the agent's surrogate with the route's advantage
        (return minus the noise-free route's value, :meth:`_route_advantages`), so routes compare
        the experts state by state. 0 (default) leaves the gate to the paper's gradients
        (through the pathway weights and the exploration loss). Needs k = 1 and a noisy gate.
    :param gate_lr_scale: the pathway generator's learning rate as a multiple of the agent's (its
        schedule followed, the factor kept). 1 (default) trains the gate at the encoders' rate. On
        Gopher (BENCHMARKS.md, routing; one seed) no value routed by state: 5 and 30 collapsed the
        gate onto one expert within 3k steps, 2 swung and came back to an even coin. Another value puts the
        gate in its own optimizer parameter group with an ``lr_scale``, which :class:`hubrl.agents.HubPPO`
        and :class:`hubrl.agents.HubA2C` apply at every update (a stock SB3 agent would train the
        whole policy at one rate).
    """

    def __init__(
        self,
        observation_space,
        action_space,
        lr_schedule,
        expert_names: list[str] | tuple[str, ...] = ("expert",),
        top_k: int = 1,
        noise: str | float = DEFAULT_NOISE,
        noise_floor: float = DEFAULT_NOISE_FLOOR,
        k1_weight: str = DEFAULT_K1_WEIGHT,
        aggregation: str = "features",
        exploration_loss: str = "switch",
        exploration_coef: float = DEFAULT_EXPLORATION_COEF,
        exploitation_coef: float = 0.5,
        exploitation_vf_coef: float = 0.5,
        freeze_experts: bool = False,
        route_pg_coef: float = 0.0,
        gate_lr_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        if exploration_loss not in EXPLORATION_LOSSES:
            raise ValueError(f"exploration_loss must be one of {EXPLORATION_LOSSES}, got {exploration_loss!r}.")
        self.expert_names = list(expert_names)
        self.aggregation = aggregation
        self.exploration_kind = exploration_loss
        self.exploration_coef = float(exploration_coef)
        self.exploitation_coef = float(exploitation_coef)
        self.exploitation_vf_coef = float(exploitation_vf_coef)
        self.freeze_experts = bool(freeze_experts)
        self.route_pg_coef = float(route_pg_coef)
        if not 0 <= self.route_pg_coef < float("inf"):
            raise ValueError(f"route_pg_coef must be a finite number >= 0, got {route_pg_coef}.")
        self.gate_lr_scale = float(gate_lr_scale)
        if not 0 < self.gate_lr_scale < float("inf"):
            raise ValueError(f"gate_lr_scale must be a finite number > 0, got {gate_lr_scale}.")
        if self.route_pg_coef > 0 and int(top_k) != 1:
            raise ValueError(f"route_pg_coef needs top_k 1 (got {top_k}): at k > 1 the gate already compares the "
                             "experts through the softmax over their outputs.")
        if self.route_pg_coef > 0 and noise != "learned" and float(noise) == 0:
            raise ValueError("route_pg_coef needs a noisy gate (noise > 0 or 'learned'): a noise-free gate samples no route.")
        if uses_net_arch(kwargs.setdefault("net_arch", [])):  # an MLP would be built and saved, and never trained
            raise ValueError(f"HubPathwayPolicy takes no net_arch (got {kwargs['net_arch']!r}): its action and value "
                             "heads read the experts' aggregated features directly; drop net_arch from policy_kwargs.")
        kwargs["features_extractor_class"] = HubPathwayExtractor
        kwargs["features_extractor_kwargs"] = {
            "expert_names": self.expert_names, "top_k": int(top_k), "noise": noise,
            "noise_floor": float(noise_floor), "k1_weight": k1_weight,
        }
        kwargs["share_features_extractor"] = True
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        self._last_routed: RoutedFeatures | None = None
        self._last_route: Route | None = None  # the stored acting route replayed by evaluate_actions
        self._last_obs: th.Tensor | None = None  # its observations, kept for the route's baseline (route_pg_coef > 0)
        self._acting_route: Route | None = None
        self._previous_logit_mean: np.ndarray | None = None
        self.reset_usage()

    # --- construction ---------------------------------------------------------------------
    def _build(self, lr_schedule) -> None:
        # Heads must exist before SB3 creates the optimizer inside _build.
        extractor: HubPathwayExtractor = self.features_extractor  # type: ignore[assignment]
        self.expert_heads = nn.ModuleList(ExpertHead(extractor.features_dim, int(self.action_space.n))
                                          for _ in extractor.experts)
        super()._build(lr_schedule)
        # SB3's orthogonal init (gain sqrt 2) also hit the gate: without this reset its output layer
        # starts with a fixed logit gap and routing is decided before any training (issue 14).
        extractor.gate.reset_parameters()
        extractor.gate.route_log_probs = self.route_pg_coef > 0
        if self.freeze_experts:
            extractor.experts.requires_grad_(False)
        if self.gate_lr_scale != 1.0:  # SB3 built one group over every parameter: the gate gets its own
            gate = list(extractor.gate.parameters())
            in_gate = {id(p) for p in gate}
            lr = lr_schedule(1)
            self.optimizer = self.optimizer_class(
                [{"params": [p for p in self.parameters() if id(p) not in in_gate]},
                 {"params": gate, "lr": lr * self.gate_lr_scale, "lr_scale": self.gate_lr_scale, "name": "gate"}],
                lr=lr, **self.optimizer_kwargs,
            )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("features_extractor_class", "features_extractor_kwargs", "share_features_extractor"):
            data.pop(key, None)
        gate = self.extractor.gate
        data.update(
            expert_names=self.expert_names,
            top_k=self.extractor.top_k,
            noise=gate.noise_std if not gate.learned_noise else "learned",
            noise_floor=gate.noise_floor,
            k1_weight=gate.k1_weight,
            aggregation=self.aggregation,
            exploration_loss=self.exploration_kind,
            exploration_coef=self.exploration_coef,
            exploitation_coef=self.exploitation_coef,
            exploitation_vf_coef=self.exploitation_vf_coef,
            freeze_experts=self.freeze_experts,
            route_pg_coef=self.route_pg_coef,
            gate_lr_scale=self.gate_lr_scale,
        )
        return data

    @property
    def extractor(self) -> HubPathwayExtractor:
        return self.features_extractor  # type: ignore[return-value]

    @property
    def route_shape(self) -> tuple[int, int]:
        """(K, k): widths of a stored route's noise draw and selection."""
        return self.extractor.n_experts, self.extractor.top_k

    # --- forward passes ---------------------------------------------------------------------
    def _head_outputs(self, routed: RoutedFeatures) -> dict[int, tuple[th.Tensor, th.Tensor, th.Tensor]]:
        return {i: (idx, *self.expert_heads[i](feats)) for i, (idx, feats) in routed.per_expert.items()}

    def _outputs(
        self, obs: th.Tensor, route: Route | None = None, explore: bool | None = None,
    ) -> tuple[Distribution, th.Tensor, RoutedFeatures]:
        routed = self.extractor.route(self.preprocess(obs), route=route, explore=explore)
        if self.aggregation == "features":
            logits = self.action_net(routed.aggregated)
            values = self.value_net(routed.aggregated)
        else:
            batch = routed.aggregated.shape[0]
            logits = routed.aggregated.new_zeros(batch, int(self.action_space.n))
            values = routed.aggregated.new_zeros(batch, 1)
            w = routed.routing.weights
            for i, (idx, head_logits, head_values) in self._head_outputs(routed).items():
                logits = logits.index_add(0, idx, w[idx, i : i + 1] * head_logits)
                values = values.index_add(0, idx, w[idx, i : i + 1] * head_values)
        return self.action_dist.proba_distribution(action_logits=logits), values, routed

    def preprocess(self, obs: th.Tensor) -> th.Tensor:
        from stable_baselines3.common.preprocessing import preprocess_obs

        return preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)  # type: ignore[return-value]

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Act as the behaviour policy: draw gate noise, keep the route for the rollout buffer."""
        distribution, values, routed = self._outputs(obs, explore=True)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        self._acting_route = routed.routing.route()
        self._record_usage(routed)
        return actions.reshape((-1, *self.action_space.shape)), values, log_prob

    def pop_acting_route(self) -> Route:
        """The route of the latest ``forward`` call (once): what the rollout buffer stores."""
        route, self._acting_route = self._acting_route, None
        if route is None:
            raise RuntimeError("No acting route to store: the rollout buffer must be filled right after policy.forward().")
        return route

    def evaluate_actions(
        self, obs: th.Tensor, actions: th.Tensor, route: Route | None = None
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """Values, log-probabilities and entropy under the stored acting ``route`` when given."""
        distribution, values, routed = self._outputs(obs, route=route)
        self._last_routed, self._last_route = routed, route  # consumed by auxiliary_loss on the same minibatch
        self._last_obs = obs if self.route_pg_coef > 0 else None
        return values, distribution.log_prob(actions), distribution.entropy()

    #: ``predict`` (evaluation, ``hubrl-enjoy``) routes noise-free unless this is set; then each call
    #: draws fresh acting gate noise and plays the mixture of routes the agent acted with in
    #: training. A runtime switch, not saved: use :func:`predict_with_gate_noise`.
    gate_noise_in_predict: bool = False

    def get_distribution(self, obs: th.Tensor) -> Distribution:
        return self._outputs(obs, explore=self.gate_noise_in_predict)[0]

    #: ``predict_values`` estimates values as the acting policy does while this is set (:meth:`acting_values`).
    values_as_acting: bool = False

    @contextmanager
    def acting_values(self) -> Iterator[None]:
        """Within the block, ``predict_values`` routes each state with a fresh draw of the acting
        gate noise, as ``forward`` does, instead of noise-free.

        SB3's ``collect_rollouts`` bootstraps GAE from ``predict_values`` on the rollout's last
        observations (and on a time-limit-truncated episode's final one). Every value the rollout
        stores is the value of one acting draw of the route, so the bootstrap must be one too: the
        noise-free route is not the acting policy, and at a gate near even it sends almost every
        state to the same expert while acting splits them. :class:`hubrl.agents.routing.RoutedOnPolicyMixin`
        wraps ``collect_rollouts`` in this block; outside it (evaluation, a user's call) values stay noise-free.
        """
        previous, self.values_as_acting = self.values_as_acting, True
        try:
            yield
        finally:
            self.values_as_acting = previous

    def predict_values(self, obs: th.Tensor) -> th.Tensor:
        return self._outputs(obs, explore=self.values_as_acting)[1]

    # --- auxiliary losses -------------------------------------------------------------------
    def auxiliary_loss(self, batch: AuxiliaryBatch) -> AuxiliaryTerms | None:
        routed, self._last_routed = self._last_routed, None
        replayed, self._last_route = self._last_route, None
        obs, self._last_obs = self._last_obs, None
        if routed is None:
            return None
        routing = routed.routing
        explore = exploration_loss(routing, self.exploration_kind)
        heads = self._head_outputs(routed)
        exploit = exploitation_loss(
            heads, batch.actions, batch.old_log_prob, batch.advantages, batch.returns,
            batch.clip_range, self.exploitation_vf_coef,
        )
        loss = self.exploration_coef * explore + self.exploitation_coef * exploit
        logs: dict[str, float | th.Tensor] = {}
        # the route's policy gradient needs the acting gate's probability of the route, stored in the
        # rollout (a stock SB3 agent, which replays no route, trains without this term)
        if (self.route_pg_coef > 0 and routing.log_prob is not None and replayed is not None
                and replayed.log_prob is not None and obs is not None):
            route_pg = route_policy_loss(routing.log_prob, replayed.log_prob, self._route_advantages(obs, batch),
                                         batch.clip_range)
            loss = loss + self.route_pg_coef * route_pg
            logs["route_pg_loss"] = route_pg.detach()
            logs["route_prob"] = routing.log_prob.detach().exp().mean()  # 1/K: a coin; 1: routes decided by state
        with th.no_grad():
            # how far the gate moved since acting: samples the current gate (same noise) would reroute
            current = routing.logits.topk(routing.selected.shape[1], dim=1).indices.sort(1).values
            reroute = (current != routing.selected.sort(1).values).any(1).float().mean()
        # 0-d tensors: the agent reads them once per update, not once per minibatch (no GPU stall here)
        logs.update(exploration_loss=explore.detach(), exploitation_loss=exploit.detach(), gate_reroute_frac=reroute)
        logs.update(exploitation_ratio_stats(heads, batch.actions, batch.old_log_prob, batch.clip_range))
        return AuxiliaryTerms(loss, logs)

    def _route_advantages(self, obs: th.Tensor, batch: AuxiliaryBatch) -> th.Tensor:
        """The advantage of each sample's route: its return minus the value of the state on the
        noise-free route, normalised as the agent normalises its own advantages.

        Not the agent's advantages: those are measured against the stored value of the *sampled*
        route, V(s, r), which the critic learns per route (at k = 1 it sees the chosen expert's
        features), so as it fits they tend to Q(s, r) - V(s, r) = 0 whichever route was better,
        and a baseline that depends on the sampled choice biases a policy gradient. The noise-free
        route's value depends on the state only (the greedy decode as baseline, as in self-critical
        training): a route whose return beats it is favoured. Costs one gradient-free forward pass
        of the minibatch.
        """
        with th.no_grad():
            baseline = self._outputs(obs, explore=False)[1].flatten()
        advantages = batch.returns.flatten() - baseline
        if batch.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return advantages

    # --- gate usage statistics --------------------------------------------------------------
    def reset_usage(self) -> None:
        self._usage_samples = 0
        # On the gate's device, read back once per rollout (usage, gate_stats) rather than once per
        # acting step: (4, K) sums (float64; float32 on MPS, usage_dtype) of weight, selected, centred clean logit
        # and its square.
        self._usage_sums: th.Tensor | None = None
        self._noise_std_sum: th.Tensor | None = None

    def _record_usage(self, routed: RoutedFeatures) -> None:
        routing = routed.routing
        with th.no_grad():
            w = routing.weights.detach()
            dtype = usage_dtype(w.device)
            centred = (routing.clean - routing.clean.mean(1, keepdim=True)).detach().to(dtype)
            # selected, not w != 0: a selected expert's weight can underflow to 0 (a top-k softmax over a wide gap)
            selected = th.zeros_like(w, dtype=dtype).scatter_(1, routing.selected, 1.0).sum(0)
            sums = th.stack([w.sum(0).to(dtype), selected, centred.sum(0), (centred**2).sum(0)])
            self._usage_sums = sums if self._usage_sums is None else self._usage_sums + sums
            if routing.noise_std is not None:
                noise = routing.noise_std.detach().mean(1).sum().to(dtype)
                self._noise_std_sum = noise if self._noise_std_sum is None else self._noise_std_sum + noise
        self._usage_samples += w.shape[0]

    def _host_usage(self) -> np.ndarray:
        """The (4, K) usage sums on the host (one copy per rollout)."""
        if self._usage_sums is None:
            return np.zeros((4, len(self.expert_names)))
        return self._usage_sums.cpu().numpy()

    def usage(self) -> dict[str, dict[str, float]]:
        """Per expert: mean pathway weight and selection frequency since the last reset."""
        n = max(self._usage_samples, 1)
        weight, selected = self._host_usage()[:2]
        return {
            name: {"weight_mean": float(weight[i] / n), "selection_freq": float(selected[i] / n)}
            for i, name in enumerate(self.expert_names)
        }

    def gate_stats(self) -> dict[str, float]:
        """Gate diagnostics over the states acted on since the last reset (logged per rollout).

        * ``noise_std``: mean gate noise std;
        * ``logit_spread``: how much the (expert-centred) clean logits vary *across states*
          (std over states, averaged over experts) — routing that specialises by state;
        * ``logit_drift``: how far their batch mean moved *since the previous rollout* — routing
          that drifts in time instead. Spread above drift is what input-level routing looks like.
        """
        n = self._usage_samples
        if n == 0:
            return {}
        logit_sum, logit_sq_sum = self._host_usage()[2:]
        mean = logit_sum / n
        spread = float(np.sqrt(np.maximum(logit_sq_sum / n - mean**2, 0.0)).mean())
        noise = float(self._noise_std_sum) if self._noise_std_sum is not None else 0.0
        stats = {"noise_std": noise / n, "logit_spread": spread}
        if self._previous_logit_mean is not None:
            stats["logit_drift"] = float(np.abs(mean - self._previous_logit_mean).mean())
        self._previous_logit_mean = mean
        return stats


def load_hub_weights(policy: HubPathwayPolicy, hub: Hub) -> None:
    """Copy each hub expert's encoder into the policy's extractor, in hub order."""
    if policy.expert_names != hub.names:
        raise ValueError(f"Policy experts {policy.expert_names} do not match the hub {hub.names}.")
    for module, expert in zip(policy.extractor.experts, hub.experts):
        module.load_state_dict(expert.encoder_tensors(policy.device))


def check_gate_noise(model: Any) -> HubPathwayPolicy:
    """The policy of ``model`` (an SB3 agent or its policy) if it routes with a noisy gate, which
    :func:`predict_with_gate_noise` needs; a command checks it before it plays.

    :raises UsageError: when ``model`` does not route with a noisy gate.
    """
    policy = getattr(model, "policy", model)
    if not isinstance(policy, HubPathwayPolicy) or not policy.extractor.gate.has_noise:
        raise UsageError(f"Gate noise needs a Hub-Pathway policy with a noisy gate; {type(policy).__name__} "
                         + ("routes without noise" if isinstance(policy, HubPathwayPolicy) else "does not route")
                         + ": drop --gate-noise.")
    return policy


@contextmanager
def predict_with_gate_noise(model: Any, enabled: bool = True) -> Iterator[None]:
    """Within the block, ``predict`` of ``model`` (an SB3 agent or its policy) routes each state
    with a fresh draw of the gate noise it acted with in training, instead of noise-free.

    Evaluation (and ``predict``) is noise-free by default, as for any mixture of experts, but a
    k = 1 Hub-Pathway agent whose gate is still near even acts in training with a per-state draw
    between its experts' policies (``hubrl-bench routes``): this plays that acting policy, so the
    two can be scored side by side (``hubrl-enjoy RUN --gate-noise``).

    :raises UsageError: when ``model`` does not route with a noisy gate.
    """
    if not enabled:
        yield
        return
    policy = check_gate_noise(model)
    before, policy.gate_noise_in_predict = policy.gate_noise_in_predict, True
    try:
        yield
    finally:
        policy.gate_noise_in_predict = before  # a nested block leaves the outer one's noise on
