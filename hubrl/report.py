"""Report of a benchmark grid: scores, robust aggregates with confidence intervals, compute, plots.

:func:`write_report` reads every trial folder of a grid made by :mod:`hubrl.benchmark`
(``evaluations.json``, ``config.yaml``, ``status.json``, ``model.zip``) and writes ``<root>/report/``:

* ``results.csv`` / ``.md``: per game and method, over the seeds that reached the budget, the
  final raw score (mean ± sample std over seeds; a seed's final score is the mean of its last
  evaluation's games), its human-normalised score (HNS) and the area under the learning curve;
* ``compute.csv`` / ``.md``: agent steps per second of training, peak resident memory, parameter
  count and inference speed of the saved policy (``predict`` on a vector step of real
  observations, measured by each trial when it finished), each also as a ratio to the baseline
  method (``scratch``) on the same game;
* ``aggregate.csv`` / ``.md``: across games, the interquartile mean (IQM) and the mean of the
  per-run HNS with 95% stratified-bootstrap confidence intervals;
* ``head_to_head.csv`` / ``.md``: one method (default ``hub-pathway``) against each other one,
  per game (difference of final scores and of AUC with bootstrap CIs, win / tie / loss) and
  across games (probability of improvement with its CI);
* ``runs.csv``: one row per trial (the raw data of the tables);
* ``curves_<Game>.png``: learning curves of all methods on one game; ``aggregate_iqm.png``;
* ``report.md``: the index: budget, seeds, commit, machine, the tables and links to the files.

Statistics (Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice"), computed
by :mod:`hubrl.stats` (which says how, and is checked against rliable):

* **HNS** = (score − random) / (human − random), DQN Zoo reference scores
  (:func:`envs.games.human_normalized_score`); games without reference scores are left out of the
  aggregates.
* **IQM** = mean of the middle 50% of all runs' scores pooled over games; **CIs** are 95%
  stratified-bootstrap percentile intervals (runs resampled within each game) with a fixed seed,
  so a report is reproducible.
* **AUC** = trapezoid integral of the mean evaluation score over agent steps, divided by the
  step span between the first and the last evaluation: a time-averaged score in raw score units
  (a single evaluation gives its own score). It rewards learning early, which the final score ignores.
* **Head-to-head** (:func:`head_to_head`), one method (``hub-pathway``) against each other:
  per game, the difference of the mean final scores with a 95% bootstrap CI (each method's seeds
  resampled independently) and a verdict: *win* when the CI lies above 0, *loss* below, *tie*
  otherwise (*n/a* when a method has a single seed there); across games, rliable's **probability of
  improvement** P(X > Y): per game the Mann-Whitney statistic over all pairs of runs (ties count ½),
  averaged over games, with a
  stratified *independent* bootstrap CI (both methods' runs resampled within each game).
  With 3 seeds these intervals are wide and, being percentile intervals of 3 values, optimistic:
  a *tie* means "not separable at this budget and seed count", not "equal".
* **Curves** (every trial with evaluations, finished or not): mean over seeds of the evaluation score
  at each evaluation step (seeds evaluated at other steps are linearly interpolated onto the union of
  steps, never extrapolated), with a 95%
  percentile-bootstrap band of that mean over seeds (no band with a single seed).
"""

from __future__ import annotations

import csv
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hubrl.errors import UsageError
from hubrl.grid import (
    TrialResult,
    iter_trial_folders,
    load_trials,
    read_grid,
    read_json_object,
    read_status,
    read_yaml_object,
    tensorboard_scalars,
    tensorboard_series,
)
from hubrl.stats import (
    MIN_SEEDS_FOR_VERDICT,
    bootstrap_curve_band,
    difference_ci,
    iqm,
    probability_of_improvement,
    stratified_bootstrap_ci,
)
from hubrl.stats import mean as _mean
from hubrl.stats import probability_of_improvement_ci as _poi_ci
from hubrl.stats import verdict as _verdict

__all__ = [
    "score_table",
    "compute_table",
    "aggregate_table",
    "head_to_head",
    "plot_curves",
    "plot_aggregate",
    "plot_expert_curve",
    "plot_run_curve",
    "NothingToPlot",
    "write_report",
]

# ----------------------------------------------------------------------------- tables


def _group(trials: Sequence[TrialResult]) -> dict[tuple[str, str], list[TrialResult]]:
    groups: dict[tuple[str, str], list[TrialResult]] = {}
    for t in sorted(trials, key=lambda t: (t.game, t.method, t.seed)):
        if t.finished:
            groups.setdefault((t.game, t.method), []).append(t)
    return groups


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    vals = np.array([v for v in values if v is not None], dtype=np.float64)
    if vals.size == 0:
        return math.nan, math.nan
    return float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else math.nan


def score_table(trials: Sequence[TrialResult]) -> list[dict[str, Any]]:
    """Rows ``game, method, runs, final_mean, final_std, hns_mean, hns_std, auc_mean, auc_std`` (finished trials)."""
    rows = []
    for (game, method), group in _group(trials).items():
        final = _mean_std([t.final for t in group])
        hns = _mean_std([t.hns for t in group])
        auc = _mean_std([t.auc for t in group])
        rows.append({
            "game": game, "method": method, "runs": len(group), "seeds": " ".join(str(t.seed) for t in group),
            "final_mean": final[0], "final_std": final[1], "hns_mean": hns[0], "hns_std": hns[1],
            "auc_mean": auc[0], "auc_std": auc[1],
        })
    return rows


def _ratio(value: float | None, base: float | None) -> float:
    return value / base if value is not None and base and not math.isnan(value) and not math.isnan(base) else math.nan


def compute_table(trials: Sequence[TrialResult], baseline: str = "scratch") -> list[dict[str, Any]]:
    """Rows ``game, method, steps_per_s, peak_rss_mb, params, inference_steps_per_s`` and their
    ratios to ``baseline`` on the same game.

    Steps/s is the mean over seeds, peak memory the maximum over seeds (whole-process peak RSS:
    Python, torch and the envs included), parameters those of the first seed's ``model.zip`` (or
    its recorded count),
    inference the median over seeds of each trial's own measurement.
    """
    rows = []
    for (game, method), group in _group(trials).items():
        rates = [t.steps_per_s for t in group if t.steps_per_s is not None]
        peaks = [t.peak_rss_mb for t in group if t.peak_rss_mb is not None]
        inference = [t.inference_steps_per_s for t in group if t.inference_steps_per_s is not None]
        params = next((n for n in (t.params for t in group) if n), None)
        rows.append({
            "game": game, "method": method, "runs": len(group),
            "steps_per_s": float(np.mean(rates)) if rates else math.nan,
            "peak_rss_mb": float(max(peaks)) if peaks else math.nan,
            "params": params if params is not None else math.nan,
            "inference_steps_per_s": float(np.median(inference)) if inference else math.nan,
            "rss_isolated": all(a.get("rss_isolated", False) for t in group for a in t.attempts
                                if a.get("status") != "skipped"),
        })
    base = {r["game"]: r for r in rows if r["method"] == baseline}
    for r in rows:
        b = base.get(r["game"], {})
        r["steps_per_s_ratio"] = _ratio(r["steps_per_s"], b.get("steps_per_s"))
        r["peak_rss_ratio"] = _ratio(r["peak_rss_mb"], b.get("peak_rss_mb"))
        r["params_ratio"] = _ratio(r["params"], b.get("params"))
        r["inference_ratio"] = _ratio(r["inference_steps_per_s"], b.get("inference_steps_per_s"))
    return rows


def aggregate_table(
    trials: Sequence[TrialResult], reps: int = 50_000, confidence: float = 0.95, seed: int = 0,
    compute: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Per method over games with reference scores: IQM and mean of per-run HNS with stratified-bootstrap CIs.

    With ``compute`` rows (from :func:`compute_table`), the medians over games of the ratios to
    the baseline are added.
    """
    by_method: dict[str, dict[str, list[float]]] = {}
    for (game, method), group in _group(trials).items():
        scores = [t.hns for t in group if t.hns is not None]
        if scores:
            by_method.setdefault(method, {})[game] = scores
    rows = []
    for method, per_game in sorted(by_method.items()):
        tasks = [per_game[g] for g in sorted(per_game)]
        point, low, high = stratified_bootstrap_ci(tasks, iqm, reps, confidence, seed)
        mean, mean_low, mean_high = stratified_bootstrap_ci(tasks, _mean, reps, confidence, seed)
        row = {
            "method": method, "games": len(tasks), "runs": sum(len(t) for t in tasks),
            "iqm_hns": point, "iqm_low": low, "iqm_high": high, "mean_hns": mean, "mean_low": mean_low, "mean_high": mean_high,
        }
        for key in ("steps_per_s_ratio", "peak_rss_ratio", "params_ratio", "inference_ratio"):
            vals = [c[key] for c in compute if c["method"] == method and not math.isnan(c[key])]
            row[key] = float(np.median(vals)) if vals else math.nan
        rows.append(row)
    return rows


HEAD_TO_HEAD_METRICS = {"final": "final score", "auc": "AUC"}


def head_to_head(
    trials: Sequence[TrialResult], focus: str = "hub-pathway", reps: int = 50_000, confidence: float = 0.95, seed: int = 0,
) -> list[dict[str, Any]]:
    """``focus`` against every other method, on each metric of :data:`HEAD_TO_HEAD_METRICS`.

    One row per (metric, other method, game) with the difference of mean raw scores
    ``focus - other``, its bootstrap CI and verdict (:func:`difference_ci`, :func:`_verdict`) and
    the game's P(focus > other); then one row per (metric, other method) with ``game="all"``: the
    probability of improvement averaged over the games both methods finished, with its stratified
    independent bootstrap CI, and the counts of wins, ties and losses. Empty when ``focus`` has no
    finished trial.
    """
    groups = _group(trials)
    methods = sorted({m for _, m in groups})
    if focus not in methods:
        return []
    rows: list[dict[str, Any]] = []
    for metric in HEAD_TO_HEAD_METRICS:
        for other in [m for m in methods if m != focus]:
            pairs, verdicts = [], []
            for game in sorted({g for g, _ in groups}):
                if (game, focus) not in groups or (game, other) not in groups:
                    continue
                x = [getattr(t, metric) for t in groups[game, focus]]
                y = [getattr(t, metric) for t in groups[game, other]]
                diff, low, high = difference_ci(x, y, reps, confidence, seed)
                verdict = _verdict(low, high, min(len(x), len(y)))
                pairs.append((x, y))
                verdicts.append(verdict)
                rows.append({
                    "metric": metric, "method": focus, "versus": other, "game": game, "runs": f"{len(x)} vs {len(y)}",
                    "difference": diff, "low": low, "high": high, "verdict": verdict,
                    "p_improvement": probability_of_improvement(x, y), "p_low": math.nan, "p_high": math.nan,
                })
            if pairs:
                point, low, high = _poi_ci(pairs, reps, confidence, seed)
                rows.append({
                    "metric": metric, "method": focus, "versus": other, "game": "all", "runs": f"{len(pairs)} games",
                    "difference": math.nan, "low": math.nan, "high": math.nan,
                    "verdict": f"{verdicts.count('win')} win, {verdicts.count('tie')} tie, {verdicts.count('loss')} loss"
                               + (f", {verdicts.count('n/a')} n/a" if "n/a" in verdicts else ""),
                    "p_improvement": point, "p_low": low, "p_high": high,
                })
    return rows


# ----------------------------------------------------------------------------- output


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:,.{digits}f}"
    return str(value)


def _pm(mean: float, std: float, digits: int = 1) -> str:
    if math.isnan(mean):
        return "–"
    return _fmt(mean, digits) if math.isnan(std) else f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


def _score_md(rows: Sequence[dict[str, Any]]) -> str:
    return _md_table(
        ["game", "method", "runs", "final score", "HNS", "AUC (mean score)"],
        [[r["game"], r["method"], r["runs"], _pm(r["final_mean"], r["final_std"]), _pm(r["hns_mean"], r["hns_std"], 3),
          _pm(r["auc_mean"], r["auc_std"])] for r in rows],
    )


def _compute_md(rows: Sequence[dict[str, Any]], baseline: str) -> str:
    return _md_table(
        ["game", "method", "steps/s", f"× {baseline}", "peak RSS (MiB)", f"× {baseline}", "parameters", f"× {baseline}",
         "inference steps/s", f"× {baseline}"],
        [[r["game"], r["method"], _fmt(r["steps_per_s"], 0), _fmt(r["steps_per_s_ratio"], 2), _fmt(r["peak_rss_mb"], 0),
          _fmt(r["peak_rss_ratio"], 2), _fmt(r["params"]), _fmt(r["params_ratio"], 2),
          _fmt(r["inference_steps_per_s"], 0), _fmt(r["inference_ratio"], 2)] for r in rows],
    )


def _aggregate_md(rows: Sequence[dict[str, Any]], baseline: str, confidence: float) -> str:
    pct = f"{100 * confidence:g}%"
    return _md_table(
        ["method", "games", "runs", f"IQM HNS [{pct} CI]", f"mean HNS [{pct} CI]", f"steps/s × {baseline}",
         f"peak RSS × {baseline}", f"params × {baseline}", f"inference × {baseline}"],
        [[r["method"], r["games"], r["runs"], f"{r['iqm_hns']:.3f} [{r['iqm_low']:.3f}, {r['iqm_high']:.3f}]",
          f"{r['mean_hns']:.3f} [{r['mean_low']:.3f}, {r['mean_high']:.3f}]", _fmt(r["steps_per_s_ratio"], 2),
          _fmt(r["peak_rss_ratio"], 2), _fmt(r["params_ratio"], 2), _fmt(r["inference_ratio"], 2)] for r in rows],
    )


def _signed(value: float) -> str:
    return f"{value:+,.0f}"


def _head_to_head_md(rows: Sequence[dict[str, Any]], confidence: float) -> str:
    """Per metric a table: one line per other method, a cell per game, and P(focus > other) over games."""
    pct = f"{100 * confidence:g}%"
    games = sorted({r["game"] for r in rows if r["game"] != "all"})
    parts = []
    for metric, name in HEAD_TO_HEAD_METRICS.items():
        mine = [r for r in rows if r["metric"] == metric]
        if not mine:
            continue
        focus = mine[0]["method"]
        table = []
        for other in dict.fromkeys(r["versus"] for r in mine):
            cells = {r["game"]: r for r in mine if r["versus"] == other}
            line = [other]
            for game in games:
                r = cells.get(game)
                line.append(f"{_signed(r['difference'])} [{_signed(r['low'])}, {_signed(r['high'])}] **{r['verdict']}**"
                            if r else "–")
            total = cells.get("all")
            line.append(f"{total['p_improvement']:.2f} [{total['p_low']:.2f}, {total['p_high']:.2f}] ({total['verdict']})"
                        if total else "–")
            table.append(line)
        parts.append(
            f"{name} of `{focus}` minus the other method's, mean over seeds [{pct} bootstrap CI]; "
            f"verdict win / loss when the CI excludes 0, n/a with fewer than {MIN_SEEDS_FOR_VERDICT} seeds on a side:\n\n"
            + _md_table(["versus", *games, f"P({focus} > versus) over games [{pct} CI]"], table)
        )
    return "\n".join(parts)


def _curve_matrix(group: Sequence[TrialResult]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' curves on the union of their steps (interpolated inside each seed's range, NaN outside)."""
    grid = np.unique(np.concatenate([t.steps for t in group]))
    curves = np.full((len(group), grid.size), np.nan)
    for i, t in enumerate(group):
        inside = (grid >= t.steps[0]) & (grid <= t.steps[-1])
        curves[i, inside] = np.interp(grid[inside], t.steps, t.means)
    return grid, curves


def plot_curves(trials: Sequence[TrialResult], out: Path, reps: int = 2000, seed: int = 0) -> list[Path]:
    """One PNG per game: every method's mean curve over seeds with its bootstrap band (all trials with evaluations)."""
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
        paths.append(_save_step_plot(fig, ax, f"{game}: evaluation score (mean over seeds, 95% bootstrap CI)",
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


#: A rollout whose top-k sends at least this share of its states to one expert counts as collapsed.
COLLAPSE_SHARE = 0.95
#: Rollouts before this many agent steps are left out of the routing statistics (the gate's start).
ROUTING_WARMUP = 2048


def routing_table(trials: Sequence[TrialResult], stage: int | None = None) -> list[dict[str, Any]]:
    """One row per trial with a ``gates.jsonl``: what its gate did over the rollouts (after
    :data:`ROUTING_WARMUP` steps, up to ``stage``).

    ``collapsed`` = share of rollouts with >= :data:`COLLAPSE_SHARE` of the states on one expert;
    ``share/<expert>`` = mean selection frequency; ``logit_spread`` (variation across states) and
    ``logit_drift`` (change between rollouts) = their means; ``noise_std`` = mean gate noise std.
    """
    from hubrl.callbacks import read_gate_history

    rows = []
    for t in sorted(trials, key=lambda t: (t.game, t.method, t.seed)):
        history = [r for r in read_gate_history(t.folder / "gates.jsonl")
                   if r["step"] > ROUTING_WARMUP and (stage is None or r["step"] <= stage)]
        if not history:
            continue
        experts = sorted(k.split("/", 1)[1] for k in history[0] if k.startswith("selection_freq/"))
        shares = np.array([[r.get(f"selection_freq/{e}", np.nan) for e in experts] for r in history])
        row: dict[str, Any] = {"game": t.game, "method": t.method, "seed": t.seed, "rollouts": len(history),
                               "last_step": int(history[-1]["step"]),
                               "collapsed": float(np.mean(np.nanmax(shares, axis=1) >= COLLAPSE_SHARE))}
        for i, name in enumerate(experts):
            row[f"share/{name}"] = float(np.nanmean(shares[:, i]))
        for key in ("logit_spread", "logit_drift", "noise_std"):
            values = [r[key] for r in history if key in r]
            row[key] = float(np.mean(values)) if values else None
        rows.append(row)
    return rows


def _routing_md(rows: Sequence[dict[str, Any]]) -> str:
    shares = sorted({k for r in rows for k in r if k.startswith("share/")})
    headers = ["game", "method", "seed", "rollouts", "collapsed", *[s.split("/", 1)[1] for s in shares],
               "logit spread (states)", "logit drift (rollouts)", "noise std"]
    body = [[r["game"], r["method"], r["seed"], r["rollouts"], f"{100 * r['collapsed']:.0f}%",
             *[_fmt(r.get(s), 2) for s in shares],
             _fmt(r["logit_spread"], 3), _fmt(r["logit_drift"], 3), _fmt(r["noise_std"], 2)]
            for r in rows]
    return _md_table(headers, body)


def plot_routing(trials: Sequence[TrialResult], out: Path, stage: int | None = None) -> list[Path]:
    """One PNG per game: each routed trial's selection share of each expert (but the last) per rollout."""
    from matplotlib.figure import Figure

    from hubrl.callbacks import read_gate_history

    by_game: dict[str, list[tuple[TrialResult, list[dict[str, Any]]]]] = {}
    for t in sorted(trials, key=lambda t: (t.game, t.method, t.seed)):
        history = [r for r in read_gate_history(t.folder / "gates.jsonl") if stage is None or r["step"] <= stage]
        if history:
            by_game.setdefault(t.game, []).append((t, history))
    paths = []
    for game, runs in by_game.items():
        fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
        ax = fig.subplots()
        for t, history in runs:
            experts = sorted(k.split("/", 1)[1] for k in history[0] if k.startswith("selection_freq/"))
            steps = [r["step"] for r in history]
            for name in experts[:-1]:
                ax.plot(steps, [r.get(f"selection_freq/{name}", np.nan) for r in history], linewidth=0.8,
                        label=f"{t.method} s{t.seed}: {name}")
        ax.axhline(0.5, color="grey", linewidth=0.5, linestyle=":")
        ax.set_ylim(-0.02, 1.02)
        paths.append(_save_step_plot(fig, ax, f"{game}: share of states routed to an expert, per rollout",
                                     "selection frequency", out / f"routing_{game}.png", "x-small"))
    return paths


def _expert_eval_points(train_dir: Path) -> list[dict[str, Any]]:
    """Evaluation points of a pretraining run: ``evaluations.json``, else the checkpoint's copy."""
    if (train_dir / "evaluations.json").is_file():
        return list((read_json_object(train_dir / "evaluations.json") or {}).get("points", []))
    from hubrl.checkpoint import load_training_checkpoint

    return list(load_training_checkpoint(train_dir / "checkpoint.pt").get("extra", {}).get("eval_history", []))


def plot_expert_curve(expert_folder: str | Path, path: str | Path | None = None) -> Path:
    """Learning curve of one pretrained expert: training episodes' raw score and evaluations.

    Reads ``<expert>/tb`` (``rollout/ep_rew_mean``, every resume included) and the evaluation
    history under ``<expert>/train``; writes ``<expert>/learning_curve.png`` unless ``path`` says.
    """
    from matplotlib.figure import Figure

    folder = Path(expert_folder)
    train_dir = folder / "train"
    if not (train_dir / "checkpoint.pt").is_file() and not (train_dir / "evaluations.json").is_file():
        raise UsageError(f"{folder} has no training history (train/evaluations.json or train/checkpoint.pt).")
    fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
    ax = fig.subplots()
    steps, values = (tensorboard_scalars(folder / "tb", "rollout/ep_rew_mean") if (folder / "tb").is_dir()
                     else (np.array([]), np.array([])))
    if steps.size:
        ax.plot(steps, values, linewidth=1, alpha=0.7, label="training games (rollout/ep_rew_mean, last 100)")
    evals = _expert_eval_points(train_dir)
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


class NothingToPlot(UsageError):
    """A run folder without an evaluation or a finished training game yet (e.g. stopped in its first minutes)."""


GATE_PREFIXES = ("pathway/", "zoo/")  # per-expert gate tags of Hub-Pathway and Zoo-Tuning (hubrl.callbacks)
GATE_STATISTICS = ("selection_freq", "weight_mean")  # the per-expert ones: <prefix>/<statistic>/<expert>


def _is_gate_tag(tag: str) -> bool:
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
    """Where a transfer run's TensorBoard events are: ``<run>/tb``, or its own runs under ``--tensorboard-log``."""
    if not run.get("tensorboard_log"):
        return [folder / "tb"]
    from types import SimpleNamespace

    from envs import resolve_game
    from hubrl.methods import method_label

    name = f"{resolve_game(run['env'])}-{method_label(SimpleNamespace(**run))}"
    return sorted(Path(run["tensorboard_log"]).glob(f"{name}_*"))


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


def plot_aggregate(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Horizontal IQM bars with their CIs, rliable style (None when no method has HNS)."""
    if not rows:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 0.6 * len(rows) + 1.2), dpi=120, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))
    points = np.array([r["iqm_hns"] for r in rows])
    errors = np.array([[r["iqm_hns"] - r["iqm_low"] for r in rows], [r["iqm_high"] - r["iqm_hns"] for r in rows]])
    ax.barh(y, points, xerr=errors, capsize=4, alpha=0.8)
    ax.set_yticks(y, [r["method"] for r in rows])
    ax.set_xlabel("IQM of human-normalised score (95% stratified bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)
    return path


def step_label(steps: int | None) -> str:
    """``250000`` -> ``250k``, ``1000000`` -> ``1M`` (folder names and titles of stages)."""
    if steps is None:
        return ""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if steps >= size and steps % size == 0:
            return f"{steps // size}{unit}"
    return str(steps)


def _machine_lines(grid: dict[str, Any], trials: Sequence[TrialResult]) -> list[str]:
    from hubrl.provenance import machine_info, system_label

    lines = []
    info = grid.get("machine") or {}
    if info:
        lines.append(
            f"- Grid launched on `{info.get('host')}`: {info.get('platform')}, {info.get('processor')}, "
            f"{info.get('cpu_count')} CPUs, "
            f"Python {info.get('python')}, torch {info.get('torch')}, device `{info.get('torch_device')}`"
            + (f" ({info['cuda']})" if info.get("cuda") else "")
        )
    hosts = sorted({(a.get("host"), a.get("device")) for t in trials for a in t.attempts if a.get("host")}, key=str)
    if hosts:
        lines.append("- Trials ran on: " + ", ".join(f"`{h}` ({d or 'device not recorded'})" for h, d in hosts))
    systems: dict[str, int] = {}
    unrecorded = 0
    for attempt in (a for t in trials for a in t.attempts if a.get("steps")):
        if attempt.get("system"):
            label = system_label(attempt["system"])
            systems[label] = systems.get(label, 0) + 1
        else:
            unrecorded += 1
    if systems:
        lines.append(
            "- Systems of the attempts that trained "
            f"({len(systems)}; runs agree evaluation for evaluation only on one system): "
            + "; ".join(f"{label} ({n} attempt{'s' * (n != 1)})" for label, n in systems.items())
            + (f"; {unrecorded} attempt{'s' * (unrecorded != 1)} made before systems were recorded" if unrecorded else "")
        )
    now = machine_info()
    lines.append(f"- Report made on `{now['host']}` ({platform.platform()}, {now['cpu_count']} CPUs)")
    return lines


def write_report(
    root: str | Path,
    out: str | Path | None = None,
    *,
    budget: int | None = None,
    baseline: str = "scratch",
    reps: int = 50_000,
    curve_reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    focus: str = "hub-pathway",
    stage: int | None = None,
) -> Path:
    """Write the report of the grid in ``root`` to ``out`` (default ``<root>/report``, or
    ``<root>/report/at-<stage>`` for a stage); return ``report.md``.

    ``focus`` is the method the head-to-head section compares with every other one; ``stage``
    reports the grid as it stood at that many agent steps (see :func:`hubrl.grid.load_trials`).

    :raises FileNotFoundError: when ``root`` holds no trial with an evaluation.
    """
    from hubrl.provenance import git_commit

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"No grid folder {root}.")
    skipped: dict[str, str] = {}
    trials = load_trials(root, budget, stage, skipped=skipped)
    if not any(t.steps.size for t in trials):
        raise FileNotFoundError(f"No trial with evaluations under {root} "
                                "(expected <root>/<Game>/<method>/s<seed>/evaluations.json).")
    grid = read_grid(root)
    out = Path(out) if out else root / "report" / (f"at-{step_label(stage)}" if stage else "")
    out.mkdir(parents=True, exist_ok=True)

    scores = score_table(trials)
    compute = compute_table(trials, baseline)
    aggregate = aggregate_table(trials, reps, confidence, seed, compute)
    _write_csv(out / "results.csv", scores)
    (out / "results.md").write_text(_score_md(scores))
    _write_csv(out / "compute.csv", compute)
    (out / "compute.md").write_text(_compute_md(compute, baseline))
    _write_csv(out / "aggregate.csv", aggregate)
    (out / "aggregate.md").write_text(_aggregate_md(aggregate, baseline, confidence))
    versus = head_to_head(trials, focus, reps, confidence, seed)
    _write_csv(out / "head_to_head.csv", versus, ["metric", "method", "versus", "game", "runs", "difference", "low", "high",
                                                   "verdict", "p_improvement", "p_low", "p_high"])
    (out / "head_to_head.md").write_text(_head_to_head_md(versus, confidence))
    runs = [
        {"game": t.game, "method": t.method, "seed": t.seed, "finished": t.finished,
         "last_step": int(t.steps[-1]) if t.steps.size else "", "evaluations": int(t.steps.size),
         "final": t.final, "hns": t.hns, "auc": t.auc, "steps_per_s": t.steps_per_s, "peak_rss_mb": t.peak_rss_mb,
         "inference_steps_per_s": t.inference_steps_per_s, "rollout_score": t.rollout_score,
         "status": t.status.get("status", ""), "folder": str(t.folder.relative_to(root))}
        for t in sorted(trials, key=lambda t: (t.game, t.method, t.seed))
    ]
    _write_csv(out / "runs.csv", runs, ["game", "method", "seed", "finished", "last_step", "evaluations", "final", "hns",
                                        "auc", "steps_per_s", "peak_rss_mb", "inference_steps_per_s", "rollout_score",
                                        "status", "folder"])
    curves = plot_curves(trials, out, curve_reps, seed)
    agg_png = plot_aggregate(aggregate, out / "aggregate_iqm.png")
    routing = routing_table(trials, stage)
    routing_pngs = plot_routing(trials, out, stage) if routing else []
    if routing:
        _write_csv(out / "routing.csv", routing, list(dict.fromkeys(k for r in routing for k in r)))

    left_out: dict[str, list[str]] = {}  # trial folder -> why it is not in the tables
    for t in trials:
        if not t.finished:
            left_out.setdefault(str(t.folder.relative_to(root)), []).append(
                f"last evaluation at {int(t.steps[-1]) if t.steps.size else 0:,} steps")
    for name, why in skipped.items():
        left_out[name] = [f"skipped: {why}"]
    for folder in iter_trial_folders(root):
        status = read_status(folder)
        name = str(folder.relative_to(root))
        if name in skipped:
            continue
        if status.get("status") in ("failed", "interrupted"):
            error = str(status.get("error") or "").splitlines()
            left_out.setdefault(name, []).insert(0, f"{status['status']}" + (f": {error[0]}" if error else ""))
        elif not (folder / "evaluations.json").is_file():
            left_out.setdefault(name, []).append("no evaluations")
    coverage = {r["method"]: r["games"] for r in aggregate}
    eff_budget = budget or grid.get("budget")
    seeds = sorted({t.seed for t in trials})
    grid_budget = grid.get("budget")
    lines = [
        "# Benchmark report" + (f" at {step_label(stage)} agent steps" if stage else ""),
        "",
        f"- Grid: `{root}`",
        (f"- Stage: every trial as it stood at {stage:,} agent steps (its evaluation there) "
         f"of a {_fmt(grid_budget)}-step budget"
         if stage else f"- Budget: {_fmt(eff_budget) if eff_budget else 'unknown (each trial’s own)'} agent steps per trial"),
        "- Trials: " + ", ".join(f"{t.game}/{t.method}/s{t.seed} at {int(t.steps[-1]):,}" for t in sorted(
            trials, key=lambda t: (t.game, t.method, t.seed)) if t.steps.size),
        f"- Games: {', '.join(sorted({t.game for t in trials}))}",
        f"- Methods: {', '.join(sorted({t.method for t in trials}))} (ratios against `{baseline}`)",
        f"- Seeds: {', '.join(map(str, seeds))}",
        f"- Commit of the runs: `{grid.get('commit') or 'unknown'}`; of this report: `{git_commit() or 'unknown'}`",
        *_machine_lines(grid, trials),
        f"- Made {datetime.now(timezone.utc).isoformat(timespec='seconds')}; bootstrap: {reps:,} replicates, seed {seed}",
        "",
        "Tables count the trials that reached the budget. A seed's final score is the mean raw score of its last",
        "evaluation's games; ± is the sample std over seeds. HNS = (score − random) / (human − random) with DQN Zoo",
        "references. AUC = trapezoid area under the evaluation curve divided by its step span (a time-averaged",
        f"score). IQM = mean of the middle 50% of per-run HNS pooled over games; {100 * confidence:g}% CIs by stratified",
        "bootstrap (runs resampled within each game, rliable's `get_interval_estimates`, percentile method).",
        "Steps/s = agent steps per wall second of the trial (env setup and evaluations included), mean over seeds;",
        "peak RSS = the trial process's peak resident memory (Python and torch included), max over seeds;",
        "parameters = tensor elements in `model.zip`'s `policy.pth`.",
        "",
        "## Aggregate across games",
        "",
        (_aggregate_md(aggregate, baseline, confidence) if aggregate
         else "No game with reference scores among the finished trials.\n"),
    ]
    if len(set(coverage.values())) > 1:
        lines += ["Methods cover different numbers of games here: their aggregates are not comparable.", ""]
    if agg_png:
        lines += [f"![IQM]({agg_png.name})", ""]
    lines += ["## Scores per game", "", _score_md(scores)]
    if versus:
        lines += [f"## Head-to-head: `{focus}` against each method", "", _head_to_head_md(versus, confidence)]
    if routing:
        lines += ["## Routing: what the gates did", "",
                  f"Per rollout after the first {ROUTING_WARMUP:,} steps (`gates.jsonl` of each trial): "
                  "`collapsed` = share of "
                  f"rollouts that sent >= {100 * COLLAPSE_SHARE:.0f}% of their states to one expert; expert columns = mean "
                  "selection frequency; logit spread = variation of the gate's logits across states, drift = their change "
                  "between rollouts (spread above drift: routing by state rather than by time).", "",
                  _routing_md(routing)]
        lines += [f"![{p.stem}]({p.name})" for p in routing_pngs] + [""]
    lines += ["## Compute", "", _compute_md(compute, baseline)]
    if not all(r["rss_isolated"] for r in compute):
        lines.append("Some trials ran in the grid's own process (`--workers 0`): their peak memory spans earlier trials.\n")
    lines += ["## Learning curves", ""]
    lines += [f"![{p.stem}]({p.name})" for p in curves]
    lines += ["", "## Files", ""]
    for name in ("results.csv", "results.md", "compute.csv", "compute.md", "aggregate.csv", "aggregate.md",
                 "head_to_head.csv", "head_to_head.md", "runs.csv"):
        lines.append(f"- [{name}]({name})")
    lines += [f"- [{p.name}]({p.name})" for p in [*curves, *([agg_png] if agg_png else [])]]
    if left_out:
        lines += ["", "## Not in the tables", ""]
        lines += [f"- `{name}`: {'; '.join(why)}" for name, why in sorted(left_out.items())]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
