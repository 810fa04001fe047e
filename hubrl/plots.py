"""Figures: learning curves, routing and IQM plots of a grid report, and the learning curve of one run.

* :func:`plot_curves`, :func:`plot_routing`, :func:`plot_aggregate`: the PNGs of a grid report
  (:mod:`hubrl.report`), one per game or one for all;
* :func:`plot_run_curve`: one transfer run's evaluations, training games and gate usage
  (``scripts/transfer.py --plot``, and a run's ``learning_curve.png`` when it ends);
* :func:`plot_expert_curve`: one pretrained expert's curve (``scripts/pretrain_sources.py --plot``).

Figures use matplotlib's object API (``matplotlib.figure.Figure``: no pyplot state, rendered with
Agg), imported inside the functions, so importing this module stays cheap. Curves are read from
the run folders (:mod:`hubrl.grid` readers, ``gates.jsonl``, TensorBoard events); the curve bands
are bootstrap intervals from :mod:`hubrl.stats`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hubrl.errors import UsageError
from hubrl.grid import TrialResult, read_json_object, read_yaml_object, tensorboard_scalars, tensorboard_series
from hubrl.stats import bootstrap_curve_band

__all__ = [
    "GATE_PREFIXES",
    "GATE_STATISTICS",
    "NothingToPlot",
    "plot_curves",
    "plot_routing",
    "plot_aggregate",
    "plot_run_curve",
    "plot_expert_curve",
]


class NothingToPlot(UsageError):
    """A run folder without an evaluation or a finished training game yet (e.g. stopped in its first minutes)."""


# ----------------------------------------------------------------------------- grid report


def _plot_steps(trial: TrialResult) -> np.ndarray:
    """``trial``'s evaluation steps, with a last one that lies within a rollout past the trial's end
    (its stage, else its budget) put at that end.

    A run ends at the first rollout boundary at or past its budget, and where that falls depends on
    where a resume restarted the rollouts: one seed's final evaluation is at 1,000,448, another's at
    1,000,736. On the union of the seeds' steps each would be a point of its own, the mean curve
    ending in a zigzag of single seeds; the report already counts such an evaluation as the end's
    (:func:`hubrl.grid.points_at_stage`).
    """
    steps = trial.steps.astype(np.int64, copy=True)
    end = trial.stage or trial.budget
    if (end and trial.rollout > 0 and steps.size and end < steps[-1] < end + trial.rollout
            and (steps.size == 1 or steps[-2] < end)):  # not onto an evaluation already at the end
        steps[-1] = end
    return steps


def _curve_matrix(group: Sequence[TrialResult]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' curves on the union of their steps (interpolated inside each seed's range, NaN outside);
    each seed's last evaluation at its end (:func:`_plot_steps`)."""
    steps = [_plot_steps(t) for t in group]
    grid = np.unique(np.concatenate(steps))
    curves = np.full((len(group), grid.size), np.nan)
    for i, (t, at) in enumerate(zip(group, steps)):
        inside = (grid >= at[0]) & (grid <= at[-1])
        curves[i, inside] = np.interp(grid[inside], at, t.means)
    return grid, curves


def plot_curves(trials: Sequence[TrialResult], out: Path, reps: int = 2000, seed: int = 0) -> list[Path]:
    """One PNG per game: every method's mean curve over seeds with its bootstrap band (all trials with evaluations).

    The band is a percentile bootstrap of the seeds at each step, nominally 95%: with 3 seeds it covers
    less (resampling 3 values cannot show how far a 4th may fall; :func:`hubrl.stats.welch_difference_ci`),
    so the title says so and the verdicts come from Welch intervals, not from the bands."""
    from matplotlib.figure import Figure  # object API: no pyplot state, renders with Agg

    by_game: dict[str, dict[str, list[TrialResult]]] = {}
    for t in sorted(trials, key=lambda t: (t.game, t.method, t.seed)):
        if t.steps.size:
            by_game.setdefault(t.game, {}).setdefault(t.method, []).append(t)
    paths = []
    for game, methods in by_game.items():
        fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
        ax = fig.subplots()
        for method, group in methods.items():
            grid, curves = _curve_matrix(group)
            with np.errstate(invalid="ignore"):
                mean = np.nanmean(curves, axis=0)
            (line,) = ax.plot(grid, mean, marker="o", markersize=3,
                              label=f"{method} ({len(group)} seed{'s' * (len(group) > 1)})")
            low, high = bootstrap_curve_band(curves, reps=reps, seed=seed)
            if not np.all(np.isnan(low)):
                ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        title = f"{game}: evaluation score, mean over seeds\n(band: percentile bootstrap, under 95% with few seeds)"
        paths.append(_save_step_plot(fig, ax, title,
                                     "raw game score", out / f"curves_{game}.png", "small"))
    return paths


def _save_step_plot(fig: Any, ax: Any, title: str, ylabel: str, path: Path, legend_size: str) -> Path:
    """Title, axes labels (x: agent steps), grid and legend of a per-game plot; saved to ``path``."""
    ax.set_title(title)
    ax.set_xlabel("agent steps")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.savefig(path)
    return path


def plot_routing(trials: Sequence[TrialResult], out: Path, stage: int | None = None) -> list[Path]:
    """One PNG per game: each routed trial's selection share of each expert (but the last) per rollout
    (a soft gate's, Zoo-Tuning's, or a top-k gate's with k >= 2: its mean weight, see
    :func:`hubrl.callbacks.gate_shares`)."""
    from matplotlib.figure import Figure

    from hubrl.callbacks import gate_shares, read_gate_history

    by_game: dict[str, list[tuple[TrialResult, list[dict[str, Any]]]]] = {}
    for t in sorted(trials, key=lambda t: (t.game, t.method, t.seed)):
        history = [r for r in read_gate_history(t.folder / "gates.jsonl") if stage is None or r["step"] <= stage]
        if history:
            by_game.setdefault(t.game, []).append((t, history))
    paths = []
    for game, runs in by_game.items():
        fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
        ax = fig.subplots()
        soft = False
        for t, history in runs:
            statistic, experts = gate_shares(history[0])  # a soft gate (Zoo-Tuning): its mean weights
            soft |= statistic != "selection_freq"  # a soft gate, or top-k at k >= 2 (selection 1.0 at k = K)
            steps = [r["step"] for r in history]
            for name in sorted(experts)[:-1]:
                ax.plot(steps, [r.get(f"{statistic}/{name}", np.nan) for r in history], linewidth=0.8,
                        label=f"{t.method} s{t.seed}: {name}" + ("" if statistic == "selection_freq" else " (weight)"))
        ax.axhline(0.5, color="grey", linewidth=0.5, linestyle=":")
        ax.set_ylim(-0.02, 1.02)
        paths.append(_save_step_plot(fig, ax, f"{game}: share of states routed to an expert, per rollout"
                                     + (" (marked weight: mean gate weight)" if soft else ""),
                                     "selection frequency" + (" / mean gate weight" if soft else ""),
                                     out / f"routing_{game}.png", "x-small"))
    return paths


def plot_aggregate(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Horizontal IQM bars with their CIs, rliable style (None when no method has HNS)."""
    if not rows:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 0.6 * len(rows) + 1.2), dpi=120, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))
    points = np.array([r["iqm_hns"] for r in rows])
    errors = np.nan_to_num(  # no CI (one run per game): no error bar
        np.array([[r["iqm_hns"] - r["iqm_low"] for r in rows], [r["iqm_high"] - r["iqm_hns"] for r in rows]]))
    ax.barh(y, points, xerr=errors, capsize=4, alpha=0.8)
    ax.set_yticks(y, [r["method"] for r in rows])
    ax.set_xlabel("IQM of human-normalised score (95% stratified bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- single runs


def _expert_eval_points(run_folder: Path) -> list[dict[str, Any]]:
    """Evaluation points of a run: ``evaluations.json``, else the checkpoint's copy."""
    if (run_folder / "evaluations.json").is_file():
        return list((read_json_object(run_folder / "evaluations.json") or {}).get("points", []))
    from hubrl.checkpoint import load_training_checkpoint

    return list(load_training_checkpoint(run_folder / "checkpoint.pt").get("extra", {}).get("eval_history", []))


def plot_expert_curve(run_folder: str | Path, path: str | Path | None = None) -> Path:
    """Learning curve of one expert's pretraining run: training episodes' raw score and evaluations.

    Reads ``<run>/tb`` (``rollout/ep_rew_mean``, every resume included) and the evaluation
    history in ``<run>``; writes ``<run>/learning_curve.png`` unless ``path`` says.

    :raises NothingToPlot: before a first evaluation or finished training game (nothing is written).
    """
    from matplotlib.figure import Figure

    folder = Path(run_folder)
    if not (folder / "checkpoint.pt").is_file() and not (folder / "evaluations.json").is_file():
        raise UsageError(f"{folder} has no training history (evaluations.json or checkpoint.pt of a pretraining run).")
    steps, values = (tensorboard_scalars(folder / "tb", "rollout/ep_rew_mean") if (folder / "tb").is_dir()
                     else (np.array([]), np.array([])))
    evals = _expert_eval_points(folder)
    if not evals and not steps.size:  # an empty chart says less than this
        raise NothingToPlot(f"{folder} has nothing to plot yet: no evaluation and no finished training game "
                            "(rollout/ep_rew_mean).")
    fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
    ax = fig.subplots()
    if steps.size:
        ax.plot(steps, values, linewidth=1, alpha=0.7, label="training games (rollout/ep_rew_mean, last 100)")
    if evals:
        x = np.array([p["step"] for p in evals])
        mean, std = np.array([p["mean"] for p in evals]), np.array([p["std"] for p in evals])
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=f"evaluation ({evals[-1]['episodes']} games, mean ± std)")
    ax.set_title(f"{folder.name}: raw game score (sticky actions 0.25)")
    ax.set_xlabel("agent steps")
    ax.set_ylabel("raw game score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    out = Path(path) if path else folder / "learning_curve.png"
    fig.savefig(out)
    return out


GATE_PREFIXES = ("pathway/", "zoo/")  # per-expert gate tags of Hub-Pathway and Zoo-Tuning (hubrl.callbacks)
GATE_STATISTICS = ("selection_freq", "weight_mean")  # the per-expert ones: <prefix>/<statistic>/<expert>


def _is_gate_tag(tag: str) -> bool:
    """``<prefix>/<statistic>/<expert>``: one expert's gate usage (not a gate-wide diagnostic such as ``noise_std``)."""
    parts = tag.split("/")
    return len(parts) == 3 and parts[0] + "/" in GATE_PREFIXES and parts[1] in GATE_STATISTICS


def _run_gate_series(
    folder: Path, tensorboard: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-expert gate usage of a run as ``{"<statistic>/<expert>": (steps, values)}``: from
    ``gates.jsonl`` where the run wrote one (it outlives deleted TensorBoard logs), else from the
    ``<prefix>/<statistic>/<expert>`` TensorBoard tags."""
    from hubrl.callbacks import read_gate_history

    history = read_gate_history(folder / "gates.jsonl")
    if history:
        keys = sorted({k for row in history for k in row if k.count("/") == 1 and k.split("/")[0] in GATE_STATISTICS})
        return {k: (np.array([r["step"] for r in history if k in r]),
                    np.array([r[k] for r in history if k in r], dtype=np.float64))
                for k in keys}
    return {tag.split("/", 1)[1]: points for tag, points in tensorboard.items() if _is_gate_tag(tag)}


def _run_tensorboard_dirs(folder: Path, run: dict[str, Any]) -> list[Path]:
    """Where a transfer run's TensorBoard events are: ``<run>/tb``, or its own folders under
    ``--tensorboard-log`` (named after the run folder, :func:`hubrl.runconfig.tensorboard_name`; a run
    made before that naming used ``<game>-<method>``, which runs of other seeds shared)."""
    if not run.get("tensorboard_log"):
        return [folder / "tb"]
    from types import SimpleNamespace

    from hubrl.envs import resolve_game
    from hubrl.methods import method_label
    from hubrl.runconfig import tensorboard_name

    shared = Path(run["tensorboard_log"])
    own = sorted(shared.glob(f"{tensorboard_name(folder, shared, '')}_*"))
    return own or sorted(shared.glob(f"{resolve_game(run['env'])}-{method_label(SimpleNamespace(**run))}_*"))


def plot_run_curve(run_folder: str | Path, path: str | Path | None = None) -> Path:
    """Learning curve of one transfer run, written to ``<run>/learning_curve.png`` unless ``path`` says.

    Top: the raw score of every evaluation (``evaluations.json``: mean with a ±std band, the
    early few-game evaluation included) and of the training games (``rollout/ep_rew_mean``,
    mean of the last 100 games, from TensorBoard). Below, for methods with gates (Hub-Pathway,
    Zoo-Tuning): each expert's gate usage over training, per rollout (``selection_freq``: share
    of observations routed to the expert, solid; ``weight_mean``: its mean gate weight, dashed),
    from ``gates.jsonl`` or else TensorBoard.
    """
    from matplotlib.figure import Figure

    folder = Path(run_folder)
    if not (folder / "config.yaml").is_file():
        raise UsageError(f"{folder} is not a transfer run folder (no config.yaml): give the --out of a run.")
    config = read_yaml_object(folder / "config.yaml") or {}
    has_history = (folder / "evaluations.json").is_file() or (folder / "checkpoint.pt").is_file()
    evals = _expert_eval_points(folder) if has_history else []
    tensorboard = tensorboard_series(_run_tensorboard_dirs(folder, config.get("run", {})),
                                      lambda t: t == "rollout/ep_rew_mean" or _is_gate_tag(t))
    rollout = tensorboard.get("rollout/ep_rew_mean")
    series = _run_gate_series(folder, tensorboard)
    if not evals and rollout is None:
        raise NothingToPlot(f"{folder} has nothing to plot yet: no evaluation and no finished training game "
                            "(rollout/ep_rew_mean).")
    fig = Figure(figsize=(6.4, 6.4 if series else 4.2), dpi=120, layout="constrained")
    axes = fig.subplots(2 if series else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    if rollout is not None:
        ax.plot(*rollout, linewidth=1, alpha=0.7, label="training games (rollout/ep_rew_mean, last 100)")
    if evals:
        x = np.array([p["step"] for p in evals])
        mean, std = np.array([p["mean"] for p in evals]), np.array([p["std"] for p in evals])
        games = sorted({int(p["episodes"]) for p in evals})
        (line,) = ax.plot(x, mean, marker="o", markersize=4,
                          label=f"evaluation ({'-'.join(map(str, games))} games, mean ± std)")
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    run = config.get("run", {})
    sticky = run.get("repeat_action_probability", 0.25)
    ax.set_title(f"{folder.name}: raw game score (sticky actions {sticky})")
    ax.set_ylabel("raw game score")
    ax.legend(fontsize="small")
    if series:
        gate = axes[1]
        experts = sorted({key.split("/")[1] for key in series})
        colors = {name: f"C{i % 10}" for i, name in enumerate(experts)}
        for key, (steps, values) in series.items():
            statistic, name = key.split("/")
            gate.plot(steps, values, color=colors[name], linestyle="-" if statistic == "selection_freq" else "--", linewidth=1,
                      label=f"{name} {statistic}")
        gate.set_ylim(-0.02, 1.02)
        gate.set_ylabel("gate usage")
        gate.set_title("gate usage per expert (solid: share of observations routed, dashed: mean weight)", fontsize="small")
        gate.legend(fontsize="x-small", ncol=2)
    for a in axes:
        a.grid(alpha=0.3)
    axes[-1].set_xlabel("agent steps")
    out = Path(path) if path else folder / "learning_curve.png"
    fig.savefig(out)
    return out
