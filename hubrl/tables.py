"""Tables of a grid's trials, and their CSV and Markdown renderings.

Each table is a list of row dicts computed from :class:`hubrl.grid.TrialResult` objects (the
statistics are :mod:`hubrl.stats`'), so the same rows go to a CSV file (:func:`write_csv`) and to
a Markdown table (the ``*_markdown`` functions), which :mod:`hubrl.report` assembles:

* :func:`score_table`: per game and method, the final raw score, HNS and AUC over the seeds that
  reached the budget (mean ± sample std);
* :func:`compute_table`: steps/s, peak memory, parameters and inference speed, and their ratios
  to a baseline method on the same game;
* :func:`aggregate_table`: per method across games, IQM and mean HNS with stratified-bootstrap CIs;
* :func:`head_to_head`: one method against each other one, per game and across games;
* :func:`routing_table`: what each routed trial's gate did over its rollouts;
* :func:`runs_table`: one row per trial, the raw data of the others.

Missing values are NaN in the rows, empty cells in CSV and ``–`` in Markdown.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hubrl.atomic import atomic_write_text
from hubrl.grid import TrialResult
from hubrl.stats import (
    MIN_SEEDS_FOR_VERDICT,
    iqm,
    probability_of_improvement,
    stratified_bootstrap_ci,
    welch_difference_ci,
)
from hubrl.stats import mean as _mean
from hubrl.stats import probability_of_improvement_ci as _poi_ci
from hubrl.stats import verdict as _verdict
from hubrl.units import format_steps

__all__ = [
    "HEAD_TO_HEAD_METRICS",
    "HEAD_TO_HEAD_COLUMNS",
    "COLLAPSE_SHARE",
    "ROUTING_WARMUP",
    "RUNS_COLUMNS",
    "score_table",
    "compute_table",
    "aggregate_table",
    "head_to_head",
    "routing_table",
    "runs_table",
    "format_value",
    "step_label",
    "write_csv",
    "score_markdown",
    "compute_markdown",
    "aggregate_markdown",
    "head_to_head_markdown",
    "routing_markdown",
    "routes_markdown",
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


#: Below this share of its training time run alongside the baseline, a method's speed ratio is
#: marked as timed apart: the machine's load, not the method, may explain it.
TIMED_TOGETHER_MIN = 0.5


def _overlap_share(windows: Sequence[tuple[float, float]], others: Sequence[tuple[float, float]]) -> float:
    """Share of the total length of ``windows`` during which at least one of ``others`` ran."""
    total = sum(end - start for start, end in windows)
    if total <= 0:
        return math.nan
    merged: list[list[float]] = []
    for start, end in sorted(others):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    shared = sum(max(0.0, min(end, b) - max(start, a)) for start, end in windows for a, b in merged)
    return shared / total


def compute_table(trials: Sequence[TrialResult], baseline: str = "scratch") -> list[dict[str, Any]]:
    """Rows ``game, method, steps_per_s, peak_rss_mb, params, inference_steps_per_s`` and their
    ratios to ``baseline`` on the same game.

    Steps/s is the mean over seeds, peak memory the maximum over seeds (whole-process peak RSS:
    Python, torch and the envs included), parameters those of the first seed's ``model.zip`` (or
    its recorded count),
    inference the median over seeds of each trial's own measurement. ``timed_together``: the
    share of the method's training time (on this game) during which a ``baseline`` trial (any
    game) was training too. A grid run in stages and sessions can time two arms hours apart on a
    machine with other load; their steps/s ratio then says little about the methods
    (:data:`TIMED_TOGETHER_MIN`, marked in the Markdown).
    """
    baseline_windows = [w for t in trials if t.method == baseline for w in t.time_windows]
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
            "timed_together": (1.0 if method == baseline
                               else _overlap_share([w for t in group for w in t.time_windows], baseline_windows)),
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
    """Per method over games with reference scores: IQM and mean of per-run HNS with stratified-bootstrap CIs,
    every game weighing the same (``balance_tasks``: its runs counted ``lcm / n`` times where games have
    different run counts, as in a grid still running).

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
        # every game weighs the same, also while a grid's games have different numbers of finished runs
        point, low, high = stratified_bootstrap_ci(tasks, iqm, reps, confidence, seed, balance_tasks=True)
        mean, mean_low, mean_high = stratified_bootstrap_ci(tasks, _mean, reps, confidence, seed, balance_tasks=True)
        if max(len(t) for t in tasks) < 2:  # one run per game: resampling runs within games cannot vary, no CI
            low = high = mean_low = mean_high = math.nan
        row = {
            "method": method, "games": len(tasks), "game_names": " ".join(sorted(per_game)),
            "runs": sum(len(t) for t in tasks),
            "iqm_hns": point, "iqm_low": low, "iqm_high": high, "mean_hns": mean, "mean_low": mean_low, "mean_high": mean_high,
        }
        for key in ("steps_per_s_ratio", "peak_rss_ratio", "params_ratio", "inference_ratio"):
            vals = [c[key] for c in compute if c["method"] == method and not math.isnan(c[key])]
            row[key] = float(np.median(vals)) if vals else math.nan
        shares = [c["timed_together"] for c in compute if c["method"] == method]
        row["timed_together"] = min(shares) if shares else math.nan
        rows.append(row)
    return rows


#: What :func:`head_to_head` compares: a :class:`~hubrl.grid.TrialResult` attribute and its name in the report.
HEAD_TO_HEAD_METRICS = {"final": "final score", "auc": "AUC"}
#: Columns of ``head_to_head.csv``, in order.
HEAD_TO_HEAD_COLUMNS = ["metric", "method", "versus", "game", "runs", "difference", "low", "high", "verdict",
                        "p_improvement", "p_low", "p_high"]


def head_to_head(
    trials: Sequence[TrialResult], focus: str = "hub-pathway", reps: int = 50_000, confidence: float = 0.95, seed: int = 0,
) -> list[dict[str, Any]]:
    """``focus`` against every other method, on each metric of :data:`HEAD_TO_HEAD_METRICS`.

    One row per (metric, other method, game) with the difference of mean raw scores
    ``focus - other``, its Welch t interval and verdict (:func:`welch_difference_ci`: a bootstrap of
    2-5 seeds is far too narrow; :func:`_verdict`) and
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
                diff, low, high = welch_difference_ci(x, y, confidence)
                verdict = _verdict(low, high, min(len(x), len(y)))
                pairs.append((x, y))
                verdicts.append(verdict)
                rows.append({
                    "metric": metric, "method": focus, "versus": other, "game": game, "runs": f"{len(x)} vs {len(y)}",
                    "difference": diff, "low": low, "high": high, "verdict": verdict,
                    "p_improvement": probability_of_improvement(x, y), "p_low": math.nan, "p_high": math.nan,
                })
            if pairs:
                # one run on a side in every game: P(X > Y) of single runs is 0, 1/2 or 1 with no interval to it
                point, low, high = ((math.nan,) * 3 if all(v == "n/a" for v in verdicts)
                                    else _poi_ci(pairs, reps, confidence, seed))
                rows.append({
                    "metric": metric, "method": focus, "versus": other, "game": "all", "runs": f"{len(pairs)} games",
                    "difference": math.nan, "low": math.nan, "high": math.nan,
                    "verdict": f"{verdicts.count('win')} win, {verdicts.count('tie')} tie, {verdicts.count('loss')} loss"
                               + (f", {verdicts.count('n/a')} n/a" if "n/a" in verdicts else ""),
                    "p_improvement": point, "p_low": low, "p_high": high,
                })
    return rows


#: A rollout whose top-k sends at least this share of its states to one expert counts as collapsed.
COLLAPSE_SHARE = 0.95
#: Rollouts before this many agent steps are left out of the routing statistics (the gate's start).
ROUTING_WARMUP = 2048


def _as_shares(weights: np.ndarray) -> np.ndarray:
    """Each rollout's row of a soft gate's mean weights as shares of its sum: they need not sum to 1
    (Zoo-Tuning's sigmoids, one per expert), so two experts at 0.96 each would both pass as "one
    expert takes it all". (Selection frequencies are not passed here: they sum to k, each state
    selecting k experts, and a share of the states is what their collapse counts.)"""
    totals = np.nansum(weights, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, weights / totals, np.nan)


def routing_table(trials: Sequence[TrialResult], stage: int | None = None) -> list[dict[str, Any]]:
    """One row per trial with a ``gates.jsonl``: what its gate did over the rollouts (after
    :data:`ROUTING_WARMUP` steps, up to ``stage``).

    ``collapsed`` = share of rollouts with >= :data:`COLLAPSE_SHARE` of the states on one expert;
    ``share/<expert>`` = mean selection frequency (``share_of`` "states"), or for a soft gate
    (Zoo-Tuning, which selects none) its mean weight (``share_of`` "mean weight", and ``collapsed``
    counts rollouts with that share of the weights' sum on one expert); ``logit_spread`` (variation across states) and
    ``logit_drift`` (change between rollouts) = their means; ``noise_std`` = mean gate noise std;
    ``route_tv`` = mean total-variation distance between the policies of different routes on the
    rollouts' states (logged by runs since :mod:`hubrl.route_analysis`; None before).
    """
    from hubrl.callbacks import gate_shares, read_gate_history

    rows = []
    for t in sorted(trials, key=lambda t: (t.game, t.method, t.seed)):
        history = [r for r in read_gate_history(t.folder / "gates.jsonl")
                   if r["step"] > ROUTING_WARMUP and (stage is None or r["step"] <= stage)]
        if not history:
            continue
        statistic, experts = gate_shares(history[0])  # a soft gate (Zoo-Tuning) logs mean weights, no selections
        if not experts:
            continue
        experts = sorted(experts)
        shares = np.array([[r.get(f"{statistic}/{e}", np.nan) for e in experts] for r in history])
        row: dict[str, Any] = {"game": t.game, "method": t.method, "seed": t.seed, "rollouts": len(history),
                               "last_step": int(history[-1]["step"]),
                               "share_of": "states" if statistic == "selection_freq" else "mean weight",
                               "collapsed": float(np.mean(np.nanmax(shares if statistic == "selection_freq"
                                                                    else _as_shares(shares), axis=1) >= COLLAPSE_SHARE))}
        for i, name in enumerate(experts):
            row[f"share/{name}"] = float(np.nanmean(shares[:, i]))
        for key in ("logit_spread", "logit_drift", "noise_std", "route_tv"):
            values = [r[key] for r in history if key in r]
            row[key] = float(np.mean(values)) if values else None
        rows.append(row)
    return rows


#: Columns of ``runs.csv``, in order.
RUNS_COLUMNS = ["game", "method", "seed", "finished", "last_step", "evaluations", "final", "hns", "auc", "steps_per_s",
                "peak_rss_mb", "inference_steps_per_s", "rollout_score", "status", "folder"]


def runs_table(trials: Sequence[TrialResult], root: Path) -> list[dict[str, Any]]:
    """One row per trial (finished or not), by game, method and seed: the raw data of the other tables."""
    return [
        {"game": t.game, "method": t.method, "seed": t.seed, "finished": t.finished,
         "last_step": int(t.steps[-1]) if t.steps.size else "", "evaluations": int(t.steps.size),
         "final": t.final, "hns": t.hns, "auc": t.auc, "steps_per_s": t.steps_per_s, "peak_rss_mb": t.peak_rss_mb,
         "inference_steps_per_s": t.inference_steps_per_s, "rollout_score": t.rollout_score,
         "status": t.status.get("status", ""), "folder": str(t.folder.relative_to(root))}
        for t in sorted(trials, key=lambda t: (t.game, t.method, t.seed))
    ]


# ----------------------------------------------------------------------------- CSV and Markdown


def format_value(value: Any, digits: int = 1) -> str:
    """A table cell: ``–`` for missing (None, NaN), ``yes``/``no``, integers with thousands separators,
    floats with ``digits`` decimals."""
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
    """``mean ± std`` (``mean`` alone when the std is NaN: a single seed)."""
    if math.isnan(mean):
        return "–"
    return format_value(mean, digits) if math.isnan(std) else f"{format_value(mean, digits)} ± {format_value(std, digits)}"


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table of ``rows`` (cells as ``str`` gives them) under ``headers``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """``rows`` as CSV with ``columns`` (default: every key of any row, in the order first seen; keys not
    in ``columns`` are left out), NaN as an empty cell; written atomically."""
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def score_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown of :func:`score_table`."""
    return _md_table(
        ["game", "method", "runs", "final score", "HNS", "AUC (mean score)"],
        [[r["game"], r["method"], r["runs"], _pm(r["final_mean"], r["final_std"]), _pm(r["hns_mean"], r["hns_std"], 3),
          _pm(r["auc_mean"], r["auc_std"])] for r in rows],
    )


def timed_apart(row: dict[str, Any]) -> bool:
    """Whether a :func:`compute_table` (or :func:`aggregate_table`) row's speed ratio was timed
    mostly apart from the baseline (``timed_together`` below :data:`TIMED_TOGETHER_MIN`; unknown
    counts as apart)."""
    share = row.get("timed_together", math.nan)
    return not (share >= TIMED_TOGETHER_MIN)


TIMED_APART_NOTE = ("† timed apart: less than half of this method's training time ran alongside the baseline's "
                    "(one trial at a time, or in other stages or sessions), so the machine's load may explain the "
                    "speed ratio.")


def _speed_ratio(row: dict[str, Any]) -> str:
    text = format_value(row["steps_per_s_ratio"], 2)
    return text + " †" if text != "–" and timed_apart(row) else text


def compute_markdown(rows: Sequence[dict[str, Any]], baseline: str) -> str:
    """Markdown of :func:`compute_table` (ratios headed ``× <baseline>``; a speed ratio timed
    apart from the baseline is marked ``†`` and explained under the table)."""
    table = _md_table(
        ["game", "method", "steps/s", f"× {baseline}", "timed with baseline", "peak RSS (MiB)", f"× {baseline}",
         "parameters", f"× {baseline}", "inference steps/s", f"× {baseline}"],
        [[r["game"], r["method"], format_value(r["steps_per_s"], 0), _speed_ratio(r),
          f"{100 * r['timed_together']:.0f}%" if not math.isnan(r["timed_together"]) else "–",
          format_value(r["peak_rss_mb"], 0), format_value(r["peak_rss_ratio"], 2), format_value(r["params"]),
          format_value(r["params_ratio"], 2), format_value(r["inference_steps_per_s"], 0),
          format_value(r["inference_ratio"], 2)] for r in rows],
    )
    return table + ("\n" + TIMED_APART_NOTE + "\n" if any(_speed_ratio(r).endswith("†") for r in rows) else "")


def aggregate_markdown(rows: Sequence[dict[str, Any]], baseline: str, confidence: float) -> str:
    """Markdown of :func:`aggregate_table`: each estimate with its CI in brackets."""
    pct = f"{100 * confidence:g}%"
    return _md_table(
        ["method", "games", "runs", f"IQM HNS [{pct} CI]", f"mean HNS [{pct} CI]", f"steps/s × {baseline}",
         f"peak RSS × {baseline}", f"params × {baseline}", f"inference × {baseline}"],
        [[r["method"], r["games"], r["runs"], _with_ci(r["iqm_hns"], r["iqm_low"], r["iqm_high"]),
          _with_ci(r["mean_hns"], r["mean_low"], r["mean_high"]), _speed_ratio(r),
          format_value(r["peak_rss_ratio"], 2), format_value(r["params_ratio"], 2), format_value(r["inference_ratio"], 2)]
         for r in rows],
    ) + ("\n" + TIMED_APART_NOTE + "\n" if any(_speed_ratio(r).endswith("†") for r in rows) else "")


def _with_ci(point: float, low: float, high: float) -> str:
    """``0.303 [0.251, 0.355]``; ``0.303 [n/a: one run per game]`` where no CI exists."""
    if math.isnan(low) or math.isnan(high):
        return f"{point:.3f} [n/a: one run per game]"
    return f"{point:.3f} [{low:.3f}, {high:.3f}]"


def _signed(value: float) -> str:
    """``+19``, ``-1,204``; a value that rounds to 0 keeps a significant digit (``+0.2``, ``-0.04``):
    an interval's bound printed ``+0`` beside **win** (or ``-0`` beside a tie) would look like the
    verdict contradicts it."""
    if value != 0 and round(value) == 0:
        return f"{value:+.1g}"
    return f"{value:+,.0f}"


def head_to_head_markdown(rows: Sequence[dict[str, Any]], confidence: float) -> str:
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
                if r is None:
                    line.append("–")
                    continue
                interval = "n/a" if math.isnan(r["low"]) else f"{_signed(r['low'])}, {_signed(r['high'])}"
                line.append(f"{_signed(r['difference'])} [{interval}] **{r['verdict']}**")
            total = cells.get("all")
            line.append(("n/a" if math.isnan(total["p_improvement"]) else
                         f"{total['p_improvement']:.2f} [{total['p_low']:.2f}, {total['p_high']:.2f}]")
                        + f" ({total['verdict']})" if total else "–")
            table.append(line)
        parts.append(
            f"{name} of `{focus}` minus the other method's, mean over seeds [{pct} Welch t CI]; "
            f"verdict win / loss when the CI excludes 0, n/a with fewer than {MIN_SEEDS_FOR_VERDICT} seeds on a side:\n\n"
            + _md_table(["versus", *games, f"P({focus} > versus) over games [{pct} CI]"], table)
        )
    return "\n".join(parts)


def routing_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown of :func:`routing_table`: one column per expert seen in any row."""
    shares = sorted({k for r in rows for k in r if k.startswith("share/")})
    headers = ["game", "method", "seed", "rollouts", "collapsed", "share of", *[s.split("/", 1)[1] for s in shares],
               "logit spread (states)", "logit drift (rollouts)", "noise std", "TV between routes"]
    body = [[r["game"], r["method"], r["seed"], r["rollouts"], f"{100 * r['collapsed']:.0f}%", r.get("share_of", "states"),
             *[format_value(r.get(s), 2) for s in shares],
             format_value(r["logit_spread"], 3), format_value(r["logit_drift"], 3), format_value(r["noise_std"], 2),
             format_value(r.get("route_tv"), 3)]
            for r in rows]
    return _md_table(headers, body)


def routes_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown of :func:`hubrl.route_report.grid_route_divergence`: one row per trial (with its
    mean score noise-free / acting when the rows have scores)."""
    shares = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("share/")})
    scored = any("score/acting" in r for r in rows)
    headers = ["game", "method", "seed", "step", "states", "KL between routes (nats)", "TV distance", "argmax differs",
               r"\|V_i - V_j\| / \|V\|", *[f"{e} noise-free / acting" for e in shares],  # pipes escaped: one cell
               *(["score noise-free / acting"] if scored else [])]
    body = [[r["game"], r["method"], r["seed"], format_value(r["step"]), r["states"], format_value(r["kl"], 3),
             format_value(r["tv"], 3), f"{100 * r['argmax_differs']:.0f}%",
             f"{format_value(r['value_gap'], 3)} / {format_value(r['value_scale'], 3)}",
             *[f"{format_value(r.get(f'share/{e}'), 2)} / {format_value(r.get(f'acting/{e}'), 2)}" for e in shares],
             *([f"{format_value(r.get('score/noise-free'))} / {format_value(r.get('score/acting'))}"] if scored else [])]
            for r in rows]
    return _md_table(headers, body)


def gate_noise_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown of :func:`hubrl.route_report.gate_noise_scores`: one row per game and method."""
    headers = ["game", "method", "trials", "games per mode", "score noise-free", "score acting",
               "acting - noise-free [95% CI]", "verdict"]
    body = [[r["game"], r["method"], r["trials"], r["games"], format_value(r["noise_free"]), format_value(r["acting"]),
             f"{_signed(r['difference'])} [{_signed(r['low'])}, {_signed(r['high'])}]", r["verdict"]] for r in rows]
    return _md_table(headers, body)


def step_label(steps: int | None) -> str:
    """``250000`` -> ``250k``, ``1000000`` -> ``1M`` (folder names and titles of stages; ``""`` for None):
    :func:`hubrl.units.format_steps`, the inverse of the parser of ``--stages``."""
    return "" if steps is None else format_steps(steps)
