"""hubrl: transfer learning from a hub of pretrained Atari policies (Hub-Pathway and baselines).

Importing ``hubrl`` makes the package's policies and extractors importable by name, so a
``model.zip`` saved by a hubrl run opens with stock ``stable_baselines3.PPO.load`` / ``A2C.load``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
