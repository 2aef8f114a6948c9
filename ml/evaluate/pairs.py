"""The next-day pair task's own metric: F1 of a submission of the top-K (user, item) pairs.

The Tianchi mobile competition scored a submitted set of pairs against the real buys of the next day (items
of the subset only): precision = hits / K, recall = hits / buyer pairs, F1 = 2PR / (P + R), which is
2 hits / (K + buyer pairs). A buyer pair the candidates do not hold counts as missed, as in the competition.

K is a decision like a threshold, so it is chosen on the validation day (the K with the best F1 there) and
only then applied to the backtest, where the F1 is reported with the K that produced it.

Pairs of equal score are taken in no particular order: where K cuts through a run of ties, the hits are the
ones expected when the tied pairs are submitted in a random order (each tied pair submitted with the share
of the run's slots K leaves), never those of whatever order the rows came in. A rule scores in a few levels:
the `cart_then_recency` floor gives 12,174 candidate pairs 6 distinct scores, and its F1 at K 441 went from
0.115 to 0.157 with the order of the rows alone, a wider spread than the gaps the comparison is about.
"""

from __future__ import annotations

import numpy as np

from ml.evaluate.metrics import tie_runs


def _tie_runs(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rows by descending score; for each of them, its run of equal scores; each run's first position in
    that order and its length."""
    order = np.argsort(-np.asarray(p, dtype=np.float64), kind="stable")
    return order, *tie_runs(np.zeros(len(order), dtype=np.int8), np.asarray(p, dtype=np.float64)[order])


def _expected_hits(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Expected hits of the top K pairs for every K = 1 .. n (ties in a random order)."""
    order, run, starts, lengths = _tie_runs(p)
    y_ranked = np.asarray(y, dtype=np.float64)[order]
    run_hits = np.bincount(run, weights=y_ranked, minlength=len(starts))
    hits_before = np.concatenate([[0.0], np.cumsum(run_hits)[:-1]])
    taken = np.arange(1, len(y_ranked) + 1) - starts[run]  # the run's slots filled at K = position + 1
    return hits_before[run] + taken * run_hits[run] / lengths[run]


def submitted_share(p: np.ndarray, k: int) -> np.ndarray:
    """Per row (in the input's order), the chance it is among the top k submitted: 1 above the run of ties
    that k cuts through, k's remaining slots shared among that run's pairs, 0 below."""
    order, run, starts, lengths = _tie_runs(p)
    slots = np.clip(k - starts, 0, lengths)  # per run: how many of its pairs the top k holds
    share = np.empty(len(order))
    share[order] = slots[run] / lengths[run]
    return share


def top_k_metrics(y: np.ndarray, p: np.ndarray, n_buyers: int, k: int) -> dict[str, float]:
    """precision, recall and F1 of the top k pairs, against n_buyers buyer pairs (scored or not)."""
    positives = float(np.sum(y))
    if n_buyers < positives:
        raise ValueError(f"{n_buyers} buyer pairs is fewer than the {positives:.0f} positives scored "
                         "(exports of different builds?)")
    k = int(min(max(k, 1), len(y)))
    hits = float(submitted_share(p, k) @ np.asarray(y, dtype=np.float64)) if len(y) else 0.0
    precision = hits / k if k else 0.0
    recall = hits / n_buyers if n_buyers else float("nan")
    f1 = 2 * hits / (k + n_buyers) if (k + n_buyers) else float("nan")
    return {"f1_at_k": f1, "precision_at_k": precision, "recall_at_k": recall, "k": float(k)}


def choose_k(days: list[tuple[np.ndarray, np.ndarray, int]]) -> int:
    """The K with the best F1 summed over the validation days (y, p, buyer pairs) (the smallest such K on
    ties). F1(K) = 2 hits(K) / (K + buyers) gives every K at once; past a day's last pair its hits stay."""
    if not days or all(len(y) == 0 for y, _, _ in days):
        raise ValueError("no validation pairs to choose a submission size on")
    longest = max(len(y) for y, _, _ in days)
    k = np.arange(1, longest + 1)
    total = np.zeros(longest)
    for y, p, n_buyers in days:
        hits = _expected_hits(y, p) if len(y) else np.zeros(1)
        hits = np.concatenate([hits, np.full(longest - len(hits), hits[-1])])
        total += 2 * hits / (k + n_buyers)
    return int(k[np.argmax(total)])


def f1_interval(y: np.ndarray, p: np.ndarray, user: np.ndarray, k: int, buyer_users: np.ndarray,
                n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of F1 at a fixed K, users resampled with Poisson(1) weights: a user's submitted pairs,
    hits and buyer pairs (scored or not: `buyer_users` holds one user id per buyer pair) move together.
    F1 = 2 hits / (submitted + buyers), each a weighted sum over users (a tied pair counts its share)."""
    k = int(min(max(k, 1), len(y)))
    share = submitted_share(p, k)
    users, inv = np.unique(np.concatenate([np.asarray(user), np.asarray(buyer_users)]), return_inverse=True)
    scored, bought = inv[:len(y)], inv[len(y):]
    submitted = np.bincount(scored, weights=share, minlength=len(users))
    hits = np.bincount(scored, weights=share * np.asarray(y, dtype=np.float64), minlength=len(users))
    buyers = np.bincount(bought, minlength=len(users)).astype(np.float64)
    w = np.random.default_rng(seed).poisson(1.0, size=(n_boot, len(users))).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * (w @ hits) / (w @ submitted + w @ buyers)
    lo, hi = np.nanpercentile(f1, [2.5, 97.5])
    return float(lo), float(hi)
