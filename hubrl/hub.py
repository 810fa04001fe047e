"""The model hub: load source experts as weights only and check that they fit the target env.

Two sources of experts:

* a hub folder written by ``scripts/pretrain_sources.py`` (``<hub>/<name>/expert.json`` +
  ``weights.safetensors``; the checksum in the manifest is verified);
* plain SB3 checkpoints (``.zip``), e.g. RL Zoo's published Atari agents. Only ``policy.pth``
  (a state_dict) is read, with ``torch.load(weights_only=True)``; the ``data`` entry, whose
  cloudpickled fields would execute code on load (stock ``PPO.load`` unpickles them), is read
  as plain JSON for a few descriptive fields and never unpickled.

Every expert must be an SB3 NatureCNN encoder (``features_extractor.cnn.{0,2,4}`` and
``features_extractor.linear.0``, with NatureCNN's shapes and 512 features); the
``pi_/vf_features_extractor`` duplicates of SB3 >= 1.7 are accepted and ignored.

Files are untrusted: a zip member is read only up to :data:`MAX_MEMBER_BYTES` inflated bytes
(checked against its header, then enforced while inflating, so a lying header cannot exceed
it), a manifest's fields are type-checked and its weights file must lie inside its folder.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import shlex
import sys
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch as th

from hubrl.atomic import sha256_file
from hubrl.errors import HubError
from hubrl.experts import MANIFEST_NAME, previous_weights, read_manifest
from hubrl.method_catalog import SHIPPED_HUB

__all__ = [
    "HubError", "Expert", "Hub", "MAX_MEMBER_BYTES", "MAX_DATA_BYTES", "read_zip_member", "read_policy_state",
    "observation_shape", "load_hub", "load_sb3_zip", "load_sources", "default_hub_path", "resolve_hub",
]

ENCODER_PREFIX = "features_extractor."
HEAD_PREFIXES = ("action_net.", "value_net.")  # a CnnPolicy's heads (its mlp_extractor is empty)
NATURE_CNN_KEYS = (
    "cnn.0.weight", "cnn.0.bias", "cnn.2.weight", "cnn.2.bias", "cnn.4.weight", "cnn.4.bias",
    "linear.0.weight", "linear.0.bias",
)
NATURE_CNN_FEATURES = 512  # SB3 CnnPolicy's features_dim, which hubrl's extractors are built with
#: NatureCNN's tensor shapes on 84x84 frames; ``C`` is the frame stack (checked against the env later).
NATURE_CNN_SHAPES = {
    "cnn.0.weight": (32, "C", 8, 8), "cnn.0.bias": (32,), "cnn.2.weight": (64, 32, 4, 4), "cnn.2.bias": (64,),
    "cnn.4.weight": (64, 64, 3, 3), "cnn.4.bias": (64,),
    "linear.0.weight": (NATURE_CNN_FEATURES, 3136), "linear.0.bias": (NATURE_CNN_FEATURES,),
}
#: Most bytes a zip member may inflate to. An SB3 NatureCNN policy.pth is ~7 MB (optimizer state
#: ~14 MB); this leaves room for much bigger policies and refuses zip bombs before inflating them.
MAX_MEMBER_BYTES = 256 * 1024 * 1024
MAX_DATA_BYTES = 16 * 1024 * 1024  # an SB3 zip's JSON ``data`` entry: tens of kB


@dataclass
class Expert:
    """One source expert: its NatureCNN encoder weights and what is known about it."""

    name: str
    encoder_state: dict[str, th.Tensor]
    source: str
    game: str | None = None
    action_meanings: list[str] | None = None
    meta: dict = field(default_factory=dict)
    heads: dict[str, th.Tensor] = field(default_factory=dict)  # ``action_net.*``/``value_net.*`` when stored

    def policy_state(self) -> dict[str, th.Tensor]:
        """The whole ``CnnPolicy`` state_dict (encoder + heads, float32) to play the expert's own game.

        Transfer uses only the encoder; playing needs the heads, which hub folders and SB3 zips
        store beside it. Raises :class:`HubError` when this expert has none.
        """
        if not all(any(k.startswith(p) for k in self.heads) for p in HEAD_PREFIXES):
            raise HubError(f"Expert {self.name!r} stores only its encoder (no action_net/value_net): "
                           "it cannot play on its own.")
        heads = {k: v.float() for k, v in self.heads.items()}
        n_actions = heads["action_net.weight"].shape[0] if "action_net.weight" in heads else 0
        wanted = {"action_net.weight": (n_actions, self.features_dim), "action_net.bias": (n_actions,),
                  "value_net.weight": (1, self.features_dim), "value_net.bias": (1,)}
        shapes = {k: tuple(v.shape) for k, v in heads.items()}
        if shapes != wanted or not n_actions:  # e.g. an SB3 zip saved with another net_arch: heads on its own MLP
            raise HubError(f"Expert {self.name!r}'s heads {shapes} are not a CnnPolicy's on its {self.features_dim} "
                           f"encoder features {wanted}: it cannot play on its own (saved with another net_arch?); its "
                           "encoder still serves as a transfer source.")
        if not all(bool(th.isfinite(v).all()) for v in heads.values()):
            raise HubError(f"Expert {self.name!r}'s heads hold NaN or infinite weights: it cannot play.")
        state = {ENCODER_PREFIX + k: v.float() for k, v in self.encoder_state.items()}
        return {**state, **heads}

    def encoder_tensors(self, device: th.device | str = "cpu") -> dict[str, th.Tensor]:
        """The encoder's state_dict as float32 on ``device`` (shipped weights may be float16)."""
        return {k: v.to(device=device, dtype=th.float32) for k, v in self.encoder_state.items()}

    @property
    def in_channels(self) -> int:
        return int(self.encoder_state["cnn.0.weight"].shape[1])

    @property
    def features_dim(self) -> int:
        return int(self.encoder_state["linear.0.weight"].shape[0])


@dataclass
class Hub:
    """An ordered set of experts with unique names."""

    experts: list[Expert]

    def __post_init__(self) -> None:
        names = [e.name for e in self.experts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            sources = " and ".join(e.source for e in self.experts if e.name == dupes[0])
            raise HubError(f"Two experts are named {', '.join(dupes)} ({sources}): an expert is named by its folder or "
                           "file, so rename one of these (or copy it under another name).")

    def __len__(self) -> int:
        return len(self.experts)

    def __iter__(self):
        return iter(self.experts)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.experts]

    def get(self, name: str) -> Expert:
        """The expert called ``name``, or else the only expert trained on game ``name``.

        ``Seaquest``, ``seaquest`` and ``ALE/Seaquest-v5`` all find ``seaquest-ppo`` in a hub where
        it is the one Seaquest expert; a game with several experts is an error listing them.
        """
        for expert in self.experts:
            if expert.name == name:
                return expert
        matches = self.experts_for_game(name)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise HubError(
                f"{name!r} names the game of {len(matches)} experts ({', '.join(e.name for e in matches)}): "
                "give one of these names."
            )
        raise HubError(f"No expert named {name!r} in the hub and none trained on that game; it has: {', '.join(self.names)}.")

    def experts_for_game(self, game: str) -> list[Expert]:
        """Experts whose manifest says they were trained on ``game`` (any spelling resolve_game takes)."""
        from hubrl.envs.games import UnknownGameError, resolve_game

        try:
            wanted = resolve_game(game)
        except UnknownGameError:
            return []
        found = []
        for expert in self.experts:
            try:
                if expert.game is not None and resolve_game(expert.game) == wanted:
                    found.append(expert)
            except UnknownGameError:
                continue
        return found

    def validate(self, observation_shape: Sequence[int]) -> None:
        """Check that every expert can read the target's observations (frame stack, 84x84)."""
        if not self.experts:
            raise HubError("The hub is empty: give a hub folder with experts, or --sources ZIP ...")
        channels = int(observation_shape[0])
        dims = {e.features_dim for e in self.experts}
        for e in self.experts:
            if e.in_channels != channels:
                raise HubError(
                    f"Expert {e.name!r} reads {e.in_channels} stacked frames but the target env gives {channels} "
                    f"(observation shape {tuple(observation_shape)}): use experts trained with frame_stack={channels}."
                )
        if len(dims) > 1:
            raise HubError(f"Experts have different feature sizes {sorted(dims)}: a hub needs one NatureCNN width.")


def _heads_from_state_dict(state: dict) -> dict[str, th.Tensor]:
    """The policy heads stored beside the encoder (empty for an encoder-only file)."""
    return {k: v for k, v in state.items() if isinstance(k, str) and k.startswith(HEAD_PREFIXES)}


def observation_shape(data: dict[str, Any]) -> tuple[int, ...] | None:
    """The observation shape that an SB3 zip's JSON ``data`` states in readable form (SB3 writes
    ``"[4, 84, 84]"`` or ``"(4, 84, 84)"`` beside the pickled space), or None when it states none."""
    space = data.get("observation_space")
    shape = space.get("_shape", space.get("shape")) if isinstance(space, dict) else None
    if isinstance(shape, str):
        try:
            shape = json.loads(shape.replace("(", "[").replace(")", "]").replace(",]", "]"))
        except ValueError:
            return None
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        return None
    return tuple(shape)


def read_zip_member(archive: zipfile.ZipFile, name: str, where: str | Path, limit: int | None = None) -> bytes:
    """The bytes of member ``name``, refused (HubError) when it would inflate past ``limit``
    (default :data:`MAX_MEMBER_BYTES`).

    The header's size is checked first (a zip bomb costs nothing), then at most ``limit + 1``
    bytes are inflated, so a header that lies about the size cannot get past the limit either.
    """
    limit = MAX_MEMBER_BYTES if limit is None else limit
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise HubError(f"{where} has no {name}.") from None
    if info.file_size > limit:
        raise HubError(f"{where}: {name} would inflate to {info.file_size:,} bytes, more than the {limit:,} this "
                       f"reader allows (a NatureCNN policy is about 7 MB): refusing it (a damaged or hostile file).")
    if info.flag_bits & 0x1:  # zipfile would raise RuntimeError("... password required") on open
        raise HubError(f"{where}: {name} is encrypted; SB3 never writes encrypted zips: save it again without a password.")
    try:
        with archive.open(info) as member:
            data = member.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as exc:  # zlib: a
        raise HubError(f"{where} is corrupt: cannot read {name} ({exc}).") from exc  # damaged deflated member
    if len(data) > limit:
        raise HubError(f"{where}: {name} inflates past {limit:,} bytes although its header says {info.file_size:,}: "
                       f"refusing it (a damaged or hostile file).")
    return data


def _encoder_from_state_dict(state: dict, where: str) -> dict[str, th.Tensor]:
    """The NatureCNN encoder in ``state`` (an SB3 policy state_dict), every shape checked."""
    if not isinstance(state, dict) or not all(isinstance(v, th.Tensor) for v in state.values()):
        raise HubError(f"{where} does not hold a state_dict of tensors.")
    encoder = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(ENCODER_PREFIX)}
    missing = [k for k in NATURE_CNN_KEYS if k not in encoder]
    if missing:
        experts = {k.split(".")[2] for k in state if isinstance(k, str) and k.startswith("features_extractor.experts.")}
        if experts:  # a hubrl Hub-Pathway model.zip: stock PPO.load opens it, but it has no single encoder
            raise HubError(
                f"{where} is a hubrl Hub-Pathway model (a gate and {len(experts)} expert encoders), not a single-encoder "
                "CnnPolicy: play it from its run folder (the one with its config.yaml), or load it with "
                "hubrl.agents.HubPPO.load; as experts, use the hub it was trained from."
            )
        raise HubError(
            f"{where} is not an SB3 CnnPolicy (NatureCNN) checkpoint: "
            f"missing {', '.join(ENCODER_PREFIX + k for k in missing[:3])}. A hub takes PPO or A2C agents saved with "
            "CnnPolicy (model.save), or expert folders of hubrl-pretrain."
        )
    conv = encoder["cnn.0.weight"]
    channels = int(conv.shape[1]) if conv.ndim == 4 else -1
    for key, expected in NATURE_CNN_SHAPES.items():
        want = tuple(channels if d == "C" else d for d in expected)
        got = tuple(encoder[key].shape)
        if got != want:
            raise HubError(f"{where}: {ENCODER_PREFIX}{key} has shape {got}, NatureCNN on 84x84 frames with "
                           f"{NATURE_CNN_FEATURES} features has {want}: not an encoder this version of hubrl reads.")
        if not encoder[key].is_floating_point():
            raise HubError(f"{where}: {ENCODER_PREFIX}{key} holds {encoder[key].dtype}, not floating-point weights.")
    if channels < 1:
        raise HubError(f"{where}: {ENCODER_PREFIX}cnn.0.weight reads {channels} channels.")
    bad = [k for k in NATURE_CNN_KEYS if not th.isfinite(encoder[k]).all()]
    if bad:
        raise HubError(f"{where}: {ENCODER_PREFIX}{bad[0]} holds inf or nan values: the expert is broken.")
    return {k: encoder[k].float() for k in NATURE_CNN_KEYS}


def load_expert_folder(folder: str | Path) -> Expert:
    """Load one ``pretrain_sources.py`` expert folder, verifying the weights checksum; the expert is
    named by the folder (:func:`expert_folder_name`), not by its manifest's ``name``.

    :raises HubError: what is wrong with it, and what to do: export it again from its run, or take
        it out of the hub.
    """
    folder = Path(folder)
    try:
        return _load_expert_folder(folder)
    except HubError as exc:
        if folder.resolve().parent == default_hub_path().resolve():
            raise HubError(f"{exc} It is an expert of hubrl's own hub: reinstall hubrl.") from exc
        raise HubError(f"{exc} If it is damaged, export it again from its pretraining run (hubrl-pretrain --export "
                       f"--env GAME --out RUNS --hub {shlex.quote(str(folder.parent))} --force), or move "
                       f"{shlex.quote(str(folder))} out of the hub.") from exc


def expert_folder_name(folder: str | Path) -> str:
    """The name of the expert in ``folder``: the folder's own name, which a user sees, lists and
    renames (``seaquest-ppo`` copied to ``seaquest-ppo-s1`` is a second expert of that name), as an SB3
    zip's is its file's. The manifest's ``name`` is what it was exported as: hubrl-pretrain writes
    both alike, so a hub it made names its experts as before. ``.`` and ``..`` are named by the
    folder they stand for."""
    return Path(os.path.abspath(folder)).name


def _load_expert_folder(folder: Path) -> Expert:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest = read_manifest(folder)  # fields type-checked, weights_file inside the folder
    name = expert_folder_name(folder)
    weights = folder / manifest.weights_file
    if not weights.is_file():
        raise HubError(f"Expert {name}: weights file {weights} is missing.")
    if weights.stat().st_size > MAX_MEMBER_BYTES:
        raise HubError(f"Expert {name}: {weights} is {weights.stat().st_size:,} bytes, more than the "
                       f"{MAX_MEMBER_BYTES:,} this reader allows (a NatureCNN policy is about 7 MB).")
    if manifest.weights_sha256 and sha256_file(weights) != manifest.weights_sha256:
        kept = previous_weights(weights)  # an export killed between its weights and its manifest left these
        if not (kept.is_file() and sha256_file(kept) == manifest.weights_sha256):
            raise HubError(f"Expert {name}: {weights.name} does not match the checksum in its manifest "
                           "(corrupt or replaced).")
        print(f"warning: expert {name}: {weights.name} is newer than its manifest (an export was stopped "
              f"between the two); loading the previous weights kept beside them ({kept.name}), which match it. "
              "Export the expert again to finish.", file=sys.stderr)
        weights = kept
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise HubError(f"Expert {name}: cannot read {weights} ({exc}).") from exc
    meta = {"timesteps": manifest.timesteps, "algo": manifest.algo, "eval": manifest.eval, "format": "hubrl"}
    encoder = _encoder_from_state_dict(state, str(weights))
    if manifest.observation_shape[0] != encoder["cnn.0.weight"].shape[1]:
        raise HubError(f"{folder / MANIFEST_NAME}: observation_shape {manifest.observation_shape} does not match its weights, "
                       f"which read {encoder['cnn.0.weight'].shape[1]} stacked frames.")
    return Expert(name, encoder, str(folder), manifest.game, list(manifest.action_meanings), meta,
                  _heads_from_state_dict(state))


def load_hub(path: str | Path) -> Hub:
    """Load every expert folder under ``path`` (sorted by name)."""
    path = Path(path)
    if path.is_file():  # e.g. an SB3 zip given as --hub
        raise HubError(f"--hub {path} is a file, not a hub folder: give --hub a folder of experts, or an SB3 .zip to "
                       f"--sources.")
    if not path.is_dir():
        raise HubError(f"Hub folder {path} does not exist: leave --hub out to use the shipped hub "
                       f"({', '.join(p.parent.name for p in sorted(SHIPPED_HUB.glob('*/' + MANIFEST_NAME)))}), or make one "
                       f"with python -m hubrl pretrain --hub {shlex.quote(str(path))} (hours of training).")
    if (path / MANIFEST_NAME).is_file():  # a single expert folder is a hub of one
        return Hub([load_expert_folder(path)])
    folders = sorted(p for p in path.iterdir() if (p / MANIFEST_NAME).is_file())
    if not folders:
        _refuse_pretraining_runs(path, "--hub", "a hub")
        raise HubError(f"Hub folder {path} holds no finished expert (no */{MANIFEST_NAME}): "
                       f"train one with python -m hubrl pretrain --hub {shlex.quote(str(path))}.")
    return Hub([load_expert_folder(p) for p in folders])


def load_weights_only(source: str | Path | io.BytesIO) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU, without torch's warning about a pickle
    protocol it did not write: a file that is not a torch file is the caller's one-line error, not
    two lines of torch's first."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return th.load(source, map_location="cpu", weights_only=True)


def _torch_file_or_pickle(raw: bytes) -> bool:
    """Whether ``raw`` is laid out as a file ``torch.load`` reads: a zip (``torch.save``'s format) or a
    pickle stream (its legacy format, or a pickle of anything else, which the weights-only load
    refuses), read by disassembling its first pickle (never running it). Anything else is no torch
    file at all: damaged, or another kind of file."""
    if raw.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return True
    try:
        for _ in pickletools.genops(raw):  # stops at the first pickle's STOP
            pass
    except Exception:  # noqa: BLE001  pickletools raises several types (ValueError too) for what is not a pickle
        return False
    return True


def read_policy_state(archive: zipfile.ZipFile, where: str | Path) -> dict:
    """The ``policy.pth`` state_dict of an open SB3 zip, read with ``torch.load(weights_only=True)``;
    the zip's ``data`` entry (which can hold pickled code) is not touched. :class:`HubError` when the
    member is missing, corrupt, too large (:func:`read_zip_member`), not a torch file at all, or holds
    pickled objects beyond tensors."""
    names = archive.namelist()
    torch_file = any(n.endswith("/data.pkl") for n in names)  # torch.save's own zip format (also an SB3 zip cut short)
    if "policy.pth" not in names and torch_file and Path(str(where)).suffix in (".pt", ".pth"):
        raise HubError(f"{where} is a torch file (a run's checkpoint.pt?), not an SB3 .zip: give the run folder or "
                       f"its model.zip instead.")
    if "policy.pth" not in names:  # a truncated SB3 zip can open as the zip nested in its last member
        raise HubError(f"{where} is not an SB3 checkpoint, or is truncated: it has no policy.pth "
                       f"(entries: {', '.join(names[:4]) or 'none'}); save or download it again.")
    raw = read_zip_member(archive, "policy.pth", where)
    if not _torch_file_or_pickle(raw):  # plain damage is not to be reported as a file that could run code
        raise HubError(f"{where}: its policy.pth is not a PyTorch weights file (corrupt or foreign): save or download "
                       "it again.")
    try:
        return load_weights_only(io.BytesIO(raw))
    except pickle.UnpicklingError as exc:
        raise HubError(f"{where}: policy.pth holds pickled objects beyond tensors; "
                       "refusing to load it (it could run code).") from exc
    except Exception as exc:  # truncated / not a torch file
        raise HubError(f"{where} is corrupt: policy.pth is not a readable state_dict ({type(exc).__name__}).") from exc


def load_sb3_zip(path: str | Path, name: str | None = None) -> Expert:
    """Read the encoder of an SB3 ``.zip`` checkpoint without unpickling anything."""
    path = Path(path)
    if not path.is_file():
        raise HubError(f"Checkpoint {path} does not exist: check the path (an SB3 model .zip, an expert folder or a "
                       "run folder).")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise HubError(f"{path} is not a zip file, or is truncated: expected an SB3 checkpoint (model.save output); "
                       "save or download it again.") from exc
    with archive:
        state = read_policy_state(archive, path)
        meta: dict = {"format": "sb3-zip"}
        if "data" in archive.namelist():
            try:  # JSON only: the ':serialized:' fields are never decoded
                data = json.loads(read_zip_member(archive, "data", path, limit=MAX_DATA_BYTES))
                shape = observation_shape(data)
                if shape is not None:
                    meta["observation_shape"] = list(shape)
                meta["num_timesteps"] = data.get("num_timesteps")
            except (ValueError, UnicodeDecodeError, TypeError, AttributeError, RecursionError, MemoryError):
                pass  # optional metadata: unreadable (HubError is a ValueError; nested too deep for json) is left out
    encoder = _encoder_from_state_dict(state, str(path))
    return Expert(name or path.stem, encoder, str(path), None, None, meta, _heads_from_state_dict(state))


def load_sources(paths: Iterable[str | Path]) -> Hub:
    """A hub made of SB3 checkpoints and/or expert folders, in the given order.

    :raises HubError: for a file or folder given twice (``a.zip ./a.zip``), which would otherwise
        read as two experts sharing a name.
    """
    paths = [Path(p) for p in paths]
    seen: dict[Path, Path] = {}
    for p in paths:
        try:
            where = p.resolve()
        except (OSError, RuntimeError):  # a symlink loop: load_expert_folder / load_sb3_zip say what is wrong
            where = Path(os.path.abspath(p))
        first = seen.setdefault(where, p)
        if first is not p:
            same = f"{first}" if str(first) == str(p) else f"{first} and {p}"
            raise HubError(f"--sources names {same} twice: give each expert once.")
    experts = []
    for p in paths:
        p = Path(p)
        if p.is_dir() and not (p / MANIFEST_NAME).is_file():
            _refuse_a_folder_that_holds_the_source(p)
        experts.append(load_expert_folder(p) if p.is_dir() else load_sb3_zip(p))
    return Hub(experts)


def _refuse_a_folder_that_holds_the_source(folder: Path) -> None:
    """A ``--sources`` folder that is not an expert but holds what was meant: a hub (its experts'
    folders), a run (its ``model.zip``) or pretraining runs (:func:`_refuse_pretraining_runs`); says
    which flag or path takes it. Anything else falls through to :func:`load_expert_folder`'s "not an
    expert folder"."""
    experts = sorted(q.name for q in folder.iterdir() if (q / MANIFEST_NAME).is_file())
    if experts:
        raise HubError(f"{folder} is a hub (a folder of experts: {', '.join(experts)}), not an expert: pass it as "
                       f"--hub {shlex.quote(str(folder))}, or give its experts' folders to --sources.")
    _refuse_pretraining_runs(folder, "--sources", "an expert")
    if (folder / "model.zip").is_file():
        method = _run_method(folder)
        if method in ("hub-pathway", "zoo-tuning"):  # its model mixes several encoders: no one of them is an expert
            raise HubError(f"{folder} is a {method} run, not an expert: its model holds the encoders of the hub it was "
                           "trained from, mixed by the method, and no single one to transfer; give that hub (its "
                           "config.yaml's hub or sources) instead.")
        raise HubError(f"{folder} is a run folder, not an expert: give its model instead, --sources "
                       f"{shlex.quote(str(folder / 'model.zip'))} (read as weights only; a NatureCNN CnnPolicy, as "
                       "scratch and finetune runs save).")


def _run_method(folder: Path) -> str | None:
    """The ``method`` a run folder's ``config.yaml`` names, ``None`` where it names none or cannot
    be read (the caller then says what the folder is by its ``model.zip`` alone)."""
    method = (_saved_run(folder) or {}).get("method")
    return method if isinstance(method, str) else None


def _saved_run(folder: Path) -> dict | None:
    """The ``run`` section of a run folder's ``config.yaml``, ``None`` where it has none or it cannot be read."""
    from hubrl.errors import CheckpointError
    from hubrl.runconfig import read_saved_run

    if not (folder / "config.yaml").is_file():
        return None
    try:
        return read_saved_run(folder / "config.yaml")
    except (CheckpointError, OSError):
        return None


def _refuse_pretraining_runs(folder: Path, flag: str, wanted: str) -> None:
    """Refuse ``folder`` given to ``flag`` (where ``wanted`` was expected) when it is a pretraining run
    or a folder of them (a pretrain ``--out``), saying what to give instead: the experts the runs
    exported into their hub, or the command that exports them. Anything else returns."""
    from hubrl.runconfig import is_pretraining_run

    run = _saved_run(folder)
    if is_pretraining_run(run):
        runs, what = [(folder, run)], f"{folder} is a pretraining run"
    else:
        found = [(q, _saved_run(q)) for q in sorted(folder.iterdir()) if q.is_dir()]
        runs = [(q, r) for q, r in found if is_pretraining_run(r)]
        what = f"{folder} holds pretraining runs ({', '.join(q.name for q, _ in runs)})"
    if runs:
        raise HubError(f"{what}, not {wanted}: {_pretraining_runs_advice(runs, flag)}.")


def _pretraining_runs_advice(runs: list[tuple[Path, dict]], flag: str) -> str:
    """What to give ``flag`` instead of the pretraining ``runs`` (folder, saved ``run`` section), all
    in one ``--out``: the experts they exported into their hub, or (not all exported yet) the
    ``hubrl-pretrain --export`` that exports them first."""
    saved = [str(run.get("hub") or "hub") for _, run in runs]  # each run's own hub, where it exports its expert
    hub = saved[0] if len(set(saved)) == 1 else "HUB"  # runs exporting into several hubs: the user picks one
    exported = all((Path(h) / folder.name / MANIFEST_NAME).is_file() for h, (folder, _) in zip(saved, runs))
    experts = " ".join(shlex.quote(str(Path(h if exported else hub) / folder.name)) for h, (folder, _) in zip(saved, runs))
    give = [f"--sources {experts}"] + ([f"--hub {shlex.quote(hub)}"] if hub != "HUB" or not exported else [])
    give.sort(key=lambda option: not option.startswith(flag))  # the flag the user gave first
    if exported:
        return f"{'its expert is' if len(runs) == 1 else 'their experts are'} exported, pass {' or '.join(give)}"
    from hubrl.runconfig import export_command

    games: dict[str, list[str]] = {}  # one --export per algorithm: it exports <out>/<game>-<algo>
    for _, run in runs:
        games.setdefault(str(run.get("algo") or "ppo").lower(), []).append(str(run["game"]))
    export = " and ".join(export_command(runs[0][0].parent, names, algo, hub) for algo, names in games.items())
    return f"export {'its expert' if len(runs) == 1 else 'their experts'} into a hub first ({export}), then pass {give[0]}"


def default_hub_path() -> Path:
    """The hub shipped inside the package (``hubrl/default_hub``): experts only, their
    pretraining runs are kept outside the package (``benchmarks/pretrain``)."""
    return SHIPPED_HUB


def resolve_hub(hub: str | Path | None = None, sources: Sequence[str | Path] | None = None) -> Hub:
    """``--hub DIR``, ``--sources ZIP ...``, or (neither) the package's default hub."""
    if hub and sources:
        raise HubError("Give either --hub DIR or --sources ZIP ..., not both.")
    if sources:
        return load_sources(sources)
    if hub:
        return load_hub(hub)
    path = default_hub_path()
    if not path.is_dir() or not any((p / MANIFEST_NAME).is_file() for p in path.iterdir()):
        raise HubError(
            "This installation has no trained default hub yet. Make one with "
            "`python -m hubrl pretrain --hub hub` and pass --hub hub, "
            "or pass SB3 checkpoints with --sources a.zip b.zip."
        )
    return load_hub(path)
