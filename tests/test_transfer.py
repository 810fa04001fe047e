"""Hub-Pathway transfer end to end: tiny runs, stock SB3 loading, TensorBoard tags, bad input."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
import torch as th
import yaml
from stable_baselines3 import A2C, PPO

import hubrl  # noqa: F401  (what users import before PPO.load)
from hubrl.envs import make_atari_vec_env
from hubrl.hub import HubError
from hubrl.pretrain import UsageError
from hubrl.transfer import TransferConfig, run_transfer
from tests.conftest import TINY_PPO, make_sb3_zip, make_tiny_hub, run_script


def _cfg(tmp_path, env="Gopher", **kw):
    base = dict(env=env, timesteps=128, n_envs=2, out=str(tmp_path / "run"), eval_freq=10**9, eval_episodes=1,
                checkpoint_freq=10**9, hyperparams=dict(TINY_PPO), device="cpu")
    base.update(kw)
    return TransferConfig(**base)


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(glob.glob(f"{folder}/tb/*")[0])
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["features", "heads"])
def test_tiny_transfer_to_gopher_and_stock_load_gives_same_actions(tmp_path, tiny_hub, aggregation):
    result = run_transfer(_cfg(tmp_path, hub=str(tiny_hub), aggregation=aggregation), progress_bar=False, verbose=0)
    assert result.outcome.num_timesteps == 128
    folder = result.folder
    assert {p.name for p in folder.iterdir()} >= {"model.zip", "config.yaml", "checkpoint.pt", "tb"}
    tags = _scalars(folder)
    for name in ("riverraid-ppo", "seaquest-ppo"):
        assert f"pathway/weight_mean/{name}" in tags and f"pathway/selection_freq/{name}" in tags
    assert {"train/exploration_loss", "train/exploitation_loss", "train/gate_reroute_frac", "eval/mean_reward"} <= tags
    assert {"train/exploitation_clip_fraction", "train/exploitation_approx_kl"} <= tags  # the heads against the acting policy
    assert {"pathway/noise_std", "pathway/logit_spread", "pathway/logit_drift"} <= tags  # gate diagnostics per rollout
    from hubrl.callbacks import read_gate_history

    gates = read_gate_history(folder / "gates.jsonl")  # the same, kept in the run folder
    assert [r["step"] for r in gates] == [64, 128]
    assert sum(gates[-1][f"selection_freq/{n}"] for n in ("riverraid-ppo", "seaquest-ppo")) == pytest.approx(1.0)

    loaded = PPO.load(folder / "model.zip", device="cpu")
    assert loaded.policy.aggregation == aggregation and loaded.action_space.n == 8
    from hubrl.saved_model import load_saved_policy

    rebuilt = load_saved_policy(folder / "model.zip").policy  # weights only, nothing unpickled (enjoy's way)
    env = make_atari_vec_env("Gopher", 2, seed=1)
    obs = env.reset()
    for _ in range(5):
        stock, _ = loaded.predict(obs, deterministic=True)
        ours, _ = rebuilt.predict(obs, deterministic=True)
        assert np.array_equal(stock, ours)
        obs = env.step(stock)[0]
    trained_state = th.load(folder / "checkpoint.pt", weights_only=True)["policy"]
    for key, value in loaded.policy.state_dict().items():
        assert th.equal(value, trained_state[key]), key
    env.close()


@pytest.mark.slow
def test_tiny_transfer_to_alien_from_stock_sb3_zips_with_a2c(tmp_path):
    zips = [make_sb3_zip(tmp_path / "ppo-Seaquest.zip", 0), make_sb3_zip(tmp_path / "ppo-Riverraid.zip", 1)]
    result = run_transfer(_cfg(tmp_path, env="Alien", sources=[str(z) for z in zips], algo="a2c", top_k=2,
                               hyperparams={"n_steps": 8}), progress_bar=False, verbose=0)
    assert result.hub.names == ["ppo-Seaquest", "ppo-Riverraid"]
    model = A2C.load(result.folder / "model.zip", device="cpu")
    assert model.action_space.n == 18 and model.policy.extractor.top_k == 2
    # A2C's preset optimizer is a class, so SB3 pickles its policy_kwargs: enjoy's weights-only reader still plays it
    from hubrl.saved_model import load_saved_policy

    rebuilt = load_saved_policy(result.folder / "model.zip").policy
    obs = np.stack([model.observation_space.sample() for _ in range(4)])
    assert np.array_equal(rebuilt.predict(obs, deterministic=True)[0], model.policy.predict(obs, deterministic=True)[0])


@pytest.mark.slow
def test_hub_weights_are_loaded_and_frozen_experts_stay_fixed(tmp_path, tiny_hub):
    from hubrl.hub import load_hub

    hub = load_hub(tiny_hub)
    result = run_transfer(_cfg(tmp_path, hub=str(tiny_hub), freeze_experts=True), progress_bar=False, verbose=0)
    model = PPO.load(result.folder / "model.zip", device="cpu")
    for module, expert in zip(model.policy.extractor.experts, hub.experts):
        assert th.equal(module.cnn[0].weight, expert.encoder_state["cnn.0.weight"])


@pytest.mark.slow
def test_transfer_resume(tmp_path, tiny_hub, capsys):
    run_transfer(_cfg(tmp_path, hub=str(tiny_hub)), progress_bar=False, verbose=0)
    result = run_transfer(_cfg(tmp_path, hub=str(tiny_hub), timesteps=256), resume=True, progress_bar=False, verbose=0)
    assert result.outcome.num_timesteps == 256
    # the new budget stretches the schedules from where the run stopped: said, not silent
    assert "resumed with --timesteps 256 instead of the run's 128" in capsys.readouterr().err


def test_runs_sharing_a_tensorboard_log_keep_their_own_folders_across_a_resume(tmp_path):
    """Two seeds log to one --tensorboard-log; seed 0 pauses, seed 1 runs, seed 0 resumes. SB3 resumes
    into the latest ``<name>_N``: with a name both runs share (game and method) seed 0's resume wrote
    into seed 1's folder and their curves mixed. Each run's events stay in its own folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shared = tmp_path / "tb"

    def cfg(seed: int, timesteps: int = 128) -> TransferConfig:
        return _cfg(tmp_path, method="scratch", seed=seed, timesteps=timesteps, tensorboard_log=str(shared),
                    out=str(tmp_path / f"gopher-scratch-ppo-s{seed}"))

    run_transfer(cfg(0), progress_bar=False, verbose=0, pause_at=64)
    run_transfer(cfg(1), progress_bar=False, verbose=0)
    run_transfer(cfg(0), resume=True, progress_bar=False, verbose=0)
    from hubrl.runconfig import read_saved_run, tensorboard_name

    run0, run1 = tmp_path / "gopher-scratch-ppo-s0", tmp_path / "gopher-scratch-ppo-s1"
    name0, name1 = (f"{tensorboard_name(run, shared, 'unused')}_1" for run in (run0, run1))
    assert name0.startswith("gopher-scratch-ppo-s0-") and name1.startswith("gopher-scratch-ppo-s1-")
    assert sorted(p.name for p in shared.iterdir()) == sorted([name0, name1])

    def steps(folder: str) -> list[int]:
        acc = EventAccumulator(str(shared / folder))
        acc.Reload()
        return sorted({e.step for e in acc.Scalars("time/fps")})

    assert steps(name0) == [64, 128] and steps(name1) == [64, 128]
    from hubrl.plots import _run_tensorboard_dirs  # the run's learning curve reads its own folder only

    assert _run_tensorboard_dirs(run0, read_saved_run(run0 / "config.yaml")) == [shared / name0]


def test_tensorboard_names_under_a_shared_folder_tell_grid_trials_and_same_named_runs_apart(tmp_path):
    """A grid trial's folder is only ``s<seed>``; two runs may have one name in different parents."""
    from hubrl.runconfig import tensorboard_name

    names = {tensorboard_name(tmp_path / game / arm / "s0", "tb", "x") for game in ("Alien", "Gopher")
             for arm in ("scratch", "hub-pathway")}
    assert len(names) == 4 and all(n.startswith(("Alien-", "Gopher-")) for n in names)
    assert tensorboard_name(tmp_path / "a" / "run", "tb", "x") != tensorboard_name(tmp_path / "b" / "run", "tb", "x")
    assert tensorboard_name(tmp_path / "run", None, "gopher-scratch") == "gopher-scratch"  # its own tb/: as before
    assert tensorboard_name(".", "tb", "x").startswith(Path.cwd().name + "-")


@pytest.mark.slow
def test_bad_inputs(tmp_path, tiny_hub):
    with pytest.raises(HubError, match="larger than the hub"):
        run_transfer(_cfg(tmp_path, hub=str(tiny_hub), top_k=3), progress_bar=False)
    with pytest.raises(UsageError, match="at least 1"):
        run_transfer(_cfg(tmp_path, hub=str(tiny_hub), top_k=0), progress_bar=False)
    rgb = make_tiny_hub(tmp_path / "rgb", names=("x-ppo",), in_channels=3)
    with pytest.raises(HubError, match="stacked frames"):
        run_transfer(_cfg(tmp_path, hub=str(rgb), out=str(tmp_path / "r2")), progress_bar=False)
    run_transfer(_cfg(tmp_path, hub=str(tiny_hub), timesteps=64), progress_bar=False, verbose=0)
    with pytest.raises(UsageError, match="already exists"):
        run_transfer(_cfg(tmp_path, hub=str(tiny_hub)), progress_bar=False)


@pytest.mark.parametrize("hub_names, in_channels, settings, message", [
    (("seaquest-ppo", "riverraid-ppo"), 4, {"top_k": 3}, "--top-k 3 is larger than the hub"),
    (("x-ppo",), 3, {}, "reads 3 stacked frames but the target env gives 4"),
    (("seaquest-ppo", "riverraid-ppo"), 4, {"method": "finetune"}, "--method finetune needs --source NAME"),
])
def test_a_run_refused_while_it_is_built_names_no_run_folder(tmp_path, capsys, hub_names, in_channels, settings, message):
    """The hub is checked against the method and the envs' observations before start_run: a run
    refused there prints no "Run folder: ..." (the folder is named once it is created) and writes nothing."""
    hub = make_tiny_hub(tmp_path / "hub", names=hub_names, in_channels=in_channels)
    with pytest.raises(HubError, match=message):
        run_transfer(_cfg(tmp_path, hub=str(hub), **settings), progress_bar=False, verbose=1)
    assert "Run folder" not in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("settings, message", [
    ({"top_k": 3}, "--top-k 3 is larger than the hub"),
    ({"method": "finetune"}, "--method finetune needs --source NAME"),
    ({"hub": "rgb"}, "reads 3 stacked frames but the target env gives 4"),
    ({"hub": "rgb", "method": "zoo-tuning"}, "reads 3 stacked frames but the target env gives 4"),
])
def test_a_hub_that_cannot_serve_the_method_is_refused_before_any_emulator_starts(tmp_path, tiny_hub, monkeypatch,
                                                                                  settings, message):
    """A --top-k past the hub, finetune without --source on a hub of several experts, or experts that
    read another frame stack than hubrl's envs give, is known from the flags and the hub: refused
    before the envs (ale-py's emulators) and the agent are built."""
    import hubrl.harness

    if settings.get("hub") == "rgb":
        settings = {**settings, "hub": str(make_tiny_hub(tmp_path / "rgb", names=("x-ppo", "y-ppo"), in_channels=3))}

    def built(*args, **kwargs):
        raise AssertionError("an env was built before the hub was checked against the method")

    monkeypatch.setattr(hubrl.harness, "make_atari_vec_env", built)
    monkeypatch.setattr(hubrl.harness, "make_eval_env", built)
    with pytest.raises(HubError, match=message):
        run_transfer(_cfg(tmp_path, **{"hub": str(tiny_hub), **settings}), progress_bar=False, verbose=0)


def test_a_rollout_the_minibatch_does_not_divide_warns_in_one_line_instead_of_sb3s_paragraph(tmp_path, capsys,
                                                                                              monkeypatch):
    """--n-envs 1 with RL Zoo's PPO preset (128 steps, batch_size 256): SB3 trains on one
    mini-batch of 128 and warns in a paragraph; the run says it in one line, naming both fixes."""
    import warnings

    import hubrl.harness
    from hubrl.harness import start_run

    monkeypatch.setattr(hubrl.harness, "run_training", lambda *args, **kwargs: None)  # what train() says, not its training
    cfg = _cfg(tmp_path, method="scratch", n_envs=1, hyperparams={})
    run = start_run(cfg, cfg.out, verbose=0)
    with run.envs("Gopher") as (env, _):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = run.make_agent("CnnPolicy", env)
        assert model.batch_size == 256 and model.n_steps * model.n_envs == 128  # trained as SB3 trains it: not refused
        assert [str(w.message) for w in caught if "mini-batch" in str(w.message)] == []  # SB3's own is not shown too
        assert capsys.readouterr().err == ""  # nothing yet: a run refused before training says only why
        run.train(model, env, tb_log_name="t")
    assert capsys.readouterr().err == (
        "warning: PPO's batch_size 256 does not divide its rollout of n_steps 128 x n_envs 1 = 128 agent steps, so each "
        "epoch is one mini-batch of 128: pass --n-envs 2, or batch_size: 128 in a --hyperparams file.\n")
    run = start_run(_cfg(tmp_path, method="scratch", n_envs=2, hyperparams={}, out=str(tmp_path / "r2")), tmp_path / "r2",
                    verbose=0)
    run.train(model, env, tb_log_name="t")
    assert capsys.readouterr().err == ""  # 2 x 128 = 256: one whole mini-batch


def test_a_budget_below_one_rollout_says_the_run_trains_a_whole_one(tmp_path, capsys, monkeypatch):
    """SB3 collects whole rollouts: ``--timesteps 2`` trains 8 x 128 = 1,024 steps. The run says so in one
    line instead of a progress bar that reads 1,024/1,024 for a budget of 2; a budget of a rollout or more
    (ending where the last rollout ends, as every run does) says nothing."""
    import hubrl.harness
    from hubrl.harness import start_run

    monkeypatch.setattr(hubrl.harness, "run_training", lambda *args, **kwargs: None)
    for budget, said in ((2, True), (1024, False), (1500, False)):
        cfg = _cfg(tmp_path, method="scratch", n_envs=8, hyperparams={}, timesteps=budget, out=str(tmp_path / f"r{budget}"))
        run = start_run(cfg, cfg.out, verbose=0)
        with run.envs("Gopher") as (env, _):
            run.train(run.make_agent("CnnPolicy", env), env, tb_log_name="t")
        assert capsys.readouterr().err == ("warning: --timesteps 2 is less than one rollout (1,024 agent steps: n_steps 128 "
                                           "x 8 envs): the run trains one whole rollout, 1,024 steps.\n" if said else "")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "Alen"], "Did you mean Alien?"),
        (["--env", "Alien", "--top-k", "5"], "larger than the hub"),
        (["--env", "Alien", "--method", "magic"], "Unknown method 'magic'"),
        (["--env", "Alien", "--sources", "/nonexistent.zip"], "does not exist"),
    ],
)
@pytest.mark.slow
def test_cli_bad_input_one_line(tmp_path, tiny_hub, args, message):
    extra = [] if "--sources" in args else ["--hub", str(tiny_hub)]
    result = run_script("transfer.py", *args, *extra, "--out", str(tmp_path / "cli"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_same_seed_same_system_same_run(tmp_path, tiny_hub):
    """A seed repeats its run exactly on one system (noisy gate, sampling, sticky actions all
    seeded): the trained weights agree bit for bit; another seed gives other weights."""
    import io
    import zipfile

    def weights(folder):
        with zipfile.ZipFile(folder / "model.zip") as archive:
            return th.load(io.BytesIO(archive.read("policy.pth")), weights_only=True)

    runs = [run_transfer(_cfg(tmp_path, hub=str(tiny_hub), out=str(tmp_path / name), seed=seed), progress_bar=False, verbose=0)
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    a, b, c = (weights(r.folder) for r in runs)
    assert a.keys() == b.keys() and all(th.equal(a[k], b[k]) for k in a)
    assert any(not th.equal(a[k], c[k]) for k in a)


def test_source_by_game_name_runs_like_the_expert_name(tmp_path, tiny_hub, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run folder is relative: runs/<game>-<label>-<algo>-s<seed>
    result = run_transfer(_cfg(tmp_path, hub=str(tiny_hub), method="finetune", source="Seaquest", out=None, timesteps=64),
                          progress_bar=False, verbose=0)
    assert result.folder.name == "gopher-finetune-seaquest-ppo-ppo-s0"
    assert yaml.safe_load((result.folder / "config.yaml").read_text())["method"]["source"] == "seaquest-ppo"
    from hubrl.cli.common import parse_given
    from hubrl.cli.transfer import build_parser, transfer_config

    parser = build_parser("hubrl-transfer")  # resumed with the same flags, no --out: the same default folder
    args, given = parse_given(parser, ["--resume", "--env", "Gopher", "--method", "finetune", "--source", "Seaquest",
                                       "--hub", str(tiny_hub), "--timesteps", "128"])
    assert Path(transfer_config(parser, args, given).out).resolve() == result.folder.resolve()


def test_saved_source_name_maps_a_game_to_the_saved_hubs_expert():
    from hubrl.transfer import saved_source_name

    saved = {"hub": [{"name": "seaquest-ppo", "game": "seaquest"}, {"name": "riverraid-ppo", "game": "riverraid"}]}
    assert saved_source_name("Seaquest", saved) == "seaquest-ppo"
    assert saved_source_name("ALE/Riverraid-v5", saved) == "riverraid-ppo"
    assert saved_source_name("seaquest-ppo", saved) == "seaquest-ppo"
    assert saved_source_name("Alien", saved) == "Alien"  # no expert of that game: left for the resume check to refuse
    two = {"hub": saved["hub"] + [{"name": "seaquest-a2c", "game": "seaquest"}]}
    assert saved_source_name("Seaquest", two) == "Seaquest"  # ambiguous: not guessed


def test_resume_with_source_given_by_game_name(tmp_path, tiny_hub):
    """A finetune run started with --source Seaquest is saved as seaquest-ppo; resuming it with the
    same flags continues it instead of refusing a 'different' source."""
    from hubrl.cli.common import parse_given
    from hubrl.cli.transfer import build_parser, transfer_config

    out = tmp_path / "ft"
    run_transfer(_cfg(tmp_path, hub=str(tiny_hub), method="finetune", source="Seaquest", out=str(out), timesteps=64),
                 progress_bar=False, verbose=0)
    parser = build_parser("hubrl-transfer")
    args, given = parse_given(parser, ["--resume", "--out", str(out), "--method", "finetune", "--source", "Seaquest",
                                       "--timesteps", "128"])
    cfg = transfer_config(parser, args, given)
    assert cfg.source == "seaquest-ppo" and cfg.timesteps == 128
    args, given = parse_given(parser, ["--resume", "--out", str(out), "--source", "Riverraid"])
    with pytest.raises(UsageError, match="riverraid-ppo"):
        transfer_config(parser, args, given)


def test_a_run_holds_its_folder_lock_from_its_first_write_until_it_is_done(tmp_path):
    """Two processes on one run would overwrite each other's checkpoints: the run folder's lock is
    taken when the folder is made (a new run) and let go when the caller's ``with run:`` ends."""
    from hubrl.harness import RUN_LOCK_NAME, start_run
    from hubrl.locks import LockHeld, exclusive_lock

    run = start_run(_cfg(tmp_path), tmp_path / "run", verbose=0)
    with run:
        run.create_folder()
        with pytest.raises(LockHeld), exclusive_lock(tmp_path / "run" / RUN_LOCK_NAME):
            pass
    with exclusive_lock(tmp_path / "run" / RUN_LOCK_NAME):  # free again
        pass
    assert [p.name for p in (tmp_path / "run").iterdir()] == [RUN_LOCK_NAME]
    assert start_run(_cfg(tmp_path), tmp_path / "run", verbose=0).replaces is False  # the lock file alone is no run


def test_a_runs_hub_sources_and_tensorboard_folder_are_saved_absolute(tmp_path, monkeypatch):
    """Relative ``--hub``, ``--sources`` and ``--tensorboard-log`` mean relative to where the run
    starts; config.yaml saves them absolute, so the run resumed from another directory finds its
    experts and keeps logging where it did (the run folder itself may move: ``--out`` names it)."""
    from hubrl.harness import start_run

    monkeypatch.chdir(tmp_path)
    for settings, absolute in [
        (dict(hub="hub", tensorboard_log="logs/tb"),
         dict(hub=str(tmp_path / "hub"), tensorboard_log=str(tmp_path / "logs" / "tb"))),
        (dict(sources=["a.zip", "x/b.zip"]), dict(sources=[str(tmp_path / "a.zip"), str(tmp_path / "x" / "b.zip")])),
    ]:
        with start_run(_cfg(tmp_path, **settings), tmp_path / "run", verbose=0, force=True) as run:
            run.save_config()
        saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["run"]
        assert {name: saved[name] for name in absolute} == absolute


def test_a_new_run_in_a_folder_holding_another_runs_settings_is_told_so(tmp_path):
    """The default run folder names the game, method, algorithm and seed, not --top-k: a second run
    that differs there lands in the first one's folder. It is told what differs, to use another --out
    for itself, or ``--resume --out DIR`` alone (the saved settings; --resume with its own flags
    would refuse them in turn) to continue the other (a rerun after Ctrl-C that forgot a flag), and
    so is one with other experts (the shipped hub said so, not ``None``); the same settings again are
    offered --resume, and settings a resume may change (the budget, the device) are not a difference."""
    from hubrl.harness import start_run

    with start_run(_cfg(tmp_path, top_k=1), tmp_path / "run", verbose=0) as run:
        run.save_config()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")  # its first checkpoint: what --resume would continue
    with pytest.raises(UsageError) as refused:
        start_run(_cfg(tmp_path, top_k=2), tmp_path / "run", verbose=0, force=False)
    assert str(refused.value) == (f"Run folder {tmp_path / 'run'} already holds another run (--top-k 1 there, 2 here): "
                                  f"to continue that one, pass --resume --out {tmp_path / 'run'} (its own settings); to "
                                  "start this one, give it another --out, or --force to replace that one.")
    with pytest.raises(UsageError, match=r"another run \(--hub the shipped hub there, '/.*/elsewhere' here\)"):
        start_run(_cfg(tmp_path, top_k=1, hub=str(tmp_path / "elsewhere")), tmp_path / "run", verbose=0, force=False)
    with pytest.raises(UsageError, match=r"another run \(--sources \[\] there, \['/.*/a.zip'\] here\)"):
        start_run(_cfg(tmp_path, top_k=1, sources=["a.zip"]), tmp_path / "run", verbose=0, force=False)  # other experts
    with pytest.raises(UsageError, match=r"another run \(--hyperparams 'ent_coef: 0\.01' there, 'ent_coef: 0\.05' here\)"):
        start_run(_cfg(tmp_path, top_k=1, hyperparams={**TINY_PPO, "ent_coef": 0.05}), tmp_path / "run", verbose=0,
                  force=False)  # another value of a hyperparameter it overrides (one left to the preset is not compared)
    with pytest.raises(UsageError, match="already exists: pass --resume to continue it"):
        start_run(_cfg(tmp_path, top_k=1, timesteps=256, device="auto"), tmp_path / "run", verbose=0, force=False)
    assert start_run(_cfg(tmp_path, top_k=2), tmp_path / "run", verbose=0, force=True).replaces


def test_early_eval_step():
    from hubrl.training import early_eval_step

    assert early_eval_step(100_000, 100_000) == 10_000  # the README's quick start: a score after 10k steps
    assert early_eval_step(10_000_000, 250_000) == 25_000  # capped: minutes into a long run, not 1M steps
    assert early_eval_step(100_000, 5_000) is None  # the regular evaluation comes first anyway
    assert early_eval_step(5, 100) is None


@pytest.fixture
def played(monkeypatch):
    """Evaluations answer at once (step, games) instead of playing: for tests of when they come."""
    import hubrl.training
    from hubrl.evaluation import EvalResult

    calls = []

    def fake_evaluate(model, env, n_episodes=10, deterministic=False, seed=None, stop=None):
        calls.append((model.num_timesteps, n_episodes))
        return EvalResult(100.0 + len(calls), 10.0, n_episodes, [1.0] * n_episodes, [1] * n_episodes)

    monkeypatch.setattr(hubrl.training, "evaluate_model", fake_evaluate)
    return calls


@pytest.mark.slow
def test_early_evaluation_on_few_games_keeps_the_regular_schedule_and_resume(tmp_path, tiny_hub, played):
    cfg = dict(hub=str(tiny_hub), timesteps=256, eval_freq=128, eval_episodes=10)
    run_transfer(_cfg(tmp_path, out=str(tmp_path / "grid"), **cfg), progress_bar=False, verbose=0)
    assert played == [(128, 10), (256, 10)]  # off by default: a grid's evaluation points stay where they were
    played.clear()
    run_transfer(_cfg(tmp_path, early_eval=True, **{**cfg, "timesteps": 128}), progress_bar=False, verbose=0)
    assert played == [(12, 3), (128, 10)]  # 10% of the 128-step budget, 3 games; then every 128
    played.clear()
    run_transfer(_cfg(tmp_path, early_eval=True, **cfg), resume=True, progress_bar=False, verbose=0)
    assert played == [(256, 10)]  # resumed past it: no second early evaluation
    steps = [p["step"] for p in json.loads((tmp_path / "run" / "evaluations.json").read_text())["points"]]
    assert steps == [12, 128, 256]


@pytest.mark.slow
def test_resume_prints_where_it_starts_and_the_bar_counts_absolute_steps(tmp_path, tiny_hub, monkeypatch, capsys, played):
    import hubrl.training
    from hubrl.progress import StepProgressBar

    bars = []

    class Recorded(StepProgressBar):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(hubrl.training, "StepProgressBar", Recorded)
    run_transfer(_cfg(tmp_path, hub=str(tiny_hub)), progress_bar=False, verbose=0)
    capsys.readouterr()
    run_transfer(_cfg(tmp_path, hub=str(tiny_hub), timesteps=256), resume=True, progress_bar=True, verbose=1)
    out = capsys.readouterr().out
    assert f"Run folder: {tmp_path / 'run'}\n" in out and "Resuming at step 128 of 256\n" in out
    assert "Device cpu, 1 torch thread, fp32 encoders\n" in out
    (task,) = bars[0].progress.tasks
    assert (task.fields["initial"], task.completed, task.total) == (128, 256, 256)
    assert not bars[0].progress.live.is_started  # the terminal is released


def _png_size(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.format, image.size


@pytest.mark.slow
def test_every_run_draws_its_learning_curve_and_plot_redraws_it(tmp_path, tiny_hub, played):
    hub_run = run_transfer(_cfg(tmp_path, hub=str(tiny_hub), eval_freq=64), progress_bar=False, verbose=0).folder
    scratch = run_transfer(_cfg(tmp_path, method="scratch", out=str(tmp_path / "scratch")), progress_bar=False,
                           verbose=0).folder
    assert _png_size(hub_run / "learning_curve.png") == ("PNG", (768, 768))  # scores + gate usage panels
    assert _png_size(scratch / "learning_curve.png") == ("PNG", (768, 504))  # no gates: scores only
    (hub_run / "learning_curve.png").unlink()
    result = run_script("transfer.py", "--plot", "--out", str(hub_run), timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == str(hub_run / "learning_curve.png"), result.stderr
    assert _png_size(hub_run / "learning_curve.png") == ("PNG", (768, 768))
    result = run_script("transfer.py", "--plot", "--out", str(tmp_path / "nothing"), timeout=120)
    assert result.returncode == 2 and "is not a transfer run folder" in result.stderr


def test_learning_curve_reads_scores_and_gates_of_every_session(tmp_path):
    """The curve's data: TensorBoard tags of all sessions (a resume logs a new one), per-expert gate
    statistics only, and gates.jsonl over TensorBoard where the run wrote one."""
    from torch.utils.tensorboard import SummaryWriter

    from hubrl.grid import tensorboard_series
    from hubrl.plots import _is_gate_tag, _run_gate_series, _run_tensorboard_dirs

    folder = tmp_path / "run"
    for session, steps in (("Gopher-hub-pathway_1", (10, 20)), ("Gopher-hub-pathway_2", (20, 30))):
        writer = SummaryWriter(str(folder / "tb" / session))
        for step in steps:
            writer.add_scalar("rollout/ep_rew_mean", step + len(session), step)
            writer.add_scalar("pathway/selection_freq/seaquest-ppo", 0.5, step)
            writer.add_scalar("pathway/noise_std", 0.3, step)  # gate diagnostics, not an expert's usage
            writer.add_scalar("pathway/logit_mean/seaquest-ppo", 3.0, step)
            writer.add_scalar("train/loss", 1.0, step)
        writer.close()
    series = tensorboard_series(_run_tensorboard_dirs(folder, {"env": "Gopher", "method": "hub-pathway"}),
                                lambda t: t == "rollout/ep_rew_mean" or _is_gate_tag(t))
    assert set(series) == {"rollout/ep_rew_mean", "pathway/selection_freq/seaquest-ppo"}
    steps, values = series["rollout/ep_rew_mean"]
    assert steps.tolist() == [10, 20, 30] and values.tolist() == [30, 40, 50]  # step 20: the resumed session's value
    gates = _run_gate_series(folder, series)
    assert list(gates) == ["selection_freq/seaquest-ppo"] and gates["selection_freq/seaquest-ppo"][0].tolist() == [10, 20, 30]
    (folder / "gates.jsonl").write_text('{"step": 8, "selection_freq/a": 0.25, "weight_mean/a": 0.5, "noise_std": 0.3}\n')
    gates = _run_gate_series(folder, series)
    assert sorted(gates) == ["selection_freq/a", "weight_mean/a"] and gates["weight_mean/a"][1].tolist() == [0.5]


def test_a_run_stopped_before_any_score_has_no_curve_yet(tmp_path, capsys):
    from hubrl.plots import NothingToPlot, plot_run_curve
    from hubrl.transfer import _plot

    (tmp_path / "config.yaml").write_text("run: {env: Alien, method: scratch}\n")
    with pytest.raises(NothingToPlot, match="nothing to plot yet"):
        plot_run_curve(tmp_path)
    _plot(tmp_path, verbose=1)
    assert capsys.readouterr().out == "No learning curve yet: no evaluation and no finished game so far.\n"


@pytest.mark.parametrize("settings, warned", [
    ({"top_k": 2}, "switch"),  # the default switch loss with every expert running: inert
    ({"top_k": 1}, None),
    ({"top_k": 2, "exploration_loss": "importance-load"}, None),
    ({"top_k": 2, "exploration_coef": 0.0}, None),  # asked for no balancing
    ({"noise": "learned"}, "learned"),  # nothing would train the std
    ({"noise": "learned", "exploration_loss": "entropy", "noise_floor": 0.5}, "learned"),
    ({"noise": "learned", "exploration_loss": "importance-load", "exploration_coef": 0.0}, "learned"),
    ({"noise": "learned", "exploration_loss": "importance-load"}, None),
    ({"noise": "learned", "exploration_loss": "importance-load", "top_k": 2}, "learned-all"),  # no load term at k = K
    ({"freeze_experts": True}, "frozen"),  # the exploitation loss could train only heads that never act
    ({"freeze_experts": True, "exploitation_coef": 0.0}, None),
    ({"freeze_experts": True, "aggregation": "heads"}, None),  # the experts' heads are the acting policy
    ({"aggregation": "features"}, None),  # unfrozen: the loss trains the experts' encoders, which act
    ({"noise_floor": 0.5}, "floor"),  # the floor is added to a learned std only: at the fixed default noise, not read
    ({"top_k": 2, "exploration_loss": "importance-load", "k1_weight": "prob"}, "k1"),  # a k = 1 setting at k = 2
    ({"top_k": 2, "exploration_loss": "importance-load"}, None),
])
def test_settings_that_do_less_than_asked_warn_in_one_line(tmp_path, settings, warned):
    from hubrl.hub import load_hub
    from hubrl.methods import plan_method

    hub = load_hub(make_tiny_hub(tmp_path / "hub"))
    assert len(hub) == 2
    plan = plan_method(_cfg(tmp_path, method="hub-pathway", **settings), hub, "gopher")
    if warned == "switch":
        (notice,) = plan.warnings
        assert "--top-k 2" in notice and "constant" in notice and "--exploration-loss importance-load" in notice
    elif warned == "learned":
        (notice,) = plan.warnings
        from hubrl.transfer import DEFAULT_NOISE_FLOOR

        start = f"{0.6931 + settings.get('noise_floor', DEFAULT_NOISE_FLOOR):.2f}"  # softplus(0) + floor
        assert notice.startswith("--noise learned: only the importance-load") and f"stays at its start, {start}" in notice
        assert notice.endswith(f"--exploration-loss importance-load, or a fixed --noise {start}.")
    elif warned == "frozen":
        (notice,) = plan.warnings
        assert notice.startswith("--freeze-experts with --aggregation features: the exploitation loss")
        assert notice.endswith("use --exploitation-coef 0, or --aggregation heads, where those heads act.")
    elif warned == "learned-all":
        (notice,) = plan.warnings
        assert notice.startswith("--noise learned: only the importance-load") and "--top-k 2, every expert" in notice
        assert notice.endswith("use a --top-k below 2, or a fixed --noise 0.99.")  # softplus(0) + the default floor
    elif warned == "floor":
        (notice,) = plan.warnings
        assert notice.startswith("--noise-floor 0.5 is added to a learned noise std") and "give --noise learned" in notice
    elif warned == "k1":
        (notice,) = plan.warnings
        assert notice.startswith("--k1-weight prob sets the selected expert's weight at --top-k 1") and "drop it" in notice
    else:
        assert plan.warnings == []


def test_hub_pathway_on_a_one_expert_hub_says_it_is_a_fine_tune(tmp_path):
    from hubrl.hub import Hub, load_hub
    from hubrl.methods import plan_method

    hub = Hub(load_hub(make_tiny_hub(tmp_path / "hub")).experts[:1])
    plan = plan_method(_cfg(tmp_path, method="hub-pathway"), hub, "gopher")
    (notice,) = plan.warnings  # not the switch loss's notice: there is nothing to balance
    assert notice.startswith(f"The hub has one expert ({hub.names[0]})") and "--method finetune" in notice
    learned = _cfg(tmp_path, method="hub-pathway", noise="learned", exploration_loss="importance-load")
    assert plan_method(learned, hub, "gopher").warnings == [notice]  # not "use a --top-k below 1"


def test_a_resumed_lite_run_keeps_the_moving_average_momentum_it_ran_with(tmp_path):
    """Lite's momentum went from 0.99 to 0.9 (8581b24); a lite run resumed across that change kept
    training at the new one, unrecorded. It is recorded in the method notes now, and a resumed run
    keeps its own (0.99 for a run that recorded none)."""
    from hubrl.hub import load_hub
    from hubrl.methods import plan_method

    hub = load_hub(make_tiny_hub(tmp_path / "hub"))
    lite = _cfg(tmp_path, method="zoo-tuning", lite=True)
    fresh = plan_method(lite, hub, "gopher")
    assert fresh.policy_kwargs["ema_momentum"] == 0.9 and fresh.notes["ema_momentum"] == 0.9
    assert plan_method(lite, hub, "gopher", previous={"lite": True}).policy_kwargs["ema_momentum"] == 0.99
    assert plan_method(lite, hub, "gopher", previous=fresh.notes).policy_kwargs["ema_momentum"] == 0.9
    assert "ema_momentum" not in plan_method(_cfg(tmp_path, method="zoo-tuning"), hub, "gopher").policy_kwargs


def test_zoo_tuning_on_a_one_expert_hub_says_it_does_not_start_as_the_expert(tmp_path):
    from hubrl.hub import Hub, load_hub
    from hubrl.methods import plan_method

    hub = Hub(load_hub(make_tiny_hub(tmp_path / "hub")).experts[:1])
    (notice,) = plan_method(_cfg(tmp_path, method="zoo-tuning"), hub, "gopher").warnings
    assert notice.startswith(f"The hub has one expert ({hub.names[0]})") and "--method finetune" in notice
    assert plan_method(_cfg(tmp_path, method="zoo-tuning"), load_hub(tmp_path / "hub"), "gopher").warnings == []


@pytest.mark.slow
def test_the_transfer_prints_the_plans_warnings(tmp_path, tiny_hub, capsys):
    run_transfer(_cfg(tmp_path, hub=str(tiny_hub), top_k=2, timesteps=64), progress_bar=False, verbose=0)
    err = capsys.readouterr().err
    assert err.count("warning: --top-k 2 runs every expert") == 1


@pytest.mark.slow
def test_the_pausing_command_given_again_says_nothing_was_trained(tmp_path, capsys):
    """``--pause-at`` at or below the steps already done trains nothing: the command says so, rather
    than 'Paused at ...; checkpoint saved' as if it had trained up to the pause."""
    from hubrl.cli.transfer import main

    run = ["--env", "Gopher", "--method", "scratch", "--n-envs", "1", "--timesteps", "512", "--pause-at", "128",
           "--device", "cpu", "--no-progress-bar", "--no-early-eval", "--eval-episodes", "1", "--out", str(tmp_path / "run")]
    assert main(run) == 0
    assert "Paused at 128 of 512 steps (--pause-at); checkpoint saved." in capsys.readouterr().out
    assert main([*run, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "Already at 128 of 512 steps, at or past --pause-at 128: nothing to train. Continue with: " in out
    assert "Paused at" not in out


@pytest.mark.slow
def test_the_console_says_what_the_gate_did_at_each_evaluation(tmp_path, tiny_hub, capsys, monkeypatch):
    """A ``[gate]`` line at each evaluation (the first rollout end at or past each evaluation step),
    naming every expert's share, so routing (or its collapse) shows without TensorBoard; none with
    verbose 0, and a resumed run goes on at the next multiple. (Evaluations stubbed: their games are
    not what this checks.)"""
    import re

    import hubrl.training
    from hubrl.evaluation import EvalResult

    monkeypatch.setattr(hubrl.training, "evaluate_model",
                        lambda model, env, n, seed=None, stop=None: EvalResult(1.0, 0.0, n, [1.0] * n, [1] * n))
    cfg = dict(hub=str(tiny_hub), timesteps=256, eval_freq=128)
    run_transfer(_cfg(tmp_path, **cfg), progress_bar=False, verbose=1, pause_at=128)
    run_transfer(_cfg(tmp_path, **cfg), resume=True, progress_bar=False, verbose=1)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("[gate]", "[eval]"))]
    assert sorted(line.split(":")[0] for line in lines) == ["[eval] step 128", "[eval] step 256", "[gate] step 128",
                                                           "[gate] step 256"], lines  # the budget's comes before its eval
    for line in (line for line in lines if line.startswith("[gate]")):
        shares = [float(x) for x in re.findall(r"(?:seaquest|riverraid)-ppo (\d\.\d\d)[ ,]", line)]
        assert len(shares) == 2 and sum(shares) == pytest.approx(1.0, abs=0.011) and "of the states; logit spread" in line
    run_transfer(_cfg(tmp_path, **cfg, out=str(tmp_path / "quiet")), progress_bar=False, verbose=0)
    assert "[gate]" not in capsys.readouterr().out


def test_the_gate_line_of_a_soft_gate_gives_mean_weights():
    from hubrl.callbacks import gate_summary

    row = {"step": 2048, "weight_mean/seaquest-ppo": 0.912, "weight_mean/riverraid-ppo": 0.875}
    assert gate_summary(row) == "[gate] step 2048: seaquest-ppo 0.91, riverraid-ppo 0.88 mean gate weight"
    row = {"step": 64, "selection_freq/a": 1.0, "selection_freq/b": 0.0, "weight_mean/a": 1.0, "logit_spread": 7.391,
           "noise_std": 1.0}
    assert gate_summary(row) == "[gate] step 64: a 1.00, b 0.00 of the states; logit spread 7.39, noise std 1.00"
    # top-2 of 2 experts: every state selects both (1.00 each, whatever the gate does); its weights say where it routes
    row = {"step": 64, "selection_freq/a": 1.0, "selection_freq/b": 1.0, "weight_mean/a": 0.8, "weight_mean/b": 0.2}
    assert gate_summary(row) == "[gate] step 64: a 0.80, b 0.20 mean gate weight"
