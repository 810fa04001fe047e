"""A2C whose objective also carries the policy's auxiliary losses (see :mod:`hubrl.agents.auxiliary`).

``train()`` is SB3 2.x's ``A2C.train`` plus the auxiliary terms, added before the single backward
pass, and a routed policy's batch is evaluated under its stored acting routes (:mod:`hubrl.agents.routing`).
With a policy that has neither it is SB3's A2C; saved models open with stock
``stable_baselines3.A2C.load``.
"""

from __future__ import annotations

import torch as th
from gymnasium import spaces
from stable_baselines3 import A2C
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from hubrl.agents.auxiliary import AuxiliaryBatch, AuxiliaryLossPolicy, logged_means
from hubrl.agents.legacy import LegacyLoadMixin
from hubrl.agents.routing import RoutedOnPolicyMixin

__all__ = ["HubA2C"]


class HubA2C(LegacyLoadMixin, RoutedOnPolicyMixin, A2C):
    """SB3 A2C + auxiliary losses from the policy, logged under ``train/<name>``."""

    def train(self) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        aux_logs: dict[str, float | th.Tensor] = {}
        for rollout_data in self.rollout_buffer.get(batch_size=None):
            actions = rollout_data.actions
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.long().flatten()

            values, log_prob, entropy = self._evaluate(rollout_data, actions)
            values = values.flatten()
            advantages = rollout_data.advantages
            if self.normalize_advantage:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

            policy_loss = -(advantages * log_prob).mean()
            value_loss = F.mse_loss(rollout_data.returns, values)
            entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
            loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

            if isinstance(self.policy, AuxiliaryLossPolicy):
                terms = self.policy.auxiliary_loss(
                    AuxiliaryBatch(actions, rollout_data.old_log_prob, advantages, rollout_data.returns, None,
                                   normalize_advantage=self.normalize_advantage)
                )
                if terms is not None:
                    loss = loss + terms.loss
                    aux_logs = terms.logs

            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self._n_updates += 1
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/entropy_loss", entropy_loss.item())
        self.logger.record("train/policy_loss", policy_loss.item())
        self.logger.record("train/value_loss", value_loss.item())
        for key, mean in logged_means({key: [value] for key, value in aux_logs.items()}).items():  # one read-back
            self.logger.record(f"train/{key}", mean)
