"""One expert of a hub on disk: weights-only file + JSON manifest.

Layout of an expert folder (what ``pretrain_sources.py`` writes and :mod:`hubrl.hub` reads)::

    <hub>/<name>/
        expert.json            manifest: game, algo, steps, evaluation, shapes, actions, checksum
        weights.safetensors    the policy's state_dict (safetensors: tensors only, no code)

A hub is a folder of such expert folders. There is no central index file, so experts trained in
parallel (one process per game) never race to update a shared file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch as th

from hubrl.checkpoint import atomic_write, atomic_write_bytes, sha256_file

__all__ = [
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "ExpertManifest",
    "canonical_state_dict",
    "save_expert",
    "read_manifest",
]

MANIFEST_NAME = "expert.json"
WEIGHTS_NAME = "weights.safetensors"
MANIFEST_FORMAT = "hubrl-expert"
MANIFEST_VERSION = 1
_DUPLICATE_PREFIXES = ("pi_features_extractor.", "vf_features_extractor.")


@dataclass
class ExpertManifest:
    """What is known about one expert. ``weights_sha256`` pins the weights file."""

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


def save_expert(folder: str | Path, state_dict: dict[str, th.Tensor], manifest: ExpertManifest, dtype: th.dtype = th.float32) -> Path:
    """Write weights (safetensors) then the manifest that pins their checksum, both atomically."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in canonical_state_dict(state_dict).items()}
    weights = folder / manifest.weights_file
    atomic_write_bytes(weights, save(tensors, metadata={"format": "hubrl-expert-weights"}))
    manifest.weights_sha256 = sha256_file(weights)
    manifest.weights_dtype = str(dtype).replace("torch.", "")
    atomic_write(folder / MANIFEST_NAME, lambda handle: handle.write(manifest.to_json()), mode="w")
    return folder


def read_manifest(folder: str | Path) -> ExpertManifest:
    """Parse ``<folder>/expert.json``; raises ``ValueError`` naming the problem."""
    path = Path(folder) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{folder} is not an expert folder: no {MANIFEST_NAME}.") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is corrupt: not valid JSON ({exc.msg}).") from exc
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a hubrl expert manifest.")
    known = set(ExpertManifest.__dataclass_fields__)
    try:
        return ExpertManifest(**{k: v for k, v in raw.items() if k in known})
    except TypeError as exc:
        raise ValueError(f"{path} is missing fields: {exc}.") from exc
