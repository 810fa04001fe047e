"""hubrl.stats against rliable (Agarwal et al., 2021), the field's reference, on the committed 100k grid.

The point estimates (IQM, mean, probability of improvement) must be rliable's. The 95% CIs are
Monte-Carlo estimates of percentiles of one bootstrap distribution, drawn by different generators
(hubrl: numpy ``default_rng``; rliable: arch with numpy's global ``RandomState``), so they can only
agree up to Monte-Carlo error. That error is bounded here without guessing a tolerance: with 3 runs
per game the stratified bootstrap distribution has 27**3 equally likely outcomes and is enumerated
exactly; the empirical CDF of R draws at the 2.5% quantile has standard error
sqrt(p (1 - p) / R), so each endpoint must lie between the exact distribution's quantiles at
p +- 4 standard errors (hubrl, R = 50,000: 2.5% +- 0.28%; rliable, R = 2,000 because arch loops in
Python: 2.5% +- 1.4%), and hubrl's and rliable's endpoints may differ by at most the width of
rliable's band.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

rliable_library = pytest.importorskip("rliable.library", reason="rliable is in the [dev] extra")
from rliable import metrics  # noqa: E402

from hubrl.grid import load_trials  # noqa: E402
from hubrl.stats import iqm, probability_of_improvement  # noqa: E402
from hubrl.tables import aggregate_table, head_to_head  # noqa: E402

GRID = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer-100k"
HUBRL_REPS, RLIABLE_REPS, CONFIDENCE, SIGMAS = 50_000, 2_000, 0.95, 4


@pytest.fixture(scope="module")
def grid():
    """Trials of the committed grid and per method its (runs x games) matrix of HNS, rliable's layout.

    Only the methods with every game x seed (3 x 3, what the exact bootstrap below is written for);
    arms added later with fewer seeds (the bf16 check's two) are left out."""
    trials = [t for t in load_trials(GRID) if t.finished and t.hns is not None]
    games = sorted({t.game for t in trials})
    seeds = sorted({t.seed for t in trials})
    full = sorted(m for m in {t.method for t in trials}
                  if {(t.game, t.seed) for t in trials if t.method == m} == {(g, s) for g in games for s in seeds})
    trials = [t for t in trials if t.method in full]
    scores = {}
    for method in full:
        hns = {(t.game, t.seed): t.hns for t in trials if t.method == method}
        scores[method] = np.array([[hns[g, s] for g in games] for s in seeds])
    # the grid these bounds are written for: its 6 methods of 54 trials, plus later arms with 3 seeds
    assert len(games) == 3 and len(seeds) == 3 and len(scores) >= 6 and "hub-pathway" in scores
    return trials, scores


def _exact_bootstrap(scores: np.ndarray, statistic) -> np.ndarray:
    """``statistic`` on every equally likely outcome of the stratified bootstrap of ``scores``
    (runs x tasks): each task's runs drawn with replacement, as many as it has."""
    runs, tasks = scores.shape
    per_task = [scores[list(itertools.product(range(runs), repeat=runs)), t] for t in range(tasks)]  # (runs**runs, runs)
    outcomes = [np.concatenate(combo) for combo in itertools.product(*per_task)]
    return np.asarray(statistic(np.array(outcomes), axis=1))


def _band(exact: np.ndarray, level: float, reps: int) -> tuple[float, float]:
    """Values between which an R-draw percentile estimate at ``level`` lies (``SIGMAS`` standard errors)."""
    se = SIGMAS * np.sqrt(level * (1 - level) / reps)
    return (float(np.quantile(exact, max(level - se, 0), method="lower")),
            float(np.quantile(exact, min(level + se, 1), method="higher")))


@pytest.fixture(scope="module")
def rliable_iqm(grid):
    """rliable's IQM point estimates and percentile stratified-bootstrap CIs, per method."""
    _, scores = grid
    state = np.random.get_state()
    np.random.seed(0)  # rliable's StratifiedBootstrap draws from numpy's global generator
    try:
        points, intervals = rliable_library.get_interval_estimates(
            scores, lambda x: np.array([metrics.aggregate_iqm(x)]), method="percentile",
            reps=RLIABLE_REPS, confidence_interval_size=CONFIDENCE)
    finally:
        np.random.set_state(state)
    return {m: (float(points[m][0]), float(intervals[m][0, 0]), float(intervals[m][1, 0])) for m in scores}


def test_iqm_and_mean_point_estimates_are_rliables(grid):
    trials, scores = grid
    rows = {r["method"]: r for r in aggregate_table(trials, reps=100)}
    assert set(rows) == set(scores)
    for method, matrix in scores.items():
        assert rows[method]["iqm_hns"] == metrics.aggregate_iqm(matrix), method  # the same float
        assert iqm(matrix) == metrics.aggregate_iqm(matrix)
        assert rows[method]["mean_hns"] == pytest.approx(metrics.aggregate_mean(matrix), rel=1e-12), method


@pytest.mark.filterwarnings("ignore::FutureWarning")  # arch's notice about its default generator
def test_iqm_confidence_intervals_agree_with_rliable(grid, rliable_iqm):
    trials, scores = grid
    rows = {r["method"]: r for r in aggregate_table(trials, reps=HUBRL_REPS, confidence=CONFIDENCE, seed=0)}
    tail = (1 - CONFIDENCE) / 2
    for method, matrix in scores.items():
        exact = _exact_bootstrap(matrix, iqm)
        point, low, high = rliable_iqm[method]
        assert rows[method]["iqm_hns"] == point
        for level, ours, theirs in ((tail, rows[method]["iqm_low"], low), (1 - tail, rows[method]["iqm_high"], high)):
            ours_band, their_band = _band(exact, level, HUBRL_REPS), _band(exact, level, RLIABLE_REPS)
            assert ours_band[0] <= ours <= ours_band[1], (method, level, ours, ours_band)
            assert their_band[0] <= theirs <= their_band[1], (method, level, theirs, their_band)
            assert abs(ours - theirs) <= their_band[1] - their_band[0], (method, level, ours, theirs)


def test_probability_of_improvement_is_rliables(grid):
    trials, scores = grid
    rows = {(r["metric"], r["versus"]): r for r in head_to_head(trials, "hub-pathway", reps=100) if r["game"] == "all"}
    for other in (m for m in scores if m != "hub-pathway"):
        theirs = metrics.probability_of_improvement(scores["hub-pathway"], scores[other])
        ours = np.mean([probability_of_improvement(scores["hub-pathway"][:, g], scores[other][:, g]) for g in range(3)])
        assert ours == pytest.approx(theirs, abs=1e-12), other
        # the report's P(hub-pathway > other) on raw final scores: per game an increasing affine map of HNS
        assert rows["final", other]["p_improvement"] == pytest.approx(theirs, abs=1e-12), other
