"""Benchmark one weekly warehouse build: events/s and peak memory at 1M, 10M and 100M generated events,
against the DuckDB floor and the independent pandas reference (ml/warehouse/reference.py) in the same run.

    python bench/warehouse.py                       # 1M, 10M, 100M events; pandas at 1M and 10M
    python bench/warehouse.py --events 1e6 10e6     # a subset

A weekly build is what the Airflow DAG runs for one week: `dbt build` (every model and data test) for one
sample date into a fresh warehouse, then the parquet export of that date. The floor is the least any build of
these features could cost: one DuckDB scan-aggregate of the history window over the same event files (every
(user, target)'s count per action, the item table joined for the target), in a process of its own with the
same memory cap; ratio = (build + export) / floor, and the ADS run's own (ADS only / floor: the features the
floor stands for, without the layers and the tests before them). That floor counts four actions over one
window; the one-query features are the columns of the three ADS feature models (user, target, user x target:
counts per action and window, distinct days, targets, users and buyers per window, recencies, ratios), each
computed by one straightforward DuckDB query over the window's events, read and joined with the items once
(ml/warehouse/reference.py; equal to the models' values on deduplicated events, tests/test_warehouse.py): what a
person writing these columns by hand would run, not a lower bound. Against it, models x = the build's own time
for those columns (the daily table they read and the three models, dbt's node times) and ADS x = the whole
ADS run (every ADS model, dbt's start-up included). Two ratios against pandas:
  whole build  dbt build + export   vs  pandas reading the log, deduplicating, joining items, features
  features     dbt run of the ADS models (ODS..DW already built)  vs  pandas features from events in memory
Each measurement runs in its own process, so its peak resident memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ml.config import ACTIONS
from ml.synth.generate import expected_events_per_user, generate
from ml.synth.params import PRESETS, GeneratorConfig
from ml.task import load_task
from ml.warehouse.export import sql_path
from ml.warehouse.reference import ONE_QUERY_MODELS

DS = dt.date(2013, 9, 16)
# what the features floor computes, as the build computes it: the daily table the three feature models read
FEATURE_MODELS = ("dw_user_target_daily", *(model for model, _, _ in ONE_QUERY_MODELS.values()))


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def step_dbt(dataset: Path, warehouse: Path, exports: Path) -> dict:
    from ml.warehouse.build import run_dbt
    from ml.warehouse.export import export_dates

    dbt_v = load_task("tmall-2013").dbt_vars(ds=[DS])
    t0 = time.perf_counter()
    run_dbt("build", dataset_dir=dataset, warehouse=warehouse, dbt_vars=dbt_v, quiet=True)
    t1 = time.perf_counter()
    results = json.loads((warehouse.parent / "dbt" / "target" / "run_results.json").read_text())["results"]
    feature_models = sum(r["execution_time"] for r in results
                         if r["unique_id"].rsplit(".", 1)[-1] in FEATURE_MODELS)
    export_dates(warehouse, exports, [DS])
    t2 = time.perf_counter()
    run_dbt("run", dataset_dir=dataset, warehouse=warehouse, dbt_vars=dbt_v, select=["path:models/ads"], quiet=True)
    t3 = time.perf_counter()
    return {"build_s": t1 - t0, "export_s": t2 - t1, "ads_s": t3 - t2, "feature_models_s": feature_models,
            "peak_gib": _peak_gib()}


def step_floor(dataset: Path, work: Path) -> dict:
    """The floor (see the module's docstring), then the one-query features: the columns of the three ADS feature
    models, each one DuckDB query over the window's events, read and joined with the items once."""
    import duckdb

    from ml.warehouse.engine import duckdb_memory_limit
    from ml.warehouse.reference import ONE_QUERY_MODELS, one_query_feature_sql, window_events_sql

    task = load_task("tmall-2013")
    column = {"brand": "brand_id", "category": "category_id"}[task.target]
    # in memory like the build's intermediates; what passes the cap spills under the run's own folder
    con = duckdb.connect(config={"memory_limit": duckdb_memory_limit(), "temp_directory": str(work / "spill")})
    events = f"read_parquet({sql_path(dataset / 'events' / '*.parquet')})"
    items = f"read_parquet({sql_path(dataset / 'items.parquet')})"
    counts = ", ".join(f"count(*) filter (where e.action = '{a}') as n_{a}" for a in ACTIONS)
    t0 = time.perf_counter()
    con.execute(
        f"create table floor as select e.user_id, i.{column} as target_id, {counts} "
        f"from {events} as e join {items} as i on e.item_id = i.item_id "
        "where e.ts >= ? and e.ts < ? group by all",
        [dt.datetime.combine(DS - dt.timedelta(days=task.windows.history_days), dt.time()),
         dt.datetime.combine(DS, dt.time())])
    seconds = time.perf_counter() - t0
    rows = con.execute("select count(*) from floor").fetchone()[0]
    t0 = time.perf_counter()
    con.execute(f"create table window_events as {window_events_sql(events, items, column)}",
                {"ds": DS, "history_days": task.windows.history_days})
    for prefix in ONE_QUERY_MODELS:
        query = one_query_feature_sql(prefix, task.warehouse.feature_windows)
        con.execute(f"create table features_{prefix} as {query}")
    one_query = time.perf_counter() - t0
    return {"floor_s": seconds, "rows": rows, "one_query_s": one_query, "peak_gib": _peak_gib()}


def step_pandas(dataset: Path) -> dict:
    from ml.warehouse.reference import load_events, reference_features

    t0 = time.perf_counter()
    events = load_events(dataset)
    t1 = time.perf_counter()
    reference_features(events, DS)
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "features_s": t2 - t1, "peak_gib": _peak_gib()}


def _child(step: str, *args: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--step", step, *map(str, args)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _dataset(events: float, root: Path) -> tuple[Path, int]:
    base = GeneratorConfig(sizes=PRESETS["large"].sizes, oracle_dates=())
    scale = events / 100e6
    cfg = base.with_sizes(items=max(5_000, int(400_000 * scale)), brands=max(100, int(4_000 * scale)))
    cfg = cfg.with_sizes(users=int(events / expected_events_per_user(cfg)))
    out = root / f"events-{events:.0e}"
    manifest = out / "manifest.json"
    if not manifest.exists():
        generate(cfg, out, progress=False)
    return out, json.loads(manifest.read_text())["events"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=float, nargs="+", default=[1e6, 10e6, 100e6])
    ap.add_argument("--pandas-up-to", type=float, default=10e6, help="largest size the pandas reference runs at")
    ap.add_argument("--keep", type=Path, help="keep the generated datasets here (reused by a later run)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step == "dbt":
        print(json.dumps(step_dbt(*args.paths)))
        return
    if args.step == "floor":
        print(json.dumps(step_floor(*args.paths)))
        return
    if args.step == "pandas":
        print(json.dumps(step_pandas(*args.paths)))
        return

    root = args.keep or Path(tempfile.mkdtemp(prefix="crowd-bench-wh-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"one weekly build (ds {DS}), 2-core figures are this machine's; datasets under {root}")
    print(f"{'events':>12} {'build+export':>13} {'events/s':>12} {'peak':>9} {'ADS only':>9} | "
          f"{'floor':>7} {'x floor':>8} {'ADS x':>6} | "
          f"{'one-query features':>18} {'models x':>8} {'ADS x':>6} | "
          f"{'pandas all':>11} {'pandas ADS':>11} {'peak':>9} | {'ratio all':>9} {'ratio ADS':>9}")
    for n in args.events:
        dataset, n_events = _dataset(n, root)
        work = Path(tempfile.mkdtemp(prefix="wh-", dir=root))
        d = _child("dbt", dataset, work / "crowd.duckdb", work / "exports")
        total = d["build_s"] + d["export_s"]
        f = _child("floor", dataset, work)
        line = (f"{n_events:>12,} {total:>12.1f}s {n_events / total:>12,.0f} {d['peak_gib']:>7.2f}Gi "
                f"{d['ads_s']:>8.1f}s | {f['floor_s']:>6.2f}s {total / f['floor_s']:>7.1f}x "
                f"{d['ads_s'] / f['floor_s']:>5.1f}x | "
                f"{f['one_query_s']:>17.2f}s {d['feature_models_s'] / f['one_query_s']:>7.2f}x "
                f"{d['ads_s'] / f['one_query_s']:>5.1f}x | ")
        if n <= args.pandas_up_to:
            p = _child("pandas", dataset)
            p_total = p["load_s"] + p["features_s"]
            line += (f"{p_total:>10.1f}s {p['features_s']:>10.1f}s {p['peak_gib']:>7.2f}Gi | "
                     f"{p_total / total:>8.1f}x {p['features_s'] / d['ads_s']:>8.1f}x")
        else:
            line += f"{'-':>11} {'-':>11} {'-':>9} | {'-':>9} {'-':>9}"
        print(line, flush=True)
        shutil.rmtree(work, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
