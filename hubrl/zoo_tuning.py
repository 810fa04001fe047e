"""Zoo-Tuning (Shu et al., ICML 2021): adaptive transfer from a zoo of models, as an SB3 extractor.

Every layer of the NatureCNN encoder (three convolutions and the 3136 -> 512 linear layer) holds
the K experts' parameters of that layer and uses, for each input, an **adaptive aggregation**
of them::

    W(x) = sum_k alpha_k(x) A_k W_k        b(x) = sum_k alpha_k(x) A_k b_k

* **Gate** ``alpha(x)`` in (0, 1)^K, one per layer: global average pooling of the layer input
  over space -> ``Linear -> ReLU -> Linear`` -> sigmoid (the paper's attention branch; hidden
  width ``in // 4 + 1`` unless ``gate_hidden`` is given). The linear layer's gate reads the same
  summary as a conv would: the 64 channels of the conv-3 output pooled over its 7x7 positions
  (before flattening), which costs nothing next to the 3136-wide input.
* **Channel alignment** ``A_k`` (out x out, one per expert and layer, initialised to the
  identity) mixes the output channels of expert k's kernel and bias before aggregation, so
  experts whose channels play the same role in a different order can be combined.

Initialisation (two deviations from the official code, made for RL): the gate's output layer starts
at zero weights and bias ``logit(1/K)`` (``logit(0.9)`` for K = 1), so at the start every gate is
1/K everywhere and the aggregated kernel is the mean of the experts' kernels. The official
bias-0 start (gates ~ 0.5) would scale every layer by ~K/2, i.e. the features by (K/2)^4.
The gate's hidden layer keeps the magnitudes of its initial weights (SB3's orthogonal ones in a
policy) but not their signs, ``|W|``, and starts with bias 0 (the official hidden layer has no
bias). Its inputs are never negative (frame means in [0, 1], means of ReLU outputs), so every
hidden unit starts with a positive pre-activation on every input that is not all zeros, whatever
the input's scale and the experts. With signed weights (SB3's orthogonal or the official Kaiming
start) a unit whose weights point away from where the inputs lie is dead on all of them and gets
no gradient, and a gate whose units are all dead learns one input-independent mix
(:class:`ZooTuningExtractor` gives the frequencies). The price: every unit starts in the ReLU's
linear part, so each gate's hidden layer starts linear in its input and bends only as training
moves its weights and biases. Both starts are set by :meth:`ZooTuningExtractor.reset_gates`,
which a policy must call after SB3's ``ortho_init``.

**Applying per-sample kernels.** Convolution is linear in the kernel, so
``conv(x, sum_k a_k A_k W_k) = sum_k a_k A_k conv(x, W_k)``. For the convolutions this module
builds one kernel per sample (``sum_k alpha_bk (A_k W_k)``, with ``A_k W_k`` formed once per
batch) and runs one grouped convolution with ``groups=B`` (as the official implementation
does). ``OMP_NUM_THREADS=1 python scripts/benchmark_speed.py zoo-conv`` times this against the
output-space alternative and plain NatureCNN convolutions, after checking that the three give the
same output; its numbers on the development CPU are in BENCHMARKS.md, "Zoo-Tuning: per-sample
convolutions". The grouped path costs ~2-2.5 plain encoders whatever K; the output-space path
(one conv with K*out channels, then the per-sample mix ``sum_k alpha_bk A_k``) grows with K, so
the grouped path is used. For the linear layer, per-sample 512 x 3136 weights would take 1.6 GB
at B = 256, so it uses the output-space identity: one matmul with the K stacked weights, gates
applied to the K blocks, then the alignment as one ``(512, K*512)`` matmul.

**Zoo-Tuning lite** (``lite=True``): in training, each layer uses the batch-mean gate
``mean_b alpha(x_b)`` (one kernel per layer per batch, a plain conv) and keeps a detached
exponential moving average of it in the buffer ``ema_gate`` (in the state_dict, so it is saved
and loaded). In eval mode the stored vector is used and no gate runs, so the encoder is a fixed
NatureCNN; :func:`merge_lite` returns that NatureCNN's state_dict for deployment. In eval mode
without autograd (rollouts, ``predict``) each layer's merged kernel is cached until a parameter
changes, so lite rollouts cost one plain NatureCNN (merging the 512 x 3136 layer once per rollout
is cheaper than the output-space form on every step).

Lite under PPO / A2C: SB3 collects rollouts in eval mode, so the agent acts (and stores its
log-probabilities and values) with the moving-average gate, while the update, in train mode, uses
each minibatch's mean gate, which also depends on which samples share the minibatch. PPO's ratio
is therefore not exactly 1 on the first minibatch, and the average lags the gate by about
1 / (1 - momentum) = 10 minibatches (:data:`LITE_EMA_MOMENTUM`, 0.9, the official code's update
weight ``m = 0.1``; 100 minibatches with the 0.99 used before). This follows the paper's temporal
ensemble of batch-mean gates; with similar experts the first ratios stay near 1, with dissimilar
ones they can move further (not measured on the shipped hub). The full (non-lite) method acts and updates with the same
per-sample gates.

**Gate usage**: forward passes in eval mode (rollouts) add the gates to per-expert counters;
:meth:`ZooTuningExtractor.usage` gives each expert's mean gate over layers and samples since
:meth:`~ZooTuningExtractor.reset_usage` (lite, eval: the stored vectors, which are what is used).
:class:`ZooTuningPolicy` counts only its rollout forward passes (not ``predict``), like
:class:`hubrl.policies.HubPathwayPolicy`, for :class:`hubrl.callbacks.GateUsageCallback`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import gymnasium as gym
import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn
from torch.nn import functional as F

from hubrl.hub import Hub

__all__ = ["AdaptiveConv2d", "AdaptiveLinear", "ZooTuningExtractor", "ZooTuningPolicy", "load_zoo_weights", "merge_lite",
           "load_merged_lite", "LITE_EMA_MOMENTUM"]

#: Momentum of the lite moving average of the batch-mean gate: ``ema <- 0.9 ema + 0.1 batch mean``, the official
#: implementation's update weight (``AdaAggLayer.m = 0.1``). The average is what the agent acts with, and it lags the
#: gate the update trains by about 1 / (1 - momentum) minibatches: 10 here.
LITE_EMA_MOMENTUM = 0.9

# NatureCNN's convolutions: (out channels, kernel size, stride)
NATURE_CONVS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))


def initial_gate(n_experts: int) -> float:
    """Gate value every expert starts at: 1/K (the mean kernel), 0.9 for a single expert."""
    return 1.0 / n_experts if n_experts > 1 else 0.9


class _AdaptiveLayer(nn.Module):
    """Parameters shared by the adaptive conv and linear layers: K expert kernels and biases,
    K alignment matrices, the gate MLP and (lite) the moving average of the batch-mean gate.

    :param n_experts: K.
    :param in_features: input channels (conv) or input width (linear).
    :param out_features: output channels / width.
    :param kernel_shape: ``(kh, kw)`` for a conv, ``()`` for a linear layer.
    :param gate_in: width of the pooled summary the gate reads.
    :param gate_hidden: gate hidden width (``None``: ``gate_in // 4 + 1``).
    :param lite: Zoo-Tuning lite (batch-mean gate in training, stored gate in eval).
    :param ema_momentum: ``ema <- m * ema + (1 - m) * batch-mean gate`` (lite only).
    """

    def __init__(
        self,
        n_experts: int,
        in_features: int,
        out_features: int,
        kernel_shape: tuple[int, ...],
        gate_in: int,
        gate_hidden: int | None,
        lite: bool,
        ema_momentum: float,
    ) -> None:
        super().__init__()
        self.n_experts, self.in_features, self.out_features = n_experts, in_features, out_features
        self.lite, self.ema_momentum = bool(lite), float(ema_momentum)
        self.weight = nn.Parameter(th.empty(n_experts, out_features, in_features, *kernel_shape))
        self.bias = nn.Parameter(th.empty(n_experts, out_features))
        self.align = nn.Parameter(th.empty(n_experts, out_features, out_features))
        hidden = gate_hidden or gate_in // 4 + 1
        self.gate = nn.Sequential(nn.Linear(gate_in, hidden), nn.ReLU(), nn.Linear(hidden, n_experts))
        self.register_buffer("ema_gate", th.full((n_experts,), initial_gate(n_experts)))
        self._frozen: tuple[tuple, th.Tensor, th.Tensor] | None = None  # lite eval kernel cache
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Experts as SB3's orthogonal init (gain sqrt 2) would make them, identity alignment."""
        with th.no_grad():
            for k in range(self.n_experts):
                nn.init.orthogonal_(self.weight[k].view(self.out_features, -1), gain=math.sqrt(2))
            self.bias.zero_()
            self.align.copy_(th.eye(self.out_features).expand_as(self.align))
        self.reset_gate()

    def reset_gate(self) -> None:
        """Start the gate at 1/K with every hidden unit alive (module docstring, "Initialisation").

        Output layer: zero weights, bias logit(1/K), so every gate is 1/K on every input. Hidden layer:
        the weights lose their signs (``|W|``, the magnitudes of the init before, SB3's orthogonal
        one in a policy) and the bias is zeroed: on the gate's inputs, which are never negative, every
        hidden unit then has a positive pre-activation unless the input is all zeros.
        """
        p0 = initial_gate(self.n_experts)
        with th.no_grad():
            self.gate[0].weight.abs_()
            self.gate[0].bias.zero_()
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.constant_(self.gate[-1].bias, math.log(p0 / (1 - p0)))

    def mixing(self, summary: th.Tensor | None) -> th.Tensor:
        """Gates used for this batch: ``(B, K)`` per sample, or ``(1, K)`` shared (lite)."""
        if self.lite and not self.training:
            return self.ema_gate.unsqueeze(0)
        assert summary is not None
        alpha = th.sigmoid(self.gate(summary))
        if self.lite:
            alpha = alpha.mean(0, keepdim=True)
            with th.no_grad():
                self.ema_gate.mul_(self.ema_momentum).add_(alpha.detach()[0], alpha=1.0 - self.ema_momentum)
        return alpha

    def train(self, mode: bool = True) -> _AdaptiveLayer:
        if mode:  # entering training drops the cache; eval() on an eval module (SB3's predict) keeps it
            self._frozen = None
        return super().train(mode)

    def use_frozen(self) -> bool:
        """Lite, eval mode, no autograd: the layer is a fixed kernel, taken from the cache."""
        return self.lite and not self.training and not th.is_grad_enabled()

    def frozen(self) -> tuple[th.Tensor, th.Tensor]:
        """The lite eval kernel ``sum_k ema_k A_k W_k``, rebuilt only when a parameter changed.

        The cache is dropped when the layer enters training mode and is keyed on the storage
        and in-place version counter of the weights, alignment and stored gate (bumped by
        optimizer steps, ``load_state_dict`` and ``copy_``; writes through ``.data`` while in eval
        mode are not seen).
        """
        key = tuple((t.data_ptr(), t._version) for t in (self.weight, self.bias, self.align, self.ema_gate))
        if self._frozen is None or self._frozen[0] != key:
            with th.no_grad():
                self._frozen = (key, *self.merged(self.ema_gate))
        return self._frozen[1], self._frozen[2]

    def merged(self, alpha: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """One kernel and bias ``sum_k alpha_k A_k W_k`` for a gate vector ``alpha`` of shape (K,)."""
        k, out = self.n_experts, self.out_features
        mix = (alpha.view(k, 1, 1) * self.align).permute(1, 0, 2).reshape(out, k * out)  # [a_1 A_1 ... a_K A_K]
        weight = (mix @ self.weight.reshape(k * out, -1)).view(self.weight.shape[1:])
        return weight, mix @ self.bias.reshape(k * out)


class AdaptiveConv2d(_AdaptiveLayer):
    """Convolution whose kernel is the gated, aligned aggregation of K experts' kernels."""

    def __init__(self, n_experts: int, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 gate_hidden: int | None = None, lite: bool = False, ema_momentum: float = LITE_EMA_MOMENTUM) -> None:
        super().__init__(n_experts, in_channels, out_channels, (kernel_size, kernel_size), in_channels,
                         gate_hidden, lite, ema_momentum)
        self.stride = stride

    def forward(self, x: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Return the convolution (before the ReLU) and the gates used, ``(B, K)`` or ``(1, K)``."""
        if self.use_frozen():
            weight, bias = self.frozen()
            return F.conv2d(x, weight, bias, stride=self.stride), self.ema_gate.unsqueeze(0)
        alpha = self.mixing(None if self.lite and not self.training else x.mean((2, 3)))
        batch = x.shape[0]
        if alpha.shape[0] == 1:  # lite, or a single sample: one kernel, a plain conv
            weight, bias = self.merged(alpha[0])
            return F.conv2d(x, weight, bias, stride=self.stride), alpha
        k, out = self.n_experts, self.out_features
        aligned_w = th.bmm(self.align, self.weight.view(k, out, -1))  # (K, out, in*kh*kw): A_k W_k
        aligned_b = th.bmm(self.align, self.bias.unsqueeze(-1)).squeeze(-1)  # (K, out)
        weight = (alpha @ aligned_w.view(k, -1)).view(batch * out, *self.weight.shape[2:])
        bias = (alpha @ aligned_b).view(batch * out)
        y = F.conv2d(x.reshape(1, batch * x.shape[1], *x.shape[2:]), weight, bias, stride=self.stride, groups=batch)
        return y.view(batch, out, *y.shape[2:]), alpha


class AdaptiveLinear(_AdaptiveLayer):
    """Linear layer ``sum_k alpha_k A_k (W_k x + b_k)``, applied in output space.

    The gate reads ``summary`` (the caller's cheap description of the input), not ``x`` itself.
    """

    def __init__(self, n_experts: int, in_features: int, out_features: int, gate_in: int,
                 gate_hidden: int | None = None, lite: bool = False, ema_momentum: float = LITE_EMA_MOMENTUM) -> None:
        super().__init__(n_experts, in_features, out_features, (), gate_in, gate_hidden, lite, ema_momentum)

    def forward(self, x: th.Tensor, summary: th.Tensor | None) -> tuple[th.Tensor, th.Tensor]:
        if self.use_frozen():
            weight, bias = self.frozen()
            return F.linear(x, weight, bias), self.ema_gate.unsqueeze(0)
        alpha = self.mixing(summary)
        k, out = self.n_experts, self.out_features
        z = F.linear(x, self.weight.view(k * out, -1), self.bias.view(k * out))  # (B, K*out): W_k x + b_k
        z = (z.view(-1, k, out) * alpha.unsqueeze(-1)).view(-1, k * out)
        align = self.align.permute(1, 0, 2).reshape(out, k * out)  # [A_1 ... A_K]
        return z @ align.t(), alpha


class ZooTuningExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: a NatureCNN whose every layer adaptively aggregates K experts.

    Use inside any ``ActorCriticPolicy`` (``features_extractor_class=ZooTuningExtractor``) or via
    :class:`ZooTuningPolicy`. Expert weights are copied in after construction
    (:func:`load_zoo_weights`), so a saved model holds them in its state_dict and rebuilds from
    these plain kwargs. SB3's policies re-initialise their modules after building them
    (``ortho_init``), which overwrites the gates' 1/K start: :class:`ZooTuningPolicy` puts it back;
    in another policy call :meth:`reset_gates` after it is built, or every layer starts scaled by
    about K/2 (the features by (K/2)^4) and the gates' hidden units can start dead (below).

    The first layer's gate reads 4 numbers (each stacked frame's mean brightness) through
    ``4 // 4 + 1 = 2`` hidden ReLUs, the official code's width rule. Near-equal frames make those
    inputs nearly alike, and with the signed hidden weights of SB3's orthogonal start both units
    were dead on every input in about 14% of seeds by a reviewer's simulation of 2,000 starts, and
    in 23% by ours on one game's frames (2,000 starts x 8 games, 32 frames of random play each; the
    later gates, reading the shipped hub's experts, lost 33-42% of their hidden units): such a gate
    learns only its output bias, one input-independent mix for the run. :meth:`reset_gates`
    therefore also drops the signs of the gates' hidden weights and zeroes their biases (a
    deviation from the official code, module docstring "Initialisation"): with it no hidden unit
    of any gate started dead in the same starts. ``gate_hidden`` widens every gate.

    :param expert_names: one name per expert (the count fixes K; used for logging).
    :param lite: Zoo-Tuning lite (see module docstring).
    :param features_dim: width of the linear layer (512 for NatureCNN experts).
    :param gate_hidden: hidden width of every gate (``None``: the layer's input channels // 4 + 1).
    :param ema_momentum: momentum of the lite moving average of the batch-mean gate.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        expert_names: list[str] | tuple[str, ...] = ("expert",),
        lite: bool = False,
        features_dim: int = 512,
        gate_hidden: int | None = None,
        ema_momentum: float = LITE_EMA_MOMENTUM,
    ) -> None:
        super().__init__(observation_space, features_dim)
        self.expert_names = list(expert_names)
        if not self.expert_names:
            raise ValueError("Zoo-Tuning needs at least one expert name.")
        if not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum}.")
        self.lite = bool(lite)
        k = len(self.expert_names)
        channels, height, width = observation_space.shape
        convs = []
        for out, size, stride in NATURE_CONVS:
            convs.append(AdaptiveConv2d(k, channels, out, size, stride, gate_hidden, lite, ema_momentum))
            channels, height, width = out, (height - size) // stride + 1, (width - size) // stride + 1
        self.convs = nn.ModuleList(convs)
        self.linear = AdaptiveLinear(k, channels * height * width, features_dim, channels, gate_hidden, lite, ema_momentum)
        self.register_buffer("_usage_sum", th.zeros(k), persistent=False)
        self._usage_samples = 0
        self._record = True

    @property
    def n_experts(self) -> int:
        return len(self.expert_names)

    @property
    def layers(self) -> list[_AdaptiveLayer]:
        return [*self.convs, self.linear]

    def reset_gates(self) -> None:
        """Restore the gates' start, 1/K with every hidden unit alive (call after SB3's orthogonal init has overwritten it)."""
        for layer in self.layers:
            layer.reset_gate()

    def expert_parameters(self) -> list[nn.Parameter]:
        """The experts' kernels and biases (what ``freeze_experts`` freezes)."""
        return [p for layer in self.layers for p in (layer.weight, layer.bias)]

    def forward_with_gates(self, observations: th.Tensor) -> tuple[th.Tensor, list[th.Tensor]]:
        """Features and the gates each layer used (``(B, K)``, or ``(1, K)`` when shared)."""
        x, gates = observations, []
        for conv in self.convs:
            x, alpha = conv(x)
            x = F.relu(x)
            gates.append(alpha)
        summary = None if self.lite and not self.training else x.mean((2, 3))
        y, alpha = self.linear(x.flatten(1), summary)
        gates.append(alpha)
        return F.relu(y), gates

    def forward(self, observations: th.Tensor) -> th.Tensor:
        features, gates = self.forward_with_gates(observations)
        if not self.training and self._record:
            self._record_usage(gates, observations.shape[0])
        return features

    # --- gate usage statistics --------------------------------------------------------------
    def _record_usage(self, gates: list[th.Tensor], batch: int) -> None:
        with th.no_grad():  # a few (K,) adds on the gates' device: no host sync per step
            for alpha in gates:
                self._usage_sum += alpha.sum(0) * (batch if alpha.shape[0] == 1 else 1)
        self._usage_samples += batch

    @contextmanager
    def paused_usage(self) -> Iterator[None]:
        """Forward passes inside this block are not counted in :meth:`usage`."""
        previous, self._record = self._record, False
        try:
            yield
        finally:
            self._record = previous

    def reset_usage(self) -> None:
        self._usage_sum.zero_()
        self._usage_samples = 0

    def usage(self) -> dict[str, dict[str, float]]:
        """Per expert: mean gate over the layers and the eval-mode samples since the last reset."""
        mean = (self._usage_sum / (max(self._usage_samples, 1) * len(self.layers))).tolist()
        return {name: {"weight_mean": float(mean[i])} for i, name in enumerate(self.expert_names)}


def _zoo_extractor(obj: Any) -> ZooTuningExtractor:
    extractor = obj if isinstance(obj, ZooTuningExtractor) else getattr(obj, "features_extractor", None)
    if not isinstance(extractor, ZooTuningExtractor):
        raise TypeError(f"Expected a ZooTuningExtractor or a policy using one, got {type(obj).__name__}.")
    return extractor


def load_zoo_weights(extractor: ZooTuningExtractor | ActorCriticPolicy, hub: Hub) -> None:
    """Copy each hub expert's NatureCNN encoder into the extractor's per-expert parameters, in hub order.

    Accepts the extractor or a policy that uses one. Alignment matrices, gates and the lite
    moving averages are left as they are.
    """
    extractor = _zoo_extractor(extractor)
    if extractor.expert_names != hub.names:
        raise ValueError(f"Zoo-Tuning experts {extractor.expert_names} do not match the hub {hub.names}.")
    keys = [f"cnn.{2 * i}" for i in range(len(extractor.convs))] + ["linear.0"]
    with th.no_grad():
        for k, expert in enumerate(hub.experts):
            for layer, key in zip(extractor.layers, keys):
                for name, target in (("weight", layer.weight[k]), ("bias", layer.bias[k])):
                    source = expert.encoder_state[f"{key}.{name}"]
                    if source.shape != target.shape:
                        raise ValueError(
                            f"Expert {expert.name!r}: {key}.{name} has shape {tuple(source.shape)}, the extractor "
                            f"expects {tuple(target.shape)} (observation shape {extractor._observation_space.shape})."
                        )
                    target.copy_(source.to(target))


def merge_lite(extractor: ZooTuningExtractor | ActorCriticPolicy) -> dict[str, th.Tensor]:
    """Collapse a Zoo-Tuning lite extractor into a plain SB3 ``NatureCNN`` state_dict.

    Each layer becomes ``W = sum_k ema_k A_k W_k`` (and likewise the bias) with the stored gate
    vector, which is exactly what the lite extractor computes in eval mode; load the result into
    ``stable_baselines3.common.torch_layers.NatureCNN`` to deploy at the cost of one encoder.
    """
    extractor = _zoo_extractor(extractor)
    if not extractor.lite:
        raise ValueError("merge_lite needs a Zoo-Tuning lite extractor (lite=True): the full version's "
                         "kernels depend on each input and cannot be merged into one NatureCNN.")
    keys = [f"cnn.{2 * i}" for i in range(len(extractor.convs))] + ["linear.0"]
    state: dict[str, th.Tensor] = {}
    with th.no_grad():
        for layer, key in zip(extractor.layers, keys):
            weight, bias = layer.merged(layer.ema_gate)
            state[f"{key}.weight"], state[f"{key}.bias"] = weight.clone(), bias.clone()
    return state


def load_merged_lite(trained: ActorCriticPolicy, plain: ActorCriticPolicy) -> None:
    """Load a trained Zoo-Tuning lite policy into ``plain``, an SB3 ``ActorCriticCnnPolicy`` built
    with the same ``net_arch``: the merged encoder (:func:`merge_lite`) into each of its
    features extractors (one, or the policy's and the value's when ``plain`` does not share
    them: the lite policy always does), and every other module (the ``net_arch`` MLP, the
    action and value heads) as trained. ``plain`` then computes what ``trained`` does in eval mode."""
    encoder = merge_lite(trained)
    extractors = (plain.features_extractor, plain.pi_features_extractor, plain.vf_features_extractor)
    for extractor in {id(module): module for module in extractors}.values():
        extractor.load_state_dict(encoder)
    for name in ("mlp_extractor", "action_net", "value_net"):
        getattr(plain, name).load_state_dict(getattr(trained, name).state_dict())


class ZooTuningPolicy(ActorCriticPolicy):
    """Actor-critic whose (shared) features extractor is a :class:`ZooTuningExtractor`.

    SB3's usual ``action_net`` / ``value_net`` read the aggregated features (``net_arch=[]`` by
    default). Constructor kwargs are plain and the experts live in the state_dict, so stock
    ``PPO.load`` / ``A2C.load`` rebuild it after ``import hubrl.zoo_tuning``.

    :param expert_names: names of the hub's experts (K = their number).
    :param lite: Zoo-Tuning lite.
    :param gate_hidden: hidden width of the gates (``None``: per-layer default).
    :param ema_momentum: momentum of the lite gate average.
    :param freeze_experts: keep the experts' kernels fixed (gates and alignment still train).
    """

    def __init__(
        self,
        observation_space,
        action_space,
        lr_schedule,
        expert_names: list[str] | tuple[str, ...] = ("expert",),
        lite: bool = False,
        gate_hidden: int | None = None,
        ema_momentum: float = LITE_EMA_MOMENTUM,
        freeze_experts: bool = False,
        **kwargs: Any,
    ) -> None:
        self.expert_names = list(expert_names)
        self.lite = bool(lite)
        self.gate_hidden = gate_hidden
        self.ema_momentum = float(ema_momentum)
        self.freeze_experts = bool(freeze_experts)
        kwargs.setdefault("net_arch", [])
        kwargs["features_extractor_class"] = ZooTuningExtractor
        kwargs["features_extractor_kwargs"] = {
            "expert_names": self.expert_names, "lite": self.lite, "gate_hidden": gate_hidden,
            "ema_momentum": self.ema_momentum,
        }
        kwargs["share_features_extractor"] = True
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.extractor.reset_gates()  # SB3's orthogonal init overwrote the gates' start (1/K, hidden units alive)
        if self.freeze_experts:
            for param in self.extractor.expert_parameters():
                param.requires_grad_(False)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("features_extractor_class", "features_extractor_kwargs", "share_features_extractor"):
            data.pop(key, None)
        data.update(expert_names=self.expert_names, lite=self.lite, gate_hidden=self.gate_hidden,
                    ema_momentum=self.ema_momentum, freeze_experts=self.freeze_experts)
        return data

    @property
    def extractor(self) -> ZooTuningExtractor:
        return self.features_extractor  # type: ignore[return-value]

    # Only rollout forward passes (``forward``) count towards gate usage, as in HubPathwayPolicy.
    def _predict(self, observation: th.Tensor, deterministic: bool = False) -> th.Tensor:
        with self.extractor.paused_usage():
            return super()._predict(observation, deterministic)

    def predict_values(self, obs: th.Tensor) -> th.Tensor:
        with self.extractor.paused_usage():
            return super().predict_values(obs)

    def reset_usage(self) -> None:
        self.extractor.reset_usage()

    def usage(self) -> dict[str, dict[str, float]]:
        """Per expert: mean gate value (over layers and rollout states) since the last reset."""
        return self.extractor.usage()
