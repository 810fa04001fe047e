"""PPO / A2C agents that add a policy's auxiliary losses to the objective, and RL Zoo Atari presets."""

from hubrl.agents.a2c import HubA2C
from hubrl.agents.auxiliary import AuxiliaryBatch, AuxiliaryLossPolicy, AuxiliaryTerms
from hubrl.agents.legacy import legacy_custom_objects
from hubrl.agents.ppo import HubPPO
from hubrl.agents.presets import ALGOS, load_overrides, preset, presets_file, resolve_hyperparams

AGENT_CLASSES = {"ppo": HubPPO, "a2c": HubA2C}

__all__ = [
    "AGENT_CLASSES",
    "ALGOS",
    "AuxiliaryBatch",
    "AuxiliaryLossPolicy",
    "AuxiliaryTerms",
    "HubA2C",
    "HubPPO",
    "legacy_custom_objects",
    "load_overrides",
    "preset",
    "presets_file",
    "resolve_hyperparams",
]
