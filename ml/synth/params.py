"""The generator's knobs: sizes (presets) and every intensity of the simulation, in one place.

The intensities were tuned so the marginals look like the Tmall log (about 90%
clicks, a few % collect and cart, 1-3% buy); tests pin those marginals and the
direction of every planted signal, so a change here that breaks realism fails.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Sizes:
    users: int
    items: int
    brands: int
    start: dt.date = dt.date(2013, 4, 1)
    end: dt.date = dt.date(2013, 10, 1)  # exclusive

    def __post_init__(self) -> None:
        for name in ("users", "items", "brands"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name}: expected a positive number, got {getattr(self, name)}")
        if self.brands < 4:
            raise ValueError(f"--brands: at least 4 brands are needed, got {self.brands}")
        if self.items < self.brands:
            raise ValueError(f"--items ({self.items}) must be at least --brands ({self.brands}): "
                             "every brand sells an item")
        if self.end <= self.start:
            raise ValueError(f"--end {self.end} must be after --start {self.start}")

    @property
    def days(self) -> int:
        return (self.end - self.start).days


@dataclass(frozen=True)
class Preset:
    sizes: Sizes
    item_brands: bool = True  # False: the item table has no brand or shop, like the Taobao log
    intensities: Intensities | None = None  # None: the defaults
    hourly: bool = False  # times truncated to the hour, like the Tianchi mobile log
    item_subset_share: float = 0.0  # > 0: that share of the items is written as the dataset's item subset

    @property
    def oracle_target(self) -> str | None:
        """What the oracle is per user of: items when items have memory, brands when the log has them."""
        if self.intensities is not None and self.intensities.item_focus > 0:
            return "item"
        return "brand" if self.item_brands else None

    def config(self, **changes: object) -> GeneratorConfig:
        return GeneratorConfig(sizes=self.sizes, intensities=self.intensities or Intensities(),
                               item_brands=self.item_brands, hourly=self.hourly,
                               item_subset_share=self.item_subset_share, **changes)


PRESETS: dict[str, Preset] = {}



@dataclass(frozen=True)
class Intensities:
    """Every rate and weight of the simulation. Logits are on the natural log-odds scale."""

    # entities
    taste_dim: int = 8               # latent dimension of user taste and brand position
    slots: int = 24                  # brands a user considers (sampled by popularity, kept by affinity)
    brand_zipf: float = 1.05         # brand popularity ~ rank^-s
    item_skew: float = 2.5           # inside a brand, item popularity ~ u^skew (first items dominate)
    leaf_per_brand: int = 5          # brands per leaf category, on average
    leaf_per_parent: int = 6         # leaf categories per parent category
    shops_per_brand: int = 3         # at most; each item sold by one of its brand's shops
    # activity
    activity_mu: float = -1.55       # log of the mean daily sessions of a typical user
    activity_sigma: float = 1.0      # heavy tail of user activity (log-normal sigma)
    weekly_profile: tuple[float, ...] = (0.95, 0.93, 0.95, 0.98, 1.04, 1.12, 1.08)  # Mon..Sun
    promotion_days: tuple[str, ...] = ("06-16", "06-17", "06-18")  # the 618 festival
    promotion_boost: float = 1.6     # session rate multiplier on promotion days
    promotion_buy_logit: float = 0.6
    hourly_profile: tuple[float, ...] = (
        0.9, 0.5, 0.3, 0.2, 0.2, 0.3, 0.6, 1.2, 2.0, 2.6, 2.8, 2.7,
        2.6, 2.7, 2.8, 2.9, 3.0, 3.0, 3.1, 3.6, 4.2, 4.6, 4.0, 2.2,
    )
    # brand choice inside a session: logit = w_pop*log(pop) + w_aff*affinity + w_int*intent
    w_pop: float = 0.35
    w_aff: float = 1.0
    w_int: float = 1.1
    # hidden needs: a session sometimes starts from a new need for one brand
    need_prob: float = 0.22
    need_mean: float = 1.4
    # funnel inside a session on the chosen brand
    clicks_base: float = 2.2         # clicks = 1 + Poisson(clicks_base + clicks_int * intent)
    clicks_int: float = 0.8
    collect_logit: tuple[float, float, float] = (-3.3, 0.45, 0.55)   # bias, affinity, intent
    cart_logit: tuple[float, float, float] = (-3.1, 0.45, 0.65)
    buy_logit: tuple[float, float, float] = (-5.0, 0.55, 0.9)
    buy_after_cart: float = 2.0      # logit boost from an earlier cart, fading with cart_memory_days
    cart_memory_days: float = 5.0
    # intent dynamics
    intent_decay: float = 0.82       # per day
    intent_click: float = 0.22       # per sqrt(click)
    intent_collect: float = 0.55
    intent_cart: float = 0.8
    intent_cap: float = 4.0          # intent saturates: a frantic day does not mean certain purchase
    sated_penalty: float = 3.0       # buy logit penalty right after a buy of the same brand ...
    sated_days_durable: float = 60.0 # ... fading slowly for durable goods ...
    sated_days_repeat: float = 4.0   # ... and quickly for repeat-purchase brands
    # repeat purchases and brand-to-brand transitions (delayed intent, pending until it lands)
    repeat_share: float = 0.3        # share of brands bought again and again (consumables)
    repeat_cycle_days: tuple[int, int] = (14, 45)
    repeat_intent: float = 2.2
    transition_prob: float = 0.55    # a buy raises intent on the brand's related brand ...
    transition_lag_days: tuple[int, int] = (7, 21)  # ... after this lag
    transition_intent: float = 2.4
    # taste drift: some users' taste moves linearly from one position to another over the log
    drift_share: float = 0.2
    # item memory: a session ends (collect, cart, buy) on the item the user last ended one on in that brand
    # with this probability, else on a new item by popularity. 0: no memory (every preset but tianchi)
    item_focus: float = 0.0


@dataclass(frozen=True)
class GeneratorConfig:
    sizes: Sizes
    seed: int = 7
    intensities: Intensities = field(default_factory=Intensities)
    oracle_dates: tuple[dt.date, ...] = ()
    oracle_label_days: int = 7
    oracle_rollouts: int = 32
    # the dates whose ceiling is reported (a task's backtest) get enough rollouts for a Monte Carlo error of
    # the oracle's AUC under 0.001; the other dates (training, validation) keep oracle_rollouts
    ceiling_dates: tuple[dt.date, ...] = ()
    ceiling_rollouts: int = 1024
    # tags whose truth the oracle writes too (oracle_tags/): (tag id, leaf category ids), for the rule "at
    # least one buy in these categories in the label window" (a task's interest tags)
    oracle_tags: tuple[tuple[int, tuple[int, ...]], ...] = ()
    item_brands: bool = True
    hourly: bool = False
    item_subset_share: float = 0.0
    chunk_users: int = 0             # 0: chosen from the sizes so a chunk holds a few million events
    workers: int = 0                 # 0: one per core

    def with_sizes(self, **changes: object) -> GeneratorConfig:
        return replace(self, sizes=replace(self.sizes, **changes))


# tiny: tests (seconds); default: the tmall-2013 task (`make run`); large: benchmarks (about 100M events);
# taobao: the taobao-2017-category task's look-alike (9 days of 2017-11-25 .. 12-03, no brands, ~100k events);
# tianchi: the tianchi-mobile-2014 task's look-alike (31 days of 2014-11-18 .. 12-18, hourly times, no
# brand in the item table, items with memory and an item-level oracle, 30% of the items as the subset);
# tianchi-tiny: the same world, small enough for a test.
_TIANCHI = {"item_brands": False, "hourly": True, "item_subset_share": 0.3,
            "intensities": Intensities(item_focus=0.75, activity_mu=-0.6)}
PRESETS.update({
    "tiny": Preset(Sizes(users=800, items=1_500, brands=60)),
    "default": Preset(Sizes(users=20_000, items=20_000, brands=400)),
    "large": Preset(Sizes(users=330_000, items=400_000, brands=4_000)),
    "taobao": Preset(Sizes(users=6_000, items=8_000, brands=1_000, start=dt.date(2017, 11, 25),
                           end=dt.date(2017, 12, 4)), item_brands=False),
    "tianchi": Preset(Sizes(users=4_000, items=30_000, brands=600, start=dt.date(2014, 11, 18),
                            end=dt.date(2014, 12, 19)), **_TIANCHI),
    "tianchi-tiny": Preset(Sizes(users=500, items=2_000, brands=80, start=dt.date(2014, 11, 18),
                                 end=dt.date(2014, 12, 19)), **_TIANCHI),
})
