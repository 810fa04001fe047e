"""Hub-Pathway (Shu et al., NeurIPS 2022): a noisy pathway generator routes each observation to
the top-k experts of the hub, and only those experts' encoders run on it.

* :class:`PathwayGenerator` — a light CNN on the observation gives one logit per expert; during
  training Gaussian noise is added (noisy top-k gating, Shazeer et al. 2017: fixed scale or a
  learned, input-dependent ``softplus`` scale); at evaluation the gate is noise-free. The top-k
  logits go through a softmax over the selected experts. With k = 1 that softmax is constantly 1
  and the gate would get no gradient from the task, so for k = 1 the selected expert's weight is
  its probability under the softmax over all experts (Switch Transformer routing).
* :class:`HubPathwayExtractor` — an SB3 ``BaseFeaturesExtractor`` holding one NatureCNN encoder
  per expert. **Input-level routing**: each expert runs only on the samples routed to it (an
  index-select per expert, so compute grows with k, not with hub size). **Output-level
  aggregation**: the selected experts' features are summed with the pathway weights.
  :meth:`HubPathwayExtractor.route` also returns each expert's own features, which the policy
  uses for per-expert heads (paper form) and the exploitation loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from torch import nn
from torch.nn import functional as F

__all__ = ["Routing", "RoutedFeatures", "PathwayGenerator", "HubPathwayExtractor"]


@dataclass
class Routing:
    """Gate decisions for a batch of B samples over K experts.

    :param weights: (B, K) pathway weights, zero for unselected experts.
    :param selected: (B, k) indices of the selected experts.
    :param probs: (B, K) softmax of the noise-free logits (what the exploration loss balances).
    :param logits: (B, K) logits used for selection (noisy in training).
    """

    weights: th.Tensor
    selected: th.Tensor
    probs: th.Tensor
    logits: th.Tensor


@dataclass
class RoutedFeatures:
    """Output of the routed forward pass."""

    routing: Routing
    aggregated: th.Tensor  # (B, features_dim)
    # expert index -> (sample indices routed to it, that expert's features on them)
    per_expert: dict[int, tuple[th.Tensor, th.Tensor]]


class PathwayGenerator(nn.Module):
    """Noisy top-k gate: observation -> pathway weights over ``n_experts``.

    :param n_input_channels: stacked frames of the (normalised) observation.
    :param n_experts: hub size K.
    :param top_k: experts selected per sample (1 <= k <= K).
    :param noise: ``"learned"`` (input-dependent std, Shazeer et al.), a float (fixed std), or 0.
    """

    def __init__(self, n_input_channels: int, n_experts: int, top_k: int, noise: str | float = "learned") -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be between 1 and the hub size {n_experts}, got {top_k}.")
        self.n_experts, self.top_k = n_experts, top_k
        self.body = nn.Sequential(
            # about a tenth of NatureCNN's multiply-adds: the gate must stay cheap next to an expert
            nn.Conv2d(n_input_channels, 8, 8, stride=4), nn.ReLU(),
            nn.Conv2d(8, 16, 4, stride=2), nn.ReLU(),
            nn.Flatten(),
        )
        hidden = 16 * 9 * 9
        self.w_gate = nn.Linear(hidden, n_experts)
        self.learned_noise = noise == "learned"
        self.noise_std = 0.0 if self.learned_noise else float(noise)
        self.w_noise = nn.Linear(hidden, n_experts) if self.learned_noise else None
        self.reset_noise()

    def reset_noise(self) -> None:
        """Start the learned noise at softplus(0) ~ 0.69, independent of the input."""
        if self.w_noise is not None:
            nn.init.zeros_(self.w_noise.weight)
            nn.init.zeros_(self.w_noise.bias)

    def forward(self, obs: th.Tensor) -> Routing:
        hidden = self.body(obs)
        clean = self.w_gate(hidden)
        logits = clean
        if self.training:
            if self.w_noise is not None:
                logits = clean + th.randn_like(clean) * F.softplus(self.w_noise(hidden))
            elif self.noise_std > 0:
                logits = clean + th.randn_like(clean) * self.noise_std
        probs = th.softmax(clean, dim=-1)
        top_logits, selected = logits.topk(self.top_k, dim=-1)
        if self.top_k == 1:
            top_weights = th.softmax(logits, dim=-1).gather(1, selected)
        else:
            top_weights = th.softmax(top_logits, dim=-1)
        weights = th.zeros_like(logits).scatter(1, selected, top_weights)
        return Routing(weights=weights, selected=selected, probs=probs, logits=logits)


class HubPathwayExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: route each observation to its top-k experts and aggregate.

    Use inside any ``ActorCriticPolicy`` (``features_extractor_class=HubPathwayExtractor``);
    :class:`hubrl.policies.HubPathwayPolicy` adds per-expert heads and the auxiliary losses.
    Expert weights are loaded after construction (:func:`hubrl.policies.load_hub_weights`), so a
    saved model holds them in its state_dict and rebuilds from these plain kwargs.

    :param expert_names: one name per expert (used for logging; the count fixes K).
    :param top_k: experts per sample.
    :param noise: gate noise, see :class:`PathwayGenerator`.
    :param features_dim: NatureCNN output width (512 for SB3's CnnPolicy).
    """

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        expert_names: list[str] | tuple[str, ...] = ("expert",),
        top_k: int = 1,
        noise: str | float = "learned",
        features_dim: int = 512,
    ) -> None:
        super().__init__(observation_space, features_dim)
        self.expert_names = list(expert_names)
        self.experts = nn.ModuleList(NatureCNN(observation_space, features_dim) for _ in self.expert_names)
        self.gate = PathwayGenerator(observation_space.shape[0], len(self.expert_names), top_k, noise)

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    @property
    def top_k(self) -> int:
        return self.gate.top_k

    def route(self, observations: th.Tensor) -> RoutedFeatures:
        routing = self.gate(observations)
        batch = observations.shape[0]
        aggregated = observations.new_zeros(batch, self.features_dim)
        per_expert: dict[int, tuple[th.Tensor, th.Tensor]] = {}
        for i, expert in enumerate(self.experts):
            idx = (routing.selected == i).any(dim=1).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            features = expert(observations.index_select(0, idx))
            per_expert[i] = (idx, features)
            aggregated = aggregated.index_add(0, idx, routing.weights[idx, i : i + 1] * features)
        return RoutedFeatures(routing, aggregated, per_expert)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.route(observations).aggregated
