"""Heuristic floors: what a merchant gets with no model, scored by the same evaluator on the same rows.

A learned model earns its place only by beating them. Both read the exported pair features (ub_*), so they
need no training and no labels:

- `decayed_count`: the user's interactions with the target, each band of the history windows weighted by
  half-life decay of its mid-age (a recent click outweighs an old one);
- `cart_then_recency`: pairs carted or collected first, then pairs merely touched, each tier ordered by how
  recently the user last touched the target;
- `cart_last_day` (the next-day item task's classic rule): pairs carted on the day before and not bought
  that day first, then the rest by recency. Its F1 is the rule's own submission when the K chosen on the
  validation day is the number of pairs the rule flags.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.config import ACTIONS

HALF_LIFE_DAYS = 7.0


def verdict(model: str, auc: float, low: float, high: float, floor: tuple[str, float] | None) -> str | None:
    """One line when a model is not worth its training: no better than random ranking (its AUC interval
    reaches 0.5), or no better than the best heuristic floor (`floor`: its name and AUC, given when the
    model's interval reaches it). None when it clears both."""
    if low <= 0.5:
        return f"{model} ranks no better than random: backtest AUC {auc:.4f} (interval {low:.4f}-{high:.4f})"
    if floor:
        return (f"{model} does not beat the heuristic floor {floor[0]}: backtest AUC {auc:.4f} "
                f"(interval {low:.4f}-{high:.4f}) against {floor[1]:.4f}")
    return None


def _windows(frame: pd.DataFrame) -> list[int]:
    return sorted(int(c.removeprefix("ub_click_").removesuffix("d")) for c in frame.columns
                  if c.startswith("ub_click_") and c.endswith("d"))


def decayed_count(frame: pd.DataFrame) -> np.ndarray:
    windows = _windows(frame)
    if not windows:
        raise ValueError("no ub_click_<N>d columns: the floors need the pair's window counts")
    score = np.zeros(len(frame))
    previous_total, previous_w = np.zeros(len(frame)), 0
    for w in windows:
        total = sum(frame[f"ub_{a}_{w}d"].to_numpy(np.float64) for a in ACTIONS)
        mid_age = (previous_w + w) / 2
        score += (total - previous_total) * 0.5 ** (mid_age / HALF_LIFE_DAYS)
        previous_total, previous_w = total, w
    return score


def cart_then_recency(frame: pd.DataFrame) -> np.ndarray:
    longest = _windows(frame)[-1]
    intent = (frame[f"ub_cart_{longest}d"].to_numpy() + frame[f"ub_collect_{longest}d"].to_numpy()) > 0
    recency = frame["ub_recency_any"].astype("float64").to_numpy()
    touched = ~np.isnan(recency)
    closeness = np.where(touched, 1.0 / (2.0 + np.nan_to_num(recency)), 0.0)  # in [0, 0.5]
    return np.where(intent, 2.0, np.where(touched, 1.0, 0.0)) + closeness


def cart_last_day(frame: pd.DataFrame) -> np.ndarray:
    if "ub_cart_1d" not in frame.columns:
        raise ValueError("cart_last_day needs the pair's 1-day counts: add 1 to warehouse.feature_windows")
    rule = (frame["ub_cart_1d"].to_numpy() > 0) & (frame["ub_buy_1d"].to_numpy() == 0)
    recency = frame["ub_recency_any"].astype("float64").to_numpy()
    closeness = np.where(np.isnan(recency), 0.0, 1.0 / (2.0 + np.nan_to_num(recency)))  # in [0, 0.5]
    return np.where(rule, 1.0, 0.0) + closeness


FLOORS = {"decayed_count": decayed_count, "cart_then_recency": cart_then_recency, "cart_last_day": cart_last_day}
# which floors each target is compared with: the one-day rule belongs to the next-day item task
FLOORS_OF = {"brand": ("decayed_count", "cart_then_recency"), "category": ("decayed_count", "cart_then_recency"),
             "item": ("decayed_count", "cart_then_recency", "cart_last_day"),
             "tag": ("decayed_count", "cart_then_recency")}  # the user's activity in the tag's categories


def floor_scores(frame: pd.DataFrame, target: str) -> dict[str, np.ndarray]:
    return {name: FLOORS[name](frame) for name in FLOORS_OF[target]}
