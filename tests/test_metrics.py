"""Metrics: hand-computed cases, scikit-learn agreement, and independence from row order."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, ndcg_score, roc_auc_score, roc_curve

from ml.evaluate.curves import gain_points, lift, roc_points, series_curves
from ml.evaluate.metrics import auc, evaluate_scores, group_auc, ranking_metrics
from ml.evaluate.plots import curve_figures


def test_ranking_metrics_on_a_hand_computed_case():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6])
    m = ranking_metrics(y, p, np.zeros(4), ns=(2, 4)).per_group.iloc[0]
    assert m["recall_at_2"] == 0.5 and m["precision_at_2"] == 0.5
    assert m["ndcg_at_2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["map_at_2"] == pytest.approx(0.5)  # one buyer at rank 1 (precision 1), divided by min(2, 2)
    assert m["recall_at_4"] == 1.0 and m["precision_at_4"] == 0.5
    assert m["map_at_4"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["ndcg_at_4"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))


def test_groups_are_ranked_separately_and_groups_without_buyers_are_left_out_of_the_mean():
    y = np.array([0, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.1, 0.5, 0.5, 0.4, 0.3])
    g = np.array(["a", "a", "b", "b", "c", "c"])
    m = ranking_metrics(y, p, g, ns=(1,))
    assert m.per_group.loc["a", "recall_at_1"] == 0 and m.per_group.loc["c", "recall_at_1"] == 1
    assert np.isnan(m.per_group.loc["b", "recall_at_1"])
    assert m.mean["recall_at_1"] == 0.5  # (0 + 1) / 2: b has no buyer


def test_ranking_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(3)
    n, groups = 3000, 7
    g = rng.integers(0, groups, n)
    p = rng.random(n)  # continuous: no ties
    y = (rng.random(n) < 0.05 + 0.3 * p).astype(int)
    m = ranking_metrics(y, p, g, ns=(10, 50, n)).per_group
    for k in range(groups):
        part = g == k
        assert m.loc[k, "ndcg_at_10"] == pytest.approx(ndcg_score([y[part]], [p[part]], k=10))
        assert m.loc[k, "ndcg_at_50"] == pytest.approx(ndcg_score([y[part]], [p[part]], k=50))
        # with N beyond the group, MAP@N is average precision
        assert m.loc[k, f"map_at_{n}"] == pytest.approx(average_precision_score(y[part], p[part]))
        top10 = np.argsort(-p[part])[:10]
        assert m.loc[k, "recall_at_10"] == pytest.approx(y[part][top10].sum() / y[part].sum())
    weighted, unweighted, per = group_auc(y, p, g)
    aucs = np.array([roc_auc_score(y[g == k], p[g == k]) for k in range(groups)])
    assert per.to_numpy() == pytest.approx(aucs)
    assert unweighted == pytest.approx(aucs.mean())
    assert weighted == pytest.approx(np.average(aucs, weights=[y[g == k].sum() for k in range(groups)]))


def test_the_pooled_auc_agrees_with_scikit_learn_with_tied_scores():
    rng = np.random.default_rng(4)
    y = (rng.random(2000) < 0.2).astype(int)
    p = rng.integers(0, 7, 2000) / 7  # many ties, each counting one half
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert np.isnan(auc(np.zeros(5), rng.random(5)))


def _metrics_of_one_order(y: np.ndarray, p: np.ndarray, order: np.ndarray, n: int) -> list[float]:
    """recall, precision, NDCG and MAP at n of one group, ties taken in the order given, by the definitions."""
    ranked = y[sorted(order, key=lambda i: -p[i])]  # a stable sort: ties stay in `order`
    top = ranked[:n]
    buyers = y.sum()
    ideal = sum(1 / math.log2(r + 2) for r in range(int(min(buyers, n))))
    dcg = sum(rel / math.log2(r + 2) for r, rel in enumerate(top))
    ap = sum(top[:r + 1].sum() / (r + 1) for r in range(len(top)) if top[r])
    return [top.sum() / buyers, top.sum() / n, dcg / ideal, ap / min(buyers, n)]


def test_tied_rows_count_what_a_random_order_of_the_tie_would_give_on_average():
    # a heuristic's levels: a run of four tied at 2 (two buyers) straddles the top 3, a run of three at 1
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    p = np.array([2.0, 2.0, 3.0, 2.0, 1.0, 2.0, 1.0, 1.0])
    for n in (1, 3, 5, 7):
        per_order = [_metrics_of_one_order(y, p, np.array(order), n) for order in itertools.permutations(range(8))]
        m = ranking_metrics(y, p, np.zeros(8), ns=(n,)).per_group.iloc[0]
        got = [m[f"recall_at_{n}"], m[f"precision_at_{n}"], m[f"ndcg_at_{n}"], m[f"map_at_{n}"]]
        assert got == pytest.approx(np.mean(per_order, axis=0), abs=1e-12)
    # without ties the order is the order
    distinct = np.array([0.8, 0.7, 0.9, 0.1, 0.3, 0.6, 0.2, 0.4])
    m = ranking_metrics(y, distinct, np.zeros(8), ns=(3,)).per_group.iloc[0]
    assert [m["recall_at_3"], m["precision_at_3"], m["ndcg_at_3"], m["map_at_3"]] == pytest.approx(
        _metrics_of_one_order(y, distinct, np.arange(8), 3))


def test_results_do_not_depend_on_row_order_even_with_tied_scores():
    rng = np.random.default_rng(5)
    n = 500
    y, g, user = (rng.random(n) < 0.1).astype(int), rng.integers(0, 3, n), rng.permutation(n)
    p = rng.integers(0, 5, n) / 5  # many ties
    first, _ = evaluate_scores(y, p, g, user, ns=(5, 20))
    order = rng.permutation(n)
    second, _ = evaluate_scores(y[order], p[order], g[order], user[order], ns=(5, 20))
    assert first == pytest.approx(second, nan_ok=True)


def test_gauc_is_per_user_weighted_by_the_users_rows_and_auc_per_target_by_the_targets_buyers():
    # user 1: 4 rows, ranks its one buy above 2 of 3 others (AUC 2/3); user 2: 2 rows, AUC 1; user 3: one class
    y = np.array([1, 0, 0, 0, 1, 0, 0])
    p = np.array([0.5, 0.9, 0.1, 0.2, 0.8, 0.3, 0.4])
    user = np.array([1, 1, 1, 1, 2, 2, 3])
    target = np.array([7, 8, 7, 8, 7, 8, 7])
    summary, _ = evaluate_scores(y, p, target, user, ns=(1,))
    assert summary["gauc"] == pytest.approx((4 * 2 / 3 + 2 * 1.0) / 6)
    # target 8 holds no buyer: no AUC, skipped
    assert summary["auc_per_target"] == pytest.approx(roc_auc_score(y[target == 7], p[target == 7]))


def test_precision_counts_every_crowd_and_recall_only_those_with_a_buyer():
    # target 1: a buyer at the top; target 2: no buyer at all (its crowd of 1 holds no buyer: precision 0)
    y = np.array([1, 0, 0, 0])
    p = np.array([0.9, 0.1, 0.8, 0.2])
    g = np.array([1, 1, 2, 2])
    summary, _ = evaluate_scores(y, p, g, np.arange(4), ns=(1,))
    assert summary["precision_at_1"] == 0.5 and summary["recall_at_1"] == 1.0


def test_gauc_skips_groups_with_one_class():
    y = np.array([1, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    g = np.array([0, 0, 1, 1, 2, 2])
    weighted, unweighted, per = group_auc(y, p, g)
    assert per.loc[0] == 1.0 and np.isnan(per.loc[1]) and np.isnan(per.loc[2])
    assert weighted == unweighted == 1.0


def test_recall_counts_buyers_outside_the_scored_population_as_missed():
    # target 7: two scored buyers (ranks 1 and 3) and two more buyers the population never held
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6])
    g = np.full(4, 7)
    user = np.arange(4)
    buyers = pd.DataFrame({"target_id": [7, 7, 7, 7], "user_id": [0, 2, 10, 11],
                           "in_population": [True, True, False, False], "is_candidate": [True, False, False, False]})
    summary, table = evaluate_scores(y, p, g, user, ns=(2, 4), buyers=buyers)
    row = table.loc[7]
    assert row["buyers"] == 4 and row["positives"] == 2
    assert row["recall_at_4"] == 0.5 and row["recall_at_2"] == 0.25  # not 1.0 and 0.5 over the scored set only
    assert row["coverage"] == 0.5 and row["candidate_coverage"] == 0.25
    assert row["map_at_4"] == pytest.approx((1 + 2 / 3) / 4)  # divided by min(buyers, N)
    assert summary["coverage"] == 0.5 and summary["recall_at_4"] <= summary["coverage"]
    alone, _ = evaluate_scores(y, p, g, user, ns=(4,))
    assert alone["recall_at_4"] == 1.0


def test_a_target_whose_buyers_were_all_unscored_counts_as_zero_recall_not_as_missing():
    y = np.array([0, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6])
    g = np.array([1, 1, 2, 2])
    buyers = pd.DataFrame({"target_id": [1, 2], "user_id": [50, 2], "in_population": [False, True],
                           "is_candidate": [False, True]})
    summary, table = evaluate_scores(y, p, g, np.arange(4), ns=(1,), buyers=buyers)
    assert table.loc[1, "recall_at_1"] == 0 and table.loc[2, "recall_at_1"] == 1
    assert summary["recall_at_1"] == 0.5 and summary["coverage"] == 0.5


def test_a_buyers_table_with_fewer_buyers_than_the_scored_positives_is_refused():
    buyers = pd.DataFrame({"target_id": [1], "user_id": [0], "in_population": [True], "is_candidate": [True]})
    with pytest.raises(ValueError, match="fewer buyers"):
        evaluate_scores(np.array([1, 1]), np.array([0.5, 0.4]), np.array([1, 1]), np.arange(2), ns=(1,), buyers=buyers)


def test_the_gain_curve_takes_tied_pairs_together_and_reaches_every_buyer():
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0], dtype=float)
    p = np.array([0.9, 0.9, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1])
    x, found = gain_points(y, p)
    at = dict(zip(np.round(x, 6), found, strict=True))
    # the top two (tied) hold one of two buyers: a quarter of the pairs finds half, an eighth a quarter
    assert at[0.25] == pytest.approx(0.5) and np.interp(0.125, x, found) == pytest.approx(0.25)
    assert at[0.5] == pytest.approx(1.0) and at[1.0] == pytest.approx(1.0)
    # any row order gives the same curve
    order = np.random.default_rng(0).permutation(len(y))
    assert np.allclose(gain_points(y[order], p[order])[1], found)
    lifted = lift(pd.DataFrame({"x": x, "y": found}))
    assert lifted.loc[np.isclose(lifted["x"], 0.25), "y"].iloc[0] == pytest.approx(2.0)  # twice random


def test_the_roc_points_lie_on_scikit_learns_curve_and_integrate_to_its_auc():
    rng = np.random.default_rng(5)
    y = (rng.random(20_000) < 0.05).astype(float)
    p = rng.random(20_000) + y * 0.3
    x, tpr = roc_points(y, p)
    assert x[0] == 0 and x[-1] == 1 and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, x) == pytest.approx(roc_auc_score(y, p), abs=0.01)
    tied = np.round(p, 1)  # runs of tied scores: one step each, as roc_curve draws them
    fpr, sk_tpr, _ = roc_curve(y, tied)
    assert np.allclose(roc_points(y, tied)[1], np.interp(x, fpr, sk_tpr), atol=1e-12)


def test_series_curves_hold_recall_at_n_of_the_ranking_metrics_and_reliability_only_for_probabilities():
    rng = np.random.default_rng(6)
    n = 5_000
    y = (rng.random(n) < 0.05).astype(float)
    p = np.clip(rng.random(n) * 0.1 + y * 0.05, 0, 1)
    target = rng.integers(0, 20, n)
    curves = series_curves("m", y, p, target, None)
    recall = curves[curves["curve"] == "recall_at_n"].set_index("x")["y"]
    expected = ranking_metrics(y, p, target, (100,)).mean["recall_at_100"]
    assert recall[100.0] == pytest.approx(expected)
    assert {"roc", "gain", "reliability", "ece"} <= set(curves["curve"]) and set(curves["series"]) == {"m"}
    floor = series_curves("floor: f", y, p, target, None, probabilities=False)
    assert not {"reliability", "ece"} & set(floor["curve"])


def test_a_sparse_tasks_bins_without_a_buyer_are_marked_on_the_log_axes_not_drawn_as_a_drop():
    rng = np.random.default_rng(8)
    # 4,000 pairs, 30 buyers: most of the 20 reliability bins hold none, and the top pairs hold no buyer
    n = 4_000
    p = np.sort(rng.random(n) ** 4 * 0.05)[::-1]
    y = np.zeros(n)
    y[rng.choice(np.arange(20, 1500), 30, replace=False)] = 1
    curves = series_curves("m", y, p, np.zeros(n), None)
    reliability = curves[curves["curve"] == "reliability"]
    assert (reliability["y"] == 0).sum() >= 5
    figures = curve_figures(curves)
    for name in ("calibration", "lift"):
        for line in figures[name].axes[0].get_lines():
            drawn = np.asarray(line.get_ydata(), dtype=float)
            assert (drawn[np.isfinite(drawn)] > 0).all(), name  # no point a log axis clips to its foot
    ax = figures["calibration"].axes[0]
    foot = ax.get_ylim()[0]
    marks = [line for line in ax.get_lines() if line.get_marker() == "v"]
    assert len(marks) == 1 and np.allclose(marks[0].get_ydata(), foot)
    assert sorted(marks[0].get_xdata()) == sorted(reliability.loc[reliability["y"] == 0, "x"])
