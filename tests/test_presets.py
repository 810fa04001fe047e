"""The hyperparameter presets ship as YAML in RL Zoo's format (agents/hyperparams/<algo>.yml)."""

from __future__ import annotations

from typing import Any

import pytest

from hubrl.agents.presets import ALGOS, ATARI_PRESETS, load_presets_file


def _typed(value: Any) -> Any:
    """``value`` with the type of every leaf, in order: ``1`` and ``1.0`` differ, so do key orders."""
    if isinstance(value, dict):
        return [(key, _typed(item)) for key, item in value.items()]
    return (type(value).__name__, value)


@pytest.mark.parametrize("algo", ALGOS)
def test_the_yaml_presets_are_the_python_presets(algo):
    assert _typed(load_presets_file(algo)["atari"]) == _typed(ATARI_PRESETS[algo])
