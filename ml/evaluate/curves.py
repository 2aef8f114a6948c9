"""The curves of one backtest, as a small table: ROC, recall@N, cumulative gain (and lift) and reliability.

Each run logs its model's curves beside the floors' and the ceiling's (`curves.json` in MLflow), so the PNG
plots of a run and the HTML report of a whole comparison (ml.report_html) draw from the same numbers without
re-scoring anything. Curves are sampled on fixed grids: a few hundred points per series, whatever the
population's size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.evaluate.metrics import ranking_metrics
from ml.train.calibration import ece_of, reliability

CURVE_COLUMNS = ("series", "curve", "x", "y")
CURVES_ARTIFACT = "curves.json"  # the table's name in each MLflow run
# ROC's false positive rate and the gain curve's share targeted: linear over the whole range, and log-spaced
# near zero, where a crowd of a few hundred users out of a population of millions lies
GRID = np.unique(np.concatenate([np.linspace(0.0, 1.0, 101), np.geomspace(1e-5, 1.0, 61)]))
RECALL_NS = tuple(int(n) for n in np.unique(np.geomspace(1, 1000, 25).astype(int)))


def _tie_ends(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows by descending score, read at the last row of each run of tied scores: the rows taken and the buyers
    among them up to there. One plain sort: inside a tie the order does not matter, as a tie is taken whole."""
    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    order = np.argsort(-p)
    ranked = p[order]
    last_of_tie = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True]) if len(p) else np.zeros(0, np.int64)
    return last_of_tie + 1.0, np.cumsum(y[order])[last_of_tie]


def roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TPR at each FPR of GRID (ties in score count as one step, as scikit-learn's roc_curve draws them)."""
    taken, hits = _tie_ends(y, p)
    fpr = np.r_[0.0, (taken - hits) / max(taken[-1] - hits[-1], 1.0)]
    tpr = np.r_[0.0, hits / max(hits[-1], 1.0)]
    return GRID, np.interp(GRID, fpr, tpr)


def gain_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative gain: the share of the population's buyers found in the top x of its pairs, by score.

    Pairs tied in score are taken together, the gain growing linearly across them: the expected gain of a
    random order inside the tie, so a heuristic with many ties is neither flattered nor punished by row order.
    """
    taken, hits = _tie_ends(y, p)
    found = hits / max(hits[-1], 1.0)
    return GRID, np.interp(GRID, np.r_[0.0, taken / len(y)], np.r_[0.0, found])


def series_curves(name: str, y: np.ndarray, p: np.ndarray, group: np.ndarray, buyers: pd.Series | None,
                  probabilities: bool = True) -> pd.DataFrame:
    """Every curve of one scored backtest: `roc`, `recall_at_n` (mean over the ranked groups, of every buyer
    when `buyers` is given), `gain` and, for scores that are probabilities, `reliability` (20 bins of equal
    rows; its ECE in the `ece` row). A heuristic floor's score is an order, not a probability: no
    reliability."""
    parts = []
    x, tpr = roc_points(y, p)
    parts.append(pd.DataFrame({"curve": "roc", "x": x, "y": tpr}))
    mean = ranking_metrics(y, p, group, RECALL_NS, buyers=buyers).mean
    parts.append(pd.DataFrame({"curve": "recall_at_n", "x": np.asarray(RECALL_NS, np.float64),
                               "y": [mean[f"recall_at_{n}"] for n in RECALL_NS]}))
    x, found = gain_points(y, p)
    parts.append(pd.DataFrame({"curve": "gain", "x": x, "y": found}))
    if probabilities:
        clipped = np.clip(p, 0.0, 1.0)
        table = reliability(y, clipped)
        parts.append(pd.DataFrame({"curve": "reliability", "x": table["mean_score"], "y": table["observed"]}))
        parts.append(pd.DataFrame({"curve": ["ece"], "x": [np.nan], "y": [ece_of(table)]}))
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "series", name)
    return out[list(CURVE_COLUMNS)]


def lift(gain: pd.DataFrame) -> pd.DataFrame:
    """Lift from a gain curve: the share of buyers found over the share targeted (1: no better than random)."""
    g = gain[gain["x"] > 0]
    return g.assign(y=g["y"] / g["x"])
