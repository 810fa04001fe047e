"""Routes are part of the rollout: a rollout buffer that stores each acting step's gate route.

A routing policy (Hub-Pathway) draws gate noise when it acts. For PPO's ratio, and for the
auxiliary losses, to judge the policy that acted, the update must use the same pathway: the same
noise draw (scaled by the gate's *current* noise std, which enters detached: the gradient
reaches the clean logits) and the same selected experts. :class:`RoutedRolloutBuffer` keeps them
beside the observations and hands them out with each minibatch as ``samples.route``;
:class:`RoutedOnPolicyMixin` installs it for any policy that implements :class:`RoutedPolicy`,
and passes ``route=`` to ``evaluate_actions``.

SB3 fills the buffer in ``collect_rollouts`` right after ``policy(obs)``: the buffer reads the
route of that call from the policy (``pop_acting_route``), so SB3's loop is used unchanged. The
values that loop bootstraps GAE with (``predict_values`` on the last observations) are taken under
acting routes too (``acting_values``), as every stored value is.
The buffer is not saved with the model (SB3 excludes it), so stock ``PPO.load`` still opens a
routed model; a stock agent then trains it with fresh noise in the update, as before.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Generator, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.type_aliases import RolloutBufferSamples

__all__ = [
    "Route", "RoutedPolicy", "RoutedRolloutBuffer", "RoutedRolloutBufferSamples", "RoutedOnPolicyMixin", "fuse_adam",
    "fused_adam_available", "unfuse_where_unsupported",
]


@dataclass
class Route:
    """What rebuilds one batch's acting routing exactly: the noise draw and the chosen experts.

    :param noise: (B, K) standard-normal draw that was scaled by the gate's noise std and added to
        the clean logits when acting.
    :param selected: (B, k) long indices of the experts that acted.
    :param log_prob: (B,) log-probability, under the acting gate, that its noise selected these
        experts; only a gate trained by the policy gradient of its routes needs it (``None`` else).
    """

    noise: th.Tensor
    selected: th.Tensor
    log_prob: th.Tensor | None = None


@runtime_checkable
class RoutedPolicy(Protocol):
    """A policy whose acting routes must be replayed in the update."""

    route_shape: tuple[int, int]  # (K experts, k selected per sample)

    def pop_acting_route(self) -> Route:
        """The route of the latest acting ``forward`` call."""

    def evaluate_actions(self, obs: th.Tensor, actions: th.Tensor, route: Route | None = None) -> Any:
        """SB3's ``evaluate_actions`` under a stored route."""

    def acting_values(self) -> ContextManager[None]:
        """A block within which ``predict_values`` routes as the acting policy (the GAE bootstrap)."""


class RoutedRolloutBufferSamples(NamedTuple):
    """SB3's ``RolloutBufferSamples`` plus the minibatch's acting routes."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    route: Route


class RoutedRolloutBuffer(RolloutBuffer):
    """SB3 ``RolloutBuffer`` that also stores each step's gate noise draw and selected experts.

    :param n_experts: K (width of the noise draw).
    :param top_k: k (width of the selection).
    :param route_source: returns the route of the policy call that produced the step being added.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space,
        action_space,
        device: th.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        *,
        n_experts: int = 1,
        top_k: int = 1,
        route_source: Callable[[], Route] | None = None,
    ) -> None:
        self.n_experts, self.top_k = int(n_experts), int(top_k)
        self.route_source = route_source
        super().__init__(buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs)

    def reset(self) -> None:
        self.gate_noise = np.zeros((self.buffer_size, self.n_envs, self.n_experts), dtype=np.float32)
        self.gate_selected = np.zeros((self.buffer_size, self.n_envs, self.top_k), dtype=np.int64)
        self.gate_log_prob = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.has_route_log_prob = False
        self._routes_flat = False
        super().reset()

    def add(self, *args: Any, **kwargs: Any) -> None:
        if self.route_source is None:
            raise RuntimeError("RoutedRolloutBuffer needs a route_source (the policy's pop_acting_route).")
        route = self.route_source()
        self.gate_noise[self.pos] = route.noise.cpu().numpy().reshape(self.n_envs, self.n_experts)
        self.gate_selected[self.pos] = route.selected.cpu().numpy().reshape(self.n_envs, self.top_k)
        if route.log_prob is not None:
            self.gate_log_prob[self.pos] = route.log_prob.detach().cpu().numpy().reshape(self.n_envs)
            self.has_route_log_prob = True
        super().add(*args, **kwargs)

    def get(self, batch_size: int | None = None) -> Generator[RoutedRolloutBufferSamples, None, None]:  # type: ignore[override]
        if not self._routes_flat:
            self.gate_noise = self.swap_and_flatten(self.gate_noise)
            self.gate_selected = self.swap_and_flatten(self.gate_selected)
            self.gate_log_prob = self.swap_and_flatten(self.gate_log_prob)
            self._routes_flat = True
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(self, batch_inds: np.ndarray, env=None) -> RoutedRolloutBufferSamples:  # type: ignore[override]
        base: RolloutBufferSamples = super()._get_samples(batch_inds, env)
        route = Route(self.to_torch(self.gate_noise[batch_inds]),
                      th.as_tensor(self.gate_selected[batch_inds], device=self.device),
                      self.to_torch(self.gate_log_prob[batch_inds]).flatten() if self.has_route_log_prob else None)
        return RoutedRolloutBufferSamples(*base, route=route)


class RoutedOnPolicyMixin:
    """For ``OnPolicyAlgorithm`` subclasses (HubPPO, HubA2C): a routed buffer for routed policies,
    ``evaluate_actions`` under the stored routes, and GAE's bootstrap values under acting routes.

    It also gives Adam torch's fused implementation where this torch offers it (one kernel for the
    whole step instead of one per tensor; same arithmetic up to rounding), and keeps each optimizer
    parameter group's ``lr_scale`` (a policy's own learning-rate factor for some parameters, such as
    Hub-Pathway's ``gate_lr_scale``) when the schedule sets the learning rate.
    """

    def _setup_model(self) -> None:
        super()._setup_model()  # type: ignore[misc]
        policy = self.policy  # type: ignore[attr-defined]
        if isinstance(policy, RoutedPolicy):
            n_experts, top_k = policy.route_shape
            self.rollout_buffer = RoutedRolloutBuffer(  # type: ignore[attr-defined]
                self.n_steps, self.observation_space, self.action_space,  # type: ignore[attr-defined]
                device=self.device, gamma=self.gamma, gae_lambda=self.gae_lambda, n_envs=self.n_envs,  # type: ignore[attr-defined]
                n_experts=n_experts, top_k=top_k, route_source=policy.pop_acting_route,
            )
        fuse_adam(policy)

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        """SB3's: every group's learning rate from the schedule (logged as ``train/learning_rate``);
        then a group with an ``lr_scale`` gets that multiple of it, logged as
        ``train/learning_rate_<its name>`` (``train/learning_rate_gate`` for Hub-Pathway's gate)."""
        super()._update_learning_rate(optimizers)  # type: ignore[misc]
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for index, group in enumerate(optimizer.param_groups):
                if "lr_scale" in group:
                    group["lr"] = group["lr"] * group["lr_scale"]
                    self.logger.record(f"train/learning_rate_{group.get('name', index)}", group["lr"])  # type: ignore[attr-defined]

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        """SB3's ``collect_rollouts``, with a routed policy's bootstrap values (``predict_values`` on
        the last observations) taken under acting routes, like the values stored at every step."""
        policy = self.policy  # type: ignore[attr-defined]
        if not isinstance(policy, RoutedPolicy):
            return super().collect_rollouts(*args, **kwargs)  # type: ignore[misc]
        with policy.acting_values():
            return super().collect_rollouts(*args, **kwargs)  # type: ignore[misc]

    def set_parameters(self, *args: Any, **kwargs: Any) -> None:
        """SB3's ``set_parameters`` (what ``load`` calls), then the loaded optimizer state's ``fused``
        flag fitted to this torch and device (:func:`unfuse_where_unsupported`)."""
        super().set_parameters(*args, **kwargs)  # type: ignore[misc]
        unfuse_where_unsupported(self.policy.optimizer)  # type: ignore[attr-defined]

    def _evaluate(self, rollout_data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """``policy.evaluate_actions`` on a minibatch, under its acting routes when it has them."""
        route = getattr(rollout_data, "route", None)
        if route is not None:
            return self.policy.evaluate_actions(rollout_data.observations, actions, route=route)  # type: ignore[attr-defined]
        return self.policy.evaluate_actions(rollout_data.observations, actions)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=None)
def fused_adam_available(device_type: str) -> bool:
    """Whether this torch runs a fused Adam step on ``device_type`` (CPU: torch >= 2.4)."""
    try:
        probe = th.zeros(1, device=device_type, requires_grad=True)
        probe.grad = th.ones_like(probe)
        th.optim.Adam([probe], fused=True).step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def unfuse_where_unsupported(optimizer: th.optim.Optimizer) -> None:
    """Turn off ``fused`` in each parameter group where this torch has no fused step for its
    parameters' device. A loaded optimizer state carries the ``fused`` flag of the machine that saved
    it (:func:`fuse_adam` sets it where available), so a model saved with torch >= 2.4 and trained
    on with torch 2.3 on a CPU, or saved on a GPU and loaded on a device without fused Adam, would
    otherwise fail at its first step. Same arithmetic up to rounding."""
    for group in optimizer.param_groups:
        if group.get("fused") and group["params"] and not fused_adam_available(group["params"][0].device.type):
            group["fused"] = False


def fuse_adam(policy: Any) -> bool:
    """Rebuild ``policy.optimizer`` as fused Adam when it is a plain Adam and torch supports fused
    Adam on the policy's device; hyperparameters and parameter groups (with their own ``lr`` and
    ``lr_scale``) are kept. Returns whether it did."""
    optimizer = getattr(policy, "optimizer", None)
    if type(optimizer) is not th.optim.Adam or optimizer.defaults.get("fused") or optimizer.state:
        return False
    hyper = ("betas", "eps", "weight_decay", "amsgrad")
    if any(group[k] != optimizer.defaults[k] for group in optimizer.param_groups for k in hyper):
        return False  # a group with its own Adam settings: left as built
    if not fused_adam_available(next(policy.parameters()).device.type):
        return False
    defaults = {k: optimizer.defaults[k] for k in ("lr", *hyper)}
    kept = ("params", "lr", "lr_scale", "name")  # a group's own learning rate, its factor and its name
    groups = [{k: v for k, v in group.items() if k in kept} for group in optimizer.param_groups]
    policy.optimizer = th.optim.Adam(groups, fused=True, **defaults)
    return True
