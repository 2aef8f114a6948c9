"""The next-day pair task's own metric: F1 of a submission of the top-K (user, item) pairs.

The Tianchi mobile competition scored a submitted set of pairs against the real buys of the next day (items
of the subset only): precision = hits / K, recall = hits / buyer pairs, F1 = 2PR / (P + R), which is
2 hits / (K + buyer pairs). A buyer pair the candidates do not hold counts as missed, as in the competition.

K is a decision like a threshold, so it is chosen on the validation day (the K with the best F1 there) and
only then applied to the backtest, where the F1 is reported with the K that produced it.
"""

from __future__ import annotations

import numpy as np


def _ranked_hits(y: np.ndarray, p: np.ndarray, tie_break: np.ndarray | None) -> np.ndarray:
    """Cumulative hits down the ranking (highest score first; ties by tie_break ascending)."""
    y = np.asarray(y, dtype=np.float64)
    tb = np.arange(len(y)) if tie_break is None else np.asarray(tie_break)
    order = np.lexsort((tb, -np.asarray(p, dtype=np.float64)))
    return np.cumsum(y[order])


def top_k_metrics(y: np.ndarray, p: np.ndarray, n_buyers: int, k: int,
                  tie_break: np.ndarray | None = None) -> dict[str, float]:
    """precision, recall and F1 of the top k pairs, against n_buyers buyer pairs (scored or not)."""
    positives = float(np.sum(y))
    if n_buyers < positives:
        raise ValueError(f"{n_buyers} buyer pairs is fewer than the {positives:.0f} positives scored "
                         "(exports of different builds?)")
    k = int(min(max(k, 1), len(y)))
    hits = float(_ranked_hits(y, p, tie_break)[k - 1]) if len(y) else 0.0
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
        hits = _ranked_hits(y, p, None) if len(y) else np.zeros(1)
        hits = np.concatenate([hits, np.full(longest - len(hits), hits[-1])])
        total += 2 * hits / (k + n_buyers)
    return int(k[np.argmax(total)])


def f1_interval(y: np.ndarray, p: np.ndarray, user: np.ndarray, k: int, buyer_users: np.ndarray,
                n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of F1 at a fixed K, users resampled with Poisson(1) weights: a user's submitted pairs,
    hits and buyer pairs (scored or not: `buyer_users` holds one user id per buyer pair) move together.
    F1 = 2 hits / (submitted + buyers), each a weighted sum over users."""
    k = int(min(max(k, 1), len(y)))
    order = np.lexsort((np.arange(len(y)), -np.asarray(p, dtype=np.float64)))
    top = np.zeros(len(y), dtype=bool)
    top[order[:k]] = True
    users, inv = np.unique(np.concatenate([np.asarray(user), np.asarray(buyer_users)]), return_inverse=True)
    scored, bought = inv[:len(y)], inv[len(y):]
    submitted = np.bincount(scored, weights=top, minlength=len(users))
    hits = np.bincount(scored, weights=top * np.asarray(y, dtype=np.float64), minlength=len(users))
    buyers = np.bincount(bought, minlength=len(users)).astype(np.float64)
    w = np.random.default_rng(seed).poisson(1.0, size=(n_boot, len(users))).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * (w @ hits) / (w @ submitted + w @ buyers)
    lo, hi = np.nanpercentile(f1, [2.5, 97.5])
    return float(lo), float(hi)
