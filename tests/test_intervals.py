"""Bootstrap intervals: the weighted AUC against scikit-learn, coverage of a known difference, pairing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ml.evaluate.intervals import (
    auc_interval,
    paired_auc_interval,
    paired_target_interval,
    target_intervals,
    target_sum_intervals,
    weighted_auc,
)


def test_weighted_auc_equals_scikit_learn_with_ties_and_with_integer_weights():
    rng = np.random.default_rng(0)
    n = 5000
    y = (rng.random(n) < 0.1).astype(int)
    p = np.round(rng.random(n) + 0.3 * y, 2)  # many ties
    assert weighted_auc(y, p, np.ones((1, n)))[0] == pytest.approx(roc_auc_score(y, p))
    w = rng.integers(0, 3, size=n).astype(float)  # a bootstrap weight = that many copies of the row
    assert weighted_auc(y, p, w[None, :])[0] == pytest.approx(roc_auc_score(y, p, sample_weight=w))


def test_the_auc_interval_covers_the_auc_and_shrinks_with_more_users():
    rng = np.random.default_rng(1)

    def interval(users: int):
        user = np.repeat(np.arange(users), 5)
        y = (rng.random(len(user)) < 0.2).astype(int)
        p = rng.random(len(user)) + 0.5 * y
        return roc_auc_score(y, p), auc_interval(y, p, user, n_boot=200, seed=2)

    auc_small, small = interval(200)
    auc_large, large = interval(5000)
    assert small.low < auc_small < small.high and large.low < auc_large < large.high
    assert (large.high - large.low) < 0.5 * (small.high - small.low)


def test_a_paired_interval_finds_a_small_consistent_difference_that_unpaired_intervals_overlap():
    """Model a beats b by 0.01 on every target, while targets differ by far more than that: the paired
    interval excludes zero; the two models' own intervals overlap."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.9, size=80)
    a = pd.DataFrame({"recall_at_100": base + 0.01 + rng.normal(0, 0.002, 80)})
    b = pd.DataFrame({"recall_at_100": base})
    own = {name: target_intervals(t, ["recall_at_100"], seed=4)["recall_at_100"] for name, t in (("a", a), ("b", b))}
    assert own["a"].low < own["b"].high  # overlapping
    diff = paired_target_interval(a, b, "recall_at_100", seed=4)
    assert diff.excludes_zero() and diff.low < 0.01 < diff.high
    same = paired_target_interval(b, b.assign(recall_at_100=base + rng.normal(0, 0.01, 80)), "recall_at_100", seed=4)
    assert not same.excludes_zero()


def test_a_paired_auc_interval_tells_apart_two_scorings_whose_own_intervals_overlap():
    """One population scored twice (with every input and without some): the same users resampled for both."""
    rng = np.random.default_rng(5)
    user = np.repeat(np.arange(1500), 4)
    y = (rng.random(len(user)) < 0.2).astype(int)
    p = rng.random(len(user)) + 0.6 * y
    q = p + rng.normal(0, 0.08, len(user))  # a little worse everywhere
    drop = roc_auc_score(y, p) - roc_auc_score(y, q)
    diff = paired_auc_interval(y, p, q, user, n_boot=200, seed=6)
    assert diff.excludes_zero() and diff.low < drop < diff.high
    own_p, own_q = auc_interval(y, p, user, n_boot=200, seed=6), auc_interval(y, q, user, n_boot=200, seed=6)
    assert own_q.high > own_p.low  # overlapping: unpaired, nothing is told
    same = paired_auc_interval(y, p, p, user, n_boot=50, seed=6)
    assert (same.low, same.high) == (0.0, 0.0)
    noise = paired_auc_interval(y, p, rng.permutation(p), user, n_boot=200, seed=6)
    assert noise.low > 0  # a random scoring loses everything: told apart


def test_target_intervals_skip_targets_without_a_value_and_honour_weights():
    table = pd.DataFrame({"gauc": [0.9, np.nan, 0.5], "positives": [10.0, 0.0, 0.0]})
    iv = target_intervals(table, ["gauc"], n_boot=200, seed=0, weights={"gauc": "positives"})["gauc"]
    # only the first target has weight: every resample that holds it has mean 0.9 (others are NaN)
    assert iv.high == pytest.approx(0.9)


def test_the_logloss_interval_covers_the_logloss_and_resamples_users_whole():
    from sklearn.metrics import log_loss

    from ml.evaluate.intervals import logloss_interval

    rng = np.random.default_rng(5)
    # 400 users, each with 10 identical rows: 400 independent observations, not 4,000
    y = np.repeat((rng.random(400) < 0.1).astype(int), 10)
    p = np.repeat(np.clip(0.1 + 0.3 * (y[::10] > 0) + rng.normal(0, 0.05, 400), 0.01, 0.99), 10)
    by_user = logloss_interval(y, p, np.repeat(np.arange(400), 10), n_boot=500, seed=1)
    by_row = logloss_interval(y, p, np.arange(4000), n_boot=500, seed=1)
    assert by_user.low < log_loss(y, p) < by_user.high
    # resampling rows would pretend 4,000 observations: an interval about sqrt(10) ~ 3x too narrow
    assert (by_user.high - by_user.low) > 2 * (by_row.high - by_row.low)


def _calibrated_scores(seed: int, users: int, rows_per_user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, p, y) with y drawn from p: rare buys, several rows per user."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users), rows_per_user)
    p = rng.beta(0.5, 35, len(user))
    return user, p, (rng.random(len(p)) < p).astype(float)


def test_the_expected_buyers_interval_covers_the_ratio_and_a_miscalibration_is_told_apart():
    from ml.evaluate.intervals import ratio_interval

    user, p, y = _calibrated_scores(4, 3000, 20)
    calibrated = ratio_interval(p, y, user, n_boot=500, seed=1)
    assert calibrated.low < p.sum() / y.sum() < calibrated.high and calibrated.low < 1 < calibrated.high
    doubled = ratio_interval(2 * p, y, user, n_boot=500, seed=1)
    assert doubled.low > 1.5


def test_the_ece_interval_covers_the_ece_and_separates_a_miscalibrated_score():
    from ml.evaluate.intervals import ece_interval
    from ml.train.calibration import expected_calibration_error

    user, p, y = _calibrated_scores(6, 2000, 25)
    good = ece_interval(y, p, user, n_boot=100, seed=2)
    assert good.low <= expected_calibration_error(y, p) <= good.high
    bad = ece_interval(y, np.minimum(2 * p, 1), user, n_boot=100, seed=2)
    assert bad.low > good.high


def test_the_shared_user_draw_gives_the_same_intervals_whatever_was_resampled_before():
    """Every user-level interval reads one cached Poisson draw; a smaller n_boot takes its first rows. That is
    the draw a fresh generator makes, so an interval does not depend on which ones ran before it."""
    from ml.evaluate import intervals

    rng = np.random.default_rng(4)
    user = rng.integers(0, 300, 6000)
    y = (rng.random(len(user)) < 0.1).astype(int)
    p = np.clip(rng.random(len(user)) * 0.3 + 0.3 * y, 0, 1)
    intervals._USER_WEIGHTS.clear()
    first = [intervals.ece_interval(y, p, user, n_boot=50, seed=9),
             intervals.auc_interval(y, p, user, n_boot=20, seed=9)]
    intervals.logloss_interval(y, p, user, n_boot=400, seed=9)  # a larger draw replaces the cached one
    intervals.ratio_interval(p[:100], y[:100], user[:100], seed=9)  # another population
    again = [intervals.ece_interval(y, p, user, n_boot=50, seed=9),
             intervals.auc_interval(y, p, user, n_boot=20, seed=9)]
    assert first == again
    n_users = len(np.unique(user))
    fresh = np.random.default_rng(9).poisson(1.0, size=(30, n_users))
    assert np.array_equal(intervals.user_weights(n_users, 30, 9), fresh)
    assert len(intervals._USER_WEIGHTS) <= intervals._KEEP_DRAWS


def test_a_ratio_of_sums_interval_covers_the_pooled_ratio_and_weighs_targets_by_their_size():
    """Published crowds' precision is their buyers over their users pooled over targets: a big crowd counts
    for more than a small one, unlike a mean of per-target ratios, and the interval resamples whole targets."""
    rng = np.random.default_rng(3)
    size = rng.integers(10, 1000, size=200).astype(float)
    hits = rng.binomial(size.astype(int), np.where(size > 500, 0.2, 0.05)).astype(float)  # big crowds do better
    table = pd.DataFrame({"size": size, "hits": hits})
    ratio = {"precision": lambda s: s["hits"] / s["size"]}
    pooled = hits.sum() / size.sum()
    interval = target_sum_intervals(table, ratio, ["size", "hits"])["precision"]
    assert interval.low < pooled < interval.high and interval.high - interval.low < 0.05
    mean_of_ratios = (hits / size).mean()
    assert not interval.low < mean_of_ratios < interval.high  # not the unweighted mean over targets
    constant = pd.DataFrame({"size": size, "hits": 0.1 * size})  # every target the same ratio: nothing to resample
    flat = target_sum_intervals(constant, ratio, ["size", "hits"])["precision"]
    assert flat.low == pytest.approx(0.1) and flat.high == pytest.approx(0.1)

