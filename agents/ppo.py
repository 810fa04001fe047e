"""PPO whose objective also carries the policy's auxiliary losses (see :mod:`hubrl.agents.auxiliary`).

``train()`` is SB3 2.x's ``PPO.train`` line for line, plus one step: after
``evaluate_actions`` the policy may return extra terms, which join the loss before the single
backward pass; a routed policy's minibatches are evaluated under their stored acting routes
(:mod:`hubrl.agents.routing`). With a policy that has no ``auxiliary_loss`` and no routes it is SB3's PPO. Saved models open
with stock ``stable_baselines3.PPO.load``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from hubrl.agents.auxiliary import AuxiliaryBatch, AuxiliaryLossPolicy, logged_means
from hubrl.agents.legacy import LegacyLoadMixin
from hubrl.agents.routing import RoutedOnPolicyMixin

__all__ = ["HubPPO"]


class HubPPO(LegacyLoadMixin, RoutedOnPolicyMixin, PPO):
    """SB3 PPO + auxiliary losses from the policy, logged under ``train/<name>``."""

    def train(self) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        has_aux = isinstance(self.policy, AuxiliaryLossPolicy)

        entropy_losses, pg_losses, value_losses, clip_fractions = [], [], [], []
        aux_logs: dict[str, list[float | th.Tensor]] = defaultdict(list)
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = rollout_data.actions.long().flatten()

                values, log_prob, entropy = self._evaluate(rollout_data, actions)
                values = values.flatten()
                advantages = rollout_data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                ratio = th.exp(log_prob - rollout_data.old_log_prob)
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()
                pg_losses.append(policy_loss.item())
                clip_fractions.append(th.mean((th.abs(ratio - 1) > clip_range).float()).item())

                if self.clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())

                entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                if has_aux:
                    terms = self.policy.auxiliary_loss(  # type: ignore[union-attr]
                        AuxiliaryBatch(actions, rollout_data.old_log_prob, advantages, rollout_data.returns, clip_range,
                                       normalize_advantage=self.normalize_advantage and len(advantages) > 1)
                    )
                    if terms is not None:
                        loss = loss + terms.loss
                        for key, value in terms.logs.items():
                            aux_logs[key].append(value)

                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        for key, mean in logged_means(aux_logs).items():  # read from the device at once, once per update
            self.logger.record(f"train/{key}", mean)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
