"""The transfer methods that run in one harness: what each one builds before training starts.

Every method turns (run settings, hub) into a :class:`MethodPlan`: the SB3 policy class and its
kwargs, how to put the hub's weights into the fresh policy, the TensorBoard callbacks it adds, a
note for ``config.yaml``, and optionally a ``finalize`` step that decides what ``model.zip``
holds. :func:`hubrl.transfer.run_transfer` does everything else (envs, agent, evaluation,
checkpoints, resume) the same way for all of them, so their curves share tags and overlay in one
TensorBoard view.

============  ===========================================================================
method        what it trains
============  ===========================================================================
scratch       RL Zoo's NatureCNN ``CnnPolicy`` from random weights; no hub
finetune      ``CnnPolicy`` whose encoder starts from one expert (``--source NAME``); new heads
select        ranks the hub's experts with a cheap proxy on target data (``hubrl.selection``),
              then fine-tunes the winner
zoo-tuning    every encoder layer aggregates the experts' layers with per-sample gates and
              channel alignment (``hubrl.zoo_tuning``); ``--lite`` merges them into one NatureCNN
hub-pathway   noisy top-k routing through the experts (``hubrl.pathway``), exploration and
              exploitation losses (the default)
============  ===========================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticCnnPolicy, BasePolicy

from hubrl.callbacks import GateUsageCallback
from hubrl.envs import OBSERVATION_SHAPE
from hubrl.hub import Expert, Hub, HubError
from hubrl.method_catalog import HUB_METHODS, METHODS

__all__ = [
    "METHODS", "HUB_METHODS", "HUB_PATHWAY_OPTIONS", "MethodSettings", "MethodPlan",
    "plan_method", "load_encoder", "method_label", "check_hub_serves",
]

#: The settings Hub-Pathway hands its policy (:class:`hubrl.policies.HubPathwayPolicy`'s kwargs of the same
#: names); no other method reads them, so another method given one refuses it (:mod:`hubrl.transfer`).
HUB_PATHWAY_OPTIONS = ("top_k", "noise", "noise_floor", "k1_weight", "aggregation", "exploration_loss",
                       "exploration_coef", "exploitation_coef", "freeze_experts", "route_pg_coef",
                       "gate_lr_scale")


class MethodSettings(Protocol):
    """The run settings a method reads (:class:`hubrl.transfer.TransferConfig` has them all).

    Declared here rather than imported from :mod:`hubrl.transfer`, which builds on this module:
    a method depends on these fields, not on the harness that runs it.
    """

    method: str
    source: str | None
    lite: bool
    select_frames: int
    seed: int
    top_k: int
    noise: str | float
    noise_floor: float
    k1_weight: str
    aggregation: str
    exploration_loss: str
    exploration_coef: float
    exploitation_coef: float
    freeze_experts: bool
    route_pg_coef: float
    gate_lr_scale: float
    repeat_action_probability: float  # select: its random-policy frames come from the run's env


@dataclass
class MethodPlan:
    """What one method contributes to a transfer run.

    :param policy: SB3 policy class for the agent.
    :param policy_kwargs: extra kwargs of that policy (merged over the preset's).
    :param init: called once on a new policy (not on resume) to load the hub's weights.
    :param callbacks: extra training callbacks (e.g. gate usage in TensorBoard).
    :param notes: recorded in ``config.yaml`` under ``method`` (chosen source, ranking ...).
    :param finalize: given the trained model and a factory that builds a fresh agent of the
        same algorithm and hyperparameters for a policy class, returns the model to save as
        ``model.zip`` (default: the trained model itself).
    :param warnings: one-line notices about settings that run but do less than asked (printed by
        :meth:`hubrl.harness.Run.train` as training starts).
    """

    policy: type[BasePolicy]
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    init: Callable[[BasePolicy], None] = lambda policy: None
    callbacks: list[BaseCallback] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    finalize: Callable[[BaseAlgorithm, Callable[[type[BasePolicy]], BaseAlgorithm]], BaseAlgorithm] | None = None
    warnings: list[str] = field(default_factory=list)


def method_label(cfg: MethodSettings) -> str:
    """Name of a run's method in folder names and TensorBoard run names (``finetune-seaquest-ppo``)."""
    if cfg.method == "finetune" and cfg.source:
        return f"finetune-{cfg.source}"
    if cfg.method == "zoo-tuning" and cfg.lite:
        return "zoo-tuning-lite"
    return cfg.method


def load_encoder(policy: BasePolicy, expert: Expert) -> None:
    """Copy one expert's NatureCNN weights into a ``CnnPolicy``'s (shared) features extractor."""
    policy.features_extractor.load_state_dict(expert.encoder_tensors(policy.device))


def _scratch(cfg: MethodSettings, hub: Hub | None, game: str, previous: dict[str, Any] | None = None) -> MethodPlan:
    return MethodPlan(ActorCriticCnnPolicy)


def _finetune_plan(expert: Expert, notes: dict[str, Any]) -> MethodPlan:
    return MethodPlan(ActorCriticCnnPolicy, init=lambda policy: load_encoder(policy, expert),
                      notes={"source": expert.name, **notes})


def check_hub_serves(cfg: MethodSettings, hub: Hub) -> None:
    """Refuse, in one line, a run ``hub`` cannot serve: experts that do not read hubrl's observations
    (:data:`hubrl.envs.OBSERVATION_SHAPE`), ``--top-k`` larger than the hub, a finetune ``--source`` it
    does not have, or none where it has several experts. A transfer checks it before any emulator
    starts, and each method's plan again; a grid checks every trial's up front (:mod:`hubrl.benchmark`).

    :raises HubError: naming the setting and the hub's experts.
    """
    hub.validate(OBSERVATION_SHAPE)
    if cfg.method == "hub-pathway" and cfg.top_k > len(hub):
        raise HubError(f"--top-k {cfg.top_k} is larger than the hub ({len(hub)} experts: {', '.join(hub.names)}): "
                       f"choose 1 to {len(hub)}, or a larger hub.")
    if cfg.method == "finetune":
        if cfg.source is None and len(hub) > 1:
            raise HubError(f"--method finetune needs --source NAME, one of the hub's experts: {', '.join(hub.names)}.")
        if cfg.source is not None:
            hub.get(cfg.source)  # HubError naming the hub's experts


def _finetune(cfg: MethodSettings, hub: Hub, game: str, previous: dict[str, Any] | None = None) -> MethodPlan:
    check_hub_serves(cfg, hub)
    return _finetune_plan(hub.experts[0] if cfg.source is None else hub.get(cfg.source), {})


def _select(cfg: MethodSettings, hub: Hub, game: str, previous: dict[str, Any] | None = None) -> MethodPlan:
    if previous and previous.get("source"):  # resuming: keep the expert chosen when the run started
        return _finetune_plan(hub.get(previous["source"]), {k: v for k, v in previous.items() if k != "source"})
    if len(hub) == 1:
        print(f"The hub has only one expert ({hub.names[0]}): nothing to select, fine-tuning it.")
        return _finetune_plan(hub.experts[0], {"ranking": None})
    from hubrl.selection import rank_experts

    rankings = rank_experts(hub, game, frames=cfg.select_frames, seed=cfg.seed,
                            repeat_action_probability=cfg.repeat_action_probability)
    table = [{"expert": r.name, "proxy": float(r.proxy), "seconds": float(r.seconds)} for r in rankings]
    print("Expert ranking for " + game + ": " + ", ".join(f"{r['expert']} {r['proxy']:.3f}" for r in table))
    return _finetune_plan(hub.get(rankings[0].name), {"ranking": table, "proxy_frames": cfg.select_frames})


def _zoo_tuning(cfg: MethodSettings, hub: Hub, game: str, previous: dict[str, Any] | None = None) -> MethodPlan:
    from hubrl.zoo_tuning import LITE_EMA_MOMENTUM, ZooTuningPolicy, load_merged_lite, load_zoo_weights

    def finalize(model: BaseAlgorithm, make_agent: Callable[[type[BasePolicy]], BaseAlgorithm]) -> BaseAlgorithm:
        """Lite: save a plain NatureCNN ``CnnPolicy`` holding the merged experts (scratch's cost)."""
        model.policy.set_training_mode(False)
        plain = make_agent(ActorCriticCnnPolicy)
        plain.num_timesteps = model.num_timesteps
        load_merged_lite(model.policy, plain.policy)
        return plain

    notices = []
    if len(hub) == 1:  # a sigmoid gate cannot start at 1: every layer starts scaled by 0.9 (zoo_tuning module docstring)
        notices.append(f"The hub has one expert ({hub.names[0]}): Zoo-Tuning aggregates nothing, and its gates start at "
                       "0.9, so the encoder does not even start as the expert; --method finetune starts from it exactly, "
                       "or give a hub of two or more experts.")
    # lite's moving-average momentum: the run's own on resume (before 8581b24 lite runs did not record it: 0.99 then)
    momentum = LITE_EMA_MOMENTUM if previous is None else float(previous.get("ema_momentum", 0.99))
    settings = {"lite": cfg.lite, **({"ema_momentum": momentum} if cfg.lite else {})}  # the policy's, and recorded
    return MethodPlan(
        ZooTuningPolicy,
        policy_kwargs={"expert_names": hub.names, **settings},
        init=lambda policy: load_zoo_weights(policy.features_extractor, hub),
        callbacks=[GateUsageCallback(prefix="zoo")],
        notes=settings,
        finalize=finalize if cfg.lite else None,
        warnings=notices,
    )


def _hub_pathway(cfg: MethodSettings, hub: Hub, game: str, previous: dict[str, Any] | None = None) -> MethodPlan:
    from hubrl.policies import DEFAULT_K1_WEIGHT, DEFAULT_NOISE_FLOOR, HubPathwayPolicy, load_hub_weights

    check_hub_serves(cfg, hub)
    notices = []
    if len(hub) == 1:
        notices.append(  # nothing to route or balance: every state goes to the one expert
            f"The hub has one expert ({hub.names[0]}): Hub-Pathway sends every state to it, so this run is a fine-tune "
            f"of it with an idle gate beside it; --method finetune does the same at less cost, or give a hub of two or "
            f"more experts.")
    elif cfg.top_k == len(hub) and cfg.exploration_loss == "switch" and cfg.exploration_coef > 0:
        notices.append(  # every expert runs on every state: f_i = 1/K whatever the gate does (losses.switch_balance_loss)
            f"--top-k {cfg.top_k} runs every expert of the {len(hub)}-expert hub on every state, so the switch "
            "exploration loss is a constant and does not balance the gate's weights; use --exploration-loss "
            "importance-load or entropy to balance them.")
    if cfg.freeze_experts and cfg.aggregation == "features" and cfg.exploitation_coef > 0:
        notices.append(  # the loss reaches the experts' own heads only (policies._head_outputs), which never act here
            f"--freeze-experts with --aggregation features: the exploitation loss can train only the experts' own "
            f"heads, which never act in this aggregation (the shared heads read the aggregated features), so at "
            f"--exploitation-coef {cfg.exploitation_coef:g} it costs time and changes nothing the agent does; use "
            f"--exploitation-coef 0, or --aggregation heads, where those heads act.")
    if cfg.noise != "learned" and cfg.noise_floor != DEFAULT_NOISE_FLOOR:  # read only by the learned std (pathway)
        notices.append(f"--noise-floor {cfg.noise_floor:g} is added to a learned noise std, and --noise {cfg.noise} is a "
                       "fixed one: the floor is not read; drop it, or give --noise learned.")
    if cfg.top_k > 1 and cfg.k1_weight != DEFAULT_K1_WEIGHT:  # above one expert the weights are the softmax of the k
        notices.append(f"--k1-weight {cfg.k1_weight} sets the selected expert's weight at --top-k 1; at --top-k "
                       f"{cfg.top_k} the selected experts are weighed by their softmax, so it is not read: drop it.")
    if cfg.noise == "learned":
        # the task loss never trains the std (pathway module docstring); only importance-load's load term does, and
        # that term has no noise in it when every expert is selected (losses.importance_load_loss)
        if cfg.exploration_loss != "importance-load" or cfg.exploration_coef == 0:
            why = "--exploration-coef 0" if cfg.exploration_coef == 0 else f"--exploration-loss {cfg.exploration_loss}"
            fix = "use --exploration-loss importance-load"
        elif cfg.top_k >= len(hub) > 1:  # (one expert: the hub's own notice above says what to do)
            why = (f"--top-k {cfg.top_k}, every expert of the {len(hub)}-expert hub (the load term, which trains the std, "
                   "needs experts left out)")
            fix = f"use a --top-k below {len(hub)}"
        else:
            why = fix = ""
        if why:
            start = math.log(2.0) + cfg.noise_floor  # softplus(0) + floor: the std's value before any training
            notices.append(f"--noise learned: only the importance-load exploration loss trains the noise std, so with "
                           f"{why} it stays at its start, {start:.2f} for every state; {fix}, or a fixed --noise {start:.2f}.")
    return MethodPlan(
        HubPathwayPolicy,
        policy_kwargs=dict(expert_names=hub.names, **{name: getattr(cfg, name) for name in HUB_PATHWAY_OPTIONS}),
        init=lambda policy: load_hub_weights(policy, hub),
        callbacks=[GateUsageCallback(prefix="pathway")],
        warnings=notices,
    )


_BUILDERS: dict[str, Callable[..., MethodPlan]] = {
    "scratch": _scratch,
    "finetune": _finetune,
    "select": _select,
    "zoo-tuning": _zoo_tuning,
    "hub-pathway": _hub_pathway,
}


def plan_method(cfg: MethodSettings, hub: Hub | None, game: str, previous: dict[str, Any] | None = None) -> MethodPlan:
    """The :class:`MethodPlan` of ``cfg.method`` (``hub`` is ``None`` only for scratch).

    :param previous: the ``method`` notes of the run being resumed, so that choices made when it
        started (``select``'s expert) are kept rather than made again.
    """
    return _BUILDERS[cfg.method](cfg, hub, game, previous)
