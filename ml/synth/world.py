"""The catalogue and the users' latent traits, drawn once from the seed.

Everything brand-level lives in `World` (shared by every user chunk), everything
user-level is drawn per chunk from a seed derived from (seed, chunk), so a chunk
is reproducible on its own and chunks can be generated in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.synth.params import Intensities, Sizes

_ID_MULT = np.uint64(2654435761)  # odd: multiplication modulo 2^31 is a bijection


def scatter_ids(index: np.ndarray, salt: int) -> np.ndarray:
    """Map dense indexes to distinct large ids (up to 2^31), as real logs have.

    Ids above 2^24 are deliberate: a pipeline that squeezes ids through float32 breaks on them.
    """
    x = (index.astype(np.uint64) + np.uint64(salt)) * _ID_MULT % np.uint64(2**31)
    return (x + np.uint64(1)).astype(np.int64)


def _small_ids(rng: np.random.Generator, n: int, spread: int = 10) -> np.ndarray:
    """Distinct ids in [1, spread*n], like Tmall's brand and seller numbers."""
    return (rng.choice(spread * n, size=n, replace=False) + 1).astype(np.int64)


@dataclass
class World:
    sizes: Sizes
    p: Intensities
    brand_pop: np.ndarray          # float64 [B], sums to 1
    brand_log_pop: np.ndarray      # float32 [B]
    brand_vec: np.ndarray          # float32 [B, D]
    brand_leaf: np.ndarray         # int32 [B]
    brand_related: np.ndarray      # int32 [B]: the brand whose buyers come next
    brand_repeat_cycle: np.ndarray # int16 [B]: 0 if not a repeat-purchase brand
    brand_item_start: np.ndarray   # int64 [B]: items are sorted by brand, most popular first
    brand_item_count: np.ndarray   # int64 [B]
    brand_ids: np.ndarray          # int64 [B]
    leaf_ids: np.ndarray           # int64 [L]
    leaf_parent: np.ndarray        # int32 [L]
    parent_ids: np.ndarray         # int64 [P]
    item_ids: np.ndarray           # int64 [I]
    item_brand: np.ndarray         # int32 [I]
    item_leaf: np.ndarray          # int32 [I]
    item_shop_ids: np.ndarray      # int64 [I]
    day_rate: np.ndarray           # float32 [days]: weekly profile x promotions
    day_buy_logit: np.ndarray      # float32 [days]
    hour_cdf: np.ndarray           # float64 [24]

    @property
    def n_brands(self) -> int:
        return len(self.brand_ids)


def build_world(sizes: Sizes, p: Intensities, seed: int) -> World:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB2A2D]))
    n_b, n_i, dim = sizes.brands, sizes.items, p.taste_dim
    n_leaf = max(4, n_b // p.leaf_per_brand)
    n_parent = max(2, n_leaf // p.leaf_per_parent)

    leaf_parent = rng.integers(0, n_parent, n_leaf).astype(np.int32)
    leaf_parent[:n_parent] = np.arange(n_parent)  # every parent has a leaf
    # brands cluster around their category's position: taste is partly about categories
    leaf_vec = rng.normal(0, 1, (n_leaf, dim)) / np.sqrt(dim)
    leaf_pop = 1.0 / np.arange(1, n_leaf + 1) ** 0.8
    leaf_pop /= leaf_pop.sum()
    brand_leaf = rng.choice(n_leaf, size=n_b, p=leaf_pop).astype(np.int32)
    brand_leaf[:n_leaf] = rng.permutation(n_leaf)[: min(n_leaf, n_b)]
    brand_vec = (0.7 * leaf_vec[brand_leaf] + 0.7 * rng.normal(0, 1, (n_b, dim)) / np.sqrt(dim)).astype(np.float32)

    rank = rng.permutation(n_b) + 1
    brand_pop = 1.0 / rank ** p.brand_zipf
    brand_pop /= brand_pop.sum()

    # related brand: a popular brand of the leaf category that complements this one's
    leaf_next = (np.arange(n_leaf) + rng.integers(1, n_leaf, n_leaf)) % n_leaf
    order = np.lexsort((-brand_pop, brand_leaf))
    leaf_first = np.searchsorted(brand_leaf[order], np.arange(n_leaf))
    leaf_count = np.bincount(brand_leaf, minlength=n_leaf)
    target_leaf = leaf_next[brand_leaf]
    empty = leaf_count[target_leaf] == 0
    pick = (rng.random(n_b) ** 2 * np.maximum(leaf_count[target_leaf], 1)).astype(np.int64)
    related = order[np.minimum(leaf_first[target_leaf] + pick, n_b - 1)]
    related = np.where(empty, rng.integers(0, n_b, n_b), related)
    related = np.where(related == np.arange(n_b), (related + 1) % n_b, related).astype(np.int32)

    cycles = rng.integers(p.repeat_cycle_days[0], p.repeat_cycle_days[1] + 1, n_b)
    repeat_cycle = np.where(rng.random(n_b) < p.repeat_share, cycles, 0).astype(np.int16)

    # items: every brand has at least one, popular brands more
    weights = brand_pop**0.6
    extra = rng.multinomial(n_i - n_b, weights / weights.sum())
    item_count = (extra + 1).astype(np.int64)
    item_start = np.concatenate([[0], np.cumsum(item_count)[:-1]]).astype(np.int64)
    item_brand = np.repeat(np.arange(n_b, dtype=np.int32), item_count)
    # most items of a brand sit in its main leaf, some in a sibling leaf of the same parent
    sibling = rng.integers(0, n_leaf, n_i).astype(np.int32)
    same_parent = leaf_parent[sibling] == leaf_parent[brand_leaf[item_brand]]
    item_leaf = np.where((rng.random(n_i) < 0.15) & same_parent, sibling, brand_leaf[item_brand]).astype(np.int32)
    n_shops = max(1, int(n_b * 1.5))
    shop_ids = _small_ids(rng, n_shops)
    brand_shops = rng.integers(0, n_shops, (n_b, p.shops_per_brand))
    n_brand_shops = rng.integers(1, p.shops_per_brand + 1, n_b)
    shop_pick = (rng.random(n_i) * n_brand_shops[item_brand]).astype(np.int64)
    item_shop = shop_ids[brand_shops[item_brand, shop_pick]]

    days = sizes.days
    dates = np.array([np.datetime64(sizes.start) + np.timedelta64(d, "D") for d in range(days)])
    dow = (dates.astype("datetime64[D]").astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    day_rate = np.asarray(p.weekly_profile, dtype=np.float64)[dow]
    mmdd = np.array([str(d)[5:10] for d in dates])
    promo = np.isin(mmdd, np.asarray(p.promotion_days))
    day_rate = np.where(promo, day_rate * p.promotion_boost, day_rate)
    hour_cdf = np.cumsum(p.hourly_profile) / np.sum(p.hourly_profile)

    return World(
        sizes=sizes,
        p=p,
        brand_pop=brand_pop,
        brand_log_pop=np.log(brand_pop).astype(np.float32),
        brand_vec=brand_vec,
        brand_leaf=brand_leaf,
        brand_related=related,
        brand_repeat_cycle=repeat_cycle,
        brand_item_start=item_start,
        brand_item_count=item_count,
        brand_ids=_small_ids(rng, n_b),
        leaf_ids=_small_ids(rng, n_leaf),
        leaf_parent=leaf_parent,
        parent_ids=_small_ids(rng, n_parent),
        item_ids=scatter_ids(np.arange(n_i), salt=1_000_003),
        item_brand=item_brand,
        item_leaf=item_leaf,
        item_shop_ids=item_shop,
        day_rate=day_rate.astype(np.float32),
        day_buy_logit=np.where(promo, p.promotion_buy_logit, 0.0).astype(np.float32),
        hour_cdf=hour_cdf,
    )


@dataclass
class Users:
    """Latent traits of one chunk of users."""

    ids: np.ndarray        # int64 [U]
    rate: np.ndarray       # float32 [U]: mean sessions per day
    taste0: np.ndarray     # float32 [U, D]: taste at the start of the log
    taste1: np.ndarray     # float32 [U, D]: taste at the end (= taste0 for users who do not drift)


def draw_users(world: World, first: int, count: int, rng: np.random.Generator) -> Users:
    p = world.p
    rate = np.exp(rng.normal(p.activity_mu, p.activity_sigma, count)).astype(np.float32)
    # unit-variance taste against brand positions of variance ~1/D: affinity has a std near 1
    taste0 = rng.normal(0, 1.0, (count, p.taste_dim)).astype(np.float32)
    drift = rng.random(count) < p.drift_share
    taste1 = taste0.copy()
    taste1[drift] = rng.normal(0, 1.0, (int(drift.sum()), p.taste_dim)).astype(np.float32)
    ids = scatter_ids(np.arange(first, first + count), salt=7)
    return Users(ids=ids, rate=rate, taste0=taste0, taste1=taste1)


def brand_category_shares(world: World, skew: float, groups: list[np.ndarray]) -> np.ndarray:
    """[brands, groups]: the probability that an item a session ends on (drawn by popularity inside the
    brand, u ** skew) is of a leaf category of each group (leaf category ids): the share of a buy of the
    brand that falls in the group."""
    n_i = len(world.item_ids)
    index = np.arange(n_i) - world.brand_item_start[world.item_brand]
    count = world.brand_item_count[world.item_brand]
    # P(floor(u^skew * count) = j) = ((j + 1) / count)^(1 / skew) - (j / count)^(1 / skew)
    mass = ((index + 1) / count) ** (1 / skew) - (index / count) ** (1 / skew)
    leaf_of_item = world.leaf_ids[world.item_leaf]
    out = np.zeros((world.n_brands, len(groups)))
    for g, leaves in enumerate(groups):
        inside = np.isin(leaf_of_item, np.asarray(leaves))
        out[:, g] = np.bincount(world.item_brand[inside], weights=mass[inside], minlength=world.n_brands)
    return out
