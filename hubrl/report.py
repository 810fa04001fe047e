"""Report of a benchmark grid: scores, robust aggregates with confidence intervals, compute, plots.

:func:`write_report` reads every trial folder of a grid made by :mod:`hubrl.benchmark`
(``evaluations.json``, ``config.yaml``, ``status.json``, ``model.zip``) and writes ``<root>/report/``:

* ``results.csv`` / ``.md``: per game and method, over the seeds that reached the budget, the
  final raw score (mean ± sample std over seeds; a seed's final score is the mean of its last
  evaluation's games), its human-normalised score (HNS) and the area under the learning curve;
* ``compute.csv`` / ``.md``: agent steps per second of training, peak resident memory, parameter
  count and inference speed of the saved policy (``predict`` on a vector step of real
  observations, measured by each trial when it finished), each also as a ratio to the baseline
  method (``scratch``) on the same game, and the share of a method's training time that ran
  alongside the baseline's (a speed ratio timed mostly apart is marked †);
* ``aggregate.csv`` / ``.md``: across games, the interquartile mean (IQM) and the mean of the
  per-run HNS with 95% stratified-bootstrap confidence intervals;
* ``head_to_head.csv`` / ``.md``: one method (default ``hub-pathway``; or several, a section each) against each other one,
  per game (difference of final scores and of AUC with Welch t CIs, win / tie / loss) and
  across games (probability of improvement with its CI);
* ``runs.csv``: one row per trial (the raw data of the tables);
* ``curves_<Game>.png``: learning curves of all methods on one game; ``aggregate_iqm.png``;
* ``routing.csv``, ``routing_<Game>.png``: what the gates of routed trials did (when a trial has ``gates.jsonl``);
* ``report.md``: the index: budget, seeds, commit, machine, the tables and links to the files.

The trials are read by :mod:`hubrl.grid`, the tables computed and rendered by :mod:`hubrl.tables`,
the figures drawn by :mod:`hubrl.plots`; this module puts them together.

Statistics (Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice"), computed
by :mod:`hubrl.stats` (which says how, and is checked against rliable):

* **HNS** = (score − random) / (human − random), DQN Zoo reference scores
  (:func:`hubrl.envs.games.human_normalized_score`); games without reference scores are left out of the
  aggregates.
* **IQM** = mean of the middle 50% of all runs' scores pooled over games, every game weighing the
  same (where games have different numbers of runs, a grid still running, each game's runs are
  counted ``lcm / n`` times: :func:`hubrl.stats.stratified_bootstrap_ci`); **CIs** are 95%
  stratified-bootstrap percentile intervals (runs resampled within each game) with a fixed seed,
  so a report is reproducible.
* **AUC** = trapezoid integral of the mean evaluation score over agent steps, divided by the
  step span between the first and the last evaluation: a time-averaged score in raw score units
  (a single evaluation gives its own score). It rewards learning early, which the final score ignores.
  Where a game's finished trials were evaluated over different ranges (an arm's own ``eval_freq``
  or ``early_eval``), every AUC of that game is taken over the range all of them cover
  (:func:`hubrl.grid.align_aucs`), and the report says which.
* **Head-to-head** (:func:`hubrl.tables.head_to_head`), one method (``hub-pathway``) against each other:
  per game, the difference of the mean final scores with a 95% Welch t interval (unequal
  variances; a percentile bootstrap of 2-5 seeds is far too narrow, a false verdict in 17-33% of
  null cases: :func:`hubrl.stats.welch_difference_ci`) and a verdict: *win* when the CI lies above 0, *loss* below, *tie*
  otherwise (*n/a* when a method has a single seed there); across games, rliable's **probability of
  improvement** P(X > Y): per game the Mann-Whitney statistic over all pairs of runs (ties count ½),
  averaged over games, with a
  stratified *independent* bootstrap CI (both methods' runs resampled within each game).
  With 3 seeds these intervals are wide: a *tie* means "not separable at this budget and seed
  count", not "equal". The across-game intervals stay bootstrap ones, as rliable's, and with 3
  seeds they are optimistic too.
* **Curves** (every trial with evaluations, finished or not): mean over seeds of the evaluation score
  at each evaluation step (seeds evaluated at other steps are linearly interpolated onto the union of
  steps, never extrapolated), with a 95%
  percentile-bootstrap band of that mean over seeds (no band with a single seed).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from hubrl.atomic import atomic_write_text
from hubrl.grid import (
    TrialResult,
    align_aucs,
    grid_json_damage,
    iter_trial_folders,
    load_trials,
    read_grid,
    read_status,
    read_yaml_object,
)
from hubrl.plots import plot_aggregate, plot_curves, plot_routing
from hubrl.tables import (
    COLLAPSE_SHARE,
    HEAD_TO_HEAD_COLUMNS,
    ROUTING_WARMUP,
    RUNS_COLUMNS,
    aggregate_markdown,
    aggregate_table,
    compute_markdown,
    compute_table,
    format_value,
    head_to_head,
    head_to_head_markdown,
    routing_markdown,
    routing_table,
    runs_table,
    score_markdown,
    score_table,
    step_label,
    write_csv,
)

__all__ = ["write_report"]

#: The table files of every report, in the order ``report.md`` lists them.
TABLE_FILES = ("results.csv", "results.md", "compute.csv", "compute.md", "aggregate.csv", "aggregate.md",
               "head_to_head.csv", "head_to_head.md", "runs.csv")


@dataclass
class _Tables:
    """The rows of every table of one report (:mod:`hubrl.tables`)."""

    scores: list[dict[str, Any]]
    compute: list[dict[str, Any]]
    aggregate: list[dict[str, Any]]
    versus: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    routing: list[dict[str, Any]]


@dataclass
class _Figures:
    """The PNGs of one report (:mod:`hubrl.plots`)."""

    curves: list[Path]
    aggregate: Path | None
    routing: list[Path]


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
    focus: str | Sequence[str] = "hub-pathway",
    stage: int | None = None,
    notices: list[str] | None = None,
) -> Path:
    """Write the report of the grid in ``root`` to ``out`` (default ``<root>/report``; a stage's
    report goes to ``<out>/at-<stage>``); return ``report.md``.

    ``focus`` is the method (or methods, a section each) the head-to-head compares with every other one; ``stage``
    reports the grid as it stood at that many agent steps, its compute included (see :func:`hubrl.grid.load_trials`).
    ``notices``, when given, receives what the report says about itself that its reader should hear at once
    (:func:`unfinished_notice`), for a command to print.

    :raises FileNotFoundError: when ``root`` holds no trial with an evaluation.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is a file, not a grid folder: give the --root of a grid." if root.exists()
                                else f"No grid folder {root}: give the --root of a grid run.")
    skipped: dict[str, str] = {}
    trials = load_trials(root, budget, stage, skipped=skipped)
    if not any(t.steps.size for t in trials):
        if stage is not None and any(t.steps.size for t in load_trials(root, budget)):  # evaluated, but only later
            raise FileNotFoundError(f"No trial under {root} was evaluated by {stage:,} agent steps: report a later "
                                    "stage (trials evaluate every --eval-freq steps of run).")
        if skipped:  # there are trials, but none could be read: say why, rather than that there are none
            first, *rest = skipped.items()
            raise FileNotFoundError(f"No readable trial under {root}: {len(skipped)} left out, e.g. {first[0]}: "
                                    f"{first[1]}{f' (and {len(rest)} more)' if rest else ''}.")
        raise FileNotFoundError(f"No trial with evaluations under {root} "
                                "(expected <root>/<Game>/<method>/s<seed>/evaluations.json).")
    grid = read_grid(root)
    out = (Path(out) if out else root / "report") / (f"at-{step_label(stage)}" if stage else "")
    out.mkdir(parents=True, exist_ok=True)

    focus = [focus] if isinstance(focus, str) else list(dict.fromkeys(focus))
    settings = grid.get("settings")
    unfinished = unfinished_notice(trials, settings.get("eval_freq") if isinstance(settings, dict) else None)
    ranges = align_aucs(trials)  # before the tables: every AUC they compare over one range, where there is one
    auc_ranges = auc_range_notice(ranges)
    damage = grid_json_damage(root)
    damaged_grid = (f"{damage}: its budget, seeds and commit are unknown here, so each trial counts as finished at "
                    "its own configured budget; mend the file (run --continue needs it too).") if damage else None
    if notices is not None:
        notices += [notice for notice in (unfinished, damaged_grid) if notice]
        if None in ranges.values():  # AUCs that do not compare: a warning, not only a line of the report
            notices.append(auc_ranges)
    tables = _make_tables(trials, root, baseline, reps, confidence, seed, focus, stage)
    _write_tables(out, tables, baseline, confidence)
    figures = _Figures(
        curves=plot_curves(trials, out, curve_reps, seed),
        aggregate=plot_aggregate(tables.aggregate, out / "aggregate_iqm.png"),
        routing=plot_routing(trials, out, stage) if tables.routing else [],
    )
    lines = [
        *_header_lines(root, grid, trials, budget, stage, baseline, reps, seed),
        *([f"- **{damaged_grid}**"] if damaged_grid else []),
        "",
        *_method_lines(confidence, stage),
        "",
        *_section_lines(tables, figures, baseline, confidence, unfinished, auc_ranges),
        *_left_out_lines(_left_out(root, trials, skipped)),
    ]
    if (out / "routes.md").is_file():  # written by ``hubrl-bench routes`` (it needs the weights, the report does not)
        lines += ["", "What the route changes in each hub-pathway policy (from the trials' `model.zip`, "
                  "`hubrl-bench routes`): [routes.md](routes.md)."]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def _make_tables(trials: Sequence[TrialResult], root: Path, baseline: str, reps: int, confidence: float, seed: int,
                 focus: Sequence[str], stage: int | None) -> _Tables:
    """Every table of the report (the aggregate also takes the compute ratios)."""
    compute = compute_table(trials, baseline)
    return _Tables(
        scores=score_table(trials),
        compute=compute,
        aggregate=aggregate_table(trials, reps, confidence, seed, compute),
        versus=[row for method in focus for row in head_to_head(trials, method, reps, confidence, seed)],
        runs=runs_table(trials, root),
        routing=routing_table(trials, stage),
    )


def _write_tables(out: Path, tables: _Tables, baseline: str, confidence: float) -> None:
    """Each table as CSV, and as Markdown but for ``runs`` and ``routing`` (whose CSV is written only when a
    trial was routed)."""
    write_csv(out / "results.csv", tables.scores)
    atomic_write_text(out / "results.md", score_markdown(tables.scores))
    write_csv(out / "compute.csv", tables.compute)
    atomic_write_text(out / "compute.md", compute_markdown(tables.compute, baseline))
    write_csv(out / "aggregate.csv", tables.aggregate)
    atomic_write_text(out / "aggregate.md", aggregate_markdown(tables.aggregate, baseline, confidence))
    write_csv(out / "head_to_head.csv", tables.versus, HEAD_TO_HEAD_COLUMNS)
    sections = [head_to_head_markdown(rows, confidence) for rows in _by_focus(tables.versus)]
    atomic_write_text(out / "head_to_head.md", "\n".join(sections))
    write_csv(out / "runs.csv", tables.runs, RUNS_COLUMNS)
    if tables.routing:
        write_csv(out / "routing.csv", tables.routing)


def _header_lines(root: Path, grid: dict[str, Any], trials: Sequence[TrialResult], budget: int | None,
                  stage: int | None, baseline: str, reps: int, seed: int) -> list[str]:
    """Title and what was reported: the grid, budget or stage, trials, games, methods, seeds, commits, machines."""
    eff_budget = budget or grid.get("budget")
    seeds = sorted({t.seed for t in trials})
    grid_budget = grid.get("budget")
    by_name = sorted(trials, key=lambda t: (t.game, t.method, t.seed))
    return [
        "# Benchmark report" + (f" at {step_label(stage)} agent steps" if stage else ""),
        "",
        f"- Grid: `{root}`",
        (f"- Stage: every trial as it stood at {stage:,} agent steps (its evaluation there, or at the end of the rollout "
         f"that crossed it: each trial's step is listed below; its compute from "
         f"the attempts that stopped there, not from later training) of a {format_value(grid_budget)}-step budget"
         if stage else
         f"- Budget: {format_value(eff_budget) if eff_budget else 'unknown (each trial’s own)'} agent steps per trial"),
        "- Trials: " + ", ".join(f"{t.game}/{t.method}/s{t.seed} at {int(t.steps[-1]):,}" for t in by_name if t.steps.size),
        f"- Games: {', '.join(sorted({t.game for t in trials}))}",
        f"- Methods: {', '.join(sorted({t.method for t in trials}))} (ratios against `{baseline}`)",
        f"- Seeds: {', '.join(map(str, seeds))}",
        _commit_line(grid, trials),
        *_machine_lines(grid, trials),
        f"- Made {datetime.now(timezone.utc).isoformat(timespec='seconds')}; bootstrap: {reps:,} replicates, seed {seed}",
    ]


def _commit_line(grid: dict[str, Any], trials: Sequence[TrialResult]) -> str:
    """The code the trials trained with, from each attempt's recorded system (a grid run in stages
    can mix commits: one arm from one worktree, another from a second); ``grid.json``'s commit (that
    of the last launch) only when no attempt recorded one."""
    from hubrl.provenance import git_commit

    methods: dict[str, set[str]] = {}
    for trial, attempt in _trained_attempts(trials):
        commit = (attempt.get("system") or {}).get("commit")
        if commit:
            methods.setdefault(str(commit), set()).add(trial.method)
    report = f"of this report: `{git_commit() or 'unknown'}`"
    if not methods:
        return f"- Commit of the runs: `{grid.get('commit') or 'unknown'}` (the grid's last launch); {report}"
    if len(methods) == 1:
        return f"- Commit of the runs: `{next(iter(methods))}`; {report}"
    parts = [f"`{commit[:12]}` ({', '.join(sorted(names))})" for commit, names in sorted(methods.items())]
    return f"- Commits of the runs (by method): {'; '.join(parts)}; {report}"


def _trained_attempts(trials: Sequence[TrialResult]) -> Iterator[tuple[TrialResult, dict[str, Any]]]:
    """Each trial's attempts that trained (took steps), with their trial: whose systems the header names."""
    return ((t, a) for t in trials for a in t.attempts if a.get("steps"))


def _machine_lines(grid: dict[str, Any], trials: Sequence[TrialResult]) -> list[str]:
    """Where the grid was launched, where its trials ran, on which systems, and where this report is made."""
    from hubrl.provenance import machine_info, system_label

    lines = []
    info = grid.get("machine")
    if isinstance(info, dict) and info:  # a hand-edited grid.json may hold anything here: then it is left out
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
    for _, attempt in _trained_attempts(trials):
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


def _method_lines(confidence: float, stage: int | None = None) -> list[str]:
    """How the tables are computed, in one paragraph (``stage``: a report of the grid as it stood then)."""
    counted = (f"Tables count the trials evaluated at {stage:,} agent steps, as they stood there" if stage else
               "Tables count the trials that reached the budget") + (
        " (`runs.csv` and the routing table list every trial, finished or not).")
    return [
        counted + " A seed's final score is the mean raw score of its last",
        "evaluation's games; ± is the sample std over seeds. HNS = (score − random) / (human − random) with DQN Zoo",
        "references. AUC = trapezoid area under the evaluation curve divided by its step span (a time-averaged",
        "score; over the steps all of a game's finished trials were evaluated in, where their ranges differ).",
        "IQM = mean of the middle 50% of per-run HNS pooled over games, every game weighing the same (where",
        "games have different numbers of runs, each game's runs counted lcm / n times, so a game with more runs so far",
        f"does not weigh more); {100 * confidence:g}% CIs by stratified",
        "bootstrap (runs resampled within each game, rliable's `get_interval_estimates`, percentile method);",
        "the per-game differences of the head-to-head by Welch's t interval (a bootstrap of 2-5 seeds is far too narrow).",
        "Steps/s = agent steps per wall second of the trial (env setup and evaluations included), mean over seeds;",
        "peak RSS = the trial process's peak resident memory (Python and torch included), max over seeds;",
        "parameters = tensor elements in `model.zip`'s `policy.pth`.",
    ]


def _by_focus(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Head-to-head rows split by their focus method, in the order given."""
    return [[r for r in rows if r["method"] == m] for m in dict.fromkeys(r["method"] for r in rows)]


def auc_range_notice(ranges: dict[str, tuple[float, float] | None]) -> str | None:
    """The line saying over which steps the AUCs of games whose finished trials were evaluated over
    different ranges are averaged (:func:`hubrl.grid.align_aucs`), and on which games they share no
    span, so that their AUCs do not compare; ``None`` when there is none."""
    if not ranges:
        return None
    common = {game: span for game, span in ranges.items() if span is not None}
    apart = [game for game, span in ranges.items() if span is None]
    spans = "; ".join(f"{game} from {start:,.0f} to {end:,.0f} agent steps" for game, (start, end) in common.items())
    return " ".join(part for part in (
        (f"AUCs are averaged over the steps every finished trial of the game was evaluated in, as some arms were "
         f"evaluated over other ranges (their own eval_freq or early_eval): {spans}.") if common else "",
        (f"On {', '.join(apart)} the arms' evaluations share no span of steps, so their AUCs (each over its own range) "
         "are not like for like; give every arm the same eval_freq and early_eval.") if apart else "",
    ) if part)


def unfinished_notice(trials: Sequence[TrialResult], every: int | None = None) -> str | None:
    """The line to show when no trial has reached its budget (a grid paused at a stage, reported at
    its full budget): its tables would be empty, so it names the furthest step evaluated and the
    ``--stages`` that reports it; ``None`` when some trial has finished.

    ``every``: the grid's ``eval_freq`` (``grid.json``), whose multiples are the only stages
    ``bench report`` takes: the stage named is the furthest of them that a trial evaluated at (up to
    a rollout past it), not an early evaluation's step between them."""
    if not trials or any(t.finished for t in trials):
        return None
    budget = max((t.budget for t in trials if t.budget is not None), default=None)
    furthest = int(max(float(t.steps[-1]) for t in trials if t.steps.size))
    empty = (f"No trial has reached {f'{int(budget):,} agent steps' if budget else 'its budget'} yet (the furthest was "
             f"evaluated at {furthest:,}), so the tables below are empty")
    stage = furthest
    if isinstance(every, int) and not isinstance(every, bool) and every > 0:
        stage = evaluated_stage(trials, every)
        if not stage:
            return (f"{empty}; no trial has reached the grid's first stage ({step_label(every)}: it evaluates every "
                    f"{step_label(every)}) yet.")
    return f"{empty}: report the grid as it stood at an earlier step with --stages {step_label(stage)}."


def evaluated_stage(trials: Sequence[TrialResult], every: int, up_to: int | None = None) -> int:
    """The furthest stage of a grid evaluated every ``every`` agent steps (its ``eval_freq``) that
    has a score: the furthest multiple of ``every``, up to ``up_to`` steps, that a trial of ``trials``
    was evaluated at (up to a rollout past it, as a run's last evaluation is); 0 when there is none."""
    return max((below for t in trials for below, step in ((int(s) // every * every, int(s)) for s in t.steps)
                if below > 0 and step - below <= t.rollout and (up_to is None or below <= up_to)), default=0)


def _section_lines(tables: _Tables, figures: _Figures, baseline: str, confidence: float,
                   unfinished: str | None = None, auc_ranges: str | None = None) -> list[str]:
    """The sections of ``report.md``: aggregate, scores, head-to-head, routing, compute, curves, files."""
    lines = [
        "## Aggregate across games",
        "",
        (aggregate_markdown(tables.aggregate, baseline, confidence) if tables.aggregate
         else (unfinished or "No game with reference scores among the finished trials.") + "\n"),
    ]
    if len({r["game_names"] for r in tables.aggregate}) > 1:
        covered = "; ".join(f"{r['method']}: {r['game_names'].replace(' ', ', ')}" for r in tables.aggregate)
        lines += [f"Methods cover different games here ({covered}): their aggregates are not comparable.", ""]
    if figures.aggregate:
        lines += [f"![IQM]({figures.aggregate.name})", ""]
    lines += ["## Scores per game", "", score_markdown(tables.scores)]
    if auc_ranges:
        lines += [auc_ranges, ""]
    for rows in _by_focus(tables.versus):
        lines += [f"## Head-to-head: `{rows[0]['method']}` against each method", "", head_to_head_markdown(rows, confidence)]
    if tables.routing:
        lines += _routing_lines(tables.routing, figures.routing)
    lines += ["## Compute", "", compute_markdown(tables.compute, baseline)]
    if not all(r["rss_isolated"] for r in tables.compute):
        lines.append("Some trials ran in the grid's own process (`--workers 0`): their peak memory spans earlier trials.\n")
    lines += ["## Learning curves", ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures.curves]
    lines += ["", "## Files", ""]
    lines += [f"- [{name}]({name})" for name in TABLE_FILES]
    lines += [f"- [{p.name}]({p.name})" for p in [*figures.curves, *([figures.aggregate] if figures.aggregate else [])]]
    return lines


def _routing_lines(routing: Sequence[dict[str, Any]], pngs: Sequence[Path]) -> list[str]:
    """The routing section: how to read the table, the table, the plots."""
    return [
        "## Routing: what the gates did", "",
        f"Per rollout after the first {ROUTING_WARMUP:,} steps (`gates.jsonl` of each trial): "
        "`collapsed` = share of "
        f"rollouts that sent >= {100 * COLLAPSE_SHARE:.0f}% of their states to one expert; expert columns = mean "
        "selection frequency; logit spread = variation of the gate's logits across states, drift = their change "
        "between rollouts (spread above drift: routing by state rather than by time); TV between routes = how "
        "different the policy is when a state goes to one expert or another (0: the route does not matter; "
        "logged by runs since `route_tv` exists).", "",
        routing_markdown(routing),
        *[f"![{p.stem}]({p.name})" for p in pngs], "",
    ]


def _left_out(root: Path, trials: Sequence[TrialResult], skipped: dict[str, str]) -> dict[str, list[str]]:
    """Trial folder (relative to ``root``) -> why it is not in the tables: unfinished, skipped as
    unreadable, failed or interrupted, or without evaluations. A trial the tables count (finished, or
    at a stage report evaluated there) is not listed, whatever its last attempt's status: a trial
    interrupted at 600k is in the 250k report's tables."""
    left_out: dict[str, list[str]] = {}
    counted = {str(t.folder.relative_to(root)) for t in trials if t.finished}
    for t in trials:
        if not t.finished:
            left_out.setdefault(str(t.folder.relative_to(root)), []).append(
                f"last evaluation at {int(t.steps[-1]) if t.steps.size else 0:,} steps{_off_stage(t)}")
    for name, why in skipped.items():
        left_out[name] = [f"skipped: {why}"]
    for folder in iter_trial_folders(root):
        status = read_status(folder)
        name = str(folder.relative_to(root))
        if name in skipped or name in counted:
            continue
        if status.get("status") in ("failed", "interrupted"):
            error = str(status.get("error") or "").splitlines()
            left_out.setdefault(name, []).insert(0, f"{status['status']}" + (f": {error[0]}" if error else ""))
        elif not (folder / "evaluations.json").is_file():
            left_out.setdefault(name, []).append("no evaluations")
    return left_out


def _off_stage(trial: TrialResult) -> str:
    """Why a trial has no score at its report's stage when its evaluations never fall there (an arm
    run with its own ``eval_freq``, one the grid's --stages check cannot see): '' otherwise."""
    every = (read_yaml_object(trial.folder / "config.yaml") or {}).get("run", {})
    every = every.get("eval_freq") if isinstance(every, dict) else None
    if trial.stage is None or not isinstance(every, int) or isinstance(every, bool) or every <= 0 or trial.stage % every == 0:
        return ""
    return f" (it evaluates every {every:,} steps, so it has no score at {step_label(trial.stage)})"


def _left_out_lines(left_out: dict[str, list[str]]) -> list[str]:
    """The closing section listing :func:`_left_out` (none when every trial is in the tables)."""
    if not left_out:
        return []
    return ["", "## Not in the tables", "", *[f"- `{name}`: {'; '.join(why)}" for name, why in sorted(left_out.items())]]
