"""Hyperparameter presets: RL Zoo's Atari settings for PPO and A2C, overridable from CLI or YAML.

The presets are YAML files in RL Zoo's format, shipped as package data: ``agents/hyperparams/ppo.yml``
and ``a2c.yml`` (``hubrl/agents/hyperparams/`` once installed), keyed by env id with an ``atari``
section, whose values follow ``rl-baselines3-zoo/hyperparams/{ppo,a2c}.yml``. Schedules are written
as RL Zoo writes them, ``"lin_2.5e-4"`` for a linear decay to zero, and turned into callables by
:func:`resolve_hyperparams`, so the resolved config stays plain YAML.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from hubrl.errors import UsageError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from torch import nn

__all__ = [
    "ALGOS",
    "agent_kwargs",
    "check_hyperparams",
    "linear_schedule",
    "load_overrides",
    "load_presets_file",
    "minibatch_warning",
    "preset",
    "presets_file",
    "resolve_hyperparams",
]

ALGOS = ("ppo", "a2c")

DEFAULT_SECTION = "atari"  # RL Zoo's section for every Atari game


def presets_file(algo: str) -> Traversable:
    """The YAML file of ``algo``'s presets, shipped in the package (``hubrl/agents/hyperparams/<algo>.yml``;
    ``agents/hyperparams/`` in the repository)."""
    return resources.files("hubrl.agents") / "hyperparams" / f"{algo.lower()}.yml"


@functools.lru_cache(maxsize=None)
def _sections(algo: str) -> dict[str, dict[str, Any]]:
    return yaml.safe_load(presets_file(algo).read_text())


def load_presets_file(algo: str) -> dict[str, dict[str, Any]]:
    """``algo``'s presets as the YAML file holds them: env id (or ``atari``) -> hyperparameters
    (a copy; the file is read once)."""
    return copy.deepcopy(_sections(algo.lower()))


def preset(algo: str, env: str | None = None) -> dict[str, Any]:
    """A fresh copy of ``algo``'s preset (``ppo`` or ``a2c``): the section of the env id ``env`` in
    its YAML file (RL Zoo's keys, e.g. ``SeaquestNoFrameskip-v4``) when the file has one, else the
    ``atari`` section, which the shipped files hold alone."""
    algo = algo.lower()
    if algo not in ALGOS:
        raise UsageError(f"Unknown algo {algo!r}: choose one of {', '.join(ALGOS)}.")
    sections = _sections(algo)
    return copy.deepcopy(sections[env] if env in sections else sections[DEFAULT_SECTION])


def load_overrides(path: str | Path, algo: str | None = None) -> dict[str, Any]:
    """Read a YAML mapping of hyperparameter overrides (same keys as the presets), checked by
    :func:`check_hyperparams` (for ``algo``, or against every algorithm's keys when ``None``)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        pair = re.fullmatch(r"(\w+):(.+)", str(path))  # RL Zoo's -params n_steps:64, typed to our --hyperparams
        zoo = (f" (RL Zoo's KEY:VALUE pairs are not taken here: write {pair[1]}: {pair[2]} in a YAML file, one key per "
               "line, and give its path)" if pair and not Path(path).exists() else "")
        raise UsageError(f"--hyperparams: cannot read the file {path}: {exc.strerror}{zoo}.") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"Hyperparameter file {path} is not valid YAML: {exc}.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"Hyperparameter file {path} must hold a mapping of name: value.")
    known = _known_keys(algo)
    sections = [str(k) for k, v in data.items() if isinstance(v, dict) and k not in known]
    if sections and len(sections) == len(data):  # RL Zoo's layout: env id -> hyperparameters
        raise UsageError(f"Hyperparameter file {path} holds sections ({', '.join(sections)}), as RL Zoo's files do: "
                         "put the keys of one section at the top level of the file (n_steps: 128, ...).")
    check_hyperparams(data, algo, where=f"hyperparameter file {path}")
    return data


# Arguments of the SB3 constructors that the run sets itself, not the hyperparameters.
_RUN_ARGUMENTS = frozenset(
    {"self", "policy", "env", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model", "kwargs", "args"}
)


def _known_keys(algo: str | None) -> set[str]:
    """Hyperparameters ``algo`` takes (all algorithms' when None): its SB3 constructor's and ``n_envs``."""
    import inspect

    from hubrl.agents.a2c import HubA2C  # the agent modules, not the package: agents/__init__.py imports this one
    from hubrl.agents.ppo import HubPPO

    agents = {"ppo": HubPPO, "a2c": HubA2C}  # hubrl.agents.AGENT_CLASSES
    classes = [agents[algo]] if algo in agents else list(agents.values())
    keys = {"n_envs"}
    for cls in classes:
        keys |= set(inspect.signature(cls.__init__).parameters) - _RUN_ARGUMENTS
    return keys


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _check_value(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the hyperparameter ``key`` (None when it can, or is not checked here)."""
    if key in ("n_envs", "n_steps", "batch_size", "n_epochs"):
        from hubrl.envs import MAX_ENVS

        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if ok and key == "n_envs" and value > MAX_ENVS:
            return f"a number of parallel games up to {MAX_ENVS:,}"
        return None if ok else "a positive integer"
    if key in ("learning_rate", "clip_range"):  # learning_rate 0 is allowed: a check that the update changes nothing
        number = (_number(value) if not (isinstance(value, str) and value.startswith("lin_"))
                  else _number(_float_or_none(value[4:])))
        low_ok = number is not None and (number >= 0 if key == "learning_rate" else number > 0)
        return (None if low_ok and math.isfinite(number)
                else f"a number {'>= 0' if key == 'learning_rate' else '> 0'} or lin_<that number>")
    if key in ("ent_coef", "vf_coef"):
        number = _number(value)
        return None if number is not None and math.isfinite(number) and number >= 0 else "a number >= 0"
    if key in ("gamma", "gae_lambda"):
        number = _number(value)
        return None if number is not None and 0 < number <= 1 else "a number in (0, 1]"
    if key == "max_grad_norm":
        number = _number(value)
        return None if number is not None and math.isfinite(number) and number > 0 else "a positive number"
    if key == "policy_kwargs":
        return _check_policy_kwargs(value)
    number = _number(value)
    return None if number is None or math.isfinite(number) else "a finite number"


#: Optimizers ``policy_kwargs`` may name (``optimizer: RMSpropTFLike``, or SB3's key ``optimizer_class``):
#: SB3's TF-like RMSprop (RL Zoo's A2C choice) and torch's own.
OPTIMIZERS = ("RMSpropTFLike", "Adam", "AdamW", "RMSprop", "SGD")
#: Activations ``policy_kwargs: {activation_fn: ReLU}`` may name (``nn.ReLU`` as RL Zoo writes it too).
ACTIVATIONS = ("ReLU", "Tanh", "ELU", "LeakyReLU", "GELU", "SiLU")
#: ``policy_kwargs`` that ``--method`` sets: the method builds its own feature extractor.
_METHOD_POLICY_KWARGS = ("features_extractor_class", "features_extractor_kwargs")


def _activation_name(text: str) -> str:
    """``nn.ReLU`` / ``th.nn.ReLU`` / ``torch.nn.ReLU`` / ``ReLU`` -> ``ReLU``."""
    return text.rsplit(".", 1)[-1]


def activation_class(text: str) -> type[nn.Module] | None:
    """The torch activation ``text`` names (``ReLU``, ``nn.ReLU`` ...), one of :data:`ACTIVATIONS`;
    ``None`` for any other name (never an arbitrary attribute of ``torch.nn``)."""
    from torch import nn

    name = _activation_name(text)
    return getattr(nn, name) if name in ACTIVATIONS else None


def _check_policy_kwargs(value: Any, default_optimizer: str | None = None) -> str | None:
    """Why ``value`` cannot be ``policy_kwargs`` (None when it can): a mapping of SB3 actor-critic
    policy arguments, optimizers and activations by name (YAML holds no classes), and
    ``optimizer_kwargs`` that the optimizer takes (the one named, else ``default_optimizer``; None:
    not checked, as for an override whose optimizer the preset may name)."""
    import inspect

    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    if not isinstance(value, dict):
        return "a mapping"
    fixed = [k for k in _METHOD_POLICY_KWARGS if k in value]
    if fixed:
        return f"a mapping without {', '.join(fixed)} (--method sets the feature extractor)"
    known = (set(inspect.signature(ActorCriticCnnPolicy.__init__).parameters)
             - {"self", "observation_space", "action_space", "lr_schedule", *_METHOD_POLICY_KWARGS}) | {"optimizer"}
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        return f"a mapping of SB3 policy arguments ({', '.join(unknown)}: not one; known are {', '.join(sorted(known))})"
    if "optimizer" in value and "optimizer_class" in value:
        return "one of optimizer and optimizer_class, not both"
    for name in ("optimizer", "optimizer_class"):  # names, not classes: config.yaml records them
        if name in value and value[name] not in OPTIMIZERS:
            return f"{name} one of {', '.join(OPTIMIZERS)} (by name)"
    activation = value.get("activation_fn")
    if "activation_fn" in value and not (isinstance(activation, str) and _activation_name(activation) in ACTIVATIONS):
        return f"activation_fn one of {', '.join(ACTIVATIONS)} (by name)"
    kwargs = value.get("optimizer_kwargs", {})
    if not isinstance(kwargs, dict):
        return "optimizer_kwargs as a mapping"
    optimizer = value.get("optimizer", value.get("optimizer_class", default_optimizer))
    if kwargs and optimizer is not None:
        taken = set(inspect.signature(_optimizer_class(optimizer).__init__).parameters) - {"self", "params"}
        unknown = sorted(str(k) for k in kwargs if k not in taken)
        if unknown:
            return (f"optimizer_kwargs that {optimizer} takes ({', '.join(unknown)}: not one; "
                    f"it takes {', '.join(sorted(taken))})")
    return None


def _optimizer_class(name: str) -> type:
    """The optimizer class named ``name`` (one of :data:`OPTIMIZERS`)."""
    if name == "RMSpropTFLike":
        from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

        return RMSpropTFLike
    from torch import optim

    return getattr(optim, name)


def _resolve_policy_kwargs(policy_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``policy_kwargs`` (checked by :func:`_check_policy_kwargs`) for SB3: the optimizer, named under
    ``optimizer`` or ``optimizer_class``, as ``optimizer_class``; an activation named as its class."""
    resolved = dict(policy_kwargs)
    optimizer = resolved.pop("optimizer", None) or resolved.pop("optimizer_class", None)
    if isinstance(optimizer, str):
        optimizer = _optimizer_class(optimizer)
    if optimizer is not None:
        resolved["optimizer_class"] = optimizer
    if isinstance(resolved.get("activation_fn"), str):
        resolved["activation_fn"] = activation_class(resolved["activation_fn"])
    return resolved


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


#: Keys of an RL Zoo hyperparameter file that are run settings there, not the agent's: where hubrl takes each.
RL_ZOO_RUN_KEYS = {
    "n_timesteps": "the budget is --timesteps",
    "policy": "the policy follows from --method",
    "env_wrapper": "hubrl's Atari env applies the Atari wrappers itself",
    "frame_stack": "hubrl's Atari env stacks 4 frames",
    "vec_env_wrapper": "hubrl's Atari env applies the Atari wrappers itself",
    "normalize": "Atari frames and scores are not normalised",
}


def check_hyperparams(overrides: dict[str, Any], algo: str | None = None, where: str = "hyperparameters") -> None:
    """Refuse an unknown hyperparameter or a value no run can use (``n_steps: -64``), in one line
    naming ``where`` they came from, before anything is built. RL Zoo's run settings
    (:data:`RL_ZOO_RUN_KEYS`, e.g. ``n_timesteps``) are refused with where hubrl takes them instead."""
    zoo = [str(k) for k in overrides if k in RL_ZOO_RUN_KEYS]
    if zoo:
        raise UsageError(f"{', '.join(zoo)} in {where}: RL Zoo run setting(s), not hyperparameters of the agent ("
                         + "; ".join(f"{k}: {RL_ZOO_RUN_KEYS[k]}" for k in zoo) + "): drop them from the file.")
    known = _known_keys(algo)
    unknown = sorted(str(k) for k in overrides if k not in known)
    if unknown:
        raise UsageError(f"Unknown hyperparameter(s) {', '.join(unknown)} in {where}"
                         f"{f' for {algo}' if algo else ''}: known are {', '.join(sorted(known))}.")
    for key, value in overrides.items():
        if value is None:
            continue
        expected = _check_value(key, value)
        if expected:
            raise UsageError(f"Hyperparameter {key}: {value!r} in {where} is not valid: expected {expected}.")


def linear_schedule(initial: float) -> Callable[[float], float]:
    """Linear decay from ``initial`` to 0 over training (SB3 passes progress remaining 1 -> 0), and 0
    past the budget.

    SB3's own :class:`~stable_baselines3.common.utils.LinearSchedule`: a run ends at the first rollout
    boundary at or past its budget, where progress remaining is below 0, and a plain
    ``progress * initial`` there would train the last update with a negative learning rate and clip
    range (gradient ascent); and a ``model.zip`` that pickles SB3's class loads with SB3 alone,
    without hubrl installed (SB3 >= 2.7; with an older SB3, :class:`_Linear`, which needs hubrl).
    """
    try:
        from stable_baselines3.common.utils import LinearSchedule  # SB3 >= 2.7
    except ImportError:  # an older SB3 (pyproject allows >= 2.3): hubrl's own, clamped the same way
        return _Linear(initial)
    return LinearSchedule(float(initial), 0.0, 1.0)


class _Linear:
    """The linear schedule that ``model.zip`` files saved before SB3's class was used pickle (as
    ``hubrl.agents.presets._Linear``, or ``agents.presets._Linear`` before issue 16): kept so that
    they load, and clamped at 0 past the budget like :func:`linear_schedule`."""

    def __init__(self, initial: float) -> None:
        self.initial = float(initial)

    def __call__(self, progress_remaining: float) -> float:
        return max(progress_remaining, 0.0) * self.initial

    def __repr__(self) -> str:
        return f"lin_{self.initial:g}"


def _schedule(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("lin_"):
        return linear_schedule(float(value[4:]))
    return value


def resolve_hyperparams(algo: str, overrides: dict[str, Any] | None = None,
                        env: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge ``overrides`` into the preset (of the env id ``env``, see :func:`preset`); return
    ``(plain_config, sb3_kwargs)``.

    ``plain_config`` is YAML-serialisable (for the run folder); ``sb3_kwargs`` has schedules as
    callables and the optimizer class resolved, ready for the SB3 constructor. ``n_envs`` is in
    the config but not in the kwargs (it sizes the env, not the algorithm).
    """
    config = preset(algo, env)
    check_hyperparams(overrides or {}, algo.lower())
    for key, value in (overrides or {}).items():
        if key == "policy_kwargs" and isinstance(value, dict):
            merged = config.setdefault("policy_kwargs", {})
            named = value.get("optimizer", value.get("optimizer_class"))
            if named is not None:  # the override's optimizer, under either key, wins; the preset's arguments stay
                preset_optimizer = merged.get("optimizer", merged.get("optimizer_class"))  # only if it is the same one
                for stale in ("optimizer", "optimizer_class") if named == preset_optimizer else (
                        "optimizer", "optimizer_class", "optimizer_kwargs"):
                    merged.pop(stale, None)
            merged.update(value)
        elif value is not None:
            config[key] = value
    if overrides and "policy_kwargs" in overrides:  # the merge may pair the override's kwargs with the preset's optimizer
        expected = _check_policy_kwargs(config.get("policy_kwargs") or {}, default_optimizer=_sb3_optimizer(algo))
        if expected:
            raise UsageError(f"Hyperparameter policy_kwargs, merged over the {algo.lower()} preset's "
                             f"({config['policy_kwargs']!r}), is not valid: expected {expected}.")
    return config, agent_kwargs(config)


def _sb3_optimizer(algo: str) -> str:
    """The optimizer SB3 gives ``algo`` when ``policy_kwargs`` names none: A2C's RMSprop (its
    ``use_rms_prop`` default), else the policies' Adam."""
    return "RMSprop" if algo.lower() == "a2c" else "Adam"


def agent_kwargs(config: Mapping[str, Any], algo: str | None = None, where: str = "hyperparameters") -> dict[str, Any]:
    """The SB3 constructor's kwargs for a resolved plain ``config`` (the first half of
    :func:`resolve_hyperparams`' answer, or a run's saved ``resolved_hyperparams``): schedules as
    callables, the optimizer class resolved, ``n_envs`` left out (it sizes the env).

    With ``algo``, ``config`` is checked first as a whole (:func:`check_hyperparams`, and its
    optimizer arguments against the optimizer they go to, SB3's default when none is named), so a
    damaged one is refused in one line naming ``where`` rather than failing in SB3's constructor.
    """
    if algo is not None:
        check_hyperparams(dict(config), algo.lower(), where)
        expected = _check_policy_kwargs(config.get("policy_kwargs") or {}, default_optimizer=_sb3_optimizer(algo))
        if expected:
            raise UsageError(f"Hyperparameter policy_kwargs {config['policy_kwargs']!r} in {where} is not valid: "
                             f"expected {expected}.")
    kwargs = {k: _schedule(v) for k, v in config.items() if k != "n_envs"}
    policy_kwargs = _resolve_policy_kwargs(copy.deepcopy(kwargs.pop("policy_kwargs", {}) or {}))
    if policy_kwargs:
        kwargs["policy_kwargs"] = policy_kwargs
    return kwargs


def minibatch_warning(algo: str, hyperparams: Mapping[str, Any]) -> str | None:
    """The warning for a PPO ``batch_size`` that does not divide the rollout (``n_steps`` x ``n_envs``
    agent steps), naming the numbers and the two fixes; ``None`` when it divides it (or for A2C).

    SB3 trains anyway, each epoch ending with a shorter mini-batch (all of the rollout when it is
    smaller than ``batch_size``, e.g. ``--n-envs 1`` with RL Zoo's 128 x 256), and warns in a
    paragraph about the rollout buffer; a run prints this line instead as training starts
    (:meth:`hubrl.harness.Run.train`; ``Run.make_agent`` silences SB3's). ``hyperparams``: the
    resolved preset, ``n_envs`` included.
    """
    if algo.lower() != "ppo" or not {"n_steps", "batch_size", "n_envs"} <= hyperparams.keys():
        return None
    n_steps, batch_size, n_envs = (int(hyperparams[k]) for k in ("n_steps", "batch_size", "n_envs"))
    rollout = n_steps * n_envs
    if rollout % batch_size == 0:
        return None
    step = batch_size // math.gcd(n_steps, batch_size)  # n_envs must be a multiple of this for batch_size to divide
    envs = -(-n_envs // step) * step
    last = (f"each epoch is one mini-batch of {rollout}" if rollout < batch_size
            else f"each epoch ends with a mini-batch of {rollout % batch_size}")
    from hubrl.envs import MAX_ENVS

    more_envs = f"pass --n-envs {envs}, or " if envs <= MAX_ENVS else ""  # never a count --n-envs refuses
    divisor = rollout if rollout < batch_size else math.gcd(rollout, batch_size)  # the largest that divides, up to it
    return (f"PPO's batch_size {batch_size} does not divide its rollout of n_steps {n_steps} x n_envs {n_envs} = "
            f"{rollout} agent steps, so {last}: {more_envs}batch_size: {divisor} "
            "in a --hyperparams file.")
