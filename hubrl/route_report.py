"""``routes.md`` of a grid: :mod:`hubrl.route_analysis` on every k = 1 Hub-Pathway trial's ``model.zip``.

The grid report (:mod:`hubrl.report`) is made from the records a trial writes and needs no
weights; this one loads each trial's saved agent, plays its game and compares its routes, so it
runs where the weights are (``hubrl-bench routes ROOT``) and its ``routes.md`` is then linked
from the report. A trial whose files cannot be used is left out, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch as th

from hubrl.errors import HubrlError, UsageError
from hubrl.route_analysis import RouteDivergence, collect_states, route_divergence

__all__ = ["trial_route_divergence", "grid_route_divergence", "write_routes"]


def trial_route_divergence(folder: str | Path, n_states: int = 512, seed: int = 0) -> tuple[RouteDivergence, int]:
    """:func:`route_divergence` of a run folder's ``model.zip`` (a grid trial, a transfer run) on
    ``n_states`` states of its own play of the run's game; with the agent steps the model has."""
    from hubrl.enjoy import load_player

    player = load_player(Path(folder))  # a run folder's player is its SB3 agent
    policy = getattr(player.policy, "policy", None)
    if not hasattr(policy, "route_shape"):
        raise UsageError(f"{folder}: its policy does not route (route divergence is for hub-pathway runs).")
    states = collect_states(player.policy, player.game, n_states, seed=seed)
    divergence = route_divergence(policy.eval(), th.as_tensor(states, device=policy.device), seed=seed)
    return divergence, int(player.policy.num_timesteps)


def grid_route_divergence(root: str | Path, methods: Sequence[str] | None = None, n_states: int = 512,
                          seed: int = 0, skipped: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per trial of a grid whose ``model.zip`` routes at k = 1 (``hub-pathway`` arms,
    whatever their label; ``methods`` keeps only those labels): game, method, seed, step and
    :class:`RouteDivergence`'s fields, ``share/<expert>`` noise-free and ``acting/<expert>``.

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
            divergence, step = trial_route_divergence(folder, n_states, seed)
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
        rows.append(row)
    return rows


def write_routes(root: str | Path, out: str | Path | None = None, methods: Sequence[str] | None = None,
                 n_states: int = 512, seed: int = 0) -> tuple[Path, list[dict[str, Any]], dict[str, str]]:
    """Write ``routes.md`` and ``routes.csv`` of the grid in ``root`` to ``out`` (default
    ``<root>/report``); return the path of ``routes.md``, its rows and the trials left out (folder -> why).

    :raises UsageError: when ``root`` is no folder, or no trial could be measured.
    """
    from hubrl.tables import routes_markdown, write_csv

    if not Path(root).is_dir():
        raise UsageError(f"No grid at {root}: give the --root of a grid run.")
    skipped: dict[str, str] = {}
    rows = grid_route_divergence(root, methods, n_states, seed, skipped=skipped)
    if not rows:
        raise UsageError(f"{root} has no k=1 hub-pathway trial with a usable model.zip"
                         + (f" among {', '.join(methods)}" if methods else "")
                         + (f" ({len(skipped)} left out: " + "; ".join(f"{f}: {w}" for f, w in skipped.items()) + ")"
                            if skipped else "") + ".")
    out = Path(out) if out else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "routes.csv", rows)
    text = (f"# What the route changes\n\n`hubrl-bench routes {root} --states {n_states} --seed {seed}`: "
            "each trial's `model.zip` plays its game (sampled actions); on those states every state is routed to each "
            "expert in turn and the policies compared (`hubrl.route_analysis`). Shares: the states each expert gets "
            "noise-free (evaluation) / with the acting gate noise.\n\n" + routes_markdown(rows) + "\n"
            + "".join(f"\nLeft out: `{folder}`: {why}\n" for folder, why in skipped.items()))
    path = out / "routes.md"
    path.write_text(text)
    return path, rows, skipped
