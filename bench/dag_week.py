"""Benchmark one week of the crowd_weekly DAG through dag.test(), the way `make run` drives it: every Cosmos
dbt task (one run and one test per model) in one process, on the default dataset.

    python bench/dag_week.py                 # ds 2013-08-05, with and without the gc freeze, 2 runs each
    python bench/dag_week.py --runs 3

Cosmos runs a full gc.collect() after every in-process dbt invocation; the DAG's callback
(ml.orchestration.freeze_surviving_objects) freezes what survived so the next collection stays small. The
"without" rows replace that callback by a no-op (and collect without freezing between runs), everything
else equal. Each variant runs in its own
process over a scratch data directory that links the dataset, so the numbers do not depend on what ran before.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_variant(freeze: bool, ds: dt.date, runs: int) -> list[float]:
    """Runs in a child process (see main): the metadata DB, then `runs` dag.test() of the week."""
    from ml.local_airflow import run_pipeline
    from ml.task import load_task

    if not freeze:  # Cosmos alone: no freeze after the dbt tasks, none between runs either
        import gc

        import ml.local_airflow
        import ml.orchestration

        ml.orchestration.freeze_surviving_objects = lambda *args, **kwargs: None
        ml.local_airflow._collect_garbage = gc.collect
    results = run_pipeline(load_task("tmall-2013"), dates=[ds] * runs, training=False, quiet=True)
    return [round(r.seconds, 1) for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ds", default="2013-08-05")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--child", choices=["freeze", "no-freeze"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    ds = dt.date.fromisoformat(args.ds)
    if args.child:
        print(json.dumps(one_variant(args.child == "freeze", ds, args.runs)))
        return

    from ml.config import Paths

    dataset = Paths.default().dataset("synthetic")
    if not (dataset / "events").exists():
        sys.exit(f"no dataset at {dataset}: run `crowd generate --preset default` first")
    print(f"tmall-2013.periods, period {ds}, dag.test() in one process, default dataset ({dataset})")
    print("| callback | run | seconds |\n|---|---|---|")
    for variant in ("freeze", "no-freeze"):
        with tempfile.TemporaryDirectory(prefix="crowd-bench-dag-") as scratch:
            (Path(scratch) / "raw").mkdir()
            os.symlink(dataset, Path(scratch) / "raw" / "synthetic")
            env = {**os.environ, "CROWD_DATA_DIR": scratch}
            done = subprocess.run([sys.executable, __file__, "--child", variant, "--ds", str(ds),
                                   "--runs", str(args.runs)], env=env, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                sys.exit(done.stderr[-3000:])
            seconds = json.loads(done.stdout.strip().splitlines()[-1])
            shutil.rmtree(Path(scratch) / "warehouse", ignore_errors=True)
        for i, s in enumerate(seconds, 1):
            print(f"| {'gc.freeze after each dbt task' if variant == 'freeze' else 'none (Cosmos alone)'} "
                  f"| {i} | {s} |")


if __name__ == "__main__":
    main()
