"""The real log formats, declared as data: what each column holds and how it maps to the canonical tables.

Adding a format is adding a `LogFormat` here; the reader in `ml.loaders.csv_reader`
does the parsing, validation and rejects for all of them alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Column:
    """One column of a source file.

    kind: id (a non-negative integer without leading zeros; behind a letter prefix or with a ".0" only where
    the format says its ids look so),
    action (mapped by the format's action codes), time (parsed by the format's time rule),
    category_path ("parent-leaf"), or skip. target: the canonical column it fills. optional: a file with a
    header may leave the column out (its values are then null), as a log of one's own may have no brand.
    """

    name: str
    kind: str
    target: str | None = None
    nullable: bool = False
    optional: bool = False


@dataclass(frozen=True)
class FileFormat:
    columns: tuple[Column, ...]
    delimiters: tuple[str, ...] = (",",)
    header: bool | None = None  # None: detect from the first line

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class LogFormat:
    name: str
    description: str
    events: FileFormat
    actions: dict[str, str]
    time_rule: str                      # strptime pattern, or "iso_local", "unix_seconds", "unix_millis", "mmdd"
    items: FileFormat | None = None     # the separate item table, when the format has one
    needs_year: bool = False
    utc_offset_s: int = 0               # unix times are read as the local time this far east of UTC
    notes: tuple[str, ...] = field(default_factory=tuple)
    # the item file lists the items a task ranks, not every item of the log (Tianchi's item set P): its ids are
    # also written as the dataset's item_subset.parquet (a task with target item and item_subset: dataset)
    items_are_subset: bool = False
    id_prefix: bool = False             # ids may carry a letter prefix (u9774184): read as 9774184
    id_float_look: bool = False         # ids may look like floats (7069.0): read as 7069
    # events outside [first, last day + 1) are rejects unless --start/--end say otherwise: no e-commerce log
    # predates 2000, and none comes from after the day it is loaded (an epoch of 0 or a year 9999 is a fault)
    plausible_start: str = "2000-01-01"


_ID = "id"

FORMATS: dict[str, LogFormat] = {
    "tmall": LogFormat(
        name="tmall",
        description="Tmall recommendation log (REC-TMALL): item_id, user_id, action, vtime; \\x01-separated, no header",
        events=FileFormat(
            columns=(
                Column("item_id", _ID, "item_id"),
                Column("user_id", _ID, "user_id"),
                Column("action", "action", "action"),
                Column("vtime", "time", "ts"),
            ),
            delimiters=("\x01", ",", "\t"),
        ),
        actions={"click": "click", "collect": "collect", "cart": "cart", "alipay": "buy"},
        time_rule="%Y-%m-%d %H:%M:%S",
        items=FileFormat(
            columns=(
                Column("item_id", _ID, "item_id"),
                Column("title", "skip"),
                Column("pict_url", "skip"),
                Column("category", "category_path", "category_id"),
                Column("brand_id", _ID, "brand_id", nullable=True),
                Column("seller_id", _ID, "shop_id", nullable=True),
            ),
            delimiters=("\x01", ",", "\t"),
        ),
        notes=("ids may carry a letter prefix (u9774184, b89366, s86799)", "category is parent-leaf"),
        id_prefix=True,
    ),
    "tianchi-mobile": LogFormat(
        name="tianchi-mobile",
        description="Tianchi mobile recommendation: user_id,item_id,behavior_type(1-4),user_geohash,item_category,time",
        events=FileFormat(
            columns=(
                Column("user_id", _ID, "user_id"),
                Column("item_id", _ID, "item_id"),
                Column("behavior_type", "action", "action"),
                Column("user_geohash", "skip"),
                Column("item_category", _ID, "category_id"),
                Column("time", "time", "ts"),
            ),
        ),
        actions={"1": "click", "2": "collect", "3": "cart", "4": "buy"},
        time_rule="%Y-%m-%d %H",
        items=FileFormat(
            columns=(
                Column("item_id", _ID, "item_id"),
                Column("item_geohash", "skip"),
                Column("item_category", _ID, "category_id"),
            ),
        ),
        notes=("times have hour resolution: ts is the start of the hour",
               "identical rows are real repeated actions within an hour and are kept (counted as exact_duplicates)",
               "the item file is the competition's item subset P: written as item_subset.parquet too"),
        items_are_subset=True,
    ),
    "taobao-userbehavior": LogFormat(
        name="taobao-userbehavior",
        description=("Taobao UserBehavior: user_id,item_id,category_id,behavior_type(pv/fav/cart/buy),timestamp; "
                     "no header"),
        events=FileFormat(
            columns=(
                Column("user_id", _ID, "user_id"),
                Column("item_id", _ID, "item_id"),
                Column("category_id", _ID, "category_id"),
                Column("behavior_type", "action", "action"),
                Column("timestamp", "time", "ts"),
            ),
            header=None,
        ),
        actions={"pv": "click", "fav": "collect", "cart": "cart", "buy": "buy"},
        time_rule="unix_seconds",
        utc_offset_s=8 * 3600,
        notes=("unix seconds are turned into local time in China (UTC+8), so calendar days are the dataset's days",),
    ),
    "csv": LogFormat(
        name="csv",
        description=("a log of your own: CSV with a header naming user_id, item_id, category_id (or an item table "
                     "that gives it), action (click, collect, cart, buy), time (YYYY-MM-DD HH:MM:SS or ISO 8601's T, "
                     "local time), and optionally brand_id, shop_id; columns in any order, others ignored"),
        events=FileFormat(
            columns=(
                Column("user_id", _ID, "user_id"),
                Column("item_id", _ID, "item_id"),
                # optional when the item table gives the categories (a log whose items are described apart)
                Column("category_id", _ID, "category_id", optional=True),
                Column("brand_id", _ID, "brand_id", nullable=True, optional=True),
                Column("shop_id", _ID, "shop_id", nullable=True, optional=True),
                Column("action", "action", "action"),
                Column("time", "time", "ts"),
            ),
            delimiters=(",", "\t", ";"),
            header=True,
        ),
        actions={"click": "click", "collect": "collect", "cart": "cart", "buy": "buy"},
        time_rule="iso_local",
        items=FileFormat(
            columns=(
                Column("item_id", _ID, "item_id"),
                Column("category_id", _ID, "category_id"),
                Column("brand_id", _ID, "brand_id", nullable=True, optional=True),
                Column("shop_id", _ID, "shop_id", nullable=True, optional=True),
            ),
            delimiters=(",", "\t", ";"),
            header=True,
        ),
        notes=(("times are local times as written, to the second (a fraction of a second is dropped; a time "
                "with a zone, Z or +08:00, is a reject: say the log's local time)"),
               ("the item table, when given, decides the attributes of the items it lists; the log's own columns "
                "fill in the items it does not")),
    ),
    "tmall-repeat": LogFormat(
        name="tmall-repeat",
        description="Tmall repeat buyers: user_id,item_id,cat_id,seller_id,brand_id,time_stamp(mmdd),action_type(0-3)",
        events=FileFormat(
            columns=(
                Column("user_id", _ID, "user_id"),
                Column("item_id", _ID, "item_id"),
                Column("cat_id", _ID, "category_id"),
                Column("seller_id", _ID, "shop_id", nullable=True),
                Column("brand_id", _ID, "brand_id", nullable=True),
                Column("time_stamp", "time", "ts"),
                Column("action_type", "action", "action"),
            ),
        ),
        actions={"0": "click", "1": "cart", "2": "buy", "3": "collect"},
        time_rule="mmdd",
        needs_year=True,
        notes=("time_stamp is mmdd: the year is given with --year", "brand ids look like floats (7069.0)"),
        id_float_look=True,
    ),
}
