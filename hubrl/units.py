"""Step counts as people write them: ``250k``, ``1M``, ``2e6``, ``1.5k``, ``100000``.

One parser for every command-line flag that takes a number of agent steps (``--timesteps``,
``--pause-at``, ``--eval-freq``, ``--stages`` ...) and its inverse for folder names and titles.
"""

from __future__ import annotations

import math

__all__ = ["MAX_STEPS", "format_steps", "parse_steps"]

MAX_STEPS = 10**15  # far beyond any budget, and within int64 (SB3 and numpy count steps in it)

_SCALES = {"k": 1_000, "m": 1_000_000}  # case-insensitive suffixes


def parse_steps(text: str) -> int:
    """``"250k"`` -> ``250000``; ``"1M"`` -> ``1000000``; ``"2e6"``, ``"1.5k"``, ``"100000"`` alike.

    :raises ValueError: for anything but a positive, finite number of steps up to
        :data:`MAX_STEPS` (``"0"``, ``"-5"``, ``"inf"``, ``"nan"``, ``"10x"``), with a message that
        says why. A fraction rounds to the nearest whole step.
    """
    text = str(text).strip()
    scale = _SCALES.get(text[-1:].lower(), 1)
    digits = text[:-1] if scale != 1 else text
    try:
        number = float(digits)
    except ValueError:
        raise ValueError(f"expected a step count like 10M, 500k or 2e6, got {text!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a step count like 10M, 500k or 2e6, got {text!r} (not a finite number)")
    number *= scale
    if number < 1:  # 0.5 is positive, but no step at all
        raise ValueError(f"must be positive, got {text}" if number <= 0 else f"must be at least 1 step, got {text}")
    number = round(number)  # 1.5k is 1500; a fraction of a step rounds to the nearest one
    if number > MAX_STEPS:
        raise ValueError(f"{text} is out of range: expected a step count like 10M, 500k or 2e6 from 1 to {MAX_STEPS:,}")
    return int(number)


def format_steps(steps: int) -> str:
    """``250000`` -> ``"250k"``, ``1000000`` -> ``"1M"``, ``1500`` -> ``"1500"`` (exact: parses back)."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if steps >= size and steps % size == 0:
            return f"{steps // size}{unit}"
    return str(steps)
