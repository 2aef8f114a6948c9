"""The ceiling's Monte Carlo error, measured against the log itself: the oracle's AUC over every user x
brand (or item) of the dataset on one of its dates, from all its rollouts and from the first half of them.

The oracle's P(buy) is an average over rollouts, and the noise of a finite average lowers the AUC (buyers whose
few rollouts happened to hold no session score 0). The difference between the full and the half estimate is
how much the figure still moves with the number of rollouts: at 32 it is about 0.015 on the default data, at
1,024 under 0.001 (bench/ceiling.py prints both).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
from sklearn.metrics import roc_auc_score


@dataclass(frozen=True)
class CeilingAuc:
    auc: float        # all the rollouts
    auc_half: float   # the first half of them
    buyers: int       # (user, entity) pairs with a buy in the label window
    zero_buyers: int  # of which the oracle gave P(buy) = 0: they can never rank

    @property
    def error(self) -> float:
        return abs(self.auc - self.auc_half)


def ceiling_auc(dataset_dir: Path, ds: dt.date, label_days: int) -> CeilingAuc:
    """The oracle of ds against the buys of [ds, ds + label_days), over every (user, entity) of the dataset."""
    root = Path(dataset_dir)
    con = duckdb.connect()
    oracle = [d[0] for d in con.execute("select * from read_parquet(?) limit 0",
                                        [str(root / "oracle" / "*.parquet")]).description]
    entity = "item_id" if "item_id" in oracle else "brand_id"  # one of two fixed names, never the caller's
    con.execute(f"create table o as select user_id, {entity} as e, p_buy, p_buy_half from read_parquet(?) "
                "where ds = ?", [str(root / "oracle" / "*.parquet"), ds])
    con.execute(
        f"create table b as select distinct ev.user_id, i.{entity} as e from read_parquet(?) ev "
        "join read_parquet(?) i using (item_id) where ev.action = 'buy' and ev.ts >= ? and ev.ts < ?",
        [str(root / "events" / "*.parquet"), str(root / "items.parquet"), ds, ds + dt.timedelta(days=label_days)])
    rows = con.sql("select coalesce(o.p_buy, 0) p, coalesce(o.p_buy_half, 0) h, (b.user_id is not null)::int y "
                   "from o full join b using (user_id, e)").fetchnumpy()
    users = con.execute("select count(distinct user_id) from read_parquet(?)",
                        [str(root / "events" / "*.parquet")]).fetchone()[0]
    entities = con.execute(f"select count(distinct {entity}) from read_parquet(?)",
                           [str(root / "items.parquet")]).fetchone()[0]
    # every other pair: P(buy) 0 and no buy, one weighted row
    rest = users * entities - len(rows["y"])
    y = np.r_[rows["y"], 0]
    w = np.r_[np.ones(len(rows["y"])), rest]
    full = float(roc_auc_score(y, np.r_[rows["p"], 0.0], sample_weight=w))
    half = float(roc_auc_score(y, np.r_[rows["h"], 0.0], sample_weight=w))
    zero = int(((rows["p"] == 0) & (rows["y"] == 1)).sum())
    return CeilingAuc(full, half, int(rows["y"].sum()), zero)
