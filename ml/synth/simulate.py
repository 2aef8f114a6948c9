"""The day-by-day simulation of one chunk of users, and the Monte Carlo oracle built on it.

State is kept per (row, slot): a row is a user (or, in the oracle, one rollout of
a user) and a slot is one brand the user considers. Rows are touched only on the
days they have a session; decay and delayed intent ("pending") are applied lazily
when a row is touched, so a day costs in proportion to its sessions, not to the
population. The same `step_day` serves generation (events are emitted and buys
take effect) and the oracle (buys are suppressed and their hazard recorded).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ml.synth.world import Users, World

NO_DAY = np.int16(-30000)    # "never": an earlier cart this long ago has no effect
NO_PENDING = np.int16(32767)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def choose(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of logits (inverse CDF: one exp per cell, cheaper than Gumbel)."""
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    cum = np.cumsum(w, axis=1)
    u = rng.random(len(w)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), w.shape[1] - 1)


@dataclass
class State:
    row_user: np.ndarray    # int32 [R]: the user a row simulates
    row_rate: np.ndarray    # float32 [R]: mean sessions per day
    last: np.ndarray        # int32 [R]: day up to which the row's intent is materialised
    slot_brand: np.ndarray  # int32 [R, K]
    static: np.ndarray      # float32 [R, K]: w_pop * log popularity (or -inf for an unused slot)
    aff0: np.ndarray        # float32 [R, K]: affinity on day 0
    slope: np.ndarray       # float32 [R, K]: affinity change per day (taste drift)
    intent: np.ndarray      # float32 [R, K]
    cart_day: np.ndarray    # int16 [R, K]
    sated_day: np.ndarray   # int16 [R, K]: day of the last buy (lowers the pair's buy odds for a while)
    pend_day: np.ndarray    # int16 [R, K]: day a delayed intent lands
    pend_amt: np.ndarray    # float32 [R, K]
    pend_brand: np.ndarray  # int32 [R, K]: brand that takes the slot when it lands (-1: same brand)
    focus_item: np.ndarray  # int32 [R, K]: the item the user last ended a session on in that brand (-1: none)

    def copy(self) -> State:
        return State(**{f.name: getattr(self, f.name).copy() for f in fields(self)})

    def repeat(self, times: int) -> State:
        """Each row repeated `times` times in a row: rollouts of one user are adjacent."""
        return State(**{f.name: np.repeat(getattr(self, f.name), times, axis=0) for f in fields(self)})

    def take(self, rows: np.ndarray) -> State:
        return State(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


@dataclass
class DayEvents:
    user: np.ndarray    # int32 row (= user index in generation)
    item: np.ndarray    # int32 item index
    action: np.ndarray  # int8: 0 click, 1 collect, 2 cart, 3 buy
    sec: np.ndarray     # int32 seconds into the day


@dataclass
class BuyHazards:
    """Per session of the oracle: the row, the brand, the item a buy would be of and log P(no buy in this
    session)."""

    row: np.ndarray
    brand: np.ndarray
    item: np.ndarray
    log_no_buy: np.ndarray


class Simulator:
    def __init__(self, world: World, users: Users):
        self.w = world
        self.u = users
        self.p = world.p
        self.days = world.sizes.days
        self.decay = np.float32(self.p.intent_decay)
        self.sated_days = np.where(
            world.brand_repeat_cycle > 0, self.p.sated_days_repeat, self.p.sated_days_durable
        ).astype(np.float32)

    # ---- affinity -------------------------------------------------------------------------
    def affinity_terms(self, user: np.ndarray, brand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Affinity on day 0 and its daily slope for (user, brand) pairs of any shape."""
        vec = self.w.brand_vec[brand]
        a0 = np.einsum("...d,...d->...", self.u.taste0[user], vec)
        a1 = np.einsum("...d,...d->...", self.u.taste1[user], vec)
        return a0.astype(np.float32), ((a1 - a0) / max(self.days - 1, 1)).astype(np.float32)

    # ---- initial state --------------------------------------------------------------------
    def initial_state(self, rng: np.random.Generator) -> State:
        """Each user's consideration set: brands drawn by popularity, the best liked kept.

        A drifting user keeps brands liked at either end of the drift, so the set can follow the taste.
        """
        n_u = len(self.u.rate)
        n_b = self.w.n_brands
        k = min(self.p.slots, max(2, n_b // 2))
        draws = 4 * k
        cdf = np.cumsum(self.w.brand_pop)
        cand = np.minimum(np.searchsorted(cdf, rng.random((n_u, draws)) * cdf[-1]), n_b - 1).astype(np.int32)
        cand.sort(axis=1)
        dup = np.zeros_like(cand, dtype=bool)
        dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
        users = np.arange(n_u)[:, None]
        a0, slope = self.affinity_terms(users, cand)
        a1 = a0 + slope * (self.days - 1)
        score = np.maximum(a0, a1) + rng.gumbel(size=cand.shape).astype(np.float32)
        score[dup] = -np.inf
        top = np.argpartition(-score, k - 1, axis=1)[:, :k]
        slot_brand = np.take_along_axis(cand, top, axis=1)
        unused = ~np.isfinite(np.take_along_axis(score, top, axis=1))
        aff0, slope_k = self.affinity_terms(users, slot_brand)
        static = self.p.w_pop * self.w.brand_log_pop[slot_brand]
        static[unused] = -np.inf
        shape = slot_brand.shape
        return State(
            row_user=np.arange(n_u, dtype=np.int32),
            row_rate=self.u.rate.copy(),
            last=np.zeros(n_u, dtype=np.int32),
            slot_brand=slot_brand,
            static=static.astype(np.float32),
            aff0=aff0,
            slope=slope_k,
            intent=np.zeros(shape, dtype=np.float32),
            cart_day=np.full(shape, NO_DAY, dtype=np.int16),
            sated_day=np.full(shape, NO_DAY, dtype=np.int16),
            pend_day=np.full(shape, NO_PENDING, dtype=np.int16),
            pend_amt=np.zeros(shape, dtype=np.float32),
            pend_brand=np.full(shape, -1, dtype=np.int32),
            focus_item=np.full(shape, -1, dtype=np.int32),
        )

    # ---- lazy state update ----------------------------------------------------------------
    def materialise(self, s: State, rows: np.ndarray, t: int) -> None:
        """Bring rows to the start of day t: decay since last touched, land pending intent."""
        if len(rows) == 0:
            return
        gap = (t - s.last[rows]).astype(np.float32)
        s.intent[rows] *= (self.decay ** gap)[:, None]
        s.last[rows] = t
        landing = s.pend_day[rows] <= t
        if not landing.any():
            return
        ri, k = np.nonzero(landing)
        r = rows[ri]
        new_brand = s.pend_brand[r, k]
        swap = new_brand >= 0
        if swap.any():
            rs, ks, nb = r[swap], k[swap], new_brand[swap]
            s.slot_brand[rs, ks] = nb
            a0, sl = self.affinity_terms(s.row_user[rs], nb)
            s.aff0[rs, ks] = a0
            s.slope[rs, ks] = sl
            s.static[rs, ks] = self.p.w_pop * self.w.brand_log_pop[nb]
            s.intent[rs, ks] = 0.0
            s.cart_day[rs, ks] = NO_DAY
            s.sated_day[rs, ks] = NO_DAY
            s.focus_item[rs, ks] = -1
        age = (t - s.pend_day[r, k]).astype(np.float32)
        s.intent[r, k] += s.pend_amt[r, k] * self.decay**age
        s.pend_day[r, k] = NO_PENDING
        s.pend_brand[r, k] = -1

    def materialise_all(self, s: State, t: int) -> None:
        self.materialise(s, np.arange(len(s.last)), t)

    # ---- one day --------------------------------------------------------------------------
    def step_day(
        self, s: State, t: int, rng: np.random.Generator, *, emit: bool
    ) -> DayEvents | BuyHazards | None:
        """Simulate day t. emit=True: realise buys and return the day's events.

        emit=False (the oracle): buys are not realised, so every path is a path on which the
        pair has not bought yet, and the returned hazards give P(no buy) exactly in expectation.
        """
        p, w = self.p, self.w
        n = rng.poisson(s.row_rate * w.day_rate[t])
        rows = np.flatnonzero(n)
        if len(rows) == 0:
            return None
        self.materialise(s, rows, t)
        su = np.repeat(rows, n[rows])
        n_s, n_k = len(su), s.slot_brand.shape[1]
        aff = s.aff0[su] + s.slope[su] * np.float32(t)
        taste_logit = s.static[su] + p.w_aff * aff

        need = rng.random(n_s) < p.need_prob
        if need.any():
            k_need = choose(taste_logit[need], rng)
            flat = su[need] * n_k + k_need
            self._add_intent(s, flat, rng.exponential(p.need_mean, len(flat)).astype(np.float32))

        intent_rows = s.intent[su]
        k = choose(taste_logit + p.w_int * intent_rows, rng)
        sel = np.arange(n_s)
        a, i = aff[sel, k], intent_rows[sel, k]
        brand = s.slot_brand[su, k]
        clicks = 1 + rng.poisson(p.clicks_base + p.clicks_int * i)
        collect = rng.random(n_s) < _sigmoid(p.collect_logit[0] + p.collect_logit[1] * a + p.collect_logit[2] * i)
        cart = rng.random(n_s) < _sigmoid(p.cart_logit[0] + p.cart_logit[1] * a + p.cart_logit[2] * i)
        since_cart = (t - s.cart_day[su, k].astype(np.int32)).astype(np.float32)
        cart_memory = np.where(cart, 1.0, np.exp(-since_cart / p.cart_memory_days))
        since_buy = (t - s.sated_day[su, k].astype(np.int32)).astype(np.float32)
        buy_logit = (
            p.buy_logit[0] + p.buy_logit[1] * a + p.buy_logit[2] * i
            + p.buy_after_cart * cart_memory + w.day_buy_logit[t]
            - p.sated_penalty * np.exp(-since_buy / self.sated_days[brand])
        )
        p_buy = _sigmoid(buy_logit)
        last_item = self._last_items(s, su, k, brand, rng)

        flat = su * n_k + k
        gain = p.intent_click * np.sqrt(clicks) + p.intent_collect * collect + p.intent_cart * cart
        self._add_intent(s, flat, gain.astype(np.float32))
        s.cart_day.reshape(-1)[flat[cart]] = t

        if not emit:
            return BuyHazards(row=su, brand=brand, item=last_item, log_no_buy=np.log1p(-np.minimum(p_buy, 1 - 1e-7)))

        buy = rng.random(n_s) < p_buy
        if buy.any():
            self._after_buys(s, t, su[buy], k[buy], brand[buy], rng)
        return self._events(t, su, brand, clicks, collect, cart, buy, rng, last_item)

    def draw_items(self, brand: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Items of the given brands by popularity inside the brand (the first ones dominate)."""
        w = self.w
        return (w.brand_item_start[brand]
                + (rng.random(len(brand)) ** self.p.item_skew * w.brand_item_count[brand]).astype(np.int64))

    def _last_items(self, s: State, su: np.ndarray, k: np.ndarray, brand: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray | None:
        """The item each session ends on (the one a collect, cart or buy is of), when items have memory
        (item_focus > 0): the user goes back to the item they last ended a session on in that brand with
        probability item_focus, else to a new one drawn by popularity, which becomes the focus. Without item
        memory (None), the last click's item is drawn with the others and no random number is spent here, so
        the brand-level presets' logs do not change."""
        if self.p.item_focus <= 0:
            return None
        focus = s.focus_item[su, k]
        fresh = self.draw_items(brand, rng).astype(np.int32)
        item = np.where((focus >= 0) & (rng.random(len(su)) < self.p.item_focus), focus, fresh)
        s.focus_item[su, k] = item
        return item

    def _add_intent(self, s: State, flat: np.ndarray, gain: np.ndarray) -> None:
        """Add intent to (row, slot) cells given as flat indexes; intent saturates at intent_cap."""
        cells = s.intent.reshape(-1)
        np.add.at(cells, flat, gain)
        cells[flat] = np.minimum(cells[flat], self.p.intent_cap)

    def _after_buys(
        self, s: State, t: int, rows: np.ndarray, k: np.ndarray, brand: np.ndarray, rng: np.random.Generator
    ) -> None:
        p, w = self.p, self.w
        # a buy sates only its own pair: it must not change any other pair's path (see oracle.py)
        s.sated_day[rows, k] = t
        # delayed intent never replaces one already scheduled: that one may land inside an
        # oracle's label window, and a buy must not change another pair's path there
        cycle = w.brand_repeat_cycle[brand].astype(np.float32)
        rep = (cycle > 0) & (s.pend_day[rows, k] == NO_PENDING)
        if rep.any():
            lag = np.maximum(1, np.rint(cycle[rep] * rng.uniform(0.8, 1.2, int(rep.sum())))).astype(np.int32)
            r, kk = rows[rep], k[rep]
            s.pend_day[r, kk] = np.minimum(t + lag, NO_PENDING - 1)
            s.pend_amt[r, kk] = p.repeat_intent
            s.pend_brand[r, kk] = -1
        go = rng.random(len(rows)) < p.transition_prob
        if not go.any():
            return
        r, k_bought, nxt = rows[go], k[go], w.brand_related[brand[go]]
        held = s.slot_brand[r] == nxt[:, None]
        has = held.any(axis=1)
        # a brand not yet considered takes the slot of the least attractive other brand
        strength = s.static[r] + p.w_aff * (s.aff0[r] + s.slope[r] * np.float32(t)) + s.intent[r]
        strength[np.arange(len(r)), k_bought] = np.inf
        weakest = np.argmin(strength, axis=1)
        slot = np.where(has, np.argmax(held, axis=1), weakest)
        free = s.pend_day[r, slot] == NO_PENDING
        r, slot, has, nxt = r[free], slot[free], has[free], nxt[free]
        lo, hi = p.transition_lag_days
        lag = rng.integers(lo, hi + 1, len(r))
        s.pend_day[r, slot] = np.minimum(t + lag, NO_PENDING - 1)
        s.pend_amt[r, slot] = p.transition_intent
        s.pend_brand[r, slot] = np.where(has, -1, nxt)

    def _events(
        self,
        t: int,
        su: np.ndarray,
        brand: np.ndarray,
        clicks: np.ndarray,
        collect: np.ndarray,
        cart: np.ndarray,
        buy: np.ndarray,
        rng: np.random.Generator,
        last_item: np.ndarray | None = None,
    ) -> DayEvents:
        """Timestamps and items: clicks seconds to minutes apart, then collect / cart / buy on the last item
        (`last_item` when items have memory, see _last_items)."""
        w = self.w
        n_s = len(su)
        hour = np.searchsorted(w.hour_cdf, rng.random(n_s))
        start = (hour * 3600 + rng.integers(0, 3600, n_s)).astype(np.int64)
        n_c = int(clicks.sum())
        sess = np.repeat(np.arange(n_s), clicks)
        gaps = rng.exponential(45.0, n_c)
        cum = np.cumsum(gaps)
        first = np.cumsum(clicks) - clicks
        click_sec = start[sess] + (cum - (cum[first] - gaps[first])[sess]).astype(np.int64)
        item = self.draw_items(brand[sess], rng)
        last = first + clicks - 1
        if last_item is not None:
            item[last] = last_item
        last_item, last_sec = item[last], click_sec[last]

        parts_user, parts_item, parts_act, parts_sec = [su[sess]], [item], [np.zeros(n_c, np.int8)], [click_sec]
        for code, mask, lo, hi in ((1, collect, 5, 90), (2, cart, 10, 180), (3, buy, 200, 1500)):
            m = np.flatnonzero(mask)
            parts_user.append(su[m])
            parts_item.append(last_item[m])
            parts_act.append(np.full(len(m), code, np.int8))
            parts_sec.append(last_sec[m] + rng.integers(lo, hi, len(m)))
        sec = np.minimum(np.concatenate(parts_sec), 86_399).astype(np.int32)
        order = np.argsort(sec, kind="stable")
        return DayEvents(
            user=np.concatenate(parts_user).astype(np.int32)[order],
            item=np.concatenate(parts_item).astype(np.int32)[order],
            action=np.concatenate(parts_act)[order],
            sec=sec[order],
        )
