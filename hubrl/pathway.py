"""Hub-Pathway (Shu et al., NeurIPS 2022): a noisy pathway generator routes each observation to
the top-k experts of the hub, and only those experts' encoders run on it.

* :class:`PathwayGenerator` — a light CNN on the observation gives one clean logit per expert.
  When the agent *acts* in training, Gaussian noise is added (noisy top-k gating, Shazeer et al.
  2017) and the top-k noisy logits pick the experts. Evaluation and ``predict`` are noise-free.
* **Noise scale.** A fixed std (the default, 1.0) or a learned, input-dependent ``softplus`` scale
  with a floor. The task loss never trains the scale: it enters the weights detached, so only a
  balancing loss that looks at it (``importance-load``) does. Through the weights the std would be
  a lever on the selected expert's weight (the winner's noise draw is positive on average, so a
  larger std means more weight for it), and under ``straight-through`` the task loss pulled it up
  without bound: 46 at 250k steps on Alien in the 1M grid, so the routing became a coin toss.
* **Routes are replayable.** The standard-normal draw and the selected experts of each acting step
  form a :class:`Route`; the rollout buffer stores it (:mod:`hubrl.agents.routing`), and the update
  recomputes the logits with the current parameters *plus the stored draw* and keeps the stored
  selection. The PPO ratio therefore compares the same pathway before and after the update (it is
  exactly 1 before the first gradient step, as for a plain CNN policy) while the gate still gets
  gradient through the weights.
* **Pathway weights.** For k > 1, a softmax over the selected experts' noisy logits. For k = 1 that
  softmax is constantly 1, so the selected expert's weight is either its probability under the
  softmax over all experts (``k1_weight="prob"``, Switch Transformer) or 1 in the forward pass with
  that probability's gradient (``"straight-through"``), which keeps the expert's features at their
  pretrained scale.
* **Even start.** The gate's output layer starts at zero bias and tiny weights, *after* SB3's
  orthogonal init of the features extractor (which otherwise gives a fixed logit gap, and routing
  decided before any training): :meth:`PathwayGenerator.reset_parameters`.
* :class:`HubPathwayExtractor` — an SB3 ``BaseFeaturesExtractor`` holding one NatureCNN encoder
  per expert. **Input-level routing**: each expert runs only on the samples routed to it (an
  index-select per expert, so compute grows with k, not with hub size; when one expert takes the
  whole batch it runs on the batch as is). **Aggregation**: the selected experts' features are
  summed with the pathway weights (the default, ``aggregation="features"``; the paper's
  output-level form, a weighted sum of per-expert heads' outputs, is ``aggregation="heads"`` in
  :class:`hubrl.policies.HubPathwayPolicy`). :meth:`HubPathwayExtractor.route` also returns each
  expert's own features, which the policy uses for per-expert heads and the exploitation loss.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from torch import nn
from torch.nn import functional as F

from hubrl.agents.routing import Route

__all__ = [
    "DEFAULT_NOISE", "K1_WEIGHTS", "Route", "Routing", "RoutedFeatures", "PathwayGenerator", "HubPathwayExtractor",
    "top1_route_log_prob",
]

K1_WEIGHTS = ("prob", "straight-through")
DEFAULT_NOISE = 1.0  # fixed gate-noise std: about the logit gap at which routing turns deterministic


@dataclass
class Routing:
    """Gate decisions for a batch of B samples over K experts.

    :param weights: (B, K) pathway weights, zero for unselected experts.
    :param selected: (B, k) indices of the selected experts.
    :param probs: (B, K) softmax of the noise-free logits (what balancing losses look at).
    :param logits: (B, K) logits the selection and weights come from (noisy when noise was drawn).
    :param clean: (B, K) noise-free logits.
    :param noise_std: (B, K) noise scale, or ``None`` for a gate without noise.
    :param noise: (B, K) standard-normal draw used, or ``None`` when none was (evaluation).
    :param log_prob: (B,) log-probability that the gate noise selects ``selected`` (with gradient
        to the clean logits), when the gate was asked for it (:attr:`PathwayGenerator.route_log_probs`).
    """

    weights: th.Tensor
    selected: th.Tensor
    probs: th.Tensor
    logits: th.Tensor
    clean: th.Tensor
    noise_std: th.Tensor | None = None
    noise: th.Tensor | None = None
    log_prob: th.Tensor | None = None

    def route(self) -> Route:
        """The replayable part (detached); requires that noise was drawn or is zero."""
        noise = self.noise if self.noise is not None else th.zeros_like(self.clean)
        log_prob = self.log_prob.detach() if self.log_prob is not None else None
        return Route(noise.detach(), self.selected.detach(), log_prob)


@dataclass
class RoutedFeatures:
    """Output of the routed forward pass."""

    routing: Routing
    aggregated: th.Tensor  # (B, features_dim)
    # expert index -> (sample indices routed to it, that expert's features on them)
    per_expert: dict[int, tuple[th.Tensor, th.Tensor]]


@functools.lru_cache(maxsize=4)
def _gauss_hermite(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and log-weights for E[f(x)], x ~ N(0, 1), by Gauss-Hermite quadrature."""
    t, w = np.polynomial.hermite.hermgauss(n_nodes)
    return t * math.sqrt(2.0), np.log(w / math.sqrt(math.pi))


def top1_route_log_prob(clean: th.Tensor, std: th.Tensor, selected: th.Tensor, n_nodes: int = 32) -> th.Tensor:
    """Log-probability that independent Gaussian gate noise makes ``selected`` the top-1 expert.

    With noisy logits ``clean_j + std_j * eps_j`` the chosen expert i wins with probability
    ``E_x[prod_{j != i} Phi((clean_i - clean_j + std_i x) / std_j)]``, x standard normal: a smooth
    1-D integral, computed by Gauss-Hermite quadrature. Against the closed form
    ``Phi(gap / sqrt(std_i^2 + std_j^2))`` of two experts, 32 nodes are within 2e-7 for equal stds
    (the fixed-noise default) at gaps up to 8 stds, and within about 1e-4 for stds (0.5, 1.5) at
    gaps up to 4; the error grows when the chosen expert's std is several times another's (6e-3 for
    (0.3, 1.5), 4e-2 for (0.3, 3.0)), which only a learned noise can reach. It keeps the paper's
    Gaussian noise for any hub size; the gradient reaches the clean logits only.

    :param clean: (B, K) noise-free logits.
    :param std: (B, K) noise std (> 0; detached here: only a balancing loss trains a learned scale).
    :param selected: (B, 1) the selected expert of each sample.
    :return: (B,) log-probabilities.
    """
    nodes, log_weights = _gauss_hermite(n_nodes)
    x = th.as_tensor(nodes, dtype=clean.dtype, device=clean.device)
    std = std.detach().clamp_min(1e-6)
    winner = clean.gather(1, selected)  # (B, 1)
    winner_std = std.gather(1, selected)
    z = ((winner - clean).unsqueeze(1) + winner_std.unsqueeze(1) * x.view(1, -1, 1)) / std.unsqueeze(1)  # (B, N, K)
    others = th.ones_like(clean).scatter(1, selected, 0.0).unsqueeze(1)  # the winner's own factor is 1
    log_integrand = (th.special.log_ndtr(z) * others).sum(-1)  # (B, N)
    return th.logsumexp(log_integrand + th.as_tensor(log_weights, dtype=clean.dtype, device=clean.device), dim=1)


class PathwayGenerator(nn.Module):
    """Noisy top-k gate: observation -> pathway weights over ``n_experts``.

    :param n_input_channels: stacked frames of the (normalised) observation.
    :param n_experts: hub size K.
    :param top_k: experts selected per sample (1 <= k <= K).
    :param noise: a fixed std (float, 0 for none) or ``"learned"`` (input-dependent std, Shazeer
        et al.; trained only by a balancing loss that looks at it, see the module docstring).
    :param noise_floor: added to the learned std, so exploration of routes never dies out.
    :param k1_weight: weight of the single selected expert when k = 1 (see the module docstring).
        With ``"prob"`` a noise-free pass (evaluation, ``predict``) weighs the expert by its
        noise-free probability, on average lower than the noisy softmax it acted with in training
        (about 0.5 against 0.7 for two even experts at noise 1): features at another scale than the
        heads were trained on. ``"straight-through"`` (HubPathwayPolicy's default) weighs it 1 either way.
    """

    def __init__(
        self,
        n_input_channels: int,
        n_experts: int,
        top_k: int,
        noise: str | float = DEFAULT_NOISE,
        noise_floor: float = 0.0,
        k1_weight: str = "prob",
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be between 1 and the hub size {n_experts}, got {top_k}.")
        if k1_weight not in K1_WEIGHTS:
            raise ValueError(f"k1_weight must be one of {K1_WEIGHTS}, got {k1_weight!r}.")
        self.learned_noise = noise == "learned"
        self.noise_std = 0.0 if self.learned_noise else float(noise)
        self.noise_floor = float(noise_floor)
        for name, value in (("noise", self.noise_std), ("noise_floor", self.noise_floor)):
            if not (value >= 0 and value < float("inf")):  # also rejects nan
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
        self.n_experts, self.top_k, self.k1_weight = n_experts, top_k, k1_weight
        self.body = nn.Sequential(
            # about a tenth of NatureCNN's multiply-adds: the gate must stay cheap next to an expert
            nn.Conv2d(n_input_channels, 8, 8, stride=4), nn.ReLU(),
            nn.Conv2d(8, 16, 4, stride=2), nn.ReLU(),
            nn.Flatten(),
        )
        hidden = 16 * 9 * 9
        self.w_gate = nn.Linear(hidden, n_experts)
        self.w_noise = nn.Linear(hidden, n_experts) if self.learned_noise else None
        #: compute :attr:`Routing.log_prob` in ``forward`` (a gate trained by its routes' policy gradient)
        self.route_log_probs = False
        self.reset_parameters()

    @property
    def has_noise(self) -> bool:
        return self.learned_noise or self.noise_std > 0

    def reset_parameters(self) -> None:
        """All experts start (almost) equal: zero bias, weights 100x smaller than SB3's policy head's
        gain, so the logits differ between states only enough to break ties; the learned noise
        starts at softplus(0) ~ 0.69 (plus the floor), independent of the input.

        Call after SB3's orthogonal init of the features extractor (``HubPathwayPolicy._build``).
        """
        nn.init.orthogonal_(self.w_gate.weight, gain=1e-4)
        nn.init.zeros_(self.w_gate.bias)
        if self.w_noise is not None:
            nn.init.zeros_(self.w_noise.weight)
            nn.init.zeros_(self.w_noise.bias)

    def sample_noise(self, clean: th.Tensor) -> th.Tensor:
        """A fresh standard-normal draw shaped like the logits."""
        return th.randn_like(clean)

    def forward(
        self,
        obs: th.Tensor,
        noise: th.Tensor | None = None,
        selected: th.Tensor | None = None,
        explore: bool | None = None,
    ) -> Routing:
        """Route a batch.

        :param noise: a stored standard-normal draw to replay (shape (B, K)).
        :param selected: stored expert indices to use instead of re-selecting (shape (B, k)).
        :param explore: with no ``noise`` given, draw fresh noise (default: in training mode only).
        """
        hidden = self.body(obs)
        clean = self.w_gate(hidden)
        std = None
        if self.has_noise:
            if self.w_noise is not None:
                std = F.softplus(self.w_noise(hidden)) + self.noise_floor
            else:
                std = th.full_like(clean, self.noise_std)
        if noise is None and std is not None and (self.training if explore is None else explore):
            noise = self.sample_noise(clean)
        # std detached: the task loss must not use the noise scale as a lever on the weights
        logits = clean if noise is None or std is None else clean + noise * std.detach()
        if selected is None:
            selected = logits.topk(self.top_k, dim=-1).indices
        if self.top_k == 1:
            prob = th.softmax(logits, dim=-1).gather(1, selected)
            top_weights = prob if self.k1_weight == "prob" else (prob - prob.detach()) + 1.0
        else:
            top_weights = th.softmax(logits.gather(1, selected), dim=-1)
        weights = th.zeros_like(logits).scatter(1, selected, top_weights)
        log_prob = None
        if self.route_log_probs and noise is not None and std is not None and self.top_k == 1:  # a sampled route
            log_prob = top1_route_log_prob(clean, std, selected)
        return Routing(weights, selected, th.softmax(clean, dim=-1), logits, clean, std, noise, log_prob)


class HubPathwayExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: route each observation to its top-k experts and aggregate.

    Train it through :class:`hubrl.policies.HubPathwayPolicy`, which adds per-expert heads, replayed
    routes and the auxiliary losses. Inside a stock ``ActorCriticPolicy``
    (``features_extractor_class=HubPathwayExtractor``) it runs, but SB3 collects rollouts in eval
    mode, so it acts on noise-free routes and updates on freshly drawn noisy ones: the update sees
    other routes than the acting policy, and SB3's orthogonal init leaves the gate uneven. Expert
    weights are loaded after construction (:func:`hubrl.policies.load_hub_weights`), so a saved
    model holds them in its state_dict and rebuilds from these plain kwargs.

    :param expert_names: one name per expert (used for logging; the count fixes K).
    :param top_k: experts per sample.
    :param noise: gate noise, see :class:`PathwayGenerator`.
    :param noise_floor: minimum learned noise std.
    :param k1_weight: weight of the selected expert when k = 1.
    :param features_dim: NatureCNN output width (512 for SB3's CnnPolicy).
    """

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        expert_names: list[str] | tuple[str, ...] = ("expert",),
        top_k: int = 1,
        noise: str | float = DEFAULT_NOISE,
        noise_floor: float = 0.0,
        k1_weight: str = "prob",
        features_dim: int = 512,
    ) -> None:
        super().__init__(observation_space, features_dim)
        self.expert_names = list(expert_names)
        self.experts = nn.ModuleList(NatureCNN(observation_space, features_dim) for _ in self.expert_names)
        self.gate = PathwayGenerator(observation_space.shape[0], len(self.expert_names), top_k, noise, noise_floor, k1_weight)

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    @property
    def top_k(self) -> int:
        return self.gate.top_k

    def route(self, observations: th.Tensor, route: Route | None = None, explore: bool | None = None) -> RoutedFeatures:
        """Gate, dispatch and aggregate. ``route`` replays a stored acting route; ``explore`` draws
        fresh gate noise (default: in training mode) when no route is given."""
        if route is None:
            routing = self.gate(observations, explore=explore)
        else:
            routing = self.gate(observations, noise=route.noise, selected=route.selected)
        batch = observations.shape[0]
        aggregated = observations.new_zeros(batch, self.features_dim)
        per_expert: dict[int, tuple[th.Tensor, th.Tensor]] = {}
        for i, expert in enumerate(self.experts):
            mask = (routing.selected == i).any(dim=1)
            idx = mask.nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            # the whole batch on one expert (common at k = 1): skip the gather
            features = expert(observations if idx.numel() == batch else observations.index_select(0, idx))
            per_expert[i] = (idx, features)
            aggregated = aggregated.index_add(0, idx, routing.weights[idx, i : i + 1] * features)
        return RoutedFeatures(routing, aggregated, per_expert)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.route(observations).aggregated
