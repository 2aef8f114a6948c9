"""Scoring throughput: (user, target) pairs per second of each model over the backtest's population, by batch size.

    python bench/score.py                                  # 200k backtest rows of tmall-2013, make run's settings
    python bench/score.py --rows 1000000 --model din --batch-sizes 1024 2048 4096
    python bench/score.py --model din moe --batch-sizes 2048 --against HEAD~1 --rounds 3   # before / after
    python bench/score.py --model din --processes 1 2      # one process of 2 threads, two of one thread

The rows are the task's prepared backtest split (ml.train.prepared; written by the first training, or here);
the deep models score them with untrained weights (the same work as trained ones), LightGBM with the task's
trained `lgbm_all_mixed` bundle when one is there (`make run` or `crowd train` leave it under
DATA/tasks/TASK/DATASET/models/), its boosters compiled (as crowds score them) and through LightGBM's own
predict, best of three runs each. Timed: ml.train.scoring.predict (collate and forward, no autograd) and
ml.train.gbdt.predict_gbdt, on every core torch and LightGBM use by default. A deep model is timed in one
process (on all of torch's threads), then in as many processes as predict takes by default (one per torch
thread, forked, of one thread each: `processes` 1x2 and 2x1 on 2 cores), alternated over --repeats.

--against REV compares two versions of the code on the same rows: each round runs this script with REV's code
(`git archive` into a scratch folder), then with this checkout's, each in a process of its own and on the same
data directory, so that the machine's drift over the rounds falls on both (its speed moves by a quarter or more
from one hour to the next).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ml.config import data_dir
from ml.models.zoo import MODELS, ModelConfig, build_model
from ml.task import TaskPaths, load_task, parse_assignments
from ml.train.prepared import prepare
from ml.train.scoring import predict, scoring_processes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tmall-2013")
    ap.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                    help="a task setting (default: make run's epochs=1, negative_rate=0.1: its prepared rows)")
    ap.add_argument("--rows", type=int, default=200_000, help="backtest rows scored (default 200000)")
    ap.add_argument("--model", nargs="+", default=["lgbm_all_mixed", *MODELS], help="models (default: all)")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[512, 2048, 8192],
                    help="deep models' batch sizes (default 512 2048 8192)")
    ap.add_argument("--processes", nargs="+", type=int, help="scoring processes to time each deep model with "
                    "(default: 1, then predict's default, one per torch thread)")
    ap.add_argument("--repeats", type=int, default=1, help="times each deep model is timed with each --processes, "
                    "alternated (default 1)")
    ap.add_argument("--against", metavar="REV", help="also score with git revision REV's code, round by round "
                    "(see above)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --against (default 3)")
    args = ap.parse_args()
    if args.against:
        same = ["--task", args.task, "--rows", str(args.rows), "--model", *args.model,
                "--batch-sizes", *map(str, args.batch_sizes)]
        if args.processes:  # (REV's script may not know these)
            same += ["--processes", *map(str, args.processes)]
        if args.repeats != 1:
            same += ["--repeats", str(args.repeats)]
        for assignment in args.set or []:
            same += ["--set", assignment]
        _compare(args.against, args.rounds, same)
        return
    task = load_task(args.task, parse_assignments(args.set if args.set is not None else
                                                  ["epochs=1", "negative_rate=0.1"]))
    paths = TaskPaths.of(task)
    data = prepare(task, paths)
    split = data.splits["evaluation"]
    rows = np.arange(min(args.rows, len(split)))
    sample = split.take(rows)
    threads = torch.get_num_threads()
    print(f"{task.name}: {len(rows):,} backtest rows, {threads} torch threads", flush=True)
    batches = -(-len(rows) // max(args.batch_sizes))
    processes = args.processes or list(dict.fromkeys([1, scoring_processes(torch.device("cpu"), batches)]))
    print(f"{'model':<16} {'batch':>6} {'processes':>10} {'pairs/s':>12}", flush=True)
    for name in args.model:
        if name == "lgbm_all_mixed":
            _lightgbm(paths, data.frame("evaluation").iloc[rows], len(rows))
            continue
        torch.manual_seed(0)
        model = build_model(name, data.fmap, ModelConfig()).eval()
        for batch in args.batch_sizes:
            predict(model, split.take(rows[:2 * batch]), batch_size=batch, processes=1)  # warm up
            for _ in range(args.repeats):
                for n in processes:
                    start = time.perf_counter()
                    predict(model, sample, batch_size=batch, processes=n)
                    per = f"{n}x{threads if n == 1 else 1}"  # processes x torch threads each
                    print(f"{name:<16} {batch:>6} {per:>10} {len(rows) / (time.perf_counter() - start):>12,.0f}",
                          flush=True)


def _compare(rev: str, rounds: int, same: list[str]) -> None:
    """This script with `same` arguments, REV's code then this checkout's, `rounds` times; each line of theirs
    prefixed with the round and the code."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CROWD_DATA_DIR": str(data_dir())}  # REV's copy would look under its own folder
    with tempfile.TemporaryDirectory(prefix="crowd-score-") as scratch:
        old = Path(scratch)
        archive = subprocess.run(["git", "-C", str(root), "archive", rev], capture_output=True)
        if archive.returncode != 0:
            raise SystemExit(f"no code of {rev!r} to compare with: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        print(f"{'round':<6} {'code':<14} {'model':<16} {'batch':>6} {'[processes]':>11} {'pairs/s':>12}", flush=True)
        measured: dict[tuple[str, str], list[str]] = {}
        for r in range(1, rounds + 1):
            for label, code in ((rev, old), ("this checkout", root)):
                done = subprocess.run([sys.executable, str(code / "bench" / "score.py"), *same], cwd=code,
                                      env={**env, "PYTHONPATH": str(code)}, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"bench/score.py with {label}'s code failed:\n{done.stderr[-2000:]}")
                for line in done.stdout.splitlines()[2:]:  # past the rows line and the header
                    print(f"{r:<6} {label:<14} {line}", flush=True)
                    words = line.split()  # a deep model's: model, batch, [processes,] pairs/s (LightGBM's say more)
                    if len(words) in (3, 4) and words[-1].replace(",", "").isdigit():
                        measured.setdefault((" ".join(words[:-1]), label), []).append(words[-1])
    for run in dict.fromkeys(k for k, _ in measured):
        ranges = [f"{label} {min(v, key=_n)}-{max(v, key=_n)}" for (k, label), v in measured.items() if k == run]
        print(f"{run}: " + ", ".join(ranges) + " pairs/s", flush=True)


def _n(figure: str) -> int:
    return int(figure.replace(",", ""))


def _lightgbm(paths: TaskPaths, frame, n: int, repeats: int = 3) -> None:  # noqa: ANN001
    """The bundle's boosters as crowds score them (compiled, ml.train.compiled_trees), then LightGBM's own
    predict on the same float matrices and on the mixed-type frame; each the best of `repeats` runs, the
    compiled trees' ratio to LightGBM's measured in this run."""
    import dataclasses

    from ml.train.bundle import COMPILE_AFTER_ROWS, Bundle
    from ml.train.compiled_trees import CACHE_DIR
    from ml.train.gbdt import PREDICT_BLOCK_ROWS, booster_inputs, predict_gbdt

    folder = paths.models / "lgbm_all_mixed"
    if not (folder / "config.json").exists():
        print(f"{'lgbm_all_mixed':<16} {'-':>6} {'(no bundle: train it first)':>12}", flush=True)
        return
    cached = any((folder / "lgbm" / CACHE_DIR).glob("*.o"))
    start = time.perf_counter()
    bundle = Bundle.load(folder)
    compiled = bundle.compile_trees()
    print(f"lgbm_all_mixed: boosters read and compiled in {time.perf_counter() - start:.1f}s "
          f"({'from the cache' if cached else 'compiled now, cached for the next reads'}); "
          f"{len(compiled.compiled)} of {len(compiled.boosters)} compiled", flush=True)
    dense = bundle.config["dense"]
    lightgbm = dataclasses.replace(compiled, compiled={})  # the same boosters, LightGBM's predict

    def best(fn) -> float:  # noqa: ANN001
        fn(frame.iloc[:1000])  # warm up
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            fn(frame)
            times.append(time.perf_counter() - begin)
        return n / min(times)

    fast = best(lambda f: predict_gbdt(compiled, f, dense))
    print(f"{'lgbm_all_mixed':<16} {'all':>6} {fast:>12,.0f}  (compiled trees, as a bundle scores past "
          f"{COMPILE_AFTER_ROWS:,} rows)", flush=True)
    slow = best(lambda f: predict_gbdt(lightgbm, f, dense))
    print(f"{'lgbm_all_mixed':<16} {'all':>6} {slow:>12,.0f}  (LightGBM's predict, a float32 matrix per block): "
          f"compiled {fast / slow:.1f}x", flush=True)

    def frame_fed(f) -> None:  # noqa: ANN001 (the mixed-type frame the boosters were trained on: LightGBM copies it)
        for name, booster in lightgbm.boosters.items():
            targets = lightgbm.group_targets.get(name)
            rows = np.arange(len(f)) if targets is None else np.flatnonzero(f["target_id"].isin(targets))
            for block in np.array_split(rows, max(1, -(-len(rows) // PREDICT_BLOCK_ROWS))):
                booster.predict(booster_inputs(f.iloc[block], dense, lightgbm.vocabularies),
                                num_iteration=booster.best_iteration)

    print(f"{'lgbm_all_mixed':<16} {'all':>6} {best(frame_fed):>12,.0f}  (LightGBM's predict, the mixed-type frame)",
          flush=True)


if __name__ == "__main__":
    main()
