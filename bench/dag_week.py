"""Benchmark one week of the periods DAG through dag.test(), the way `make run` drives it, against the same dbt
build (and export) run alone: what orchestration costs on top of the work.

    python bench/dag_week.py                 # ds 2013-08-05 of tmall-2013 on the default dataset, 2 runs each
    python bench/dag_week.py --runs 3 --ds 2013-07-15

"alone" is `crowd warehouse --ds DS`'s work in a process of its own: one `dbt build` (one dbtRunner invocation,
as a user's `dbt build` would run; ODS, DIM and DW left out once the warehouse holds them, as the DAG does:
ml.warehouse.build.build_dates) then the export of that date. "DAG" is one run of <task>.periods for the same
date: plan, the same build in one task (or, with warehouse.airflow_tasks per_model, Cosmos's producer and a
watcher task per model and per model's tests), the export. Each side runs in its own process over its own
scratch data directory linking the dataset, so neither warms the other's warehouse; run k of each side is
compared with run k of the other (the first run builds every layer from nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = "tmall-2013"


def alone(ds: dt.date, runs: int) -> list[dict]:
    from ml.task import TaskPaths, load_task
    from ml.warehouse.build import build_dates
    from ml.warehouse.export import export_dates

    task = load_task(TASK)
    paths = TaskPaths.of(task)
    paths.warehouse.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        build_dates(dataset_dir=paths.dataset_dir, warehouse=paths.warehouse, dbt_vars=task.dbt_vars(ds=[ds]),
                    quiet=True)
        t1 = time.perf_counter()
        export_dates(paths.warehouse, paths.exports, [ds], fingerprint=task.warehouse_fingerprint(),
                     dataset_dir=paths.dataset_dir)
        out.append({"build": t1 - t0, "export": time.perf_counter() - t1})
    return out


def dag(ds: dt.date, runs: int) -> list[dict]:
    from ml.local_airflow import run_pipeline
    from ml.task import load_task

    results = run_pipeline(load_task(TASK), dates=[ds] * runs, training=False, quiet=True)
    bad = [r for r in results if r.state != "success"]
    if bad:
        raise SystemExit(f"a DAG run did not succeed: {bad}")
    return [{"dag": r.seconds} for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ds", default="2013-08-05")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--child", choices=["alone", "dag"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    ds = dt.date.fromisoformat(args.ds)
    if args.child:
        print(json.dumps((alone if args.child == "alone" else dag)(ds, args.runs)))
        return

    from ml.config import Paths

    dataset = Paths.default().dataset("synthetic")
    if not (dataset / "events").exists():
        sys.exit(f"no dataset at {dataset}: run `crowd generate --task {TASK}` first")
    print(f"{TASK}.periods, period {ds}, default dataset ({dataset}), {os.cpu_count()} cores")
    measured = {}
    for side in ("alone", "dag"):
        with tempfile.TemporaryDirectory(prefix="crowd-bench-dag-") as scratch:
            (Path(scratch) / "raw").mkdir()
            os.symlink(dataset, Path(scratch) / "raw" / "synthetic")
            child = [sys.executable, __file__, "--child", side, "--ds", str(ds), "--runs", str(args.runs)]
            done = subprocess.run(child,
                                  env={**os.environ, "CROWD_DATA_DIR": scratch}, capture_output=True, text=True,
                                  cwd=ROOT)
            if done.returncode != 0:
                sys.exit(done.stderr[-3000:])
            measured[side] = json.loads(done.stdout.strip().splitlines()[-1])
    print("| run | dbt build alone | + export | DAG run | DAG - (build + export) | DAG / (build + export) |")
    print("|---|---|---|---|---|---|")
    for i, (a, d) in enumerate(zip(measured["alone"], measured["dag"], strict=True), 1):
        work = a["build"] + a["export"]
        print(f"| {i} | {a['build']:.1f} s | {work:.1f} s | {d['dag']:.1f} s | {d['dag'] - work:+.1f} s "
              f"| {d['dag'] / work:.2f}x |")


if __name__ == "__main__":
    main()
