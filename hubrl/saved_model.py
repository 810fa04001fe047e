"""Open a saved SB3 ``model.zip`` as data: its policy rebuilt from weights, nothing unpickled.

Stock ``PPO.load`` / ``A2C.load`` unpickle the zip's ``data`` entry (cloudpickle: the policy
class, the spaces, the schedules), and an unpickled file can run any code its author put in it.
Playing, inspecting or timing a trained policy needs none of that, so hubrl's own readers
(``hubrl-enjoy RUN``, ``hubrl-bench routes``, the grid's inference timing) use
:func:`load_saved_policy` instead:

* ``data`` is read as JSON only (:func:`read_model_data`), size-limited;
* the policy class is read off the ``:serialized:`` pickle of ``policy_class`` by
  *disassembling* it (:func:`pickled_global`, :mod:`pickletools`: nothing is executed) and must
  be one of the classes a hubrl run saves (:data:`POLICY_CLASSES`);
* the constructor's keyword arguments are the plain-JSON ``policy_kwargs``, or, where SB3 had to
  pickle them (an optimizer or activation class: every A2C), the plain entries it writes beside the
  pickle (:func:`_policy_kwargs`); the spaces come from the JSON shape, dtype and action count;
* the weights are ``policy.pth`` read with ``torch.load(weights_only=True)``
  (:func:`hubrl.hub.read_policy_state`) and loaded strictly, so every tensor must fit.

Resuming training still goes through hubrl's own checkpoints (:mod:`hubrl.checkpoint`, weights
only too); ``HubPPO.load`` remains for your own files when you need the whole algorithm object.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import pickletools
import re
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hubrl.errors import CheckpointError, HubError
from hubrl.experts import MAX_JSON_DEPTH, nesting_depth
from hubrl.hub import MAX_DATA_BYTES, observation_shape, read_policy_state, read_zip_member

__all__ = ["POLICY_CLASSES", "SavedPolicy", "load_saved_policy", "pickled_global", "read_model_data", "saved_model_steps"]

#: The policy classes a hubrl run saves in ``model.zip``, keyed by the (module, name) that the
#: zip's pickled ``policy_class`` names: scratch, finetune, select and Zoo-Tuning lite save SB3's
#: ``CnnPolicy``; Hub-Pathway and Zoo-Tuning their own.
POLICY_CLASSES: dict[tuple[str, str], str] = {
    ("stable_baselines3.common.policies", "ActorCriticCnnPolicy"): "stable_baselines3.common.policies",
    ("hubrl.policies", "HubPathwayPolicy"): "hubrl.policies",
    ("hubrl.zoo_tuning", "ZooTuningPolicy"): "hubrl.zoo_tuning",
}
#: Opcodes a pickle of one class reference uses (protocol 2-5, as cloudpickle writes it).
_REFERENCE_OPCODES = {"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "STOP",
                      "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STACK_GLOBAL", "GLOBAL"}


@dataclass(frozen=True)
class SavedPolicy:
    """The policy of a ``model.zip`` (eval mode, on its device) and what the zip says about its training."""

    policy: Any  # an SB3 ``ActorCriticPolicy``
    num_timesteps: int | None
    n_envs: int | None


def read_model_data(path: str | Path) -> dict[str, Any]:
    """The ``data`` entry of the SB3 zip at ``path`` as plain JSON (the ``:serialized:`` fields stay
    base64 text, never decoded). :class:`CheckpointError` naming the file when it is missing, not a
    zip, too large or not JSON."""
    path = Path(path)
    with _open_model(path) as archive:
        return _model_data(archive, path)


@contextmanager
def _open_model(path: Path) -> Iterator[zipfile.ZipFile]:
    """The SB3 zip at ``path``, open; :class:`CheckpointError` when it is missing or not a zip."""
    if not path.is_file():
        raise CheckpointError(f"No model at {path}.")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise CheckpointError(_unreadable(path, exc)) from None
    with archive:
        yield archive


def _model_data(archive: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_zip_member(archive, "data", path, limit=MAX_DATA_BYTES))
    except (zipfile.BadZipFile, HubError, ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(_unreadable(path, exc)) from None
    except (RecursionError, MemoryError) as exc:  # nested deeper than Python's stack, or too big: damaged or hostile
        why = "nested too deep to read" if isinstance(exc, RecursionError) else "too big to read into memory"
        raise CheckpointError(_unreadable(path, f"its data entry is {why}: {type(exc).__name__}")) from None
    if nesting_depth(data) > MAX_JSON_DEPTH:  # its readers below walk it recursively
        raise CheckpointError(_unreadable(path, f"its data entry nests lists and objects more than {MAX_JSON_DEPTH} deep"))
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: its data entry is not a JSON object, so it is not an SB3 model.zip.")
    return data


def _unreadable(path: Path, exc: Exception | str) -> str:
    return (f"{path} is not a readable SB3 model ({exc}): it may be truncated or not a model.zip; "
            "restore it from a copy, or run the training again.")


def saved_model_steps(path: str | Path) -> int | None:
    """The agent steps of the model saved in ``path`` (an SB3 ``model.zip``), ``None`` for a missing
    or unreadable file; read from the zip's ``data`` entry as JSON, so nothing is unpickled."""
    try:
        data = read_model_data(path)
    except (CheckpointError, OSError):
        return None
    return _plain_int(data.get("num_timesteps"))


def _opcodes(raw: bytes) -> Iterator[tuple[Any, Any]]:
    """``(opcode, argument)`` of each instruction of the pickle ``raw``, disassembled (never run); a
    pickle pickletools cannot read (truncated, not a pickle) is one ``ValueError`` naming that."""
    try:
        for opcode, arg, _ in pickletools.genops(raw):
            yield opcode, arg
    except Exception as exc:  # noqa: BLE001  pickletools raises several types (ValueError too) for a bad pickle
        raise ValueError(f"not a readable pickle ({type(exc).__name__}: {exc})") from None


def pickled_global(serialized: str) -> tuple[str, str]:
    """The (module, name) that a base64 pickle of a single global reference (a class, as SB3 stores
    ``policy_class``) names, read by disassembling its opcodes, never by unpickling.

    :raises ValueError: when the text is not base64, not a pickle, or the pickle does anything but
        name one global (e.g. calls it, or builds an object): such a pickle would run code.
    """
    try:
        raw = base64.b64decode(serialized, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise ValueError(f"not base64 text ({exc})") from None
    strings: list[str] = []
    found: list[tuple[str, str]] = []
    for opcode, arg in _opcodes(raw):
        if opcode.name not in _REFERENCE_OPCODES:
            raise ValueError(f"the pickle does more than name a class (opcode {opcode.name})")
        if isinstance(arg, str) and opcode.name != "GLOBAL":
            strings.append(arg)
        elif opcode.name == "GLOBAL":  # protocol < 4: "module name" in one operand
            module, _, name = str(arg).partition(" ")
            found.append((module, name))
        if opcode.name == "STACK_GLOBAL":
            if len(strings) < 2:
                raise ValueError("the pickle's STACK_GLOBAL has no module and name before it")
            found.append((strings[-2], strings[-1]))
    if len(found) != 1:
        raise ValueError(f"the pickle names {len(found)} globals, not one class")
    return found[0]


def load_saved_policy(path: str | Path, device: str = "cpu") -> SavedPolicy:
    """The policy of the SB3 ``model.zip`` at ``path``, rebuilt as data (see the module docstring).

    :param device: where the policy goes (``"auto"``: CUDA when available, as SB3 does).
    :raises CheckpointError: a missing, damaged or foreign file, a policy class hubrl does not save,
        kwargs or weights that do not fit it; the message names the file and what to do.
    """
    import gymnasium as gym
    from stable_baselines3.common.utils import get_device

    path = Path(path)
    with _open_model(path) as archive:  # settings and weights from one opening: the same file, even if replaced meanwhile
        data = _model_data(archive, path)
        policy_class = _policy_class(data, path)
        kwargs = _policy_kwargs(data, path)
        observation_space = gym.spaces.Box(0, 255, _observation_shape(data, path), np.uint8)
        action_space = gym.spaces.Discrete(_action_count(data, path))
        try:
            state = read_policy_state(archive, path)
        except (HubError, zipfile.BadZipFile) as exc:
            raise CheckpointError(str(exc)) from None
    _refuse_sizes_beyond_the_weights(kwargs, state, path)
    try:
        policy = policy_class(observation_space, action_space, lambda _: 0.0, **kwargs)
        policy.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: its weights and settings do not fit this version's {policy_class.__name__} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); it was saved by another "
                              "version of hubrl, or is not a hubrl model.") from None
    policy = policy.to(get_device(device))
    policy.set_training_mode(False)
    return SavedPolicy(policy, _plain_int(data.get("num_timesteps")), _plain_int(data.get("n_envs")))


def _policy_class(data: dict[str, Any], path: Path) -> type:
    entry = data.get("policy_class")
    serialized = entry.get(":serialized:") if isinstance(entry, dict) else None
    if not isinstance(serialized, str):
        raise CheckpointError(f"{path}: its data entry names no policy_class, so it is not an SB3 model.zip.")
    try:
        reference = pickled_global(serialized)
    except ValueError as exc:
        raise CheckpointError(f"{path}: its policy_class is not a plain class reference ({exc}); refusing it (loading "
                              "it would run code stored in the file).") from None
    if reference not in POLICY_CLASSES:
        known = ", ".join(f"{m}.{n}" for m, n in POLICY_CLASSES)
        raise CheckpointError(f"{path}: its policy class {reference[0]}.{reference[1]} is not one that hubrl saves "
                              f"({known}): play a hubrl run's model, or give an SB3 CnnPolicy zip (not a run folder) "
                              "to read its encoder as weights only.")
    return getattr(importlib.import_module(POLICY_CLASSES[reference]), reference[1])


#: ``str()`` of a torch activation class, as SB3 writes an entry of a dict it had to pickle.
_ACTIVATION_TEXT = re.compile(r"<class 'torch\.nn\.modules\.activation\.(\w+)'>")
#: What a policy needs only to train, which a played policy never uses: dropped from kwargs.
_OPTIMIZER_KEYS = ("optimizer_class", "optimizer_kwargs")


def _policy_kwargs(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The policy's constructor kwargs from ``data``, as plain values, never unpickled.

    A ``policy_kwargs`` that holds a class (every A2C's ``optimizer_class``, RMSprop by default;
    an ``activation_fn``) is not JSON, so SB3 stores it as a pickle and writes each entry beside it,
    as JSON where it can and as its ``str()`` where not. The kwargs are rebuilt from those entries:
    the optimizer is dropped (playing needs none; the policy makes SB3's default), an activation
    named by its torch class becomes that class when it is one of
    :data:`hubrl.agents.presets.ACTIVATIONS` (:func:`hubrl.agents.presets.activation_class`), and
    any other entry that was not JSON is refused.
    """
    from hubrl.agents.presets import activation_class

    kwargs = data.get("policy_kwargs", {})
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: its policy_kwargs are not a mapping, so it is not an SB3 model.zip.")
    if ":serialized:" in kwargs:
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith(":") and k not in _OPTIMIZER_KEYS}
        activation = kwargs.get("activation_fn")
        match = _ACTIVATION_TEXT.fullmatch(activation) if isinstance(activation, str) else None
        known = activation_class(match.group(1)) if match else None
        if known is not None:
            kwargs["activation_fn"] = known
        objects = sorted(k for k, v in kwargs.items() if isinstance(v, str) and v.startswith("<") and v.endswith(">"))
        if objects:
            raise CheckpointError(f"{path}: its policy_kwargs hold objects that only unpickling would rebuild "
                                  f"({', '.join(objects)}), and hubrl does not unpickle model files; a hubrl run saves "
                                  "none but an optimizer and an activation: load it with SB3's own load only if you "
                                  "trust who wrote it.")
    if _holds_pickle(kwargs):
        raise CheckpointError(f"{path}: its policy_kwargs hold a pickle inside an entry, and hubrl does not unpickle "
                              "model files; a hubrl run never saves such kwargs: load it with SB3's own load only if "
                              "you trust who wrote it.")
    return kwargs


def _refuse_sizes_beyond_the_weights(kwargs: dict[str, Any], state: dict[str, Any], path: Path) -> None:
    """Refuse ``policy_kwargs`` that would build a policy bigger than the file's own weights, before
    it is built: a number larger than every dimension of every saved tensor (a layer width, a
    feature size), or a list longer than the number of saved tensors (expert names: one NatureCNN
    encoder each). A layer the policy builds has its sizes among the weights that fill it, so a
    hubrl model passes; a hostile 1 KB file naming a million experts would otherwise allocate them
    all before the strict load found that its weights do not fit."""
    tensors = [v for v in state.values() if hasattr(v, "shape")]  # torch tensors (torch is imported lazily here)
    widest = max((max(t.shape, default=1) for t in tensors), default=1)

    def check(key: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int) and value > widest:
            raise CheckpointError(f"{path}: its policy_kwargs' {key} is {value:,}, larger than any dimension of the "
                                  f"weights it holds ({widest:,}): not a model hubrl saved; refusing to build it.")
        if isinstance(value, (list, tuple)):
            if len(value) > len(tensors):
                raise CheckpointError(f"{path}: its policy_kwargs' {key} has {len(value):,} entries for "
                                      f"{len(tensors):,} saved tensors: not a model hubrl saved; refusing to build it.")
            for item in value:
                check(key, item)
        if isinstance(value, dict):
            for name, item in value.items():
                check(f"{key}.{name}", item)

    for key, value in kwargs.items():
        check(key, value)


def _holds_pickle(value: Any) -> bool:
    """Whether a JSON value from ``data`` holds an SB3 ``:serialized:`` (pickled) field anywhere."""
    if isinstance(value, dict):
        return ":serialized:" in value or any(_holds_pickle(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_pickle(v) for v in value)
    return False


def _observation_shape(data: dict[str, Any], path: Path) -> tuple[int, ...]:
    dims = observation_shape(data)
    space = data.get("observation_space")
    dtype = space.get("dtype") if isinstance(space, dict) else None
    # (frames, 84, 84) as an expert manifest's (hubrl.experts.read_manifest): the shape sizes the buffers that are
    # allocated before any weight is read, so a file claiming (4, 40000, 40000) must not get that far
    if dims is None or len(dims) != 3 or tuple(dims[1:]) != (84, 84) or not 1 <= dims[0] <= 64 or dtype != "uint8":
        raise CheckpointError(f"{path}: its observation space (shape {dims}, dtype {dtype}) is not stacked 84x84 uint8 "
                              "frames, which every hubrl model sees.")
    return dims


def _action_count(data: dict[str, Any], path: Path) -> int:
    space = data.get("action_space")
    n = _plain_int(space.get("n")) if isinstance(space, dict) else None
    if n is None or not 1 <= n <= 18:  # ALE's full action set is 18
        raise CheckpointError(f"{path}: its action space is not a discrete one of 1-18 actions (an Atari game's), which "
                              "every hubrl model has.")
    return n


def _plain_int(value: Any) -> int | None:
    """An int from a JSON field that SB3 writes as a number or as its string form (``"18"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None
