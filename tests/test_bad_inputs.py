"""Every bad input and fault a careful user or an attacker tried (issue 19) ends in one clear line.

One table row per failure: the command, its arguments (built in a temporary folder, with the
hostile file it needs), and what the one ``error:`` line must name. Each runs the command's
``main`` in this process behind the same boundary as the command line (``hubrl.cli.common.run_guarded``):
exit code 2, a single line on stderr, no traceback.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch as th
import yaml

from hubrl.cli import command_main
from hubrl.cli.common import main_guard
from tests.conftest import make_tiny_hub
from tests.test_report import grid  # noqa: F401  (fixture: a small finished grid)


def call(name: str, *argv: str) -> tuple[int, str]:
    """Run the command ``name`` (``hubrl.cli.<name>``) in this process behind the command line's
    error boundary (``main_guard``): (exit code, stderr). An error the boundary lets through propagates."""
    main = command_main(name)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main_guard(lambda *_: main(list(argv)))
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


# ----------------------------------------------------------------------------- hostile files


NATURE_CNN_SHAPES = {  # SB3's NatureCNN on (C, 84, 84) frames
    "cnn.0.weight": (32, "C", 8, 8), "cnn.0.bias": (32,), "cnn.2.weight": (64, 32, 4, 4), "cnn.2.bias": (64,),
    "cnn.4.weight": (64, 64, 3, 3), "cnn.4.bias": (64,), "linear.0.weight": (512, 3136), "linear.0.bias": (512,),
}


def _nature_cnn_state(channels: int = 4, features: int = 512, **shapes: tuple[int, ...]) -> dict[str, th.Tensor]:
    """A NatureCNN state_dict of zeros, with ``features`` outputs and any shape overridden (``cnn_2_weight=...``)."""
    state = {}
    for key, shape in NATURE_CNN_SHAPES.items():
        shape = shapes.get(key.replace(".", "_"), tuple(channels if d == "C" else d for d in shape))
        if key.startswith("linear"):
            shape = (features, *shape[1:])
        state[f"features_extractor.{key}"] = th.zeros(shape)
    return state


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _policy_zip(path: Path, state: dict[str, th.Tensor]) -> Path:
    buffer = io.BytesIO()
    th.save(state, buffer)
    return _zip(path, {"policy.pth": buffer.getvalue()})


def _hub_with(tmp: Path, **fields) -> Path:
    """A one-expert tiny hub whose manifest has ``fields`` replaced."""
    hub = make_tiny_hub(tmp / "hub", names=("a-ppo",))
    manifest = hub / "a-ppo" / "expert.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **fields}))
    return hub


def _run_folder(tmp: Path, checkpoint: bytes) -> Path:
    out = tmp / "run"
    out.mkdir()
    (out / "config.yaml").write_text(
        yaml.safe_dump({"run": {"env": "Gopher", "method": "scratch", "n_envs": 2, "device": "cpu"}}))
    (out / "checkpoint.pt").write_bytes(checkpoint)
    return out


def _yaml(tmp: Path, text: str) -> str:
    path = tmp / "hyper.yaml"
    path.write_text(text)
    return str(path)


def _played_folder(tmp: Path, config: str = "run: {env: Gopher, algo: ppo}\n", model: bytes = b"PK\x03\x04 torn") -> str:
    """A run folder for ``hubrl-enjoy`` with the given ``config.yaml`` text and ``model.zip`` bytes."""
    out = tmp / "played"
    out.mkdir()
    (out / "config.yaml").write_text(config)
    (out / "model.zip").write_bytes(model)
    return str(out)


DEEP_JSON = b"[" * 200_000 + b"]" * 200_000  # nested past Python's stack: json.loads raises RecursionError


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    """The bytes of a zip holding ``members``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _hub_with_manifest(tmp: Path, text: bytes) -> Path:
    """A one-expert tiny hub whose ``expert.json`` is ``text``."""
    hub = make_tiny_hub(tmp / "hub", names=("a-ppo",))
    (hub / "a-ppo" / "expert.json").write_bytes(text)
    return hub


def _run_with_linked_lock(tmp: Path) -> Path:
    """A saved run (:func:`_saved_run`) in a shared folder, whose lock file someone replaced by a link to
    ``tmp/victim.txt``: locking the run through it wrote "pid N on host" over that file."""
    folder = _saved_run(tmp)
    (tmp / "victim.txt").write_text("the user's own notes")
    (folder / ".lock").symlink_to(tmp / "victim.txt")
    return folder


def _victim_kept(monkeypatch, tmp: Path, stack: contextlib.ExitStack) -> None:
    """Check, once the command has been refused, that ``tmp/victim.txt`` still holds what it held."""
    stack.callback(lambda: (tmp / "victim.txt").read_text() == "the user's own notes" or pytest.fail("victim.txt overwritten"))


def _routes_grid(tmp: Path) -> Path:
    """A grid folder with a hub-pathway and a scratch trial (empty: only their folder names are read)."""
    for method in ("hub-pathway", "scratch"):
        (tmp / "g" / "Alien" / method / "s0").mkdir(parents=True)
    return tmp / "g"


def _file(tmp: Path) -> str:
    path = tmp / "a-file"
    path.write_text("x")
    return str(path)


def _full_disk(monkeypatch, tmp: Path, stack: contextlib.ExitStack) -> None:
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


def _no_gpu(monkeypatch, tmp: Path, stack: contextlib.ExitStack) -> None:
    """A machine where torch sees no CUDA GPU (this one, or a GPU machine made to look like one)."""
    monkeypatch.setattr(th.cuda, "is_available", lambda: False)
    monkeypatch.setattr(th.cuda, "device_count", lambda: 0)


def _one_gpu(monkeypatch, tmp: Path, stack: contextlib.ExitStack) -> None:
    """A machine with one CUDA GPU, cuda:0 (only the device check looks: nothing runs on it)."""
    monkeypatch.setattr(th.cuda, "is_available", lambda: True)
    monkeypatch.setattr(th.cuda, "device_count", lambda: 1)


def _saved_on_cuda(tmp: Path, pretrain: bool = False) -> Path:
    """A run folder whose config.yaml says it ran on cuda (its checkpoint is never reached)."""
    return _saved_run(tmp, pretrain, device="cuda")


def _saved_run(tmp: Path, pretrain: bool = False, device: str = "cpu", name: str | None = None,
               run_id: str | None = None) -> Path:
    """A pretraining or transfer run folder (``tmp/runs/gopher-ppo``, ``tmp/run``) whose checkpoint is never reached."""
    if pretrain:
        out = tmp / (name or "runs/gopher-ppo")
        out.mkdir(parents=True)
        run = {"game": "gopher", "algo": "ppo", "device": device, "out": str(tmp / "runs"), "hub": str(tmp / "hub")}
        if run_id is not None:
            run["run_id"] = run_id
    else:
        out = tmp / (name or "run")
        out.mkdir(parents=True)
        run = {"env": "Gopher", "method": "scratch", "n_envs": 2, "device": device}
    (out / "config.yaml").write_text(yaml.safe_dump({"run": run}))
    (out / "checkpoint.pt").write_bytes(b"never read")
    return out


def _seeded(hub: Path, seed: int) -> Path:
    """``hub`` with each expert's manifest recording ``seed`` (a run's game, algorithm and seed, another run's id)."""
    for manifest in hub.glob("*/expert.json"):
        manifest.write_text(manifest.read_text().replace('"seed": null', f'"seed": {seed}'))
    return hub


def _run_without_checkpoint(tmp: Path, name: str = "run") -> Path:
    """A run folder that stopped before its first checkpoint: ``config.yaml`` and TensorBoard logs only."""
    folder = _saved_run(tmp, pretrain=name != "run", name=name)
    (folder / "checkpoint.pt").unlink()
    (folder / "tb").mkdir()
    return folder


def _finished_run_without_checkpoints(tmp: Path) -> Path:
    """A finished run folder whose checkpoints were deleted (to save space): ``config.yaml`` and ``model.zip``."""
    folder = _saved_run(tmp)
    (folder / "checkpoint.pt").unlink()
    (folder / "model.zip").write_bytes(b"a trained model")
    return folder


def _run_with_two_n_envs(tmp: Path) -> Path:
    """A transfer run folder saved with ``--n-envs 2`` and ``--hyperparams`` ``n_envs: 4`` (trained with 2)."""
    folder = _saved_run(tmp)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["run"]["hyperparams"] = {"n_envs": 4}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def _run_with_torn_config(tmp: Path) -> Path:
    """A run folder whose ``config.yaml`` was cut short mid-line."""
    folder = _saved_run(tmp)
    (folder / "config.yaml").write_text("run: {env: Gopher, method: [scratch\n")
    return folder


def _run_with_a_config_nested_too_deep(tmp: Path) -> Path:
    """A run folder whose ``config.yaml`` nests deeper than the YAML parser goes (a stranger's file)."""
    folder = _saved_run(tmp)
    (folder / "config.yaml").write_text("run: " + "[" * 5000 + "]" * 5000 + "\n")
    return folder


def _hold_grid_lock(root: Path, stack: contextlib.ExitStack) -> None:
    """Hold the grid's lock as another runner would (a second flock conflicts even in one process)."""
    from hubrl.locks import exclusive_lock

    root.mkdir(exist_ok=True)
    stack.enter_context(exclusive_lock(root / ".lock"))


def _run_in_use(pretrain: bool) -> Callable[[pytest.MonkeyPatch, Path, contextlib.ExitStack], None]:
    """A setup that makes a saved run (:func:`_saved_run`: ``tmp/run``, ``tmp/runs/gopher-ppo``) and holds
    its folder's lock as a process training it would; the refused command must leave its checkpoint."""
    def setup(monkeypatch, tmp: Path, stack: contextlib.ExitStack) -> None:
        from hubrl.locks import exclusive_lock

        folder = _saved_run(tmp, pretrain=pretrain)
        stack.callback(lambda: (folder / "checkpoint.pt").read_bytes() == b"never read" or pytest.fail("checkpoint lost"))
        stack.enter_context(exclusive_lock(folder / ".lock"))

    return setup


def _no_opencv(monkeypatch, tmp: Path, stack: contextlib.ExitStack) -> None:
    """A machine without OpenCV (``import cv2`` fails), which SB3's make_atari_env pipeline needs."""
    monkeypatch.setitem(sys.modules, "cv2", None)


def _grid_json(tmp: Path) -> str:
    """A grid root holding only grid.json: a 1M budget evaluated every 50k."""
    root = tmp / "grid"
    root.mkdir()
    (root / "grid.json").write_text(json.dumps({"budget": 1_000_000, "settings": {"eval_freq": 50_000}}))
    return str(root)


def _symlink_loop(tmp: Path) -> str:
    """A path that is a link to itself (resolving it raises rather than naming a file)."""
    loop = tmp / "loop"
    loop.symlink_to(loop)
    return str(loop)


def _leaves_nothing(*names: str) -> Callable[[pytest.MonkeyPatch, Path, contextlib.ExitStack], None]:
    """A setup that checks, once the command has been refused, that it created none of ``names`` (under the
    temporary folder): a refused run writes nothing."""
    def setup(monkeypatch, tmp: Path, stack: contextlib.ExitStack) -> None:
        def check() -> None:
            left = [name for name in names if (tmp / name).exists()]
            assert not left, f"the refused command left {left} behind"

        stack.callback(check)

    return setup


def _keeps(*names: str) -> Callable[[pytest.MonkeyPatch, Path, contextlib.ExitStack], None]:
    """A setup that checks, once the command has been refused, that ``names`` (under the temporary
    folder) are still there: a refused ``--force`` deletes nothing a user made."""
    def setup(monkeypatch, tmp: Path, stack: contextlib.ExitStack) -> None:
        def check() -> None:
            lost = [name for name in names if not (tmp / name).exists()]
            assert not lost, f"the refused command deleted {lost}"

        stack.callback(check)

    return setup


def _in_tmp_leaving_nothing(*names: str) -> Callable[[pytest.MonkeyPatch, Path, contextlib.ExitStack], None]:
    """Run the command in the temporary folder (a default run folder would be made there, not in the
    repository) and check it made none of ``names`` there."""
    def setup(monkeypatch, tmp: Path, stack: contextlib.ExitStack) -> None:
        monkeypatch.chdir(tmp)
        _leaves_nothing(*names)(monkeypatch, tmp, stack)

    return setup


def _no_ranking(monkeypatch, tmp: Path, stack: contextlib.ExitStack) -> None:
    """Fail the test if ``select`` ranks the experts: a refusal that needs no ranking comes first."""
    def rank(*args, **kwargs):
        raise AssertionError("the experts were ranked before the run folder was checked")

    monkeypatch.setattr("hubrl.selection.rank_experts", rank)


def _no_play(monkeypatch, tmp: Path, stack: contextlib.ExitStack) -> None:
    """Fail the test if ``enjoy`` plays: a refusal that needs no play comes first."""
    def play(*args, **kwargs):
        raise AssertionError("the game was played before the video's path was checked")

    monkeypatch.setattr("hubrl.enjoy._play_games", play)


T = "transfer"
FAST = ["--method", "scratch", "--n-envs", "1", "--device", "cpu", "--no-progress-bar"]


def _tiny_run(tmp: Path) -> list[str]:
    """A run of 256 steps on one env into ``tmp/run``, any method."""
    return ["--n-envs", "1", "--timesteps", "256", "--device", "cpu", "--no-progress-bar", "--no-early-eval",
            "--out", str(tmp / "run")]

# (id, command, args(tmp, hub), what the line must name, setup(monkeypatch, tmp, exit_stack) or None)
CASES = [
    # numeric flags: inf, nan, overflow, out of range
    ("timesteps-inf", T, lambda t, h: ["--env", "Alien", "--timesteps", "inf"], ["--timesteps", "inf"], None),
    ("timesteps-1e400", T, lambda t, h: ["--env", "Alien", "--timesteps", "1e400"], ["--timesteps", "1e400"], None),
    ("n-envs-inf", T, lambda t, h: ["--env", "Alien", "--n-envs", "inf"], ["--n-envs"], None),
    # 100,000 emulators ran silently until killed, with no output and no run folder
    ("n-envs-huge", T, lambda t, h: ["--env", "Alien", "--n-envs", "100000"],
     ["--n-envs", "100000 is out of range", "parallel games from 1 to 1,024"], None),
    ("noise-negative", T, lambda t, h: ["--env", "Alien", "--noise", "-1"], ["--noise", "-1"], None),
    ("noise-nan", T, lambda t, h: ["--env", "Alien", "--noise", "nan"], ["--noise", "nan"], None),
    ("noise-inf", T, lambda t, h: ["--env", "Alien", "--noise", "inf"], ["--noise", "inf"], None),
    ("noise-floor-nan", T, lambda t, h: ["--env", "Alien", "--noise-floor", "nan"], ["--noise-floor", "nan"], None),
    ("sticky-1.5", T, lambda t, h: ["--env", "Alien", "--sticky-actions", "1.5"], ["--sticky-actions", "1.5"], None),
    ("negative-exploration-coef", T, lambda t, h: ["--env", "Alien", "--exploration-coef", "-0.1"],
     ["--exploration-coef"], None),
    ("negative-exploitation-coef", T, lambda t, h: ["--env", "Alien", "--exploitation-coef", "-1"],
     ["--exploitation-coef"], None),
    ("gate-lr-scale-zero", T, lambda t, h: ["--env", "Alien", "--gate-lr-scale", "0"], ["--gate-lr-scale", "0"], None),
    ("gate-lr-scale-nan", T, lambda t, h: ["--env", "Alien", "--gate-lr-scale", "nan"], ["--gate-lr-scale", "nan"], None),
    ("seed-negative", T, lambda t, h: ["--env", "Alien", "--seed", "-1"], ["--seed"], None),
    ("device-tpu", T, lambda t, h: ["--env", "Alien", "--device", "tpu"], ["--device", "tpu"], None),
    # --device cuda where torch sees no GPU: refused in every command that takes it, never run on the CPU
    # instead (SB3's get_device falls back quietly). The runs are tiny in case the check is lost.
    ("transfer-cuda-no-gpu", T, lambda t, h: ["--env", "Gopher", "--method", "scratch", "--n-envs", "1", "--timesteps", "256",
                                              "--out", str(t / "r"),
                                              "--no-progress-bar", "--device", "cuda"],
     ["--device 'cuda'", "--device cpu"], _no_gpu),
    ("transfer-resume-saved-on-cuda-no-gpu", T, lambda t, h: ["--resume", "--out", str(_saved_on_cuda(t))],
     ["--device 'cuda'", "--device cpu", "config.yaml"], _no_gpu),
    # the other command's run folder: named as such, with the command that resumes it
    # --resume where there is no run, or one stopped before its first checkpoint: what to do instead, never
    # advice that sends the user back to the refusal they came from
    ("transfer-resume-a-missing-folder", T, lambda t, h: ["--resume", "--out", str(t / "nowhere")],
     ["Nothing to resume in", "the folder does not exist", "without --resume"], _leaves_nothing("nowhere")),
    ("transfer-resume-a-run-without-checkpoint", T, lambda t, h: ["--resume", "--out", str(_run_without_checkpoint(t))],
     ["stopped before its first checkpoint", "in another --out (or after deleting"], None),
    # a finished run whose checkpoints were deleted to save space: never advice that deletes its trained model
    ("transfer-resume-a-finished-run-without-checkpoints", T,
     lambda t, h: ["--resume", "--out", str(_finished_run_without_checkpoints(t))],
     ["no checkpoint.pt, but its trained model.zip is there", "The model is kept: play it with hubrl-enjoy"],
     _keeps("run/model.zip")),
    ("transfer-new-run-over-a-run-without-checkpoint", T,
     lambda t, h: ["--env", "Gopher", *FAST, "--timesteps", "256", "--out", str(_run_without_checkpoint(t))],
     ["holds no checkpoint.pt to continue from", "choose another --out (or delete"], None),
    ("pretrain-resume-a-run-without-checkpoint", "pretrain",
     lambda t, h: ["--resume", "--env", "Gopher", "--out", str(_run_without_checkpoint(t, "runs/gopher-ppo").parent)],
     ["stopped before its first checkpoint", "with --force instead of --resume"], None),
    ("transfer-resume-a-run-with-a-torn-config", T, lambda t, h: ["--resume", "--out", str(_run_with_torn_config(t))],
     ["config.yaml is corrupt (ParserError)", "mend the file by hand", "or start a new run with another --out"], None),
    ("transfer-resume-a-run-with-a-config-nested-too-deep", T,
     lambda t, h: ["--resume", "--out", str(_run_with_a_config_nested_too_deep(t))],
     ["config.yaml is corrupt (RecursionError)", "mend the file by hand"], None),
    ("transfer-resume-a-pretraining-run", T, lambda t, h: ["--resume", "--out", str(_saved_run(t, pretrain=True))],
     ["runs/gopher-ppo is a pretraining run", "pretrain --resume --out", "runs --env gopher"], None),
    ("pretrain-resume-a-transfer-run", "pretrain",
     lambda t, h: ["--resume", "--out", str(_saved_run(t, pretrain=False, name="runs/gopher-ppo").parent), "--env", "Gopher",
                   "--no-progress-bar"],
     ["runs/gopher-ppo is a transfer run", "transfer --resume --out", "runs/gopher-ppo."], None),
    ("transfer-cuda-index-past-the-last-gpu", T, lambda t, h: ["--env", "Gopher", "--device", "cuda:3"],
     ["--device 'cuda:3'", "1 CUDA device"], _one_gpu),
    ("pretrain-cuda-no-gpu", "pretrain",
     lambda t, h: ["--env", "Gopher", "--timesteps", "256", "--n-envs", "1", "--eval-episodes", "1", "--out", str(t / "runs"),
                   "--hub", str(t / "hub"), "--no-progress-bar", "--device", "cuda"],
     ["--device 'cuda'", "--device cpu"], _no_gpu),
    ("pretrain-resume-saved-on-cuda-no-gpu", "pretrain",
     lambda t, h: ["--env", "Gopher", "--resume", "--out", str(_saved_on_cuda(t, pretrain=True).parent), "--no-progress-bar"],
     ["--device 'cuda'", "--device cpu", "config.yaml"], _no_gpu),
    ("bench-cuda-no-gpu", "bench",
     lambda t, h: ["run", "--root", str(t / "g"), "--env", "Gopher", "--method", "scratch", "--seed", "0",
                   "--timesteps", "256", "--n-envs", "1", "--eval-episodes", "1", "--workers", "0", "--device", "cuda"],
     ["--device 'cuda'", "--device cpu"], _no_gpu),
    ("enjoy-cuda-no-gpu", "enjoy", lambda t, h: ["--expert", "Seaquest", "--timesteps", "5", "--device", "cuda"],
     ["--device 'cuda'", "--device cpu"], _no_gpu),
    ("speed-cuda-no-gpu", "speed", lambda t, h: ["train-one", "--timesteps", "256", "--device", "cuda"],
     ["--device 'cuda'", "--device cpu"], _no_gpu),
    ("budget-inf", "bench", lambda t, h: ["run", "--root", str(t / "g"), "--env", "Alien", "--timesteps", "inf"],
     ["--timesteps"], None),
    ("bench-verbose-negative", "bench",
     lambda t, h: ["run", "--root", str(t / "g"), "--env", "Alien", "--timesteps", "1k", "--verbose", "-3"],
     ["--verbose", "invalid choice"], None),
    ("bench-option-without-a-name", "bench",
     lambda t, h: ["run", "--root", str(t / "g"), "--env", "Alien", "--timesteps", "1k", "--method", "hub-pathway:=2"],
     ["'=2'", "has no name", "KEY=VALUE"], None),
    ("bench-no-method-before-options", "bench",
     lambda t, h: ["run", "--root", str(t / "g"), "--env", "Alien", "--timesteps", "1k", "--method", ":top_k=2"],
     ["names no method", "hub-pathway:top_k=2"], None),
    # an empty path (an unset shell variable) meant the default folder, or the current one, without a word
    ("transfer-out-empty", T, lambda t, h: ["--env", "Alien", *FAST, "--timesteps", "256", "--no-early-eval", "--out", ""],
     ["--out", "is empty: give a path"], _in_tmp_leaving_nothing("runs")),
    ("bench-root-empty", "bench", lambda t, h: ["run", "--root", "", "--env", "Alien", "--method", "scratch", "--seed", "0",
                                                "--timesteps", "256", "--n-envs", "1", "--eval-episodes", "1",
                                                "--workers", "0"],
     ["--root", "is empty: give a path"], _in_tmp_leaving_nothing("grid.json", "Alien")),
    ("report-out-empty", "bench", lambda t, h: ["report", str(t), "--out", ""], ["--out", "is empty: give a path"], None),
    ("archive-dest-empty", "bench", lambda t, h: ["archive", str(t), ""], ["dest", "is empty: give a path"],
     _in_tmp_leaving_nothing("grid.json")),
    ("report-root-empty", "bench", lambda t, h: ["report", ""], ["root", "is empty: give a path"], None),
    ("transfer-sources-empty", T, lambda t, h: ["--env", "Alien", "--sources", "a.zip", ""],
     ["--sources", "is empty: give a path"], None),
    # Ray's per-trial requests, given to the local pool, which would drop them unread
    ("bench-cpus-per-trial-without-ray", "bench",
     lambda t, h: ["run", "--root", str(t / "g"), "--env", "Alien", "--timesteps", "1k", "--cpus-per-trial", "2"],
     ["--cpus-per-trial is what each trial asks of a Ray cluster", "give --ray-address"], _leaves_nothing("g")),
    ("cpus-nan", "bench",
     lambda t, h: ["run", "--root", str(t / "g"), "--env", "Alien", "--timesteps", "1k", "--cpus-per-trial", "nan"],
     ["--cpus-per-trial"], None),
    ("rank-timesteps-inf", "rank", lambda t, h: ["--env", "Alien", "--timesteps", "inf"], ["--timesteps"], None),
    ("pretrain-timesteps-inf", "pretrain", lambda t, h: ["--timesteps", "inf", "--out", str(t / "runs")],
     ["--timesteps"], None),
    ("pretrain-sticky-1.5", "pretrain", lambda t, h: ["--sticky-actions", "1.5", "--out", str(t / "runs")],
     ["--sticky-actions"], None),
    # usage
    ("resume-without-out", T, lambda t, h: ["--resume"], ["--resume", "--out"], None),
    # RL Zoo's flags: what this command takes instead
    ("zoo-n", T, lambda t, h: ["--env", "Alien", "-n", "1000", "-tb", "logs"],
     ["unrecognized arguments: -n 1000 -tb logs", "RL Zoo's -n: use --timesteps", "RL Zoo's -tb: use --tensorboard-log"],
     _leaves_nothing("runs")),
    ("zoo-bench-run-n", "bench", lambda t, h: ["run", "--root", str(t / "g"), "--env", "Alien", "--timesteps", "1k",
                                               "-n", "1k"],
     ["unrecognized arguments: -n 1k", "RL Zoo's -n: use --timesteps"], _leaves_nothing("g")),
    ("zoo-params", T, lambda t, h: ["--env", "Alien", "-params", "n_steps:64", "--conf-file", "x.yml", "--num-threads",
                                    "1"],
     ["RL Zoo's -params: use --hyperparams FILE.yaml", "RL Zoo's --conf-file: use --hyperparams FILE.yaml",
      "RL Zoo's --num-threads: use --threads N"], _leaves_nothing("runs")),
    ("zoo-hyperparams-pair", T, lambda t, h: ["--env", "Alien", "--hyperparams", "n_steps:64"],
     ["--hyperparams: cannot read the file n_steps:64", "RL Zoo's KEY:VALUE pairs are not taken here: write n_steps: 64 "
      "in a YAML file"], _leaves_nothing("runs")),
    ("zoo-enjoy-stochastic", "enjoy", lambda t, h: ["--expert", "Seaquest", "--stochastic"],
     ["RL Zoo's --stochastic: actions are sampled by default (--deterministic for greedy ones)"], None),
    ("no-env", T, lambda t, h: ["--timesteps", "1k"], ["--env"], None),
    # an option of another method, which this one would ignore without a word (tiny runs in case the check is lost)
    ("finetune-freeze-experts", T, lambda t, h: ["--env", "Gopher", "--method", "finetune", "--freeze-experts", *_tiny_run(t)],
     ["--freeze-experts", "--method hub-pathway", "finetune does not read it"], _leaves_nothing("run")),
    ("scratch-top-k", T, lambda t, h: ["--env", "Gopher", "--method", "scratch", "--top-k", "1", *_tiny_run(t)],
     ["--top-k", "--method hub-pathway", "scratch does not read it"], _leaves_nothing("run")),
    ("scratch-gate-lr-scale", T, lambda t, h: ["--env", "Gopher", "--method", "scratch", "--gate-lr-scale", "10",
                                               *_tiny_run(t)],
     ["--gate-lr-scale", "--method hub-pathway", "scratch does not read it"], _leaves_nothing("run")),
    ("zoo-select-timesteps", T, lambda t, h: ["--env", "Gopher", "--method", "zoo-tuning", "--select-timesteps", "5k",
                                              *_tiny_run(t)],
     ["--select-timesteps", "--method select"], _leaves_nothing("run")),
    # the same, given to a resumed run: refused as an option of another method than the run's (a scratch run
    # has a top-k in its config.yaml, at its default), not as a change of the saved value
    *[(f"resume-scratch-{flag[2:]}", T, lambda t, h, more=more: ["--resume", "--out", str(_saved_run(t)), *more],
       ["Resuming", f"{flag} is an option of --method {method}", "the run's method, scratch, does not read it: drop it"],
       None)
      for flag, more, method in [("--top-k", ["--top-k", "2"], "hub-pathway"),
                                 ("--noise", ["--noise", "0.5"], "hub-pathway"),
                                 ("--freeze-experts", ["--freeze-experts"], "hub-pathway"),
                                 ("--select-timesteps", ["--select-timesteps", "5k"], "select"),
                                 ("--lite", ["--lite"], "zoo-tuning"),
                                 ("--source", ["--source", "seaquest-ppo"], "finetune")]],
    ("resume-scratch-as-hub-pathway", T,  # another --method: that is the contradiction to name
     lambda t, h: ["--resume", "--out", str(_saved_run(t)), "--method", "hub-pathway", "--top-k", "2"],
     ["--method 'hub-pathway' but the run has 'scratch'"], None),
    ("hyperparams-unknown-key", T, lambda t, h: ["--env", "Alien", "--hyperparams", _yaml(t, "bogus_key: 1\n")],
     ["hyper.yaml", "bogus_key"], None),
    ("hyperparams-n-steps-negative", T, lambda t, h: ["--env", "Alien", "--hyperparams", _yaml(t, "n_steps: -64\n")],
     ["hyper.yaml", "n_steps", "-64"], None),
    ("hyperparams-n-envs-huge", T, lambda t, h: ["--env", "Alien", "--hyperparams", _yaml(t, "n_envs: 100000\n")],
     ["hyper.yaml", "n_envs", "100000", "up to 1,024"], None),  # the --n-envs cap, not bypassed by a file
    ("hyperparams-n-envs-and-the-flag-disagree", T,
     lambda t, h: ["--env", "Alien", "--method", "scratch", "--hyperparams", _yaml(t, "n_envs: 4\n"), *_tiny_run(t)],
     ["--n-envs 1 and the --hyperparams n_envs: 4 disagree"], _leaves_nothing("run")),
    # a run saved before that check (both numbers in its config.yaml, the flag's trained) resumes: here it reaches its
    # checkpoint, which the stand-in makes the refusal
    ("transfer-resume-a-run-saved-with-two-n-envs", T, lambda t, h: ["--resume", "--out", str(_run_with_two_n_envs(t))],
     ["checkpoint.pt is corrupt"], None),
    ("hyperparams-not-yaml", T, lambda t, h: ["--env", "Alien", "--hyperparams", _yaml(t, "a: [\n")],
     ["hyper.yaml", "YAML"], None),
    # bf16 reaches NatureCNN encoders only: Zoo-Tuning would train in fp32 while the run said bf16
    ("zoo-tuning-bf16", T, lambda t, h: ["--env", "Alien", "--method", "zoo-tuning", "--precision", "bf16", *_tiny_run(t)],
     ["--precision bf16", "Zoo-Tuning", "drop --precision"], _leaves_nothing("run")),
    # Hub-Pathway's heads read the aggregated features: a net_arch MLP would be built and never trained
    ("hyperparams-net-arch-hub-pathway", T,
     lambda t, h: ["--env", "Alien", "--hyperparams", _yaml(t, "policy_kwargs:\n  net_arch: [64]\n"), *_tiny_run(t)],
     ["net_arch [64] is not read by Hub-Pathway", "drop it"], _leaves_nothing("run")),
    # outputs that cannot be written are refused before the work that makes them (a ranking, a play, an evaluation)
    ("rank-json-unwritable", "rank", lambda t, h: ["--env", "Alien", "--json", "/proc/hubrl-cannot-write-here.json"],
     ["--json /proc/hubrl-cannot-write-here.json: cannot be written"], _no_ranking),
    ("enjoy-video-unwritable", "enjoy", lambda t, h: ["--expert", "Seaquest", "--timesteps", "5", "--video",
                                                      "/proc/hubrl-cannot-write-here.gif"],
     ["/proc/hubrl-cannot-write-here.gif"], _no_play),
    ("pretrain-export-unwritable-hub", "pretrain",  # the checkpoint here is unreadable: the hub is named first
     lambda t, h: ["--export", "--env", "Gopher", "--out", str(_saved_run(t, pretrain=True).parent), "--hub",
                   "/proc/hubrl-cannot-write-here"],
     ["--hub /proc/hubrl-cannot-write-here cannot be written"], None),
    ("rank-json-unknown-game", "rank", lambda t, h: ["--env", "Alienn", "--json", str(t / "new" / "r.json")],  # was:
     ["Alienn"], _leaves_nothing("new")),  # --json's folder made before the game was checked
    ("rank-json-is-a-folder", "rank", lambda t, h: ["--env", "Alien", "--json", str(t)], ["--json", "is a folder"], None),
    ("rank-json-under-a-file", "rank", lambda t, h: ["--env", "Alien", "--timesteps", "2k", "--json", _file(t) + "/r.json"],
     ["--json", "a-file/r.json", "cannot make its folder"], None),
    # file system
    ("out-is-a-file", T, lambda t, h: ["--env", "Gopher", *FAST, "--out", _file(t)], ["--out", "a-file", "is a file"], None),
    ("out-under-a-file", T, lambda t, h: ["--env", "Gopher", *FAST, "--out", _file(t) + "/run"],
     ["--out", "a-file/run: ", "a-file is a file, not a folder; choose another --out"], None),
    ("pretrain-out-is-a-file", "pretrain",  # its run folder is <--out>/<game>-<algo>: refused before the hub is made
     lambda t, h: ["--env", "Gopher", "--timesteps", "256", "--out", _file(t), "--hub", str(t / "hub")],
     ["a-file is a file, not a folder; choose another --out"], _leaves_nothing("hub")),
    ("pretrain-hub-is-a-file", "pretrain",
     lambda t, h: ["--env", "Gopher", "--timesteps", "256", "--out", str(t / "runs"), "--hub", _file(t)],
     ["--hub", "a-file is not a folder: choose a writable folder"], _leaves_nothing("runs")),
    ("pretrain-hub-under-a-file", "pretrain",
     lambda t, h: ["--env", "Gopher", "--timesteps", "256", "--out", str(t / "runs"), "--hub", _file(t) + "/hub"],
     ["--hub", "a-file/hub cannot be made: ", "a-file is a file: choose a writable folder"], _leaves_nothing("runs")),
    ("out-not-writable", T, lambda t, h: ["--env", "Gopher", *FAST, "--out", "/proc/hubrl-cannot-write/run"],
     ["/proc/hubrl-cannot-write/run"], None),
    ("disk-full", T, lambda t, h: ["--env", "Gopher", *FAST, "--out", str(t / "run")], ["disk is full"], _full_disk),
    ("root-is-a-file", "bench", lambda t, h: ["run", "--root", _file(t), "--env", "Alien", "--timesteps", "1k"],
     ["--root", "a-file"], None),
    ("speed-unknown-game", "speed", lambda t, h: ["envs", "--env", "Alienn"],  # was: OpenCV missing (where it is)
     ["Unknown Atari game 'Alienn'", "Alien"], None),
    ("report-of-a-file", "bench", lambda t, h: ["report", _file(t)], ["a-file is a file, not a grid folder"], None),
    ("report-stage-between-evaluations", "bench", lambda t, h: ["report", _grid_json(t), "--stages", "275k"],
     ["--stages 275k: the grid evaluates every 50k", "no trial has a score at 275k", "e.g. 250k or 300k"], None),
    ("routes-of-a-file", "bench", lambda t, h: ["routes", _file(t)], ["a-file"], None),
    ("routes-unknown-method", "bench", lambda t, h: ["routes", str(_routes_grid(t)), "--method", "hub-pathwya"],
     ["--method 'hub-pathwya'", "no trial of it", "its methods are hub-pathway, scratch"], None),
    ("archive-of-a-file", "bench", lambda t, h: ["archive", _file(t), str(t / "out")], ["No grid at", "a-file"], None),
    # an expert that reads another frame stack: refused as transfer refuses it, not SB3's shape traceback mid-play
    ("enjoy-expert-of-another-frame-stack", "enjoy",
     lambda t, h: ["--expert", "seaquest-ppo", "--hub", str(make_tiny_hub(t / "hub", in_channels=3)), "--env", "Breakout",
                   "--timesteps", "5"],
     ["'seaquest-ppo' reads 3 stacked frames", "gives 4", "frame_stack=4"], None),
    ("enjoy-model-zip-torn", "enjoy", lambda t, h: [_played_folder(t)],
     ["played/model.zip", "not a readable SB3 model", "restore it from a copy"], None),
    ("enjoy-config-not-yaml", "enjoy", lambda t, h: [_played_folder(t, config="run: [\n")],
     ["played/config.yaml", "not a run's config"], None),
    ("enjoy-config-unknown-algo", "enjoy", lambda t, h: [_played_folder(t, config="run: {env: Gopher, algo: dqn}\n")],
     ["played/config.yaml", "'dqn'"], None),
    # a saved sticky-action probability that is none: a ValueError traceback ("abc"), or a game played with p=7
    ("enjoy-config-sticky-not-a-number", "enjoy",
     lambda t, h: [_played_folder(t, config="run: {env: Gopher, algo: ppo, repeat_action_probability: abc}\n")],
     ["played/config.yaml", "run.repeat_action_probability is 'abc', not a probability in [0, 1]"], None),
    ("enjoy-expert-sticky-7", "enjoy",
     lambda t, h: ["--expert", "a-ppo", "--hub", str(_hub_with(t, eval={"sticky_actions": 7})), "--env", "Seaquest",
                   "--timesteps", "5"],
     ["a-ppo/expert.json", "eval.sticky_actions is 7, not a probability in [0, 1]"], None),
    # JSON nested past Python's stack: a RecursionError traceback
    ("enjoy-model-zip-data-nested-too-deep", "enjoy",
     lambda t, h: [_played_folder(t, model=_zip_bytes({"data": DEEP_JSON, "policy.pth": b"never read"}))],
     ["played/model.zip is not a readable SB3 model", "nested too deep to read: RecursionError"], None),
    ("manifest-nested-too-deep", T, lambda t, h: ["--env", "Alien", "--hub", str(_hub_with_manifest(t, DEEP_JSON))],
     ["a-ppo/expert.json is corrupt: its JSON is nested too deep to read"], None),
    # a lock file planted as a link to another file: refused, that file kept
    ("transfer-resume-a-run-whose-lock-is-a-link", T, lambda t, h: ["--resume", "--out", str(_run_with_linked_lock(t))],
     ["run/.lock is a symbolic link: refusing to write it", "move it out of the way"], _victim_kept),
    ("grid-held-by-another-runner", "bench",
     lambda t, h: ["run", "--root", str(t / "g"), "--env", "Alien", "--timesteps", "1k"],
     ["Another runner", f"pid {os.getpid()}"], lambda mp, t, stack: _hold_grid_lock(t / "g", stack)),
    # checkpoints
    ("checkpoint-torn", T, lambda t, h: ["--resume", "--out", str(_run_folder(t, b"PK\x03\x04 torn"))],
     ["checkpoint.pt", "corrupt", "without --resume"], None),
    ("checkpoint-empty", T, lambda t, h: ["--resume", "--out", str(_run_folder(t, b""))], ["checkpoint.pt", "empty"], None),
    # hubs and zips
    ("zip-bomb", T, lambda t, h: ["--env", "Alien", "--sources", str(_zip(t / "bomb.zip", {"policy.pth": bytes(2 << 20)}))],
     ["bomb.zip", "policy.pth", "inflate to 2,097,152 bytes"],
     lambda mp, t, stack: mp.setattr("hubrl.hub.MAX_MEMBER_BYTES", 1 << 20)),
    # plain damage is not reported as a pickle that could run code
    ("zip-policy-not-a-torch-file", T,
     lambda t, h: ["--env", "Alien", "--sources", str(_zip(t / "g.zip", {"policy.pth": b"garbage"}))],
     ["g.zip: its policy.pth is not a PyTorch weights file (corrupt or foreign)"], None),
    ("zip-wrong-conv-shape", T,
     lambda t, h: ["--env", "Alien", "--sources",
                   str(_policy_zip(t / "c.zip", _nature_cnn_state(cnn_2_weight=(64, 32, 3, 3))))],
     ["c.zip", "cnn.2.weight", "(64, 32, 3, 3)"], None),
    ("zip-wrong-features-dim", T,
     lambda t, h: ["--env", "Alien", "--sources", str(_policy_zip(t / "f.zip", _nature_cnn_state(features=256)))],
     ["f.zip", "linear.0.weight", "(256, 3136)"], None),
    # a folder that holds the source rather than is one: the flag or path that takes it
    ("sources-a-hub", T, lambda t, h: ["--env", "Alien", "--sources", str(make_tiny_hub(t / "hub"))],
     ["is a hub", "riverraid-ppo, seaquest-ppo", "pass it as --hub "], None),
    ("sources-the-same-zip-twice", T,
     lambda t, h: ["--env", "Alien", "--sources", str(_policy_zip(t / "a.zip", _nature_cnn_state())),
                   str(t / "sub" / ".." / "a.zip")],
     ["a.zip and ", "sub/../a.zip twice", "give each expert once"], None),
    ("sources-a-symlink-loop", T, lambda t, h: ["--env", "Alien", "--sources", _symlink_loop(t)],
     ["loop does not exist"], None),
    ("sources-a-run-folder", T, lambda t, h: ["--env", "Alien", "--sources", _played_folder(t)],
     ["played is a run folder", "--sources ", "played/model.zip"], None),
    ("sources-a-hub-pathway-run-folder", T,  # its model.zip is no one expert: the advice above would be refused
     lambda t, h: ["--env", "Alien", "--sources", _played_folder(t, config="run: {env: Gopher, method: hub-pathway}\n")],
     ["played is a hub-pathway run, not an expert", "give that hub"], None),
    ("hub-a-zip-file", T, lambda t, h: ["--env", "Alien", "--hub", str(_policy_zip(t / "p.zip", _nature_cnn_state()))],
     ["--hub", "p.zip is a file, not a hub folder", "--sources"], None),
    ("manifest-weights-outside", T,
     lambda t, h: ["--env", "Alien", "--hub", str(_hub_with(t, weights_file="../../../../etc/hostname"))],
     ["expert.json", "weights_file", "etc/hostname"], None),
    ("manifest-weights-absolute", T, lambda t, h: ["--env", "Alien", "--hub", str(_hub_with(t, weights_file="/etc/hostname"))],
     ["expert.json", "weights_file"], None),
    ("manifest-weights-file-123", T, lambda t, h: ["--env", "Alien", "--hub", str(_hub_with(t, weights_file=123))],
     ["expert.json", "weights_file", "123"], None),
    ("manifest-action-meanings-5", T, lambda t, h: ["--env", "Alien", "--hub", str(_hub_with(t, action_meanings=5))],
     ["expert.json", "action_meanings"], None),
    ("manifest-format-version-999", T, lambda t, h: ["--env", "Alien", "--hub", str(_hub_with(t, format_version=999))],
     ["expert.json", "format_version", "999", "upgrade"], None),
    ("manifest-observation-shape", T,
     lambda t, h: ["--env", "Alien", "--hub", str(_hub_with(t, observation_shape=[4, 64, 64]))],
     ["expert.json", "observation_shape"], None),
    # too few random-policy frames for select's proxy: the flag to raise, and by how much
    # an expert the game's frames cannot feed: refused by rank as by transfer, also when there is nothing to rank
    ("rank-one-expert-of-another-frame-stack", "rank",
     lambda t, h: ["--env", "Alien", "--hub", str(make_tiny_hub(t / "hub", names=("x-ppo",), in_channels=3))],
     ["'x-ppo' reads 3 stacked frames", "gives 4"], None),
    ("rank-experts-of-another-frame-stack", "rank",
     lambda t, h: ["--env", "Alien", "--hub", str(make_tiny_hub(t / "hub", in_channels=3)), "--timesteps", "100000"],
     ["reads 3 stacked frames", "gives 4"], None),
    ("rank-timesteps-leave-no-known-return", "rank",
     lambda t, h: ["--env", "Alien", "--hub", str(make_tiny_hub(t / "hub")), "--timesteps", "100", "--n-envs", "2"],
     ["--timesteps", "at least 460"], None),
    ("rank-timesteps-leave-one-episode", "rank",
     lambda t, h: ["--env", "Alien", "--hub", str(make_tiny_hub(t / "hub")), "--timesteps", "400", "--n-envs", "2"],
     ["--timesteps", "1 episode", "at least 460"], None),
    ("transfer-select-timesteps-leave-no-known-return", T,
     lambda t, h: ["--env", "Alien", "--method", "select", "--hub", str(make_tiny_hub(t / "hub")), "--select-timesteps", "100",
                   "--n-envs", "1", "--timesteps", "256", "--device", "cpu", "--no-progress-bar", "--out", str(t / "run")],
     ["--select-timesteps", "at least 1840"], _leaves_nothing("run")),
    # SB3's make_atari_env pipeline without OpenCV: refused before anything is measured
    ("speed-envs-without-opencv", "speed", lambda t, h: ["envs", "--timesteps", "200", "--n-envs", "2", "--repeats", "1"],
     ["speed envs", "OpenCV", 'pip install -e ".[bench]"'], _no_opencv),
    ("speed-train-without-opencv", "speed",
     lambda t, h: ["train", "--algo", "a2c", "--timesteps", "1", "--repeats", "1", "--env", "Gopher"],
     ["speed train", "OpenCV", 'pip install -e ".[bench]"'], _no_opencv),
    ("speed-train-one-sb3-without-opencv", "speed",
     lambda t, h: ["train-one", "--impl", "sb3", "--algo", "a2c", "--timesteps", "1", "--env", "Gopher"],
     ["--impl sb3", "OpenCV", 'pip install -e ".[bench]"'], _no_opencv),
    # a new pretraining run whose export would replace an expert another run put in the hub
    ("pretrain-new-run-over-a-hub-expert", "pretrain",
     lambda t, h: ["--env", "Seaquest", "--timesteps", "256", "--n-envs", "1", "--eval-episodes", "1",
                   "--out", str(t / "runs"), "--hub", str(make_tiny_hub(t / "hub")), "--no-progress-bar"],
     ["--hub", "already holds the expert seaquest-ppo (0 steps)", "--force"], _leaves_nothing("runs")),
    # --force over a run, with a --hub that cannot be written: refused before the old run is deleted
    ("pretrain-force-with-an-unwritable-hub-keeps-the-old-run", "pretrain",
     lambda t, h: ["--env", "Gopher", "--timesteps", "256", "--n-envs", "1", "--eval-episodes", "1", "--force",
                   "--out", str(_saved_run(t, pretrain=True).parent), "--hub", "/proc/hubrl-cannot-write-here",
                   "--no-progress-bar"],
     ["--hub /proc/hubrl-cannot-write-here cannot be written"], _keeps("runs/gopher-ppo/checkpoint.pt")),
    # a run another process is training: a second resume, or a --force over it, is refused before either touches it
    ("transfer-resume-of-a-run-in-use", T, lambda t, h: ["--resume", "--out", str(t / "run")],
     ["Run folder", "is in use by another process (pid", "wait for it to end"], _run_in_use(pretrain=False)),
    ("pretrain-force-over-a-run-in-use", "pretrain",
     lambda t, h: ["--env", "Gopher", "--timesteps", "256", "--n-envs", "1", "--force", "--out", str(t / "runs"),
                   "--hub", str(t / "hub"), "--no-progress-bar"],
     ["Run folder", "gopher-ppo is in use by another process (pid"], _run_in_use(pretrain=True)),
    # an --out that cannot be written is refused before select spends minutes ranking the experts
    ("transfer-select-unwritable-out", T,
     lambda t, h: ["--env", "Gopher", "--method", "select", "--hub", str(make_tiny_hub(t / "hub")),
                   "--out", "/proc/hubrl-cannot-write-here", "--n-envs", "1", "--device", "cpu"],
     ["Cannot create run folder /proc/hubrl-cannot-write-here", "choose another --out"], _no_ranking),
    # --export into a hub whose expert of that name another run exported: refused before the checkpoint is read
    ("pretrain-export-over-another-runs-expert", "pretrain",
     lambda t, h: ["--export", "--env", "Gopher", "--out", str(_saved_run(t, pretrain=True, run_id="a" * 32).parent),
                   "--hub", str(_seeded(make_tiny_hub(t / "hub", names=("gopher-ppo",)), seed=0))],
     ["--hub", "already holds the expert gopher-ppo (0 steps)", "exported by another run", "--force to replace it"], None),
    # a resumed run given a --hub where its export would replace another run's expert: refused before any
    # game's run is even opened (the checkpoint here is never read), not when that game's turn comes
    ("pretrain-resume-into-another-runs-expert", "pretrain",
     lambda t, h: ["--resume", "--env", "Gopher", "--out", str(_saved_run(t, pretrain=True, run_id="a" * 32).parent),
                   "--no-progress-bar", "--hub", str(_seeded(make_tiny_hub(t / "other", names=("gopher-ppo",)), seed=0))],
     ["already holds the expert gopher-ppo", "exported by another run", "move that expert away"], None),
    # a --tensorboard-log that cannot be written: refused before the run folder (or the hub) is made
    ("transfer-tensorboard-log-not-writable", T,
     lambda t, h: ["--env", "Gopher", *FAST, "--timesteps", "256", "--tensorboard-log", "/proc/hubrl-tb",
                   "--out", str(t / "run")],
     ["--tensorboard-log", "/proc/hubrl-tb", "writable"], _leaves_nothing("run")),
    ("pretrain-tensorboard-log-not-writable", "pretrain",
     lambda t, h: ["--env", "Gopher", "--timesteps", "256", "--n-envs", "1", "--eval-episodes", "1", "--out", str(t / "runs"),
                   "--hub", str(t / "hub"), "--no-progress-bar", "--tensorboard-log", "/proc/hubrl-tb"],
     ["--tensorboard-log", "/proc/hubrl-tb", "writable"], _leaves_nothing("runs", "hub")),
    # a pause past the budget, which the run would never reach (it would finish without a word): refused up front,
    # against the budget the run has (a resumed run's saved one: 1M and 10M, the defaults, in these config.yaml)
    ("transfer-pause-at-past-budget", T,  # tiny runs, one game per evaluation, in case the check is lost
     lambda t, h: ["--env", "Gopher", "--method", "scratch", "--pause-at", "1k", "--eval-episodes", "1", *_tiny_run(t)],
     ["--pause-at 1,000 is past the budget, --timesteps 256", "below 256", "a larger --timesteps"],
     _leaves_nothing("run")),
    ("transfer-resume-pause-at-past-budget", T, lambda t, h: ["--resume", "--out", str(_saved_run(t)), "--pause-at", "2M"],
     ["--pause-at 2,000,000 is past the budget, --timesteps 1,000,000"], None),
    ("pretrain-pause-at-past-budget", "pretrain",
     lambda t, h: ["--env", "Gopher", "--timesteps", "256", "--pause-at", "1k", "--n-envs", "1", "--eval-episodes", "1",
                   "--out", str(t / "runs"), "--hub", str(t / "hub"), "--no-progress-bar"],
     ["--pause-at 1,000 is past the budget, --timesteps 256"], _leaves_nothing("runs", "hub")),
    ("pretrain-resume-pause-at-past-budget", "pretrain",
     lambda t, h: ["--env", "Gopher", "--resume", "--out", str(_saved_run(t, pretrain=True).parent), "--pause-at", "20M",
                   "--no-progress-bar"],
     ["--pause-at 20,000,000 is past the budget, --timesteps 10,000,000"], None),
    # a mode that only reads the runs (--plot, --export) refuses the flags it would ignore, naming them
    ("transfer-plot-with-training-flags", T, lambda t, h: ["--plot", "--out", str(t / "run"), "--env", "Alien",
                                                             "--timesteps", "1M"],
     ["--plot reads only --out", "does not read --env, --timesteps"], _leaves_nothing("run")),
    ("pretrain-plot-with-resume", "pretrain", lambda t, h: ["--plot", "--resume", "--out", str(t / "runs")],
     ["--plot reads only --env, --out, --algo", "does not read --resume"], _leaves_nothing("runs")),
    ("pretrain-plot-and-export", "pretrain", lambda t, h: ["--plot", "--export", "--out", str(t / "runs")],
     ["--plot reads only", "does not read --export"], _leaves_nothing("runs")),
    ("pretrain-export-on-a-missing-gpu", "pretrain", lambda t, h: ["--export", "--device", "cuda", "--out", str(t / "runs")],
     ["--device 'cuda'", "--device cpu"], _no_gpu),
    ("pretrain-export-with-a-training-flag", "pretrain", lambda t, h: ["--export", "--timesteps", "1M", "--out",
                                                                       str(t / "runs")],
     ["--export reads only", "--export-dtype", "--device", "--threads", "does not read --timesteps"],
     _leaves_nothing("runs")),
    ("bench-stage-between-evaluations", "bench",  # the 250k stage's report needs an evaluation at 250k
     lambda t, h: ["run", "--root", str(t / "g"), "--env", "Gopher", "--method", "scratch", "--seed", "0",
                   "--timesteps", "1M", "--pause-at", "250k", "--eval-freq", "100k", "--workers", "0"],
     ["--pause-at 250k is not a multiple of --eval-freq 100k", "last one before it is at 200k", "--eval-freq 50k",
      "or --pause-at 200k or 300k"],
     _leaves_nothing("g")),
    ("bench-pause-at-past-budget", "bench",
     lambda t, h: ["run", "--root", str(t / "g"), "--env", "Gopher", "--method", "scratch", "--seed", "0",
                   "--timesteps", "256", "--pause-at", "1k", "--n-envs", "1", "--eval-episodes", "1", "--workers", "0"],
     ["--pause-at 1,000 is past the budget, --timesteps 256"], _leaves_nothing("g")),
]


@pytest.mark.parametrize("name, script, args, named, setup", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_line(tmp_path, monkeypatch, name, script, args, named, setup):
    with contextlib.ExitStack() as stack:
        if setup is not None:
            setup(monkeypatch, tmp_path, stack)
        code, err = call(script, *args(tmp_path, None))
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in named:
        assert word in err, (word, err)


@pytest.mark.parametrize("device, names_the_file", [("cuda", True), ("cuda:1", False)])
def test_library_resume_on_a_machine_without_the_saved_gpu_names_the_config(tmp_path, monkeypatch, device, names_the_file):
    """run_transfer(resume=True) checks the device before anything is built: the saved one is reported as
    the run's, with its config.yaml; one given anew is reported as given."""
    from hubrl.errors import UsageError
    from hubrl.transfer import TransferConfig, run_transfer

    _no_gpu(monkeypatch, tmp_path, contextlib.ExitStack())
    out = _saved_on_cuda(tmp_path)
    cfg = TransferConfig(env="Gopher", method="scratch", n_envs=2, device=device, out=str(out))
    with pytest.raises(UsageError, match=f"--device '{device}'") as caught:
        run_transfer(cfg, resume=True, progress_bar=False, verbose=0)
    assert (str(out / "config.yaml") in str(caught.value)) == names_the_file


def test_a_pause_at_the_budget_is_where_the_run_ends():
    """Only a pause past the budget is refused: one at it finishes the run (a grid's last stage may say so)."""
    from hubrl.errors import UsageError
    from hubrl.runconfig import check_pause_at

    check_pause_at(None, 256)
    check_pause_at(256, 256)
    with pytest.raises(UsageError, match="--pause-at 257 is past the budget, --timesteps 256"):
        check_pause_at(257, 256)


def test_a_genuine_bug_keeps_its_traceback():
    def buggy(argv=None):
        return {}["missing"]

    with pytest.raises(KeyError):
        main_guard(buggy)


def test_report_lists_a_damaged_or_hostile_trial_as_skipped(grid, monkeypatch):  # noqa: F811
    from hubrl.report import write_report

    corrupt = grid / "Alien" / "scratch" / "s0"
    (corrupt / "status.json").write_text(json.dumps({"status": "ok", "history": 5}))
    hostile = grid / "Alien" / "scratch" / "s1"
    _zip(hostile / "model.zip", {"policy.pth": bytes(2 << 20)})
    garbled = grid / "Gopher" / "hub-pathway" / "s0"
    (garbled / "status.json").write_bytes(os.urandom(64))  # was read as {} and its trial reported as sound
    torn = grid / "Gopher" / "hub-pathway" / "s1"
    (torn / "evaluations.json").write_text('{"points": [{"step": 2')  # not a trial with no evaluation yet
    monkeypatch.setattr("hubrl.hub.MAX_MEMBER_BYTES", 1 << 20)
    report = write_report(grid, reps=200, curve_reps=50).read_text()
    assert "`Alien/scratch/s0`: skipped: status.json: history is not a list of attempts" in report
    assert "`Gopher/hub-pathway/s1`: skipped: evaluations.json is unreadable (JSONDecodeError" in report
    assert "`Gopher/hub-pathway/s0`: skipped: status.json is unreadable (" in report
    assert "`Alien/scratch/s1`: skipped: model.zip is not a readable SB3 policy" in report
    assert "| Alien | hub-pathway |" in report or "hub-pathway" in report.split("## Scores per game")[1]


def test_a_foreign_pickle_is_refused_without_torch_warnings_before_the_error(tmp_path):
    """A pickle torch did not write (protocol 4) as checkpoint.pt or an SB3 zip's policy.pth is one error
    line: torch's own two-line warning about the protocol came before it."""
    import pickle
    import warnings

    from hubrl.checkpoint import load_training_checkpoint
    from hubrl.errors import CheckpointError, HubError
    from hubrl.hub import load_sb3_zip

    foreign = pickle.dumps({"format": 1}, protocol=4)
    (tmp_path / "checkpoint.pt").write_bytes(foreign)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="corrupt"):
            load_training_checkpoint(tmp_path / "checkpoint.pt")
        with pytest.raises(HubError, match="policy.pth"):
            load_sb3_zip(_zip(tmp_path / "foreign.zip", {"policy.pth": foreign}))
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("script", ["transfer", "rank"])
@pytest.mark.parametrize("flag", ["--sources", "--hub"])
def test_a_pretraining_run_given_as_sources_or_hub_says_so_in_one_line(tmp_path, script, flag):
    """hubrl-transfer and hubrl-rank given a pretraining run folder: no longer "not an expert folder ... export it
    again ... --force, or move it out of the hub" (--sources) or "train one with python -m hubrl pretrain" (--hub),
    but what it is and the expert it exported, as hubrl-enjoy says of it."""
    run = _saved_run(tmp_path, pretrain=True)  # tmp/runs/gopher-ppo, exporting into tmp/hub
    make_tiny_hub(tmp_path / "hub", names=("gopher-ppo",))
    code, err = call(script, "--env", "Alien", flag, str(run))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"{run} is a pretraining run, not {'an expert' if flag == '--sources' else 'a hub'}: its expert is exported" in err
    assert f"--sources {tmp_path / 'hub' / 'gopher-ppo'}" in err and f"--hub {tmp_path / 'hub'}" in err, err
    assert "damaged" not in err and "--force" not in err, err
