"""Independent implementations of the ADS features for one ds: in pandas (with the labels and sequences), and
as one DuckDB query per feature model (one_query_feature_sql).

They exist to be compared with the dbt models value for value (tests, on tiny data) and timed against them
(bench/warehouse.py). They are written from the definitions in dbt_project/macros/crowd_features.sql, not
from the SQL: they work on events rather than the daily table, so a mistake in either shows as a mismatch.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from ml.config import ACTIONS

ACTION_CODE = {a: i + 1 for i, a in enumerate(ACTIONS)}


def load_events(dataset_dir: Path, target: str = "brand") -> pd.DataFrame:
    """Distinct events joined with their item (the ODS + DW layers): day, target_id, category_id."""
    events = pd.read_parquet(Path(dataset_dir) / "events")
    items = pd.read_parquet(Path(dataset_dir) / "items.parquet", columns=["item_id", "category_id", "brand_id"])
    events = events.drop_duplicates(["user_id", "item_id", "action", "ts"])
    events = events.merge(items, on="item_id", how="inner")
    events["target_id"] = events["brand_id" if target == "brand" else "category_id"]
    events["day"] = events["ts"].dt.floor("D")
    return events


def _window_features(h: pd.DataFrame, keys: list[str], prefix: str, windows: list[int]) -> pd.DataFrame:
    out: dict[str, pd.Series] = {}
    for a in ACTIONS:
        is_a = (h["action"] == a).astype("int64")
        for w in windows:
            out[f"{prefix}_{a}_{w}d"] = (is_a * (h["age"] <= w)).groupby([h[k] for k in keys]).sum()
    for w in windows:
        if w <= 1:
            continue
        inside = h[h["age"] <= w]
        if prefix in ("u", "ub"):
            out[f"{prefix}_active_days_{w}d"] = inside.groupby(keys)["day"].nunique()
        if prefix == "u":
            out[f"u_targets_{w}d"] = inside.groupby(keys)["target_id"].nunique()
        if prefix == "b":
            out[f"b_users_{w}d"] = inside.groupby(keys)["user_id"].nunique()
            out[f"b_buyers_{w}d"] = inside[inside["action"] == "buy"].groupby(keys)["user_id"].nunique()
    if prefix in ("u", "ub"):
        for a in ACTIONS:
            out[f"{prefix}_recency_{a}"] = h[h["action"] == a].groupby(keys)["age"].min()
        out[f"{prefix}_recency_any"] = h.groupby(keys)["age"].min()
    frame = pd.DataFrame(out)
    for c in frame.columns:  # a key with no row in a sub-window counts zero there; recency stays missing
        if "_recency_" not in c:
            frame[c] = frame[c].fillna(0).astype("int64")
    for w in windows:
        if w >= 7:
            p, s = f"{prefix}_", f"_{w}d"
            frame[f"{p}cart_rate{s}"] = frame[f"{p}cart{s}"] / (frame[f"{p}click{s}"] + 1.0)
            frame[f"{p}buy_rate{s}"] = frame[f"{p}buy{s}"] / (frame[f"{p}click{s}"] + 1.0)
            frame[f"{p}buy_per_cart{s}"] = frame[f"{p}buy{s}"] / (frame[f"{p}cart{s}"] + 1.0)
    return frame.reset_index()


def reference_features(
    events: pd.DataFrame,
    ds: dt.date,
    *,
    windows: tuple[int, ...] = (1, 3, 7, 30, 90),
    history_days: int = 90,
    sequence_days: int = 30,
    label_days: int = 7,
    sequence_length: int = 50,
) -> dict[str, pd.DataFrame]:
    """user / target / user x target features, sequences and labels at ds, from events of load_events()."""
    ds_ts = pd.Timestamp(ds)
    windows = sorted(windows)
    h = events[(events["ts"] < ds_ts) & (events["day"] >= ds_ts - pd.Timedelta(days=history_days))].copy()
    h["age"] = (ds_ts - h["day"]).dt.days
    with_target = h[h["target_id"].notna()]
    out = {
        "user": _window_features(h, ["user_id"], "u", windows),
        "target": _window_features(with_target, ["target_id"], "b", windows),
        "user_target": _window_features(with_target, ["user_id", "target_id"], "ub", windows),
    }

    recent = h[h["day"] >= ds_ts - pd.Timedelta(days=sequence_days)].copy()
    recent["action_code"] = recent["action"].map(ACTION_CODE)
    recent["target_id"] = recent["target_id"].fillna(-1).astype("int64")
    recent = recent.sort_values(["user_id", "ts", "action_code", "item_id"], ascending=[True, False, False, False])
    recent = recent.groupby("user_id").head(sequence_length)
    grouped = recent.groupby("user_id", sort=True)
    out["sequences"] = pd.DataFrame({
        "hist_len": grouped.size(),
        "hist_target_id": grouped["target_id"].agg(list),
        "hist_category_id": grouped["category_id"].agg(list),
        "hist_action": grouped["action_code"].agg(list),
        "hist_age_days": grouped["age"].agg(list),
    }).reset_index()

    future = events[(events["ts"] >= ds_ts) & (events["day"] < ds_ts + pd.Timedelta(days=label_days))
                    & events["target_id"].notna()]
    labels = future.assign(
        label_buy=(future["action"] == "buy").astype("int64"),
        label_collect_cart=future["action"].isin(["collect", "cart"]).astype("int64"),
    ).groupby(["user_id", "target_id"])[["label_buy", "label_collect_cart"]].max()
    out["labels"] = labels.reset_index()
    return out


def assert_frames_match(dbt_frame: pd.DataFrame, ref_frame: pd.DataFrame, keys: list[str]) -> None:
    """Same keys, and every shared column equal (floats to 1e-9, missing == missing)."""
    a = dbt_frame.sort_values(keys).reset_index(drop=True)
    b = ref_frame.sort_values(keys).reset_index(drop=True)
    if len(a) != len(b) or not (a[keys].to_numpy() == b[keys].to_numpy()).all():
        raise AssertionError(f"keys differ: dbt {len(a):,} rows, reference {len(b):,} rows")
    missing = set(b.columns) - set(a.columns)
    if missing:
        raise AssertionError(f"dbt lacks columns {sorted(missing)}")
    for c in b.columns:
        x, y = a[c], b[c]
        if x.dtype == object or y.dtype == object:
            same = np.array([list(p) == list(q) for p, q in zip(x, y, strict=True)])
        else:
            same = np.isclose(x.astype(float), y.astype(float), rtol=0, atol=1e-9, equal_nan=True)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            raise AssertionError(f"{c} differs on {int((~same).sum())} rows, first at {a.loc[i, keys].to_dict()}: "
                                 f"dbt {x.iloc[i]!r} vs reference {y.iloc[i]!r}")


# The same features as one DuckDB query per ADS feature model, written straight from the definitions (count
# distinct with filters over the events, no daily table): a second independent implementation, and what
# bench/warehouse.py times the build's feature models against (what a person writing these columns by hand in
# DuckDB would run).
ONE_QUERY_MODELS = {  # prefix -> (ADS model, keys, which events)
    "u": ("ads_user_features", ("user_id",), "true"),
    "b": ("ads_target_features", ("target_id",), "target_id is not null"),
    "ub": ("ads_user_target_features", ("user_id", "target_id"), "target_id is not null"),
}


def window_events_sql(events: str, items: str, target_column: str) -> str:
    """The history window's events with their target, day and age: the relation one_query_feature_sql reads.
    events and items are relations (a table, or read_parquet(...)); binds $ds (a date) and $history_days."""
    if target_column not in ("brand_id", "category_id"):
        raise ValueError(f"target_column must be brand_id or category_id, not {target_column!r}")
    return (f"select e.user_id, i.{target_column} as target_id, e.action, cast(e.ts as date) as day, "
            "date_diff('day', cast(e.ts as date), $ds) as age "
            f"from {events} as e join {items} as i on e.item_id = i.item_id "
            "where e.ts >= $ds - to_days(cast($history_days as integer)) and e.ts < $ds")


def one_query_feature_sql(prefix: str, windows: tuple[int, ...], relation: str = "window_events") -> str:
    """The columns of one ADS feature model (prefix u, b or ub) in one aggregate over `relation`
    (window_events_sql's columns), with the model's names."""
    _, keys, where = ONE_QUERY_MODELS[prefix]
    aggs = [f"count(*) filter (where action = '{a}' and age <= {w}) as {prefix}_{a}_{w}d"
            for a in ACTIONS for w in windows]
    for w in (w for w in windows if w > 1):
        if prefix in ("u", "ub"):
            aggs.append(f"count(distinct day) filter (where age <= {w}) as {prefix}_active_days_{w}d")
        if prefix == "u":
            aggs.append(f"count(distinct target_id) filter (where age <= {w}) as u_targets_{w}d")
        if prefix == "b":
            aggs.append(f"count(distinct user_id) filter (where age <= {w}) as b_users_{w}d")
            aggs.append(f"count(distinct user_id) filter (where age <= {w} and action = 'buy') as b_buyers_{w}d")
    if prefix in ("u", "ub"):
        aggs += [f"min(age) filter (where action = '{a}') as {prefix}_recency_{a}" for a in ACTIONS]
        aggs.append(f"min(age) as {prefix}_recency_any")
    ratios = [f"{prefix}_{num}_{w}d / ({prefix}_{den}_{w}d + 1.0) as {prefix}_{name}_{w}d"
              for w in windows if w >= 7
              for name, num, den in (("cart_rate", "cart", "click"), ("buy_rate", "buy", "click"),
                                     ("buy_per_cart", "buy", "cart"))]
    return (f"select *, {', '.join(ratios)} from (select {', '.join(keys)}, {', '.join(aggs)} "
            f"from {relation} where {where} group by all)")
