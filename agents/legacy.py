"""Open ``model.zip`` files saved before ``agents`` and ``envs`` moved into the package.

Until issue 16 the agents were the top-level package ``agents``, so an SB3 zip saved then
pickles module paths like ``agents.presets._Linear`` (the learning-rate and clip-range
schedules) in its ``data`` entry, and SB3's load fails with ``No module named 'agents'``.
:func:`legacy_custom_objects` unpickles exactly those entries with ``agents.*`` / ``envs.*``
read as ``hubrl.agents.*`` / ``hubrl.envs.*`` and hands them to SB3's load as
``custom_objects``; nothing is registered under the old names in ``sys.modules``.
``HubPPO.load`` and ``HubA2C.load`` do this themselves; for stock SB3::

    PPO.load(path, custom_objects=legacy_custom_objects(path))

It unpickles what SB3's load would unpickle anyway (the same trust: open only your own zips).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import IO, Any

__all__ = ["LEGACY_PACKAGES", "LegacyLoadMixin", "legacy_custom_objects", "renamed_module"]

LEGACY_PACKAGES = ("agents", "envs")  # old top-level name -> hubrl.<name>


def renamed_module(module: str) -> str:
    """``agents.presets`` -> ``hubrl.agents.presets``; any other module name unchanged."""
    return f"hubrl.{module}" if module.split(".", 1)[0] in LEGACY_PACKAGES else module


class _RenamingUnpickler(pickle.Unpickler):
    """An unpickler that finds the classes of the old top-level packages in ``hubrl``."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(renamed_module(module), name)


def _names_legacy_module(raw: bytes) -> bool:
    """Whether a pickle refers to a module of the old top-level packages (a module name is a
    string operand: of ``GLOBAL`` as ``"module name"``, or pushed before ``STACK_GLOBAL``)."""
    try:
        for _, arg, _ in pickletools.genops(raw):
            if isinstance(arg, str) and renamed_module(arg.split(" ", 1)[0]) != arg.split(" ", 1)[0]:
                return True
    except Exception:  # not a pickle SB3 could read either: leave it to SB3's own error
        return False
    return False


def _read_data(path: str | Path | IO[bytes]) -> dict[str, Any]:
    """The ``data`` entry of an SB3 zip (``path`` as SB3's load takes it: with or without ``.zip``)."""
    if isinstance(path, (str, Path)):
        path = Path(path)
        if not path.is_file() and path.with_suffix(".zip").is_file():
            path = path.with_suffix(".zip")
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("data"))
    start = path.tell()
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("data"))
    finally:
        path.seek(start)


def legacy_custom_objects(path: str | Path | IO[bytes]) -> dict[str, Any]:
    """The entries of an SB3 zip's ``data`` that name the old ``agents`` / ``envs`` modules,
    unpickled with those names read as ``hubrl.*``: pass them to SB3's ``load`` as
    ``custom_objects``. Empty for a zip saved since (or anything that is not an SB3 zip: SB3's
    load then reports it)."""
    try:
        data = _read_data(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return {}
    objects = {}
    for key, value in data.items():
        if not (isinstance(value, dict) and isinstance(value.get(":serialized:"), str)):
            continue
        raw = base64.b64decode(value[":serialized:"].encode())
        if _names_legacy_module(raw):
            objects[key] = _RenamingUnpickler(io.BytesIO(raw)).load()
    return objects


class LegacyLoadMixin:
    """``load`` that also opens zips saved under the old module names (:func:`legacy_custom_objects`),
    for a subclass of an SB3 algorithm."""

    @classmethod
    def load(cls, path: str | Path | IO[bytes], env: Any = None, device: Any = "auto",
             custom_objects: dict[str, Any] | None = None, print_system_info: bool = False, force_reset: bool = True,
             **kwargs: Any) -> Any:
        objects = {**legacy_custom_objects(path), **(custom_objects or {})}
        return super().load(path, env=env, device=device, custom_objects=objects or None,  # type: ignore[misc]
                            print_system_info=print_system_info, force_reset=force_reset, **kwargs)
