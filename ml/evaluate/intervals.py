"""95 % bootstrap intervals for the comparison: over targets for the per-target means (per-target AUC,
recall@N, NDCG@N, coverage), over users for the pooled AUC, logloss and GAUC, and paired between two models
(same resamples) for their difference.

Targets are the unit a merchant sees, so the per-target metrics resample targets. The pooled AUC resamples
users with Poisson(1) weights (the rows of one user move together), computed from one sort of the scores per
model: per resample, one pass of sums over the rows between the positives' scores, so a hundred resamples of
a million rows take about half a second. The other user-level intervals are products of the weights with per-user sums.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _percentiles(samples: np.ndarray) -> Interval:
    lo, hi = np.nanpercentile(samples, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return Interval(float(lo), float(hi))


def target_resamples(n_targets: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_targets] indices drawn with replacement; share them between models to pair them."""
    return np.random.default_rng(seed).integers(0, n_targets, size=(n_boot, n_targets))


def per_target_means(values: np.ndarray, weights: np.ndarray | None, resamples: np.ndarray) -> np.ndarray:
    """The (weighted) mean over targets of each resample, ignoring targets with no value (NaN)."""
    v = values[resamples]
    w = np.ones_like(v) if weights is None else weights[resamples].astype(np.float64)
    w = np.where(np.isnan(v), 0.0, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(np.nan_to_num(v) * w, axis=1) / w.sum(axis=1)


def target_intervals(table: pd.DataFrame, columns: list[str], n_boot: int = 1000, seed: int = 0,
                     weights: dict[str, str] | None = None) -> dict[str, Interval]:
    """Intervals of the mean over targets of each column of a per-target table (one row per target);
    `weights` names a weight column for a column (GAUC: weighted by each target's buyers)."""
    resamples = target_resamples(len(table), n_boot, seed)
    out = {}
    for c in columns:
        w = table[weights[c]].to_numpy(np.float64) if weights and c in weights else None
        out[c] = _percentiles(per_target_means(table[c].to_numpy(np.float64), w, resamples))
    return out


def target_sum_intervals(table: pd.DataFrame, statistics: dict[str, Callable[[dict], np.ndarray]],
                         columns: list[str], n_boot: int = 1000, seed: int = 0) -> dict[str, Interval]:
    """Intervals of statistics of the columns' sums over targets (a ratio of sums: published crowds' precision is
    their buyers over their users, pooled over targets), the targets resampled. Each statistic takes the sums as a
    dict of arrays, one value per resample."""
    resamples = target_resamples(len(table), n_boot, seed)
    sums = {c: np.nan_to_num(table[c].to_numpy(np.float64))[resamples].sum(axis=1) for c in columns}
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: _percentiles(np.asarray(f(sums), np.float64)) for name, f in statistics.items()}


def paired_target_interval(a: pd.DataFrame, b: pd.DataFrame, column: str, n_boot: int = 1000, seed: int = 0,
                           weight: str | None = None) -> Interval:
    """Interval of mean(a) - mean(b) over the targets both tables hold, resampling the same targets for both."""
    common = a.index.intersection(b.index)
    a, b = a.loc[common], b.loc[common]
    resamples = target_resamples(len(common), n_boot, seed)
    wa = a[weight].to_numpy(np.float64) if weight else None
    wb = b[weight].to_numpy(np.float64) if weight else None
    diff = (per_target_means(a[column].to_numpy(np.float64), wa, resamples)
            - per_target_means(b[column].to_numpy(np.float64), wb, resamples))
    return _percentiles(diff)


def user_weights(n_users: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_users] Poisson(1) resample weights (uint8, read-only). Every user-level interval of one
    evaluation draws from the same seed, so they share one draw (a smaller n_boot takes its first rows: the
    generator's stream is the same in one call or in chunks), and the models scored on one population (the
    same users in the same order) reuse it: drawing 20 million of them takes a second."""
    key = (n_users, seed)
    cached = _USER_WEIGHTS.pop(key, None)
    if cached is None or len(cached) < n_boot:
        cached = np.random.default_rng(seed).poisson(1.0, size=(n_boot, n_users)).astype(np.uint8)
        cached.flags.writeable = False
    _USER_WEIGHTS[key] = cached  # the most recent last
    while len(_USER_WEIGHTS) > _KEEP_DRAWS:  # n_boot x users bytes each
        _USER_WEIGHTS.pop(next(iter(_USER_WEIGHTS)))
    return cached[:n_boot]


# an evaluation resamples three sets of users (all, those of the touched pairs, those of the others)
_KEEP_DRAWS = 3
_USER_WEIGHTS: dict[tuple[int, int], np.ndarray] = {}


class RankedScores:
    """The scores sorted once with their ties grouped: each resample's AUC then needs the negatives' weight
    below each positive's group of tied scores and up to its end, which are sums over the segments between
    those groups' bounds (a few thousand), not a running sum over every row."""

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        self.order = np.argsort(np.asarray(p))  # inside a tie any order: a tie is counted whole
        p_sorted = np.asarray(p)[self.order]
        self.negative = ~(np.asarray(y)[self.order] > 0)
        self.positives = np.flatnonzero(~self.negative)
        new_group = np.r_[True, p_sorted[1:] != p_sorted[:-1]]
        starts = np.flatnonzero(new_group)
        ends = np.r_[starts[1:], len(p_sorted)]
        group = np.cumsum(new_group)[self.positives] - 1
        first, end = starts[group], ends[group]
        # the segments start at row 0 and at every positive group's bounds; the negatives' weight before a
        # bound is the sum of the segments before it (one past the last segment: the total)
        self.cuts = np.unique(np.r_[0, first, end])
        self.cuts = self.cuts[self.cuts < len(p_sorted)]
        self.first, self.end = np.searchsorted(self.cuts, first), np.searchsorted(self.cuts, end)

    def auc(self, weights_sorted: np.ndarray) -> np.ndarray:
        """AUC of each row of weights [k, rows], given in score order (weights[:, self.order])."""
        w = np.asarray(weights_sorted)
        exact = np.issubdtype(w.dtype, np.integer)  # bootstrap counts: the sums are exact integers
        total = np.int64 if exact else np.float64
        negatives = np.zeros((len(w), len(self.cuts) + 1), dtype=total)
        if len(self.cuts):
            np.cumsum(np.add.reduceat(w * self.negative, self.cuts, axis=1, dtype=total), axis=1,
                      out=negatives[:, 1:])
        below, up_to = negatives[:, self.first], negatives[:, self.end]
        w_pos = w[:, self.positives].astype(np.float64)
        # a positive beats the negatives below its score and ties half of those at its score
        wins = (w_pos * (below + 0.5 * (up_to - below))).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return wins / (w_pos.sum(axis=1) * negatives[:, -1])


def weighted_auc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of each row of weights [n_boot, rows] (ties count one half), from one sort of p."""
    ranked = RankedScores(y, p)
    return ranked.auc(np.asarray(weights)[:, ranked.order])


def auc_interval(y: np.ndarray, p: np.ndarray, user: np.ndarray, n_boot: int = 200, seed: int = 0,
                 chunk: int = 8) -> Interval:
    """The pooled AUC's interval, users resampled; in chunks of resamples to bound memory."""
    ranked = RankedScores(y, np.asarray(p, dtype=np.float64))
    codes, uniques = pd.factorize(np.asarray(user))
    codes_sorted = codes[ranked.order]
    weights = user_weights(len(uniques), n_boot, seed)
    aucs = [ranked.auc(weights[start:start + chunk][:, codes_sorted]) for start in range(0, n_boot, chunk)]
    return _percentiles(np.concatenate(aucs))


def paired_auc_interval(y: np.ndarray, p: np.ndarray, q: np.ndarray, user: np.ndarray, n_boot: int = 200,
                        seed: int = 0, chunk: int = 8) -> Interval:
    """The interval of AUC(p) - AUC(q) on the same rows, users resampled once for both: two scorings of one
    population (a model with every input and without some) differ by much less than either AUC's own interval
    is wide, and only the paired difference tells them apart."""
    a, b = RankedScores(y, np.asarray(p, dtype=np.float64)), RankedScores(y, np.asarray(q, dtype=np.float64))
    codes, uniques = pd.factorize(np.asarray(user))
    weights = user_weights(len(uniques), n_boot, seed)
    diffs = []
    for start in range(0, n_boot, chunk):
        w = weights[start:start + chunk][:, codes]
        diffs.append(a.auc(w[:, a.order]) - b.auc(w[:, b.order]))
    return _percentiles(np.concatenate(diffs))


def _resampled_sums(weights: np.ndarray, per_user: np.ndarray, chunk: int = 100) -> np.ndarray:
    """weights [n_boot, users] @ per_user [users, ...] in float64, converting a chunk of weights at a time."""
    return np.concatenate([weights[s:s + chunk].astype(np.float64) @ per_user for s in range(0, len(weights), chunk)])


def logloss_interval(y: np.ndarray, p: np.ndarray, user: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Interval:
    """The pooled logloss's interval, users resampled: a mean of per-row losses, so each resample is two
    weighted sums over users (their losses and their rows), not a pass over the rows."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y) > 0
    loss = -np.where(y, np.log(p), np.log1p(-p))
    codes, uniques = pd.factorize(np.asarray(user))
    sums = np.bincount(codes, weights=loss, minlength=len(uniques))
    rows = np.bincount(codes, minlength=len(uniques)).astype(np.float64)
    totals = _resampled_sums(user_weights(len(uniques), n_boot, seed), np.stack([sums, rows], axis=1))
    return _percentiles(totals[:, 0] / totals[:, 1])


def ratio_interval(numerator: np.ndarray, denominator: np.ndarray, user: np.ndarray, n_boot: int = 1000,
                   seed: int = 0) -> Interval:
    """The interval of sum(numerator) / sum(denominator) (expected over actual buyers), users resampled with
    Poisson(1) weights over their per-user sums."""
    codes, uniques = pd.factorize(np.asarray(user))
    num = np.bincount(codes, weights=np.asarray(numerator, np.float64), minlength=len(uniques))
    den = np.bincount(codes, weights=np.asarray(denominator, np.float64), minlength=len(uniques))
    totals = _resampled_sums(user_weights(len(uniques), n_boot, seed), np.stack([num, den], axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return _percentiles(totals[:, 0] / totals[:, 1])


def ece_interval(y: np.ndarray, p: np.ndarray, user: np.ndarray, n_boot: int = 200, seed: int = 0) -> Interval:
    """The expected calibration error's interval, users resampled (Poisson(1) weights), the bins those of the
    full set: per resample, three weighted sums per bin, all resamples at once as products of the weights with
    the [users, bins] tables of rows, scores and buys."""
    from ml.train.calibration import reliability_bins

    bins = reliability_bins(p)
    n_bins = int(bins.max(initial=0)) + 1
    codes, uniques = pd.factorize(np.asarray(user))
    cell = codes * n_bins + bins  # the (user, bin) cell of each row

    def table(values: np.ndarray | None) -> np.ndarray:
        return np.bincount(cell, weights=values, minlength=len(uniques) * n_bins).reshape(len(uniques), n_bins)

    weights = user_weights(len(uniques), n_boot, seed)
    n = _resampled_sums(weights, table(None))
    gap = np.abs(_resampled_sums(weights, table(np.asarray(p, np.float64)))
                 - _resampled_sums(weights, table(np.asarray(y, np.float64))))
    return _percentiles(gap.sum(axis=1) / n.sum(axis=1))


# per-target columns whose summary is their mean over targets with buyers
PER_TARGET_PREFIXES = ("recall_at_", "precision_at_", "ndcg_at_", "map_at_")


def backtest_intervals(y: np.ndarray, p: np.ndarray, target: np.ndarray, user: np.ndarray, per_target: pd.DataFrame,
                       seed: int, n_boot: int = 1000, n_boot_auc: int = 100) -> dict[str, Interval]:
    """The interval of every summary metric of evaluate_scores: pooled AUC and logloss over users, per-target
    AUC and the ranking metrics over targets (the table's ranked groups), GAUC over users."""
    from ml.evaluate.metrics import averaged_over, per_group_auc

    columns = [c for c in per_target.columns if c.startswith(PER_TARGET_PREFIXES)]
    columns += [c for c in ("coverage", "candidate_coverage") if c in per_target.columns]
    out = {}
    for c in columns:  # each over the groups its mean is taken over
        values = per_target.loc[averaged_over(per_target, c), c].to_numpy(np.float64)
        out[c] = _percentiles(per_target_means(values, None, target_resamples(len(values), n_boot, seed)))
    for name, group, weight in (("auc_per_target", target, "positives"), ("gauc", user, "rows")):
        per = per_group_auc(y, p, group)
        per = per[per["auc"].notna()]
        draws = target_resamples(len(per), n_boot, seed)
        values = per["auc"].to_numpy(np.float64)
        out[name] = _percentiles(per_target_means(values, per[weight].to_numpy(np.float64), draws))
        if name == "auc_per_target":
            out["auc_per_target_unweighted"] = _percentiles(per_target_means(values, None, draws))
    out["auc"] = auc_interval(y, p, user, n_boot=n_boot_auc, seed=seed)
    out["logloss"] = logloss_interval(y, p, user, n_boot=n_boot, seed=seed)
    out["expected_over_actual"] = ratio_interval(p, y, user, n_boot=n_boot, seed=seed)
    out["ece"] = ece_interval(y, p, user, seed=seed)
    return out
