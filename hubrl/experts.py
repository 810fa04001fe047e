"""One expert of a hub on disk: weights-only file + JSON manifest.

Layout of an expert folder (what ``pretrain_sources.py`` writes and :mod:`hubrl.hub` reads)::

    <hub>/<name>/
        expert.json            manifest: game, algo, steps, evaluation, shapes, actions, checksum
        weights.safetensors    the policy's state_dict (safetensors: tensors only, no code)

A hub is a folder of such expert folders. There is no central index file, so experts trained in
parallel (one process per game) never race to update a shared file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import reprlib
import stat
import tempfile
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch as th

from hubrl.atomic import atomic_write, atomic_write_bytes, sha256_file
from hubrl.errors import HubError
from hubrl.locks import exclusive_lock, private_folder
from hubrl.plaintypes import fits_type, type_name

__all__ = [
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "ExpertManifest",
    "canonical_state_dict",
    "save_expert",
    "read_manifest",
    "MAX_JSON_DEPTH",
    "nesting_depth",
]

MANIFEST_NAME = "expert.json"
WEIGHTS_NAME = "weights.safetensors"
MANIFEST_FORMAT = "hubrl-expert"
MANIFEST_VERSION = 1
_DUPLICATE_PREFIXES = ("pi_features_extractor.", "vf_features_extractor.")


@dataclass
class ExpertManifest:
    """What is known about one expert. ``weights_sha256`` pins the weights file.

    ``name`` is the name it was exported as, which hubrl-pretrain also gives its folder; a hub names
    the expert by its folder (:func:`hubrl.hub.expert_folder_name`), so a copied or renamed folder is
    an expert of its new name.
    """

    name: str
    game: str
    algo: str
    timesteps: int  # agent steps the exported weights were trained for
    observation_shape: list[int]
    action_meanings: list[str]
    architecture: str = "NatureCNN"
    features_dim: int = 512
    training_budget: int = 0  # steps the run was set to reach; above ``timesteps``: exported mid-training
    eval: dict[str, Any] = field(default_factory=dict)
    weights_file: str = WEIGHTS_NAME
    weights_sha256: str = ""
    weights_dtype: str = "float32"
    env_options: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    run_id: str = ""  # the pretraining run that exported it (hubrl.pretrain); "" unknown
    hubrl_version: str = ""
    format: str = MANIFEST_FORMAT
    format_version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"


def canonical_state_dict(state_dict: dict[str, th.Tensor]) -> dict[str, th.Tensor]:
    """Drop SB3's ``pi_/vf_features_extractor`` aliases of the shared ``features_extractor``.

    SB3 >= 1.7 stores the shared extractor three times in ``state_dict()``; safetensors refuses
    aliased tensors and the copies add nothing. Non-shared extractors (different tensors) are kept.
    """
    out = {}
    for key, tensor in state_dict.items():
        for prefix in _DUPLICATE_PREFIXES:
            if key.startswith(prefix):
                shared = state_dict.get("features_extractor." + key[len(prefix):])
                if shared is not None and shared.data_ptr() == tensor.data_ptr():
                    break
        else:
            out[key] = tensor.detach().cpu().contiguous()
    return out


def previous_weights(weights: Path) -> Path:
    """Where :func:`save_expert` keeps an expert's previous weights while it replaces them."""
    return weights.with_name(f".{weights.name}.previous")


def save_expert(
    folder: str | Path, state_dict: dict[str, th.Tensor], manifest: ExpertManifest, dtype: th.dtype = th.float32,
    check: Callable[[], None] | None = None,
) -> Path:
    """Write weights (safetensors) then the manifest that pins their checksum, both atomically.

    An expert replaced in place keeps its previous weights aside (:func:`previous_weights`) until
    the new manifest is in, and gets them back if that write fails (a full disk, an interrupt), so
    a failed export leaves the previous expert whole. A process killed outright between the two
    writes leaves the new weights beside the old manifest: the loader then finds the previous
    weights, which still match it (:func:`hubrl.hub.load_expert_folder`).

    Two exports into one folder at once (two runs of one game ending together, or ``--export``
    beside a finishing run) take turns on a lock (:func:`export_lock_path`, outside the hub, which
    keeps only expert folders): without it their four writes could interleave and leave one's
    manifest over the other's weights. ``check``, called
    under that lock before anything is written, may refuse the write (raise) by what the folder
    holds then: an expert another export put there since the caller last looked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(export_lock_path(folder), wait=True):
        if check is not None:
            check()
        return _write_weights_then_manifest(folder, state_dict, manifest, dtype)


def export_lock_path(folder: str | Path) -> Path:
    """The lock file exports into the expert folder ``folder`` take turns on: in the temporary folder
    (per user), named by a hash of the folder's absolute path, so a hub holds nothing but its expert
    folders (code that lists a hub need not skip lock files). Exports on one host exclude each
    other, as ``flock`` does.

    Its name can be guessed, so the per-user folder is made private (mode 0700) and refused when
    another user made it first or can write it (:func:`hubrl.locks.private_folder`); the temporary
    folder, not a per-user cache under the home folder, because a home folder may be read-only or on
    a network file system that does not forward ``flock``.

    :raises hubrl.locks.LockRefused: that folder is another user's, or others can write it.
    """
    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:32]
    user = os.getuid() if hasattr(os, "getuid") else "user"
    locks = private_folder(Path(tempfile.gettempdir()) / f"hubrl-export-locks-{user}")
    return locks / f"{key}.lock"


def _write_weights_then_manifest(folder: Path, state_dict: dict[str, th.Tensor], manifest: ExpertManifest,
                                 dtype: th.dtype) -> Path:
    """:func:`save_expert`'s two writes, under its lock."""
    from safetensors.torch import save

    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in canonical_state_dict(state_dict).items()}
    weights = folder / manifest.weights_file
    previous = previous_weights(weights) if weights.is_file() else None
    atomic_write_bytes(weights, save(tensors, metadata={"format": "hubrl-expert-weights"}), keep_previous=previous)
    try:
        manifest.weights_sha256 = sha256_file(weights)
        manifest.weights_dtype = str(dtype).replace("torch.", "")
        atomic_write(folder / MANIFEST_NAME, lambda handle: handle.write(manifest.to_json()), mode="w")
    except BaseException:
        if previous is not None:  # the old manifest is still in place: give it back its weights
            os.replace(previous, weights)
        raise
    if previous is not None:
        previous.unlink(missing_ok=True)
    return folder


def read_manifest(folder: str | Path) -> ExpertManifest:
    """Parse and check ``<folder>/expert.json``; raises :class:`~hubrl.errors.HubError` naming the file.

    The file is untrusted: every field's type is checked against :class:`ExpertManifest`, the
    format and its version against what this version of hubrl reads, the observation shape
    against the frames its experts read (NatureCNN on 84x84), and ``weights_file`` must name a
    file inside ``folder``.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        raw = json.loads(_manifest_bytes(path))
    except FileNotFoundError as exc:
        raise HubError(f"{folder} is not an expert folder: no {MANIFEST_NAME}.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HubError(f"{path} is corrupt: not valid JSON ({getattr(exc, 'msg', exc)}).") from exc
    except RecursionError:  # nested deeper than Python's stack: a damaged or hostile file
        raise HubError(f"{path} is corrupt: its JSON is nested too deep to read (RecursionError).") from None
    if nesting_depth(raw) > MAX_JSON_DEPTH:
        raise HubError(f"{path} nests lists and objects more than {MAX_JSON_DEPTH} deep (a manifest nests 3): "
                       "a damaged or hostile file.")
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise HubError(f"{path} is not a hubrl expert manifest.")
    version = raw.get("format_version")
    if not fits_type(version, int) or version > MANIFEST_VERSION or version < 1:
        fix = "upgrade hubrl" if fits_type(version, int) and version > MANIFEST_VERSION else "the manifest is damaged"
        raise HubError(f"{path} has format_version {version!r}; this version of hubrl reads {MANIFEST_VERSION}: {fix}.")
    hints = typing.get_type_hints(ExpertManifest)
    missing = [f.name for f in dataclasses.fields(ExpertManifest)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in raw]
    if missing:
        raise HubError(f"{path} is missing fields: {', '.join(missing)}.")
    for name, value in raw.items():
        if name in hints and not fits_type(value, hints[name]):
            raise HubError(f"{path}: field {name} is {reprlib.repr(value)} ({type(value).__name__}), "
                           f"expected {type_name(hints[name])}.")  # reprlib: a hostile value may be megabytes long
    manifest = ExpertManifest(**{k: v for k, v in raw.items() if k in hints})
    shape = manifest.observation_shape
    if len(shape) != 3 or shape[1:] != [84, 84] or not 1 <= shape[0] <= 64:
        raise HubError(f"{path}: observation_shape {shape} is not what its NatureCNN reads: (frames, 84, 84).")
    if manifest.architecture != "NatureCNN" or manifest.features_dim != 512:
        raise HubError(f"{path}: architecture {manifest.architecture} with {manifest.features_dim} features; "
                       f"this version of hubrl reads NatureCNN with 512.")
    weights = Path(manifest.weights_file)
    inside = not weights.is_absolute() and (folder / weights).resolve().parent == folder.resolve()
    if not manifest.weights_file or not inside:
        raise HubError(f"{path}: weights_file {manifest.weights_file!r} is not a file name inside {folder}: refusing it.")
    return manifest


def _manifest_bytes(path: Path) -> bytes:
    """The bytes of the manifest ``path``, read only from a regular file (a link to ``/dev/zero`` or a
    pipe would never end) and no more than :data:`MAX_MANIFEST_BYTES`; :class:`HubError` otherwise."""
    if not stat.S_ISREG(path.stat().st_mode):  # before opening it: opening a pipe waits for a writer
        raise HubError(f"{path} is not a regular file (a device, a pipe or a folder): not a manifest; refusing to read it.")
    with path.open("rb") as handle:
        data = handle.read(MAX_MANIFEST_BYTES + 1)  # the size read, not the size stated: the file may grow meanwhile
    if len(data) > MAX_MANIFEST_BYTES:
        raise HubError(f"{path} is over {MAX_MANIFEST_BYTES:,} bytes: too big for a manifest (a damaged or hostile file).")
    return data


#: Most bytes an ``expert.json`` may have (a real one is a few kB).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: Deepest nesting of lists and objects that an untrusted JSON file (a manifest, an SB3 zip's ``data``)
#: may have: real ones nest 3 or 4 levels; code that walks a value recursively (``yaml.safe_dump`` of
#: a run's records) overflows Python's stack near 1,000, which the JSON parser still reads.
MAX_JSON_DEPTH = 32


def nesting_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep lists and dicts nest in ``value`` (a scalar: 0, ``[1]``: 1), counted level by level
    without recursion, and no further than ``limit + 1``."""
    depth, level = 0, [value]
    while depth <= limit:
        containers = [v for v in level if isinstance(v, (list, dict))]
        if not containers:
            break
        depth += 1
        level = [item for v in containers for item in (v.values() if isinstance(v, dict) else v)]
    return depth
