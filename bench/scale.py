"""Scale report: one weekly warehouse build on DuckDB and on local Spark, and deep-model training in 1 and 2
processes, each measured in this run and printed with its ratio.

    python bench/scale.py                                  # 10M and 100M events; din trained at 1 and 2 processes
    python bench/scale.py --events 1e6 --model dnn         # a quick look

Warehouse: `crowd warehouse`'s work for one sample date (dbt build of every model and test, then the export)
into a fresh warehouse, per engine, each in a process of its own; peak = the largest resident memory of that
process and its children together (Spark's JVM is a child), sampled every 0.2 s. Datasets are generated as in
bench/warehouse.py. Training: `crowd train --model MODEL --epochs 1 --nproc N` on the default task's exports
in DATA (build them first: `crowd generate --task tmall-2013 && crowd warehouse --task tmall-2013`); samples/s
is every rank's rows over the training time, as the trainer counts them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from warehouse import DS, _dataset  # bench/warehouse.py: the same datasets, the same date

REPO = Path(__file__).resolve().parents[1]


class PeakMemory:
    """The largest resident memory of a process tree, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def step_build(engine: str, dataset: Path, location: Path, exports: Path) -> dict:
    from ml.task import load_task
    from ml.warehouse.build import run_dbt
    from ml.warehouse.export import export_dates

    t0 = time.perf_counter()
    run_dbt("build", dataset_dir=dataset, warehouse=location, dbt_vars=load_task("tmall-2013").dbt_vars(ds=[DS]),
            quiet=True, engine=engine)
    t1 = time.perf_counter()
    export_dates(location, exports, [DS], engine=engine)
    return {"build_s": t1 - t0, "export_s": time.perf_counter() - t1}


def _build(engine: str, dataset: Path, work: Path) -> dict:
    location = work / ("crowd.duckdb" if engine == "duckdb" else "spark")
    proc = subprocess.Popen([sys.executable, __file__, "--step", engine, str(dataset), str(location),
                             str(work / f"exports-{engine}")], stdout=subprocess.PIPE, text=True)
    with PeakMemory(proc.pid) as mem:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the {engine} build failed (exit code {proc.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_gib": mem.peak / 2**30}


def _train(model: str, nproc: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "ml.cli", "train", "--model", model, "--epochs", "1", "--no-track",
           "--nproc", str(nproc), "--outcome", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training {model} in {nproc} process(es) failed:\n{done.stderr[-2000:]}")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=float, nargs="*", default=[10e6, 100e6],
                    help="log sizes of the warehouse part (none: training only)")
    ap.add_argument("--model", default="din", help="the deep model trained at 1 and 2 processes")
    ap.add_argument("--keep", type=Path, help="keep the generated datasets here (reused by a later run)")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(step_build(args.step, *args.paths)))
        return

    root = args.keep or Path(tempfile.mkdtemp(prefix="crowd-bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"one weekly build (ds {DS}) per engine, {os.cpu_count()} cores; datasets under {root}")
    print(f"{'events':>12} {'engine':>7} {'build+export':>13} {'events/s':>12} {'peak':>9} | "
          f"{'Spark / DuckDB time':>19} {'memory':>7}")
    for n in args.events:
        dataset, n_events = _dataset(n, root)
        work = Path(tempfile.mkdtemp(prefix="scale-", dir=root))
        results = {engine: _build(engine, dataset, work) for engine in ("duckdb", "spark")}
        for engine, r in results.items():
            total = r["build_s"] + r["export_s"]
            line = f"{n_events:>12,} {engine:>7} {total:>12.1f}s {n_events / total:>12,.0f} {r['peak_gib']:>7.2f}Gi |"
            if engine == "spark":
                d = results["duckdb"]
                line += (f" {total / (d['build_s'] + d['export_s']):>18.1f}x"
                         f" {r['peak_gib'] / d['peak_gib']:>6.1f}x")
            print(line, flush=True)
        shutil.rmtree(work, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    if args.skip_training:
        return
    with tempfile.TemporaryDirectory() as tmp:
        one = _train(args.model, 1, Path(tmp) / "one.json")
        two = _train(args.model, 2, Path(tmp) / "two.json")
    one_s, two_s = one["samples_per_second"], two["samples_per_second"]
    print(f"\n{args.model}, one epoch on the default task's exports: 1 process {one_s:,.0f} samples/s, "
          f"2 processes {two_s:,.0f} samples/s ({two_s / one_s:.2f}x); "
          f"validation AUC {one['history'][-1]['valid_auc']:.4f} and {two['history'][-1]['valid_auc']:.4f}")


if __name__ == "__main__":
    main()
