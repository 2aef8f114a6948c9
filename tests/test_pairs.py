"""The next-day pair task's F1 of a top-K submission, recomputed by hand, and the choice of K."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from ml.evaluate.metrics import evaluate_scores
from ml.evaluate.pairs import choose_k, f1_interval, submitted_share, top_k_metrics


def test_f1_at_k_is_the_competitions_f1_of_the_submitted_pairs():
    # six candidate pairs; the buys of the next day are pairs 0, 3 and two pairs no candidate holds
    y = np.array([1, 0, 0, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.1, 0.7, 0.6, 0.2])
    # a submission of the top 3 pairs: 0, 1, 3 -> two hits of 3 submitted, out of 4 buyer pairs
    m = top_k_metrics(y, p, n_buyers=4, k=3)
    precision, recall = 2 / 3, 2 / 4
    assert m["precision_at_k"] == pytest.approx(precision)
    assert m["recall_at_k"] == pytest.approx(recall)
    assert m["f1_at_k"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert m["k"] == 3


def test_k_is_the_one_with_the_best_f1_on_the_validation_days():
    y = np.array([1, 1, 0, 0, 1, 0, 0, 0])
    p = np.linspace(1, 0, len(y))
    # F1(K) = 2 hits / (K + 3): K=1 0.5, K=2 0.8, K=3 0.667, K=5 0.75
    assert choose_k([(y, p, 3)]) == 2
    # two days: the K of the best summed F1; a day shorter than K keeps its hits
    day2 = (np.array([0, 1]), np.array([0.9, 0.1]), 1)  # F1: K=1 0, K=2 0.667, K>2 2/(K+1)
    assert choose_k([(y, p, 3), day2]) == 2


def test_tied_pairs_score_the_hits_expected_in_a_random_order_not_the_rows_order():
    # a rule's few levels: K = 4 takes the two pairs scored 3 and two of the four tied at 2, which hold one buy
    y = np.array([0, 1, 0, 0, 1, 0, 1, 0])
    p = np.array([2.0, 2.0, 3.0, 2.0, 3.0, 1.0, 2.0, 1.0])  # tied at 2: rows 0, 1, 3, 6 (two buys)
    m = top_k_metrics(y, p, n_buyers=4, k=4)
    hits = 1 + 2 * (2 / 4)  # the buy scored 3, and half the tied run's two buys
    assert m["precision_at_k"] == pytest.approx(hits / 4)
    assert m["f1_at_k"] == pytest.approx(2 * hits / (4 + 4))
    assert submitted_share(p, 4).tolist() == [0.5, 0.5, 1.0, 0.5, 1.0, 0.0, 0.5, 0.0]
    # the same over every order of the rows: the mean over all 8! orders of the pairs actually submitted first
    taken = []
    for perm in itertools.permutations(range(len(y))):
        perm = np.array(perm)
        first_k = perm[np.argsort(-p[perm], kind="stable")[:4]]
        taken.append(y[first_k].sum())
        assert top_k_metrics(y[perm], p[perm], 4, 4) == m
    assert np.mean(taken) == pytest.approx(hits)


def test_the_choice_of_k_and_the_f1_interval_do_not_depend_on_the_rows_order():
    rng = np.random.default_rng(3)
    user = np.repeat(np.arange(300), 4)
    y = (rng.random(len(user)) < 0.08).astype(int)
    p = np.round(y * 0.3 + rng.random(len(user)), 1)  # 14 levels: long runs of ties
    buyer_users = np.concatenate([user[y == 1], rng.integers(0, 300, 40)])
    k = choose_k([(y, p, len(buyer_users))])
    interval = f1_interval(y, p, user, 100, buyer_users, n_boot=200)  # K 100 cuts through a run of ties
    for _ in range(3):
        perm = rng.permutation(len(y))
        assert choose_k([(y[perm], p[perm], len(buyer_users))]) == k
        assert f1_interval(y[perm], p[perm], user[perm], 100, buyer_users, n_boot=200) == pytest.approx(interval)


def test_a_buyer_table_smaller_than_the_positives_is_refused():
    with pytest.raises(ValueError, match="fewer than"):
        top_k_metrics(np.array([1, 1]), np.array([0.5, 0.4]), n_buyers=1, k=1)


def test_the_f1_interval_holds_the_point_and_narrows_with_more_users():
    rng = np.random.default_rng(0)

    def draw(n_users: int) -> tuple:
        user = np.repeat(np.arange(n_users), 5)
        y = (rng.random(len(user)) < 0.1).astype(int)
        p = y * 0.5 + rng.random(len(user))
        buyer_users = np.concatenate([user[y == 1], rng.integers(0, n_users, n_users // 10)])
        return y, p, user, buyer_users

    widths = []
    for n in (200, 5000):
        y, p, user, buyer_users = draw(n)
        k = int(y.sum())
        point = top_k_metrics(y, p, len(buyer_users), k)["f1_at_k"]
        low, high = f1_interval(y, p, user, k, buyer_users, n_boot=300)
        assert low <= point <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_per_user_ranking_metrics_for_the_item_task():
    # user 1 has two items scored, bought the lower one; user 2 bought one unscored item only
    y = np.array([0, 1, 1])
    p = np.array([0.9, 0.5, 0.8])
    item = np.array([10, 11, 10])
    user = np.array([1, 1, 2])
    buyers = pd.DataFrame({"user_id": [1, 2, 2], "target_id": [11, 10, 99], "in_population": [True, True, False],
                           "is_candidate": [True, True, False]})
    summary, table = evaluate_scores(y, p, item, user, ns=(1,), buyers=buyers, by="user")
    assert table.index.name == "user_id"
    assert table.loc[1, "recall_at_1"] == 0.0 and table.loc[2, "recall_at_1"] == 0.5
    assert summary["recall_at_1"] == pytest.approx(0.25)
    assert summary["gauc"] == pytest.approx(0.0)  # user 1 ranks its buy below its non-buy; user 2 has no AUC
