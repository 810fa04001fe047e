"""Pretraining end to end: a tiny run makes a loadable hub (and keeps its training state in its
run folder, apart from the hub); resume; crash safety; bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch as th
import yaml
from safetensors.torch import load_file

from hubrl.atomic import sha256_file
from hubrl.checkpoint import CheckpointError, load_training_checkpoint, save_training_checkpoint
from hubrl.experts import read_manifest
from hubrl.pretrain import PretrainConfig, UsageError, export_expert, pretrain_expert
from tests.conftest import ROOT, make_tiny_hub, run_script


def _cfg(tmp_path, tiny_ppo, timesteps=256, **kw):
    return PretrainConfig(
        game="Seaquest", timesteps=timesteps, n_envs=2, out=str(tmp_path / "runs"), hub=str(tmp_path / "hub"),
        eval_freq=10**9, eval_episodes=1, checkpoint_freq=128, hyperparams=tiny_ppo, device="cpu", **kw,
    )


@pytest.mark.slow
def test_tiny_pretraining_makes_a_loadable_hub(tmp_path, tiny_ppo):
    result = pretrain_expert(_cfg(tmp_path, tiny_ppo), progress_bar=False, verbose=0)
    assert result.outcome.completed and result.outcome.num_timesteps == 256
    folder = tmp_path / "hub" / "seaquest-ppo"
    run = tmp_path / "runs" / "seaquest-ppo"
    assert result.expert == folder and result.folder == run
    # The hub gets the expert only; the run folder keeps the training state.
    assert sorted(p.name for p in folder.iterdir()) == ["expert.json", "weights.safetensors"]
    assert {"checkpoint.pt", "config.yaml", "evaluations.json", "tb"} <= {p.name for p in run.iterdir()}
    manifest = read_manifest(folder)
    assert manifest.game == "seaquest" and manifest.algo == "ppo" and manifest.timesteps == 256
    assert manifest.observation_shape == [4, 84, 84] and len(manifest.action_meanings) == 18
    assert manifest.eval["episodes"] == 1 and "mean" in manifest.eval
    assert manifest.weights_sha256 == sha256_file(folder / "weights.safetensors")
    weights = load_file(folder / "weights.safetensors")
    assert "features_extractor.cnn.0.weight" in weights and "action_net.weight" in weights
    assert not any(k.startswith(("pi_features_extractor", "vf_features_extractor")) for k in weights)
    assert list((run / "tb").rglob("events.out.tfevents*")), "TensorBoard events expected"


def test_an_expert_exported_meanwhile_is_not_replaced(tmp_path, monkeypatch):
    """The check that an export does not replace another run's expert ran when the run started (or
    before --export evaluated): another run's export landing meanwhile (two seeds of a game ending
    hours apart into one hub) was silently replaced. It is looked at again under the expert's lock."""
    import dataclasses

    from stable_baselines3 import PPO

    import hubrl.pretrain
    from hubrl.envs import make_atari_vec_env
    from hubrl.evaluation import EvalResult

    run = tmp_path / "runs" / "seaquest-ppo"
    run.mkdir(parents=True)
    cfg = PretrainConfig(game="Seaquest", timesteps=128, out=str(tmp_path / "runs"), hub=str(tmp_path / "hub"),
                         eval_episodes=1, run_id="a" * 32)
    (run / "config.yaml").write_text(yaml.safe_dump({"run": dataclasses.asdict(cfg), "resolved_hyperparams": {}}))
    model = PPO("CnnPolicy", make_atari_vec_env("Seaquest", 1, seed=0), n_steps=8, batch_size=8, device="cpu")
    model.num_timesteps = 128
    save_training_checkpoint(model, run / "checkpoint.pt")
    foreign = make_tiny_hub(tmp_path / "foreign", names=("seaquest-ppo",)) / "seaquest-ppo"

    def evaluate_while_another_run_exports(*args, **kwargs):
        if not (tmp_path / "hub" / "seaquest-ppo" / "expert.json").exists():  # the other run's export lands now
            __import__("shutil").copytree(foreign, tmp_path / "hub" / "seaquest-ppo", dirs_exist_ok=True)
        return EvalResult(mean=0.0, std=0.0, episodes=1, scores=[0.0])

    monkeypatch.setattr(hubrl.pretrain, "evaluate_model", evaluate_while_another_run_exports)
    with pytest.raises(UsageError, match="already holds the expert seaquest-ppo .0 steps., exported by another run"):
        export_expert(run)
    assert read_manifest(tmp_path / "hub" / "seaquest-ppo").run_id == ""  # the other run's, untouched
    assert export_expert(run, force=True).run_id == "a" * 32  # --force replaces it
    # a later export of this run (the run finished beside an --export of an older checkpoint) is kept too
    path = tmp_path / "hub" / "seaquest-ppo" / "expert.json"
    path.write_text(path.read_text().replace('"timesteps": 128', '"timesteps": 256'))
    with pytest.raises(UsageError, match="already holds a later export of this run .seaquest-ppo at 256 steps, this one 128"):
        export_expert(run)


@pytest.mark.slow
def test_export_of_a_run_whose_checkpoint_is_damaged_takes_the_previous_one(tmp_path, tiny_ppo, capsys):
    """--resume fell back to checkpoint.prev.pt, --export refused the run in one line without a fix."""
    pretrain_expert(_cfg(tmp_path, tiny_ppo), progress_bar=False, verbose=0)  # checkpoints at 128 and 256
    run = tmp_path / "runs" / "seaquest-ppo"
    previous = load_training_checkpoint(run / "checkpoint.prev.pt")["num_timesteps"]
    (run / "checkpoint.pt").write_bytes(os.urandom(4096))
    capsys.readouterr()
    manifest = export_expert(run, eval_episodes=1, hub=tmp_path / "other")
    assert manifest.timesteps == previous
    assert re.search(rf"warning: .*checkpoint.pt is corrupt.* Using the previous checkpoint .*checkpoint.prev.pt "
                     rf"\({previous:,} steps\) instead", capsys.readouterr().err)
    (run / "checkpoint.prev.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="The previous one is damaged too: .* So nothing is left to export"):
        export_expert(run, eval_episodes=1, hub=tmp_path / "other", force=True)


@pytest.mark.slow
def test_export_mid_training_evaluates_the_written_float16_weights(tmp_path, tiny_ppo):
    pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=128), progress_bar=False, verbose=0)
    folder = tmp_path / "hub" / "seaquest-ppo"
    run = tmp_path / "runs" / "seaquest-ppo"
    (folder / "expert.json").unlink()
    # a longer budget, stopped half-way: the checkpoint is at 128 of 1M steps; without --hub the
    # run exports into the hub it was started with
    result = run_script("pretrain_sources.py", "--env", "Seaquest", "--out", str(tmp_path / "runs"), "--export",
                        "--export-dtype", "float16", "--eval-episodes", "1", "--threads", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "exported 128 steps (float16)" in result.stdout and str(folder) in result.stdout
    manifest = read_manifest(folder)
    assert manifest.timesteps == 128 and manifest.weights_dtype == "float16" and manifest.training_budget == 128
    assert manifest.eval["episodes"] == 1 and len(manifest.eval["scores"]) == 1
    weights = load_file(folder / "weights.safetensors")
    assert weights["action_net.weight"].dtype == th.float16
    from hubrl.hub import load_hub

    assert load_hub(tmp_path / "hub").names == ["seaquest-ppo"]  # a float16 expert loads as float32 encoders
    with pytest.raises(UsageError, match="Nothing to export"):
        export_expert(tmp_path / "runs" / "riverraid-ppo")
    other = export_expert(run, eval_episodes=1, hub=tmp_path / "other")  # --hub: another hub
    assert other.timesteps == 128 and (tmp_path / "other" / "seaquest-ppo" / "expert.json").is_file()
    # the expert names the run that exported it: the run may export it again, another run may not replace it
    run_id = yaml.safe_load((run / "config.yaml").read_text())["run"]["run_id"]
    assert len(run_id) == 32 and manifest.run_id == other.run_id == run_id
    export_expert(run, eval_episodes=1)  # the run's own expert: refreshed
    path = folder / "expert.json"
    path.write_text(path.read_text().replace(run_id, "f" * 32))  # as another run would have exported it
    with pytest.raises(UsageError, match="already holds the expert seaquest-ppo .128 steps., exported by another run"):
        export_expert(run, eval_episodes=1)
    assert read_manifest(folder).run_id == "f" * 32  # untouched
    assert export_expert(run, eval_episodes=1, force=True).run_id == run_id  # --export --force
    # an expert without run_id (an older run's, or the package's own) is another run's for a run that has one,
    # even with the same game, algorithm and seed: a new run always writes its run_id
    path.write_text(path.read_text().replace(f'"run_id": "{run_id}"', '"run_id": ""'))
    assert read_manifest(folder).seed == 0 and read_manifest(folder).run_id == ""
    with pytest.raises(UsageError, match="exported by another run"):
        export_expert(run, eval_episodes=1)
    # a resumed run given a --hub that holds another run's expert: refused before it trains for hours
    foreign = make_tiny_hub(tmp_path / "foreign", names=("seaquest-ppo",))
    manifest_path = foreign / "seaquest-ppo" / "expert.json"
    manifest_path.write_text(manifest_path.read_text().replace('"seed": null', '"seed": 0'))  # the run's seed too
    with pytest.raises(UsageError, match="exported by another run.*move that expert away"):
        pretrain_expert(PretrainConfig(game="Seaquest", timesteps=256, out=str(tmp_path / "runs"), hub=str(foreign)),
                        resume=True, progress_bar=False, verbose=0)
    from hubrl.plots import plot_expert_curve

    png = plot_expert_curve(run)
    assert png == run / "learning_curve.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_expert_run_stopped_before_any_score_has_no_curve_yet(tmp_path, capsys):
    """Before a first evaluation or finished game, the plot refuses (an empty chart says less) and the
    end of a pretraining run says there is no curve yet, instead of writing an empty png."""
    from hubrl.harness import draw_learning_curve
    from hubrl.plots import NothingToPlot, plot_expert_curve

    (tmp_path / "evaluations.json").write_text(json.dumps({"points": []}))
    with pytest.raises(NothingToPlot, match="nothing to plot yet"):
        plot_expert_curve(tmp_path)
    assert draw_learning_curve(tmp_path, plot_expert_curve) is None
    assert capsys.readouterr().out == "No learning curve yet: no evaluation and no finished game so far.\n"
    assert not (tmp_path / "learning_curve.png").exists()


@pytest.mark.slow
def test_resume_continues_the_step_count_and_schedule(tmp_path, tiny_ppo):
    pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=128), progress_bar=False, verbose=0)
    first = load_training_checkpoint(tmp_path / "runs" / "seaquest-ppo" / "checkpoint.pt")
    assert first["num_timesteps"] == 128
    result = pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=256), resume=True, progress_bar=False, verbose=0)
    assert result.outcome.num_timesteps == 256
    state = load_training_checkpoint(tmp_path / "runs" / "seaquest-ppo" / "checkpoint.pt")
    assert state["num_timesteps"] == 256 and state["n_updates"] > first["n_updates"]
    # The learning rate continued its linear decay against the 256-step budget: no restart at 2.5e-4.
    lr = state["optimizer"]["param_groups"][0]["lr"]
    assert lr < 2.5e-4 * 0.5


@pytest.mark.slow
def test_resuming_an_exported_run_at_its_budget_says_so_and_writes_nothing(tmp_path, tiny_ppo, capsys):
    """A run trained to its budget and exported is not evaluated, saved or exported again on
    --resume: one line says so, and the run folder and the expert keep every byte and time;
    --export still exports it on demand."""
    pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=64), progress_bar=False, verbose=0)
    run, expert = tmp_path / "runs" / "seaquest-ppo", tmp_path / "hub" / "seaquest-ppo"

    from hubrl.harness import RUN_LOCK_NAME

    def files() -> dict[str, tuple[bytes, int]]:  # but the run's lock file, rewritten by each process that opens the run
        return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")
                if p.is_file() and p.name != RUN_LOCK_NAME}

    before = files()
    result = pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=64), resume=True, progress_bar=False)
    assert capsys.readouterr().out == (f"{run} has already trained 64 of its 64 agent steps: nothing to do "
                                       "(a larger --timesteps trains it further).\n")
    assert result.outcome.already_done and result.outcome.num_timesteps == 64
    assert result.manifest == read_manifest(expert) and result.expert == expert
    assert files() == before
    from hubrl.cli import command_main

    assert command_main("pretrain")(["--env", "Seaquest", "--resume", "--out", str(tmp_path / "runs"),
                                     "--hub", str(tmp_path / "hub"), "--no-progress-bar"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # the command prints that line alone, no summary after it
    assert files() == before
    export_expert(run, eval_episodes=1)  # what --export calls
    assert (expert / "expert.json").stat().st_mtime_ns != before[str(expert / "expert.json")][1]


@pytest.mark.slow
def test_a_moved_run_resumes_from_its_new_place(tmp_path, tiny_ppo):
    """A run folder is self-contained: moved elsewhere (as the shipped experts' runs were, from
    hubrl/default_hub to benchmarks/pretrain), ``--out`` its new parent resumes it."""
    import shutil

    pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=256), progress_bar=False, verbose=0, pause_at=128)
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    cfg = _cfg(tmp_path, tiny_ppo, timesteps=256)
    cfg.out = str(tmp_path / "moved")
    result = pretrain_expert(cfg, resume=True, progress_bar=False, verbose=0)
    assert result.folder == tmp_path / "moved" / "seaquest-ppo" and result.outcome.num_timesteps == 256
    assert result.expert == tmp_path / "hub" / "seaquest-ppo" and read_manifest(result.expert).timesteps == 256
    assert not (tmp_path / "runs").exists()


def restore_pretrain_checkpoint(run: str, folder: Path) -> Path:
    """``benchmarks/pretrain/<run>/checkpoint.pt`` as the git commit named in that folder's README
    holds it (the checkpoints live in history, not in the tree), written into ``folder``; the test
    is skipped where that history is absent (a shallow clone, an sdist)."""
    import re
    import subprocess

    readme = (ROOT / "benchmarks" / "pretrain" / "README.md").read_text()
    commit = re.search(r"git restore --source=([0-9a-f]{7,40})", readme)
    assert commit, "benchmarks/pretrain/README.md names no commit to restore the checkpoints from"
    shallow = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True)
    if shallow.returncode != 0 or shallow.stdout.strip() != "false":
        pytest.skip("no full git history here (not a checkout, or a shallow clone): the checkpoints live in it")
    blob = subprocess.run(["git", "-C", str(ROOT), "cat-file", "blob",
                           f"{commit.group(1)}:benchmarks/pretrain/{run}/checkpoint.pt"], capture_output=True)
    assert blob.returncode == 0, f"benchmarks/pretrain/README.md's restore command fails: {blob.stderr.decode().strip()}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint.pt").write_bytes(blob.stdout)
    return folder / "checkpoint.pt"


@pytest.mark.slow
def test_the_shipped_experts_runs_resume_from_benchmarks_pretrain(tmp_path):
    """The committed runs of the default hub's experts resume from benchmarks/pretrain (a copy,
    paused where it stands: nothing is trained) and export into the package's hub."""
    import shutil

    import yaml

    from hubrl.hub import default_hub_path
    from hubrl.pretrain import expert_folder

    runs = ROOT / "benchmarks" / "pretrain"
    for run in sorted(p for p in runs.iterdir() if p.is_dir()):
        assert expert_folder(run) == Path("hubrl/default_hub") / run.name
        state = restore_pretrain_checkpoint(run.name, tmp_path / "restored" / run.name)
        steps = load_training_checkpoint(state)["num_timesteps"]
        assert steps == read_manifest(default_hub_path() / run.name).timesteps  # the shipped export is this run's
    copy = Path(shutil.copytree(runs / "seaquest-ppo", tmp_path / "runs" / "seaquest-ppo"))
    shutil.copy(tmp_path / "restored" / "seaquest-ppo" / "checkpoint.pt", copy / "checkpoint.pt")
    steps = load_training_checkpoint(copy / "checkpoint.pt")["num_timesteps"]
    result = run_script("pretrain_sources.py", "--resume", "--out", str(tmp_path / "runs"), "--env", "Seaquest",
                        "--pause-at", str(steps), "--no-progress-bar", "--hub", str(tmp_path / "hub"))
    assert result.returncode == 0, result.stderr
    assert f"seaquest-ppo: already at {steps} of 10000000 steps, at or past --pause-at {steps}: nothing to train" \
        in result.stdout
    saved = yaml.safe_load((copy / "config.yaml").read_text())["run"]
    assert saved["out"] == str(tmp_path / "runs") and saved["hub"] == str(tmp_path / "hub") and saved["timesteps"] == 10**7


@pytest.mark.slow
def test_pause_at_stops_early_but_keeps_the_full_budget_schedule(tmp_path, tiny_ppo):
    folder = tmp_path / "hub" / "seaquest-ppo"
    run = tmp_path / "runs" / "seaquest-ppo"
    paused = pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=512), progress_bar=False, verbose=0, pause_at=128)
    assert paused.outcome.paused and not paused.outcome.completed and paused.manifest is None
    assert paused.outcome.num_timesteps == 128 and not (folder / "expert.json").exists()
    state = load_training_checkpoint(run / "checkpoint.pt")
    assert state["num_timesteps"] == 128
    # The rate decays against the 512-step budget, not the 128-step pause: still above 2.5e-4 * 3/4
    # (a 128-step budget would have taken it below 2.5e-4 / 2 by now).
    assert state["optimizer"]["param_groups"][0]["lr"] > 2.5e-4 * 0.74
    again = pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=512), resume=True, progress_bar=False, verbose=0, pause_at=128)
    assert again.outcome.paused and again.outcome.num_timesteps == 128  # already there: nothing trained
    assert again.outcome.already_paused and not paused.outcome.already_paused
    done = pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=512), resume=True, progress_bar=False, verbose=0)
    assert done.outcome.completed and not done.outcome.paused and done.outcome.num_timesteps == 512
    assert (folder / "expert.json").exists()


@pytest.mark.slow
def test_a_resumed_pause_names_the_runs_own_budget(tmp_path, tiny_ppo, capsys):
    """``--resume --pause-at`` without ``--timesteps`` reports the pause against the budget the run
    keeps (its config.yaml), not the command line's default of 10M."""
    from hubrl.cli.pretrain import main

    pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=512), progress_bar=False, verbose=0, pause_at=128)
    assert main(["--resume", "--out", str(tmp_path / "runs"), "--pause-at", "128", "--no-progress-bar"]) == 0
    assert "seaquest-ppo: already at 128 of 512 steps" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_resumed_from_another_directory_exports_into_the_hub_it_was_started_with(tmp_path, tiny_ppo, monkeypatch):
    """``--hub hub`` and ``--tensorboard-log tb`` are relative to where the run was started:
    config.yaml saves them absolute, so the run resumed from elsewhere exports its expert into
    that hub (not a new ``hub`` folder beside the user) and logs to the same TensorBoard folder."""
    from hubrl.cli.pretrain import main

    (tmp_path / "start").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    cfg = _cfg(tmp_path, tiny_ppo, timesteps=256)
    cfg.hub, cfg.tensorboard_log = "hub", "tb"
    pretrain_expert(cfg, progress_bar=False, verbose=0, pause_at=128)
    run = tmp_path / "runs" / "seaquest-ppo"
    saved = yaml.safe_load((run / "config.yaml").read_text())["run"]
    assert saved["hub"] == str(tmp_path / "start" / "hub") and saved["tensorboard_log"] == str(tmp_path / "start" / "tb")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["--resume", "--out", str(tmp_path / "runs"), "--no-progress-bar"]) == 0
    assert read_manifest(tmp_path / "start" / "hub" / "seaquest-ppo").timesteps == 256
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert len(list((tmp_path / "start" / "tb").iterdir())) == 1  # one TensorBoard run, continued


def test_a_stop_names_the_games_not_started_yet(tmp_path, monkeypatch, capsys):
    """Ctrl-C during the first of two games: ``--resume`` finds only the runs in --out, so the stop
    line says the second game has not started and how to start it (else it would be skipped without a word)."""
    from types import SimpleNamespace

    import hubrl.pretrain
    from hubrl.cli.pretrain import main

    def interrupted(cfg, **kwargs):
        outcome = SimpleNamespace(already_done=False, interrupted_by=2, num_timesteps=100, paused=False)
        return SimpleNamespace(name=hubrl.pretrain.expert_name(cfg.game, cfg.algo), outcome=outcome)

    monkeypatch.setattr(hubrl.pretrain, "pretrain_expert", interrupted)
    assert main(["--env", "Seaquest", "Riverraid", "Gopher", "--out", str(tmp_path / "runs"), "--hub", str(tmp_path / "hub"),
                 "--no-progress-bar"]) == 130
    assert capsys.readouterr().out == (
        "seaquest-ppo: stopped at 100 steps; checkpoint saved. Resume with --resume. Not started yet: Riverraid Gopher "
        "(--resume continues started runs only): start them afterwards with --env Riverraid Gopher, without --resume.\n")


def test_every_command_finds_a_run_where_run_folder_puts_it(tmp_path, monkeypatch, capsys):
    """Training (the library), --resume, --export, --plot and the stop line's note on games not
    started all take a game's run folder from hubrl.pretrain.run_folder (<out>/<game>-<algo>):
    one place to say where a run is, so they cannot disagree. Moved, all of them look there."""
    from types import SimpleNamespace

    import hubrl.pretrain
    from hubrl.cli.pretrain import main
    from hubrl.pretrain import run_folder

    assert run_folder(tmp_path / "runs", "ALE/Seaquest-v5", "PPO") == tmp_path / "runs" / "seaquest-ppo"
    monkeypatch.setattr(hubrl.pretrain, "run_folder", lambda out, game, algo: Path(out) / "moved" / f"{game.lower()}-{algo}")
    runs, moved = str(tmp_path / "runs"), re.escape(str(tmp_path / "runs" / "moved" / "seaquest-ppo"))
    with pytest.raises(UsageError, match=f"Nothing to resume in {moved}: no checkpoint.pt"):
        pretrain_expert(PretrainConfig(game="Seaquest", out=runs, hub=str(tmp_path / "hub")), resume=True)
    with pytest.raises(UsageError, match=f"Nothing to resume in {moved}: no checkpoint.pt"):
        main(["--resume", "--env", "Seaquest", "--out", runs])
    with pytest.raises(UsageError, match=f"Nothing to export in {moved}: no checkpoint.pt"):
        main(["--export", "--env", "Seaquest", "--out", runs])
    with pytest.raises(UsageError, match=f"{moved} has no training history"):
        main(["--plot", "--env", "Seaquest", "--out", runs])
    (tmp_path / "runs" / "moved" / "riverraid-ppo").mkdir(parents=True)
    (tmp_path / "runs" / "moved" / "riverraid-ppo" / "config.yaml").write_text("run: {game: riverraid, algo: ppo}\n")
    stopped = SimpleNamespace(already_done=False, interrupted_by=2, num_timesteps=1, paused=False)
    monkeypatch.setattr(hubrl.pretrain, "pretrain_expert", lambda cfg, **kwargs: SimpleNamespace(name="x", outcome=stopped))
    hub = ["--hub", str(tmp_path / "hub")]
    with pytest.raises(UsageError, match=f"Run folder {moved.replace('seaquest', 'riverraid')} already exists"):
        main(["--env", "Seaquest", "Riverraid", "Gopher", "--out", runs, *hub, "--no-progress-bar"])  # checked up front
    assert main(["--env", "Seaquest", "Riverraid", "Gopher", "--out", runs, *hub, "--force", "--no-progress-bar"]) == 130
    assert "Not started yet: Gopher (" in capsys.readouterr().out  # Riverraid's run is where run_folder says


def test_resume_checks_every_games_run_before_training_the_first(tmp_path, monkeypatch):
    """``--resume --env Seaquest Riverraid`` where Riverraid never started: refused at once, naming it,
    instead of after Seaquest's hours of training."""
    import hubrl.pretrain
    from hubrl.cli.pretrain import main

    (tmp_path / "runs" / "seaquest-ppo").mkdir(parents=True)
    (tmp_path / "runs" / "seaquest-ppo" / "checkpoint.pt").write_bytes(b"never read")
    trained = []
    monkeypatch.setattr(hubrl.pretrain, "pretrain_expert", lambda cfg, **kwargs: trained.append(cfg.game))
    with pytest.raises(UsageError, match="Nothing to resume in .*riverraid-ppo: no checkpoint.pt"):
        main(["--resume", "--env", "Seaquest", "Riverraid", "--out", str(tmp_path / "runs"), "--no-progress-bar"])
    assert trained == []


def test_a_game_named_twice_trains_once(tmp_path, monkeypatch):
    """``--env Breakout breakout`` is one game: one run (the second used to be refused after the first had
    trained, or with --force to delete the run and expert just made and train them again)."""
    from types import SimpleNamespace

    import hubrl.pretrain
    from hubrl.cli.pretrain import main

    trained = []

    def pretrain(cfg, **kwargs):
        trained.append(cfg.game)
        return SimpleNamespace(outcome=SimpleNamespace(already_done=True))

    monkeypatch.setattr(hubrl.pretrain, "pretrain_expert", pretrain)
    assert main(["--env", "Breakout", "breakout", "ALE/Breakout-v5", "Seaquest", "--force", "--out", str(tmp_path / "runs"),
                 "--hub", str(tmp_path / "hub"), "--no-progress-bar"]) == 0
    assert trained == ["breakout", "seaquest"]


@pytest.mark.slow
def test_an_evaluation_due_inside_the_last_rollout_waits_for_the_final_one(tmp_path, tiny_ppo):
    import dataclasses

    # 2 envs x 32 steps: learn() overshoots a 100-step budget to 128 and then updates once more.
    cfg = dataclasses.replace(_cfg(tmp_path, tiny_ppo, timesteps=100), eval_freq=50)
    result = pretrain_expert(cfg, progress_bar=False, verbose=0)
    # Due at 50: evaluated then. Due at 100 (the budget): only the final evaluation of the saved weights.
    assert [p["step"] for p in result.outcome.history.points] == [50, 128]
    saved = json.loads((tmp_path / "runs" / "seaquest-ppo" / "evaluations.json").read_text())
    assert [p["step"] for p in saved["points"]] == [50, 128]


@pytest.mark.slow
def test_existing_expert_needs_resume_or_force(tmp_path, tiny_ppo):
    pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=64), progress_bar=False, verbose=0)
    with pytest.raises(UsageError, match="--resume .* or --force"):
        pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=64), progress_bar=False, verbose=0)
    result = pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=64), force=True, progress_bar=False, verbose=0)
    assert result.outcome.num_timesteps == 64


def test_resume_with_nothing_to_resume(tmp_path, tiny_ppo):
    with pytest.raises(UsageError, match="Nothing to resume"):
        pretrain_expert(_cfg(tmp_path, tiny_ppo), resume=True, progress_bar=False, verbose=0)


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from stable_baselines3 import PPO

    from hubrl.envs import make_atari_vec_env

    model = PPO("CnnPolicy", make_atari_vec_env("Seaquest", 1), n_steps=8, batch_size=8, device="cpu")
    path = tmp_path / "checkpoint.pt"
    save_training_checkpoint(model, path)
    before = path.read_bytes()

    def killed(fd: int) -> None:  # the new checkpoint's bytes are written; the process dies at the flush to disk
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    model.num_timesteps = 999
    with pytest.raises(KeyboardInterrupt):
        save_training_checkpoint(model, path)
    assert path.read_bytes() == before
    assert load_training_checkpoint(path)["num_timesteps"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temp file left behind"


def _flip_a_byte_of_the_largest_tensor(path: Path) -> str:
    """Flip one byte in the middle of the largest tensor's data in the checkpoint ``path``, keeping its size
    (bit rot, a bad sector); the name of the zip member damaged."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    local = info.header_offset  # local file header: 30 bytes, then its name and extra field, then the member's data
    name_length, extra_length = (int.from_bytes(data[local + at:local + at + 2], "little") for at in (26, 28))
    data[local + 30 + name_length + extra_length + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return info.filename


def test_a_checkpoint_damaged_in_place_is_refused_and_the_previous_one_used(tmp_path, capsys):
    """torch.load does not check the CRC-32 stored in a checkpoint's zip: a byte flipped in its tensor data
    (the file's size unchanged) loaded as changed weights, and --resume never fell back to checkpoint.prev.pt.
    The CRCs are checked now; the damaged checkpoint does not take the sound previous one's place either."""
    from stable_baselines3 import PPO

    from hubrl.checkpoint import load_resume_checkpoint, previous_checkpoint
    from hubrl.envs import make_atari_vec_env

    model = PPO("CnnPolicy", make_atari_vec_env("Seaquest", 1), n_steps=8, batch_size=8, device="cpu")
    path = tmp_path / "checkpoint.pt"
    save_training_checkpoint(model, path)
    model.num_timesteps = 64
    save_training_checkpoint(model, path)  # the first one is kept as checkpoint.prev.pt
    size = path.stat().st_size
    member = _flip_a_byte_of_the_largest_tensor(path)
    assert path.stat().st_size == size and "/data/" in member  # a tensor's bytes (torch names them <archive>/data/<n>)
    with pytest.raises(CheckpointError, match=rf"checkpoint.pt is corrupt \(CRC mismatch in {re.escape(member)}\)"):
        load_training_checkpoint(path)
    capsys.readouterr()
    assert load_resume_checkpoint(path)["num_timesteps"] == 0
    assert re.search(rf"warning: .*checkpoint.pt is corrupt \(CRC mismatch in {re.escape(member)}\).* Using the previous "
                     r"checkpoint .*checkpoint.prev.pt \(0 steps\) instead", capsys.readouterr().err)
    model.num_timesteps = 128
    save_training_checkpoint(model, path)  # the resumed run's next save: the damaged one is not kept
    assert load_training_checkpoint(previous_checkpoint(path))["num_timesteps"] == 0
    assert load_training_checkpoint(path)["num_timesteps"] == 128


def test_corrupt_or_foreign_checkpoint(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_training_checkpoint(bad)
    th.save({"hello": 1}, bad)
    with pytest.raises(CheckpointError, match="not a hubrl training checkpoint"):
        load_training_checkpoint(bad)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path):
    out, hub = tmp_path / "runs", tmp_path / "hub"
    hp = tmp_path / "hp.yaml"
    hp.write_text("n_steps: 32\nbatch_size: 64\nn_epochs: 1\n")
    args = [sys.executable, str(ROOT / "scripts" / "pretrain_sources.py"), "--env", "Seaquest", "--timesteps", "1M",
            "--n-envs", "2", "--out", str(out), "--hub", str(hub), "--hyperparams", str(hp), "--eval-freq", "1M",
            "--checkpoint-freq", "1M", "--no-progress-bar", "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    events = out / "seaquest-ppo" / "tb"

    def logged() -> int:  # the TensorBoard bytes written so far: SB3 writes (and flushes) a record after each update
        return sum(f.stat().st_size for f in events.rglob("events.out.tfevents*"))

    deadline = time.time() + 120
    while not logged() and time.time() < deadline:  # the file is made as training starts, with a header alone
        time.sleep(0.2)
    started = logged()
    while logged() == started and time.time() < deadline:  # an update is logged: steps to save, however slow the machine
        time.sleep(0.2)
    assert logged() > started, "no update logged in 120 s"
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "Resume with --resume" in output
    state = load_training_checkpoint(out / "seaquest-ppo" / "checkpoint.pt")
    steps = state["num_timesteps"]
    assert 0 < steps < 1_000_000
    done = run_script("pretrain_sources.py", "--env", "Seaquest", "--timesteps", str(steps + 64), "--out", str(out),
                      "--resume", "--no-progress-bar", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    # the summary's score is the export's own evaluation, named as such (not the last training evaluation's)
    assert re.search(r"seaquest-ppo: \d+ steps in \d+s; export evaluation over \d+ new games -?[\d.]+ ± ", done.stdout)
    assert load_training_checkpoint(out / "seaquest-ppo" / "checkpoint.pt")["num_timesteps"] >= steps + 64
    # exported into the hub the run was started with (--hub is not needed to resume)
    assert json.loads((hub / "seaquest-ppo" / "expert.json").read_text())["timesteps"] >= steps + 64
    assert not (out / "seaquest-ppo" / "expert.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "Seaqest"], "Unknown Atari game 'Seaqest'. Did you mean Seaquest?"),
        (["--timesteps", "0"], "--timesteps: must be positive"),
        (["--n-envs", "-2"], "--n-envs: must be positive"),
        (["--resume"], "Nothing to resume"),
        (["--out", "/proc/hubrl-cannot-write-here"], "Cannot create run folder /proc/hubrl-cannot-write-here/seaquest-ppo"),
        (["--hub", "/proc/hubrl-cannot-write-here"], "--hub /proc/hubrl-cannot-write-here cannot be written ("),
    ],
)
@pytest.mark.slow
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    defaults = [] if "--out" in args else ["--out", str(tmp_path / "runs")]
    defaults += [] if "--hub" in args else ["--hub", str(tmp_path / "hub")]  # not ./hub in the checkout
    defaults += [] if "--env" in args else ["--env", "Seaquest"]
    result = run_script("pretrain_sources.py", *defaults, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_atomic_write_gives_normal_file_permissions(tmp_path):
    from hubrl.atomic import atomic_write_bytes

    mask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_resume_export_and_plot_find_the_games_already_in_out(tmp_path):
    """Without --env, --resume / --export / --plot work on the runs in --out (not the default
    Seaquest and Riverraid)."""
    from hubrl.cli.pretrain import main
    from hubrl.pretrain import games_in

    for name, run in (("breakout-ppo", "{game: breakout, algo: ppo}"), ("pong-a2c", "{game: pong, algo: a2c}"),
                      ("gopher-ppo", "{env: Gopher, algo: ppo, method: scratch}")):  # a transfer run's: not pretraining
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(f"run: {run}\n")
    assert games_in(tmp_path, "ppo") == ["breakout"] and games_in(tmp_path, "a2c") == ["pong"]
    with pytest.raises(UsageError, match="Nothing to resume in .*breakout-ppo"):  # found, then checked as a run
        main(["--resume", "--out", str(tmp_path)])
    with pytest.raises(UsageError, match="No PPO pretraining run in .*: give the --out of a pretraining run, or --env"):
        main(["--resume", "--out", str(tmp_path / "nothing")])


@pytest.mark.parametrize("command", ["--resume", "--export", "--plot"])
def test_a_run_whose_config_cannot_be_read_is_named_not_skipped(tmp_path, command):
    """Without --env, a <game>-<algo> run whose config.yaml cannot be read was skipped without a word
    (the other runs resumed or exported as if it were not there), and alone it was "No PPO pretraining
    run (no <game>-ppo/config.yaml)" with the file right there. It is named as --env GAME names it."""
    from hubrl.checkpoint import CheckpointError
    from hubrl.cli.pretrain import main
    from hubrl.pretrain import games_in

    run = tmp_path / "seaquest-ppo"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"never read")
    (run / "config.yaml").write_text("run: {game: seaquest, algo: ppo\n")  # cut short
    corrupt = rf"{re.escape(str(run / 'config.yaml'))} is corrupt \(\w+\): the run's settings are unknown"
    with pytest.raises(CheckpointError, match=corrupt):
        games_in(tmp_path, "ppo")
    with pytest.raises(CheckpointError, match=corrupt) as alone:
        main([command, "--out", str(tmp_path)])
    if command != "--plot":  # --plot --env reads the run's evaluations.json, not its config.yaml
        with pytest.raises(CheckpointError) as named:
            main([command, "--env", "Seaquest", "--out", str(tmp_path)])
        assert str(alone.value) == str(named.value)
    (tmp_path / "breakout-ppo").mkdir()  # beside a sound run: not left out while that one goes on
    (tmp_path / "breakout-ppo" / "config.yaml").write_text("run: {game: breakout, algo: ppo}\n")
    with pytest.raises(CheckpointError, match=corrupt):
        main([command, "--out", str(tmp_path)])
    (tmp_path / "seaquest-ppo" / "config.yaml").write_text("not: a run\n")  # YAML, but no run's settings
    with pytest.raises(CheckpointError, match="seaquest-ppo/config.yaml has no 'run' section"):
        main([command, "--out", str(tmp_path)])


def _saved_run(tmp_path, **settings) -> Path:
    """A pretraining run of Seaquest in ``tmp_path/runs`` as a run left it at 128 steps (``settings``
    over the defaults in its config.yaml): the checkpoint of an untrained PPO, nothing trained."""
    import dataclasses

    from stable_baselines3 import PPO

    from hubrl.envs import make_atari_vec_env

    run = tmp_path / "runs" / "seaquest-ppo"
    run.mkdir(parents=True)
    cfg = PretrainConfig(game="Seaquest", timesteps=128, out=str(tmp_path / "runs"), hub=str(tmp_path / "hub"),
                         run_id="a" * 32, **settings)
    (run / "config.yaml").write_text(yaml.safe_dump({"run": dataclasses.asdict(cfg), "resolved_hyperparams": {}}))
    env = make_atari_vec_env("Seaquest", 1, seed=0)
    model = PPO("CnnPolicy", env, n_steps=8, batch_size=8, device="cpu")
    model.num_timesteps = 128
    save_training_checkpoint(model, run / "checkpoint.pt")
    env.close()
    return run


def _unplayed(monkeypatch) -> list[int]:
    """Stand in for the export's evaluation (whole games, slow): each call's number of games, listed."""
    import hubrl.pretrain
    from hubrl.evaluation import EvalResult

    games = []

    def evaluate(policy, env, n_episodes, **kwargs):
        games.append(n_episodes)
        return EvalResult(mean=0.0, std=0.0, episodes=n_episodes, scores=[0.0] * n_episodes)

    monkeypatch.setattr(hubrl.pretrain, "evaluate_model", evaluate)
    return games


def test_a_float16_export_keeps_one_copy_of_the_shared_encoder(tmp_path, monkeypatch):
    """Rounding gave each state_dict key a tensor of its own, so SB3's pi_/vf_features_extractor
    copies of the shared encoder no longer shared its memory and were all written: the float16 expert
    (28 tensors, 10.1 MB) was bigger than the float32 one (12 tensors, 6.8 MB). Half of it now, with
    the same tensors, each the float32 one rounded."""
    run = _saved_run(tmp_path)
    _unplayed(monkeypatch)
    export_expert(run, dtype="float32", hub=tmp_path / "f32")
    export_expert(run, dtype="float16", hub=tmp_path / "f16")
    full, half = (tmp_path / hub / "seaquest-ppo" / "weights.safetensors" for hub in ("f32", "f16"))
    weights32, weights16 = load_file(full), load_file(half)
    assert sorted(weights16) == sorted(weights32) and len(weights32) == 12
    assert not any(k.startswith(("pi_features_extractor", "vf_features_extractor")) for k in weights16)
    assert all(weights16[k].dtype == th.float16 and th.equal(weights16[k], weights32[k].half()) for k in weights32)
    assert half.stat().st_size < 0.51 * full.stat().st_size


def test_export_keeps_the_runs_export_dtype_and_eval_episodes_unless_given(tmp_path, monkeypatch):
    """``pretrain --export`` passed the flags' defaults (float32, 10 games) for a run started with
    --export-dtype float16 --eval-episodes 3, so it exported float32 scored on 10 games. The run's own
    settings now, unless the flags are given."""
    from hubrl.cli.pretrain import main

    _saved_run(tmp_path, export_dtype="float16", eval_episodes=3)
    games = _unplayed(monkeypatch)
    export = ["--export", "--env", "Seaquest", "--out", str(tmp_path / "runs")]
    assert main(export) == 0
    manifest = read_manifest(tmp_path / "hub" / "seaquest-ppo")
    assert manifest.weights_dtype == "float16" and manifest.eval["episodes"] == 3 and games == [3]
    assert main([*export, "--export-dtype", "float32", "--eval-episodes", "2"]) == 0  # given: they win
    manifest = read_manifest(tmp_path / "hub" / "seaquest-ppo")
    assert manifest.weights_dtype == "float32" and manifest.eval["episodes"] == 2 and games == [3, 2]


def test_a_new_run_checks_every_games_folder_and_hub_before_training_the_first(tmp_path, monkeypatch):
    """``pretrain --env Seaquest Riverraid`` checked Riverraid's run folder and hub only when its turn
    came, after Seaquest's hours of training (only --resume checked every game first). Each new
    game's refusals come before any training now."""
    from types import SimpleNamespace

    import hubrl.pretrain
    from hubrl.cli.pretrain import main
    from hubrl.harness import RUN_LOCK_NAME
    from hubrl.locks import exclusive_lock

    runs, hub = tmp_path / "runs", make_tiny_hub(tmp_path / "hub", names=("riverraid-ppo",))
    trained = []

    def pretrain(cfg, **kwargs):  # hours of training, and no refusal of its own
        trained.append(cfg.game)
        return SimpleNamespace(outcome=SimpleNamespace(already_done=True))

    monkeypatch.setattr(hubrl.pretrain, "pretrain_expert", pretrain)
    both = ["--env", "Seaquest", "Riverraid", "--out", str(runs), "--no-progress-bar"]
    with pytest.raises(UsageError, match="already holds the expert riverraid-ppo .0 steps., which this new run would replace"):
        main([*both, "--hub", str(hub)])  # an expert of another run in the hub
    (runs / "riverraid-ppo").mkdir(parents=True)
    (runs / "riverraid-ppo" / "config.yaml").write_text("run: {game: riverraid, algo: ppo}\n")
    with pytest.raises(UsageError, match="Run folder .*riverraid-ppo already exists"):
        main([*both, "--hub", str(tmp_path / "other")])  # a run in its run folder
    with exclusive_lock(runs / "riverraid-ppo" / RUN_LOCK_NAME):  # ... that another process trains: --force waits for it
        with pytest.raises(UsageError, match="Run folder .*riverraid-ppo is in use by another process"):
            main([*both, "--hub", str(tmp_path / "other"), "--force"])
    assert trained == [] and not (runs / "seaquest-ppo").exists()
    assert main([*both, "--hub", str(hub), "--force"]) == 0 and trained == ["seaquest", "riverraid"]


@pytest.mark.slow
def test_a_bf16_run_scores_its_export_in_float32(tmp_path, tiny_ppo, monkeypatch):
    """A run trained with --precision bf16 evaluated its end-of-budget export with the encoder still
    under bfloat16 autocast, while the expert runs in float32 wherever it is loaded (and --export scores
    it so): the same weights got two scores. The export's evaluation runs the float32 encoder."""
    from stable_baselines3.common.torch_layers import NatureCNN

    import hubrl.pretrain
    from hubrl.evaluation import EvalResult

    frames = th.randint(0, 256, (2, 4, 84, 84)).float()
    same = []

    def evaluate(policy, env, n_episodes, **kwargs):  # what the export's evaluation runs: the encoder as the class has it?
        encoder = policy.features_extractor
        with th.no_grad():
            same.append(th.equal(encoder(frames), NatureCNN.forward(encoder, frames)))
        return EvalResult(mean=0.0, std=0.0, episodes=n_episodes, scores=[0.0] * n_episodes)

    monkeypatch.setattr(hubrl.pretrain, "evaluate_model", evaluate)
    result = pretrain_expert(_cfg(tmp_path, tiny_ppo, timesteps=64, precision="bf16"), progress_bar=False, verbose=0)
    assert result.outcome.completed and same == [True]
