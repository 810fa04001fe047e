"""Whether a plain value read from a file (JSON, YAML) has the type a dataclass field declares.

Files a user or a stranger wrote (an expert's ``expert.json``, a run's ``config.yaml``) are read
into dataclasses whose type hints say what each field holds; a value of another type is refused
with the file and the field named, before it reaches code that would fail on it far from its cause.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any


def fits_type(value: Any, hint: Any) -> bool:
    """Whether a JSON ``value`` has the type ``hint`` (str, int, float, bool, list[...], dict[...], X | None, Any)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(fits_type(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return (isinstance(value, dict) and all(fits_type(k, args[0]) and fits_type(v, args[1]) for k, v in value.items())
                if args else isinstance(value, dict))
    return isinstance(value, hint) if isinstance(hint, type) else True


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")
