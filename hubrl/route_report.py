"""``routes.md`` of a grid: :mod:`hubrl.route_analysis` on every k = 1 Hub-Pathway trial's ``model.zip``.

The grid report (:mod:`hubrl.report`) is made from the records a trial writes and needs no
weights; this one loads each trial's saved agent, plays its game and compares its routes, so it
runs where the weights are (``hubrl-bench routes ROOT``) and its ``routes.md`` is then linked
from the report. A trial whose files cannot be used is left out, with the reason.

With ``play_games`` each agent also plays that many whole games noise-free (as the grid's
evaluations do) and as many with the gate noise it acted with in training
(:func:`hubrl.policies.predict_with_gate_noise`), on the same game seeds: whether the scores
the report compares measure the policy that PPO trained. Per game the difference of the pooled
game scores gets a bootstrap CI (:func:`hubrl.stats.difference_ci`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch as th

from hubrl.atomic import atomic_write_text
from hubrl.errors import HubrlError, UsageError
from hubrl.route_analysis import RouteDivergence, collect_states, route_divergence

__all__ = ["PLAY_MODES", "trial_route_divergence", "grid_route_divergence", "gate_noise_scores", "write_routes"]


#: What :func:`trial_route_divergence` plays with ``play_games``: label -> gate noise in ``predict``.
PLAY_MODES = {"noise-free": False, "acting": True}
VERDICTS = {"win": "acting higher", "loss": "noise-free higher", "tie": "tie", "n/a": "n/a"}


def trial_route_divergence(folder: str | Path, n_states: int = 512, seed: int = 0,
                           play_games: int = 0) -> tuple[RouteDivergence, int, dict[str, list[float]]]:
    """:func:`route_divergence` of a run folder's ``model.zip`` (a grid trial, a transfer run) on
    ``n_states`` states of its own play of the run's game; with the agent steps the model has and,
    for ``play_games`` > 0, the raw scores of that many games in each of :data:`PLAY_MODES`
    (game seeds ``seed``, ``seed + 1``, ...; the same for both modes)."""
    from hubrl.enjoy import load_player, play

    player = load_player(Path(folder))  # a run folder's policy, rebuilt from its model.zip as weights only
    policy = player.policy
    if not hasattr(policy, "route_shape"):
        raise UsageError(f"{folder}: its policy does not route (route divergence is for hub-pathway runs).")
    states = collect_states(player.policy, player.game, n_states, seed=seed)
    divergence = route_divergence(policy.eval(), th.as_tensor(states, device=policy.device), seed=seed)
    scores: dict[str, list[float]] = {}
    for mode, gate_noise in PLAY_MODES.items() if play_games > 0 else ():  # play seeds game and actions alike
        scores[mode] = [play(player, episodes=1, seed=seed + game, gate_noise=gate_noise).scores[0]
                        for game in range(play_games)]
    return divergence, int(player.trained_steps or 0), scores


def grid_route_divergence(root: str | Path, methods: Sequence[str] | None = None, n_states: int = 512,
                          seed: int = 0, skipped: dict[str, str] | None = None, play_games: int = 0) -> list[dict[str, Any]]:
    """One row per trial of a grid whose ``model.zip`` routes at k = 1 (``hub-pathway`` arms,
    whatever their label; ``methods`` keeps only those labels): game, method, seed, step and
    :class:`RouteDivergence`'s fields, ``share/<expert>`` noise-free and ``acting/<expert>``; with
    ``play_games``, ``score/<mode>`` (mean) and ``scores/<mode>`` (each game) per :data:`PLAY_MODES`.

    A trial whose ``model.zip`` or ``config.yaml`` cannot be used is left out, its folder and the
    reason put in ``skipped`` (when given), so one damaged trial does not stop the table.
    """
    from hubrl.grid import iter_trial_folders, read_yaml_object

    rows = []
    for folder in iter_trial_folders(root):
        game, method = folder.parent.parent.name, folder.parent.name
        if methods and method not in methods:
            continue
        config = read_yaml_object(folder / "config.yaml") or {}
        run = config.get("run") or {}
        if run.get("method") != "hub-pathway" or run.get("top_k", 1) != 1 or not (folder / "model.zip").is_file():
            continue
        try:
            divergence, step, scores = trial_route_divergence(folder, n_states, seed, play_games)
        except HubrlError as exc:
            if skipped is not None:
                skipped[str(folder)] = str(exc)
            continue
        row: dict[str, Any] = {"game": game, "method": method, "seed": int(folder.name[1:]), "step": step}
        row.update({k: v for k, v in divergence.to_dict().items() if not k.endswith("_share")})
        names = [str(e.get("name", i)) for i, e in enumerate(config.get("hub") or []) if isinstance(e, dict)]
        if len(names) != len(divergence.clean_share):
            names = [str(i) for i in range(len(divergence.clean_share))]
        row.update({f"share/{n}": v for n, v in zip(names, divergence.clean_share)})
        row.update({f"acting/{n}": v for n, v in zip(names, divergence.acting_share)})
        for mode, values in scores.items():
            row[f"score/{mode}"] = sum(values) / len(values)
            row[f"scores/{mode}"] = " ".join(f"{v:g}" for v in values)
        rows.append(row)
    return rows


def gate_noise_scores(rows: Sequence[dict[str, Any]], reps: int = 20_000, confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per game (and method) of :func:`grid_route_divergence` rows with scores: trials, games per
    mode, mean score noise-free and acting, and acting minus noise-free over the pooled games with
    its bootstrap CI and verdict: ``acting higher``, ``noise-free higher`` (CI excludes 0) or ``tie``."""
    from hubrl.stats import difference_ci, verdict

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if "scores/acting" in row:
            groups.setdefault((row["game"], row["method"]), []).append(row)
    table = []
    for (game, method), trials in groups.items():
        pooled = {mode: [float(v) for t in trials for v in str(t[f"scores/{mode}"]).split()] for mode in PLAY_MODES}
        point, low, high = difference_ci(pooled["acting"], pooled["noise-free"], reps=reps, confidence=confidence)
        table.append({"game": game, "method": method, "trials": len(trials), "games": len(pooled["acting"]),
                      "noise_free": sum(pooled["noise-free"]) / len(pooled["noise-free"]),
                      "acting": sum(pooled["acting"]) / len(pooled["acting"]), "difference": point, "low": low,
                      "high": high, "verdict": VERDICTS[verdict(low, high, len(pooled["acting"]))]})
    return table


def write_routes(root: str | Path, out: str | Path | None = None, methods: Sequence[str] | None = None,
                 n_states: int = 512, seed: int = 0, play_games: int = 0) -> tuple[Path, list[dict[str, Any]], dict[str, str]]:
    """Write ``routes.md`` and ``routes.csv`` of the grid in ``root`` to ``out`` (default
    ``<root>/report``); return the path of ``routes.md``, its rows and the trials left out (folder -> why).
    ``play_games``: also score each agent noise-free and with its acting gate noise (module docstring).

    :raises UsageError: when ``root`` is no folder, or no trial could be measured.
    """
    from hubrl.tables import gate_noise_markdown, routes_markdown, write_csv

    if not Path(root).is_dir():
        raise UsageError(f"No grid at {root}: give the --root of a grid run.")
    skipped: dict[str, str] = {}
    rows = grid_route_divergence(root, methods, n_states, seed, skipped=skipped, play_games=play_games)
    if not rows:
        raise UsageError(f"{root} has no k=1 hub-pathway trial with a usable model.zip"
                         + (f" among {', '.join(methods)}" if methods else "")
                         + (f" ({len(skipped)} left out: " + "; ".join(f"{f}: {w}" for f, w in skipped.items()) + ")"
                            if skipped else "") + ".")
    out = Path(out) if out else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "routes.csv", rows)
    command = f"hubrl-bench routes {root} --states {n_states} --seed {seed}" + (f" --play {play_games}" if play_games else "")
    scores = gate_noise_scores(rows)
    text = (f"# What the route changes\n\n`{command}`: "
            "each trial's `model.zip` plays its game (sampled actions); on those states every state is routed to each "
            "expert in turn and the policies compared (`hubrl.route_analysis`). Shares: the states each expert gets "
            "noise-free (evaluation) / with the acting gate noise.\n\n" + routes_markdown(rows) + "\n"
            + ("\n## Scores noise-free and with the acting gate noise\n\nEach agent played the same game seeds "
               "noise-free (as the grid's evaluations) and routing every state with a fresh draw of the gate noise it "
               "acted with in training; acting minus noise-free over the pooled games of a game's trials, 95% "
               "bootstrap CI.\n\n" + gate_noise_markdown(scores) + "\n" if scores else "")
            + "".join(f"\nLeft out: `{folder}`: {why}\n" for folder, why in skipped.items()))
    path = out / "routes.md"
    atomic_write_text(path, text)
    return path, rows, skipped
