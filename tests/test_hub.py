"""Loading experts as weights only, and refusing what cannot be used."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import pytest
import torch as th

from hubrl.hub import HubError, load_hub, load_sb3_zip, load_sources, resolve_hub
from tests.conftest import forbid_unpickling, make_sb3_zip, make_tiny_hub


def test_load_hub_folder(tiny_hub):
    hub = load_hub(tiny_hub)
    assert hub.names == ["riverraid-ppo", "seaquest-ppo"]
    assert hub.experts[0].game == "riverraid" and hub.experts[0].features_dim == 512
    hub.validate((4, 84, 84))


def test_checksum_mismatch_is_refused(tiny_hub):
    weights = tiny_hub / "seaquest-ppo" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(HubError, match="checksum") as refused:
        load_hub(tiny_hub)
    # what to do too: the damaged expert named with the two ways out
    assert str(refused.value).endswith(f"If it is damaged, export it again from its pretraining run (hubrl-pretrain "
                                       f"--export --env GAME --out RUNS --hub {tiny_hub} --force), or move "
                                       f"{tiny_hub / 'seaquest-ppo'} out of the hub.")


def experts_before_bias(files: dict[str, bytes]) -> th.Tensor:
    """The action head's bias in an expert folder's weights, from the folder's bytes."""
    from safetensors.torch import load

    return load(files["weights.safetensors"])["action_net.bias"].float()


def test_an_export_that_fails_leaves_the_previous_expert_whole(tmp_path, monkeypatch):
    """Re-exporting an expert replaced its weights, then its manifest: a failure in between (a full
    disk at the manifest) left weights that no longer matched the manifest's checksum, and the old
    expert was gone. Now the old weights come back when the manifest cannot be written."""
    from hubrl import experts
    from hubrl.experts import read_manifest, save_expert
    from hubrl.hub import load_expert_folder

    folder = make_tiny_hub(tmp_path / "hub", names=("seaquest-ppo",)) / "seaquest-ppo"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    state = {k: v + 1 for k, v in load_expert_folder(folder).policy_state().items()}
    real_write = experts.atomic_write

    def full_disk(path, *args, **kwargs):
        if Path(path).name == "expert.json":
            raise OSError(28, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(experts, "atomic_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_expert(folder, state, read_manifest(folder))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the same files, nothing left beside them
    load_expert_folder(folder)  # checksum verified
    monkeypatch.undo()
    # killed outright between the two writes: the new weights beside the old manifest, the old ones kept aside
    from hubrl.experts import previous_weights

    weights = folder / read_manifest(folder).weights_file
    previous_weights(weights).write_bytes(weights.read_bytes())
    weights.write_bytes(b"the new weights, whose manifest never came")
    assert th.equal(load_expert_folder(folder).policy_state()["action_net.bias"], experts_before_bias(before))
    previous_weights(weights).unlink()
    weights.write_bytes(before[weights.name])
    save_expert(folder, state, read_manifest(folder))  # a successful export replaces both, no file left aside
    assert sorted(p.name for p in folder.iterdir()) == sorted(before)
    assert th.equal(load_expert_folder(folder).policy_state()["action_net.bias"], state["action_net.bias"])


def test_two_exports_into_one_expert_take_turns(tmp_path):
    """Two processes exporting one expert at once (two runs of a game ending together, or
    ``--export`` beside a finishing run) could interleave their writes and leave one's manifest
    over the other's weights. An export now waits while another holds the expert's export lock."""
    import threading

    from hubrl.experts import export_lock_path, read_manifest, save_expert
    from hubrl.hub import load_expert_folder
    from hubrl.locks import exclusive_lock

    folder = make_tiny_hub(tmp_path / "hub", names=("seaquest-ppo",)) / "seaquest-ppo"
    assert [p.name for p in folder.parent.iterdir()] == ["seaquest-ppo"]  # the lock is not in the hub: only experts
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    state = {k: v + 1 for k, v in load_expert_folder(folder).policy_state().items()}
    manifest = read_manifest(folder)
    with exclusive_lock(export_lock_path(folder)):  # another export in the middle of its writes
        export = threading.Thread(target=save_expert, args=(folder, state, manifest))
        export.start()
        export.join(timeout=1.0)
        assert export.is_alive(), "the export did not wait for the one holding the lock"
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    export.join(timeout=30)
    assert not export.is_alive()
    assert th.equal(load_expert_folder(folder).policy_state()["action_net.bias"], state["action_net.bias"])


def test_sb3_zip_with_and_without_duplicate_extractor_keys(tmp_path):
    path = make_sb3_zip(tmp_path / "ppo-Seaquest.zip")
    expert = load_sb3_zip(path)
    assert expert.name == "ppo-Seaquest" and expert.in_channels == 4
    assert expert.meta["observation_shape"] == [4, 84, 84]
    # an older SB3 layout: no pi_/vf_features_extractor keys
    with zipfile.ZipFile(path) as z:
        state = th.load(io.BytesIO(z.read("policy.pth")), weights_only=True)
    stripped = {k: v for k, v in state.items() if not k.startswith(("pi_features", "vf_features"))}
    assert len(stripped) < len(state)
    old = tmp_path / "old.zip"
    buf = io.BytesIO()
    th.save(stripped, buf)
    with zipfile.ZipFile(old, "w") as z:
        z.writestr("policy.pth", buf.getvalue())
    assert th.equal(load_sb3_zip(old).encoder_state["cnn.0.weight"], expert.encoder_state["cnn.0.weight"])


class _Payload:
    """Unpickled, it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def test_pickle_payload_is_refused_and_never_executed(tmp_path, monkeypatch):
    """Both entries of an SB3 zip carry a working payload: the tensors (``policy.pth``) and the
    cloudpickled ``data``. Reading the zip as an expert unpickles neither."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.zip"
    buf = io.BytesIO()
    th.save({"features_extractor.cnn.0.weight": _Payload(marker)}, buf)
    payload = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("policy.pth", buf.getvalue())
        z.writestr("data", json.dumps({"policy_class": {":serialized:": payload}}))
    forbid_unpickling(monkeypatch)
    with pytest.raises(HubError, match="refusing to load"):
        load_sb3_zip(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"not a zip", "not a zip file, or is truncated: .* save or download it again"),
        ("no-policy", r"not an SB3 checkpoint, or is truncated: it has no policy.pth \(entries: data\)"),
        # cut short, an SB3 zip can open as the torch zip inside its last member, which has other entries
        ("nested", r"or is truncated: it has no policy.pth \(entries: archive/data.pkl\); save or download it again"),
        ("truncated", "corrupt"),
        ("checkpoint.pt", r"checkpoint.pt is a torch file \(a run's checkpoint.pt\?\), not an SB3 .zip: give the run "
                          "folder or its model.zip instead"),  # was: "not an SB3 checkpoint, or is truncated"
        ("mlp", "not an SB3 CnnPolicy .* A hub takes PPO or A2C agents saved with CnnPolicy"),
        ("hub-pathway", r"is a hubrl Hub-Pathway model \(a gate and 2 expert encoders\), not a single-encoder CnnPolicy: "
                        "play it from its run folder"),
        ("encrypted", "policy.pth is encrypted; SB3 never writes encrypted zips"),  # was a RuntimeError traceback
        ("deflated-damaged", r"is corrupt: cannot read policy.pth \(Error -3 while decompressing"),  # was zlib.error
    ],
)
def test_bad_checkpoints(tmp_path, content, message):
    path = tmp_path / "x.zip"
    if content == "checkpoint.pt":  # a training checkpoint given where a model is read
        from hubrl.checkpoint import save_training_checkpoint

        path = tmp_path / "checkpoint.pt"
        from stable_baselines3 import PPO

        from hubrl.envs import make_atari_vec_env

        save_training_checkpoint(PPO("CnnPolicy", make_atari_vec_env("Gopher", 1), device="cpu"), path, {})
    elif content == "no-policy":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("data", "{}")
    elif content == "nested":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", b"...")
    elif content == "hub-pathway":  # the keys of a HubPathwayPolicy's state_dict
        buf = io.BytesIO()
        th.save({f"features_extractor.experts.{i}.cnn.0.weight": th.zeros(32, 4, 8, 8) for i in range(2)}
                | {"features_extractor.gate.w_gate.weight": th.zeros(2, 1296)}, buf)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("policy.pth", buf.getvalue())
    elif content == "truncated":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("policy.pth", b"PK\x03\x04 half a file")
    elif content == "encrypted":  # the headers' encryption flag, as a password-protected zip sets it
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("policy.pth", b"ciphertext")
        raw = bytearray(path.read_bytes())
        local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
        raw[local + 6] |= 0x1  # general purpose flags: local file header at +6, central directory entry at +8
        raw[central + 8] |= 0x1
        path.write_bytes(bytes(raw))
    elif content == "deflated-damaged":  # a compressed policy.pth (hand-made zips) with its first data byte flipped
        buf = io.BytesIO()
        th.save({"w": th.arange(5000, dtype=th.float32)}, buf)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("policy.pth", buf.getvalue())
        raw = bytearray(path.read_bytes())
        raw[raw.find(b"PK\x03\x04") + 30 + len("policy.pth")] ^= 0xFF  # past the local header and the name
        path.write_bytes(bytes(raw))
    elif content == "mlp":
        buf = io.BytesIO()
        th.save({"mlp_extractor.policy_net.0.weight": th.zeros(64, 4)}, buf)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("policy.pth", buf.getvalue())
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(HubError, match=message):
        load_sb3_zip(path)


def test_mismatched_observation_shape(tmp_path):
    hub = load_hub(make_tiny_hub(tmp_path / "rgb", names=("three-ppo",), in_channels=3))
    with pytest.raises(HubError, match="reads 3 stacked frames but the target env gives 4"):
        hub.validate((4, 84, 84))


def test_empty_hub_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubError, match="no finished expert"):
        load_hub(tmp_path / "empty")
    with pytest.raises(HubError, match=r"does not exist: leave --hub out to use the shipped hub \(riverraid-ppo, "
                                       r"seaquest-ppo\), or make one with python -m hubrl pretrain --hub .*missing"):
        load_hub(tmp_path / "missing")
    with pytest.raises(HubError, match="empty"):
        load_sources([]).validate((4, 84, 84))


def test_duplicate_names_and_both_sources(tmp_path, tiny_hub):
    z = make_sb3_zip(tmp_path / "a.zip")
    with pytest.raises(HubError, match="names .*a.zip twice: give each expert once"):
        load_sources([z, z])  # the same file
    (tmp_path / "other").mkdir()
    with pytest.raises(HubError, match="Two experts are named a"):
        load_sources([z, make_sb3_zip(tmp_path / "other" / "a.zip", seed=1)])  # two files, one name
    with pytest.raises(HubError, match="either --hub"):
        resolve_hub(tiny_hub, [z])


def test_the_shipped_default_hub_loads_and_is_trained():
    from hubrl.experts import read_manifest
    from hubrl.hub import default_hub_path

    hub = resolve_hub()  # no flag: the package's own hub, checksums verified
    assert hub.names == ["riverraid-ppo", "seaquest-ppo"]
    hub.validate((4, 84, 84))
    for expert in hub:
        manifest = read_manifest(default_hub_path() / expert.name)
        assert manifest.timesteps >= 500_000 and manifest.eval["episodes"] >= 10
        assert manifest.eval["sticky_actions"] == 0.25 and manifest.eval["deterministic"] is False


SHIPPED = ("expert.json", "weights.safetensors")  # what an expert of the default hub is made of


def test_the_package_folder_holds_only_what_ships():
    """``hubrl/`` holds code and the default hub's experts, nothing else: training state,
    TensorBoard events and plots belong to the runs in ``benchmarks/pretrain`` (issue 16), so
    neither a clone's package nor an editable install carries them."""
    from hubrl.hub import default_hub_path

    package = default_hub_path().parent
    stray = sorted(
        p.relative_to(package).as_posix() for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"
        and not (p.parent.parent == default_hub_path() and p.name in SHIPPED)
    )
    assert not stray, f"not shipped, so not in the package (keep runs in benchmarks/pretrain): {stray}"
    experts = sorted(p for p in default_hub_path().iterdir())
    assert experts and all(p.is_dir() and sorted(f.name for f in p.iterdir()) == sorted(SHIPPED) for p in experts)
    pyproject = package.parent / "pyproject.toml"
    if pyproject.is_file():  # a source checkout: the wheel ships exactly these files
        from tests.conftest import read_pyproject

        setuptools = read_pyproject()["tool"]["setuptools"]
        assert "hubrl.default_hub" in setuptools["packages"]
        assert sorted(setuptools["package-data"]["hubrl.default_hub"]) == sorted(f"*/{name}" for name in SHIPPED)


def test_get_finds_the_one_expert_of_a_game_and_refuses_an_ambiguous_game(tmp_path):
    hub = load_hub(make_tiny_hub(tmp_path / "hub", names=("seaquest-ppo", "seaquest-a2c", "riverraid-ppo")))
    for name in ("Riverraid", "riverraid", "ALE/Riverraid-v5", "riverraid-ppo"):
        assert hub.get(name).name == "riverraid-ppo"
    with pytest.raises(HubError, match=r"2 experts \(seaquest-a2c, seaquest-ppo\): give one of these names"):
        hub.get("Seaquest")
    with pytest.raises(HubError, match="none trained on that game; it has: riverraid-ppo, seaquest-a2c, seaquest-ppo"):
        hub.get("Alien")


def test_experts_keep_their_heads_to_play(tmp_path, tiny_hub):
    expert = load_hub(tiny_hub).get("seaquest-ppo")
    state = expert.policy_state()
    assert state["action_net.weight"].shape == (18, 512) and "features_extractor.cnn.0.weight" in state
    assert load_sb3_zip(make_sb3_zip(tmp_path / "ppo.zip")).policy_state()["value_net.weight"].shape == (1, 512)
    heads = dict(expert.heads)
    expert.heads = {}
    with pytest.raises(HubError, match="stores only its encoder"):
        expert.policy_state()
    # heads on an MLP of another net_arch (SB3 CnnPolicy with net_arch=[64]): a size-mismatch traceback in enjoy
    expert.heads = {**heads, "action_net.weight": th.zeros(18, 64), "value_net.weight": th.zeros(1, 64)}
    with pytest.raises(HubError, match="are not a CnnPolicy's on its 512 encoder features .* another net_arch"):
        expert.policy_state()
    expert.heads = {k: v for k, v in heads.items() if k != "action_net.weight"}  # a KeyError in enjoy
    with pytest.raises(HubError, match="are not a CnnPolicy's"):
        expert.policy_state()
    expert.heads = {**heads, "action_net.bias": th.full((18,), float("nan"))}  # a ValueError mid-play
    with pytest.raises(HubError, match="NaN or infinite"):
        expert.policy_state()


def _pretraining_run(runs: Path, game: str, hub: Path, algo: str = "ppo") -> Path:
    """A pretraining run folder ``runs/<game>-<algo>`` (hubrl-pretrain's config.yaml) that exports into ``hub``."""
    import yaml

    folder = runs / f"{game}-{algo}"
    folder.mkdir(parents=True)
    run = {"game": game, "algo": algo, "out": str(runs), "hub": str(hub)}
    (folder / "config.yaml").write_text(yaml.safe_dump({"run": run}))
    (folder / "checkpoint.pt").write_bytes(b"never read")
    return folder


def test_a_pretraining_run_as_an_expert_or_hub_names_the_experts_it_exported(tmp_path):
    """A pretraining run folder (or the --out of several) given to --sources or --hub read as a damaged expert
    of a hub ("export it again ... --force, or move it out of the hub") or an empty hub ("train one", hours):
    now it is named for what it is, with the experts it exported into its hub."""
    hub = make_tiny_hub(tmp_path / "hub")
    runs = tmp_path / "runs"
    seaquest, riverraid = _pretraining_run(runs, "seaquest", hub), _pretraining_run(runs, "riverraid", hub)
    with pytest.raises(HubError) as refused:
        load_sources([seaquest])
    assert str(refused.value) == (f"{seaquest} is a pretraining run, not an expert: its expert is exported, pass "
                                  f"--sources {hub / 'seaquest-ppo'} or --hub {hub}.")
    with pytest.raises(HubError) as refused:
        resolve_hub(hub=seaquest)
    assert str(refused.value) == (f"{seaquest} is a pretraining run, not a hub: its expert is exported, pass "
                                  f"--hub {hub} or --sources {hub / 'seaquest-ppo'}.")
    with pytest.raises(HubError) as refused:
        load_hub(runs)
    assert str(refused.value) == (f"{runs} holds pretraining runs ({riverraid.name}, {seaquest.name}), not a hub: their "
                                  f"experts are exported, pass --hub {hub} or --sources {hub / 'riverraid-ppo'} "
                                  f"{hub / 'seaquest-ppo'}.")
    with pytest.raises(HubError, match=f"^{runs} holds pretraining runs .*, not an expert: .* pass --sources "):
        load_sources([runs])
    # an expert damaged inside a hub keeps its advice: export it again from its run, or move it out of the hub
    (hub / "seaquest-ppo" / "expert.json").unlink()
    with pytest.raises(HubError, match="If it is damaged, export it again from its pretraining run"):
        load_sources([hub / "seaquest-ppo"])


def test_a_pretraining_run_not_exported_yet_names_the_export_that_the_pretrain_command_accepts(tmp_path):
    from hubrl.cli.pretrain import parse_args

    hub, runs = tmp_path / "my hub", tmp_path / "runs"  # nothing exported yet
    seaquest = _pretraining_run(runs, "seaquest", hub, algo="a2c")
    with pytest.raises(HubError) as refused:
        load_sources([seaquest])
    message = str(refused.value)
    export = f"python -m hubrl pretrain --export --out {runs} --env seaquest --algo a2c --hub {shlex.quote(str(hub))}"
    assert message == (f"{seaquest} is a pretraining run, not an expert: export its expert into a hub first ({export}), "
                       f"then pass --sources {shlex.quote(str(hub / 'seaquest-a2c'))}.")
    assert "--force" not in message and "move" not in message
    args = parse_args(shlex.split(export)[4:])  # the command hubrl-pretrain accepts: it exports this run into that hub
    assert (args.export, args.out, args.games, args.algo, args.hub) == (True, str(runs), ["seaquest"], "a2c", str(hub))
    _pretraining_run(runs, "riverraid", hub)
    with pytest.raises(HubError) as refused:
        load_hub(runs)
    assert str(refused.value) == (
        f"{runs} holds pretraining runs (riverraid-ppo, seaquest-a2c), not a hub: export their experts into a hub first "
        f"(python -m hubrl pretrain --export --out {runs} --env riverraid --hub {shlex.quote(str(hub))} and python -m hubrl "
        f"pretrain --export --out {runs} --env seaquest --algo a2c --hub {shlex.quote(str(hub))}), then pass --hub "
        f"{shlex.quote(str(hub))}.")


def _encoder_zip(path: Path, members: dict[str, bytes] | None = None) -> Path:
    """An SB3-style zip of a NatureCNN encoder of zeros (``policy.pth``), with ``members`` beside it."""
    from hubrl.hub import ENCODER_PREFIX, NATURE_CNN_SHAPES

    buffer = io.BytesIO()
    th.save({ENCODER_PREFIX + k: th.zeros([4 if d == "C" else d for d in shape]) for k, shape in NATURE_CNN_SHAPES.items()},
            buffer)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("policy.pth", buffer.getvalue())
        for name, data in (members or {}).items():
            archive.writestr(name, data)
    return path


DEEP_JSON = "[" * 200_000 + "]" * 200_000  # nested past Python's stack: json.loads raises RecursionError


def test_a_zip_whose_optional_data_is_nested_too_deep_loads_without_it(tmp_path):
    """The ``data`` entry is read only for a few descriptive fields: one that cannot be read (here
    nested past Python's stack, a RecursionError traceback) is left out, not the whole expert."""
    expert = load_sb3_zip(_encoder_zip(tmp_path / "deep.zip", {"data": DEEP_JSON.encode()}))
    assert expert.meta == {"format": "sb3-zip"} and expert.in_channels == 4


@pytest.mark.parametrize("deep, message", [
    (DEEP_JSON, r"expert.json is corrupt: its JSON is nested too deep to read \(RecursionError\)"),
    # deep enough for the parser, too deep for what walks it after (config.yaml's hub records, safe_dump)
    ("[" * 600 + "]" * 600, r"expert.json nests lists and objects more than 32 deep \(a manifest nests 3\)"),
])
def test_a_manifest_nested_too_deep_is_a_hub_error(tmp_path, deep, message):
    hub = make_tiny_hub(tmp_path / "hub", names=("seaquest-ppo",))
    manifest = hub / "seaquest-ppo" / "expert.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"eval": {}', '"eval": {"scores": ' + deep + "}"))
    with pytest.raises(HubError, match=message):
        load_hub(hub)


@pytest.mark.parametrize("kind", ["a-link-to-dev-zero", "a-pipe"])
def test_a_manifest_that_is_no_regular_file_is_refused_unread(tmp_path, kind):
    """``expert.json`` a link to ``/dev/zero`` was read until memory ran out; a pipe, until a writer came."""
    hub = make_tiny_hub(tmp_path / "hub", names=("seaquest-ppo",))
    manifest = hub / "seaquest-ppo" / "expert.json"
    manifest.unlink()
    if kind == "a-pipe":
        os.mkfifo(manifest)
    else:
        manifest.symlink_to("/dev/zero")
    with pytest.raises(HubError, match=r"expert.json is not a regular file \(a device, a pipe or a folder\)"):
        load_sources([hub / "seaquest-ppo"])


def test_an_expert_folder_copied_under_another_name_is_an_expert_of_that_name(tmp_path):
    """The folder names the expert, as the user sees and renames it: ``seaquest-ppo`` copied to
    ``seaquest-ppo-s1`` (its manifest still says seaquest-ppo) was "Two experts are named
    seaquest-ppo: rename one (file or folder name)", which is what the user had done."""
    import shutil

    from hubrl.experts import read_manifest

    hub = make_tiny_hub(tmp_path / "hub")
    shutil.copytree(hub / "seaquest-ppo", hub / "seaquest-ppo-s1")
    assert read_manifest(hub / "seaquest-ppo-s1").name == "seaquest-ppo"
    loaded = load_hub(hub)
    assert loaded.names == ["riverraid-ppo", "seaquest-ppo", "seaquest-ppo-s1"]
    assert loaded.get("seaquest-ppo-s1").source == str(hub / "seaquest-ppo-s1")
    assert load_sources([hub / "seaquest-ppo-s1" / "."]).names == ["seaquest-ppo-s1"]  # "." names the folder it is
    # one name twice across --sources: both named, and renaming either one (its file or folder) is the way out
    other = make_tiny_hub(tmp_path / "other", names=("seaquest-ppo",))
    with pytest.raises(HubError, match=rf"Two experts are named seaquest-ppo \({hub / 'seaquest-ppo'} and "
                                       rf"{other / 'seaquest-ppo'}\): an expert is named by its folder or file, so "
                                       r"rename one of these"):
        load_sources([hub / "seaquest-ppo", other / "seaquest-ppo"])


def test_the_shipped_experts_folders_and_manifests_agree_on_their_names():
    """Naming experts by folder changes no name hubrl made: its exports (and the shipped hub) give both one."""
    from hubrl.experts import read_manifest
    from hubrl.hub import default_hub_path

    for folder in sorted(default_hub_path().iterdir()):
        if (folder / "expert.json").is_file():
            assert read_manifest(folder).name == folder.name


def test_a_policy_pth_that_is_no_torch_file_is_called_corrupt_not_code(tmp_path):
    """Damage is not an attack: bytes that are neither a zip nor a pickle were reported as
    "holds pickled objects beyond tensors ... (it could run code)"."""
    for name, raw in (("garbage", b"garbage"), ("json", b'{"a": 1}'), ("empty", b""), ("random", bytes(range(7, 71)))):
        path = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("policy.pth", raw)
        with pytest.raises(HubError) as refused:
            load_sb3_zip(path)
        assert str(refused.value) == (f"{path}: its policy.pth is not a PyTorch weights file (corrupt or foreign): save "
                                      "or download it again."), name
    evil = tmp_path / "evil.zip"  # a pickle that would run code still says so
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("policy.pth", pickle.dumps(_Payload(tmp_path / "pwned"), protocol=0))
    with pytest.raises(HubError, match="holds pickled objects beyond tensors; refusing to load it"):
        load_sb3_zip(evil)
    assert not (tmp_path / "pwned").exists()
