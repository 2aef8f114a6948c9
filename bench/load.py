"""`crowd load` of a log of one's own: rows per second of one load of every file, and what appending its last
day costs against loading the whole log again (`crowd load --append`).

    python bench/load.py                          # 2M events over 60 days, csv with a header, an item table
    python bench/load.py --events 10000000 --days 90

The log is random but shaped like one (users, items and categories drawn with skew, four actions, times over
--days days), written as the csv format reads it; the scratch folder is removed afterwards. Timed, each in this
process on the same files: one load of every file (the whole log and the item table), a load of every day but
the last, then `--append` of the last day's file; the appended dataset's counts are checked against the whole
load's. The figures are wall times on this machine (its speed moves by a quarter or more between hours).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.loaders.load import load

START = dt.datetime(2024, 1, 1)
ACTIONS = np.array(["click", "collect", "cart", "buy"])


def write_log(folder: Path, events: int, days: int, seed: int) -> tuple[Path, Path, Path, Path]:
    """The whole log, its days but the last, its last day, and the item table, as csv files."""
    rng = np.random.default_rng(seed)
    users, items, categories = max(events // 50, 10), max(events // 100, 10), 500
    item = (rng.zipf(1.3, events) % items).astype(np.int64)
    seconds = np.sort(rng.integers(0, days * 86_400, events))
    table = pa.table({
        "user_id": (rng.zipf(1.2, events) % users).astype(np.int64),
        "item_id": item,
        "category_id": item % categories,
        "action": ACTIONS[rng.choice(4, events, p=[0.9, 0.03, 0.05, 0.02])],
        "time": pc.strftime(pa.array(np.datetime64(START, "s") + seconds.astype("timedelta64[s]")),
                            format="%Y-%m-%d %H:%M:%S"),
    })
    last_day = int(np.searchsorted(seconds, (days - 1) * 86_400))
    paths = folder / "log.csv", folder / "log-but-last-day.csv", folder / "log-last-day.csv", folder / "items.csv"
    pacsv.write_csv(table, paths[0])
    pacsv.write_csv(table.slice(0, last_day), paths[1])
    pacsv.write_csv(table.slice(last_day), paths[2])
    ids = np.arange(items, dtype=np.int64)
    pacsv.write_csv(pa.table({"item_id": ids, "category_id": ids % categories}), paths[3])
    return paths


def timed(paths: list[Path], out: Path, **options: object) -> tuple[float, dict]:
    """A load of the csv files into out: its wall time and its manifest."""
    start = time.perf_counter()
    manifest = load("csv", paths, out, **options)
    return time.perf_counter() - start, manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="crowd-bench-load-") as scratch:
        folder = Path(scratch)
        whole, but_last, last, items = write_log(folder, args.events, args.days, args.seed)
        sizes = {p.name: p.stat().st_size / 2**20 for p in (whole, last)}
        t_whole, m_whole = timed([whole], folder / "whole", items_paths=[items])
        t_first, _ = timed([but_last], folder / "inc", items_paths=[items])
        t_append, m_inc = timed([last], folder / "inc", append=True)
        for key in ("read", "accepted", "rejected", "events", "actions", "exact_duplicates", "items", "last_ts"):
            if m_inc[key] != m_whole[key]:
                raise SystemExit(f"the appended dataset's {key} differs from the whole load's: "
                                 f"{json.dumps(m_inc[key])} against {json.dumps(m_whole[key])}")
        appended = m_inc["appended"][-1]["events"]
        print(f"{m_whole['events']:,} events over {args.days} days ({sizes[whole.name]:.0f} MiB of csv), the last day "
              f"{appended:,} events ({sizes[last.name]:.1f} MiB), {m_whole['items']:,} items")
        print(f"{'load':<44}{'seconds':>9}{'events/s':>13}")
        print(f"{'every file at once':<44}{t_whole:>9.2f}{m_whole['events'] / t_whole:>13,.0f}")
        print(f"{'every day but the last':<44}{t_first:>9.2f}{(m_whole['events'] - appended) / t_first:>13,.0f}")
        print(f"{'the last day, --append':<44}{t_append:>9.2f}{appended / t_append:>13,.0f}")
        print(f"the last day appended costs {t_append / t_whole:.2f} of loading the whole log again; the appended "
              "dataset's counts equal the whole load's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
