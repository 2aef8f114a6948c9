"""The ceiling: P(buy in [ds, ds + label_days)) from the generator's hidden state at ds.

What it conditions on: every user's latent taste (and its drift), consideration set,
activity rate, current intent, earlier carts, and the delayed intent already
scheduled (repeat purchases and brand transitions from earlier buys). What it
integrates over by Monte Carlo: the future sessions, needs, brand choices and
funnel steps inside the label window.

Buys are not realised inside the rollouts. That is exact rather than an
approximation, by construction of the simulation: a buy changes the state only
through (a) the satiation of the pair that bought, which cannot matter for "did
this pair buy at least once", and (b) delayed intent for repeat and related
brands, which lands at least min(repeat cycle, transition lag) days later; the
defaults keep both at or beyond the label window (checked when the oracle is
asked for). No buy changes any other pair's path inside the window. On paths
where the pair has not bought yet, P(no buy) is the product over its sessions of
(1 - p_buy), so averaging that product over rollouts is an unbiased estimate of
P(no buy in the window), with far less noise than counting sampled buys.

With item memory (Intensities.item_focus > 0, the Tianchi-like preset) the oracle is per (user, item): a
session's buy is of the item it ends on, which the rollouts draw like the generator does, and P(no buy of
the item) is the product over the sessions ending on it. One approximation enters there, and only there: a
buy sates its (user, brand) slot, so in the real log a buy of one item lowers the odds of a second item of
the same brand later in the same label window, which unrealised buys cannot do. With the next-day label of
that preset, two sessions ending on different items of one brand within the day are rare; the brand-level
oracle stays exact.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.synth.simulate import BuyHazards, Simulator, State

_BLOCK_ROWS = 200_000  # rollout rows simulated at once: bounds the oracle's memory


def check_oracle_is_exact(sim: Simulator, label_days: int) -> None:
    p = sim.p
    shortest = min(p.transition_lag_days[0], p.repeat_cycle_days[0] * 0.8)
    if shortest < label_days:
        raise ValueError(
            f"the oracle assumes delayed intent lands after the label window ({label_days} days), "
            f"but the shortest lag is {shortest:g} days: raise transition_lag_days / repeat_cycle_days"
        )


def oracle_at(
    sim: Simulator, state: State, t0: int, label_days: int, rollouts: int, rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Rows: every (user, considered brand) at day t0 and any brand reached in the rollouts; with item
    memory, every (user, focus item of a considered brand) and any item reached.

    Columns: user (index in the chunk), brand or item (index), p_buy, p_buy_se (Monte Carlo standard
    error), p_buy_half (from the first half of the rollouts alone), affinity and intent at t0 (the hidden
    state, for signal tests; NaN off the slots).

    With `groups` ([brands, tags]: the share of a brand's buys that falls in each tag's categories,
    world.brand_category_shares), also the tags' frame: user, tag (column index), p_buy = P(at least one buy
    in the tag's categories in the window), p_buy_se; every user with a session that could buy in the tag.
    Exact for a brand wholly inside or outside a tag; for a brand with items on both sides, a buy outside
    the tag sates the brand for its later sessions inside it, which unrealised buys cannot do.
    """
    if rollouts < 2:
        raise ValueError(f"the oracle needs at least 2 rollouts (its error compares their halves), got {rollouts}")
    if t0 + label_days > sim.days:
        raise ValueError(f"oracle day {t0} + {label_days} label days runs past the end of the log ({sim.days} days)")
    snap = state.copy()
    sim.materialise_all(snap, t0)
    n_u = snap.slot_brand.shape[0]
    by_item = sim.p.item_focus > 0
    n_b = len(sim.w.item_ids) if by_item else sim.w.n_brands  # the entity keyed on: brand, or item

    used = np.isfinite(snap.static) & ((snap.focus_item >= 0) if by_item else True)
    su, sk = np.nonzero(used)
    slot_key = su.astype(np.int64) * n_b + (snap.focus_item if by_item else snap.slot_brand)[su, sk]
    slot_aff = snap.aff0[su, sk] + snap.slope[su, sk] * np.float32(t0)
    slot_int = snap.intent[su, sk]

    keys: list[np.ndarray] = []
    sums: list[np.ndarray] = []
    tag_parts: list[pd.DataFrame] = []
    block_users = max(1, _BLOCK_ROWS // rollouts)
    for first in range(0, n_u, block_users):
        users = np.arange(first, min(n_u, first + block_users))
        roll = snap.take(users).repeat(rollouts)
        hz: list[BuyHazards] = []
        for d in range(label_days):
            out = sim.step_day(roll, t0 + d, rng, emit=False)
            if out is not None:
                hz.append(out)
        if not hz:
            continue
        row = np.concatenate([h.row for h in hz]).astype(np.int64)
        brand = np.concatenate([h.item if by_item else h.brand for h in hz]).astype(np.int64)
        lnb = np.concatenate([h.log_no_buy for h in hz])
        if groups is not None:
            sessions_brand = np.concatenate([h.brand for h in hz]).astype(np.int64)
            tag_parts.append(_group_no_buy(row, sessions_brand, lnb, groups, first, rollouts))
        # sum log P(no buy) per (rollout row, brand), then average the products over rollouts
        k1, inv = np.unique(row * n_b + brand, return_inverse=True)
        rollout_row = k1 // n_b
        k2, inv2 = np.unique((first + rollout_row // rollouts) * n_b + k1 % n_b, return_inverse=True)
        keys.append(k2)
        sums.append(_rollout_sums(np.exp(np.bincount(inv, weights=lnb)), inv2, len(k2), rollout_row % rollouts,
                                  rollouts))

    hk = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    all_keys = np.union1d(slot_key, hk)
    p_buy, se, p_half = (np.zeros(len(all_keys)) for _ in range(3))
    if len(hk):
        pos = np.searchsorted(all_keys, hk)
        p_buy[pos], se[pos], p_half[pos] = _from_rollouts(np.concatenate(sums, axis=1), rollouts)
    affinity = np.full(len(all_keys), np.nan, np.float32)
    intent = np.full(len(all_keys), np.nan, np.float32)
    pos = np.searchsorted(all_keys, slot_key)
    affinity[pos] = slot_aff
    intent[pos] = slot_int
    frame = pd.DataFrame(
        {
            "user": (all_keys // n_b).astype(np.int64),
            "item" if by_item else "brand": (all_keys % n_b).astype(np.int64),
            "p_buy": p_buy.astype(np.float32),
            "p_buy_se": se.astype(np.float32),
            "p_buy_half": p_half.astype(np.float32),
            "affinity": affinity,
            "intent": intent,
        }
    )
    if groups is None:
        return frame
    tags = pd.concat(tag_parts, ignore_index=True) if tag_parts else _empty_tags()
    return frame, tags


def _group_no_buy(row: np.ndarray, brand: np.ndarray, lnb: np.ndarray, groups: np.ndarray, first: int,
                  rollouts: int) -> pd.DataFrame:
    """Per (user, tag) of one block: P(a buy in the tag's categories) from the sessions' hazards, a buy of
    the session being in the tag with the brand's share (groups[brand, tag])."""
    p_session = -np.expm1(lnb)
    parts = []
    for g in range(groups.shape[1]):
        share = groups[brand, g]
        m = share > 0
        if not m.any():
            continue
        k, inv = np.unique(row[m], return_inverse=True)  # rollout rows with a session that could buy in g
        no_buy = np.exp(np.bincount(inv, weights=np.log1p(-np.minimum(p_session[m] * share[m], 1 - 1e-7))))
        users, inv_u = np.unique(first + k // rollouts, return_inverse=True)
        mean, se, half = _from_rollouts(_rollout_sums(no_buy, inv_u, len(users), k % rollouts, rollouts), rollouts)
        parts.append(pd.DataFrame({"user": users, "tag": g, "p_buy": mean.astype(np.float32),
                                   "p_buy_se": se.astype(np.float32), "p_buy_half": half.astype(np.float32)}))
    return pd.concat(parts, ignore_index=True) if parts else _empty_tags()


def _empty_tags() -> pd.DataFrame:
    return pd.DataFrame({"user": np.zeros(0, np.int64), "tag": np.zeros(0, np.int64),
                         **{c: np.zeros(0, np.float32) for c in ("p_buy", "p_buy_se", "p_buy_half")}})


def _rollout_sums(no_buy: np.ndarray, key: np.ndarray, n_keys: int, rollout: np.ndarray, rollouts: int
                  ) -> np.ndarray:
    """[4, n_keys]: per key, over the rollouts with a session, the sums of P(no buy) and of P(buy)^2, the
    number of such rollouts, and the sum of P(no buy) over those in the first half of the rollouts."""
    first_half = rollout < rollouts // 2
    return np.stack([np.bincount(key, weights=no_buy, minlength=n_keys),
                     np.bincount(key, weights=(1 - no_buy) ** 2, minlength=n_keys),
                     np.bincount(key, minlength=n_keys).astype(np.float64),
                     np.bincount(key, weights=no_buy * first_half, minlength=n_keys),
                     np.bincount(key, weights=first_half, minlength=n_keys)])


def _from_rollouts(sums: np.ndarray, rollouts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(buy) and its Monte Carlo standard error per key, and P(buy) from the first half of the rollouts
    alone (how far the estimate still moves with the number of rollouts: the ceiling's Monte Carlo error);
    a rollout with no session had P(no buy) = 1."""
    sum_no_buy, sum_sq, n, half_no_buy, n_half = sums
    r, h = float(rollouts), float(rollouts // 2)
    mean = 1.0 - (sum_no_buy + (r - n)) / r
    var = np.maximum(sum_sq / r - mean**2, 0.0) * r / max(r - 1.0, 1.0)
    return mean, np.sqrt(var / r), 1.0 - (half_no_buy + (h - n_half)) / h
