"""The project's error classes: what a command reports as one line instead of a traceback.

Every error that a user can cause or fix (a bad flag, a broken hub, a torn checkpoint, a grid
that cannot run) is a :class:`HubrlError`. The command-line boundary (``hubrl/cli/common.py``) prints
these, file-system errors (:class:`OSError`) and YAML errors as one ``error: ...`` line with exit
code 2; anything else is a bug in hubrl and keeps its traceback.

The subclasses also derive from the builtin each one replaced (``ValueError`` /
``RuntimeError``), so code that caught those keeps working. They are re-exported where they
were defined before (``hubrl.pretrain.UsageError``, ``hubrl.hub.HubError``,
``hubrl.checkpoint.CheckpointError``, ``hubrl.benchmark.GridError``).
This module imports nothing, so every layer (``hubrl.envs``, ``hubrl.agents``, light tools) can use it.
"""

from __future__ import annotations

__all__ = ["HubrlError", "UsageError", "HubError", "CheckpointError", "GridError"]


class HubrlError(Exception):
    """Base of the errors a command reports as one line: what is wrong, where, and what to do."""


class UsageError(HubrlError, ValueError):
    """A user mistake: a flag, setting or hyperparameter that cannot work."""


class HubError(HubrlError, ValueError):
    """An expert or hub that cannot be used, with what is wrong and how to fix it."""


class CheckpointError(HubrlError, RuntimeError):
    """A checkpoint or run record that is missing, corrupt, or was not written by hubrl."""


class GridError(HubrlError, ValueError):
    """A benchmark grid that cannot run as asked (bad names, unknown settings, held by another runner)."""
