"""Scoring throughput: (user, target) pairs per second of each model over the backtest's population, by batch size.

    python bench/score.py                                  # 200k backtest rows of tmall-2013, make run's settings
    python bench/score.py --rows 1000000 --model din --batch-sizes 1024 2048 4096

The rows are the task's prepared backtest split (ml.train.prepared; written by the first training, or here);
the deep models score them with untrained weights (the same work as trained ones), LightGBM with the task's
trained `lgbm_all_mixed` bundle when one is there (`make run` or `crowd train` leave it under
DATA/tasks/TASK/DATASET/models/). Timed: ml.train.trainer.predict (collate and forward, no autograd) and
ml.train.gbdt.predict_gbdt, in this process on every core torch and LightGBM use by default.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ml.models.zoo import MODELS, ModelConfig, build_model
from ml.task import TaskPaths, load_task, parse_assignments
from ml.train.prepared import prepare
from ml.train.trainer import predict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tmall-2013")
    ap.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                    help="a task setting (default: make run's epochs=1, negative_rate=0.1: its prepared rows)")
    ap.add_argument("--rows", type=int, default=200_000, help="backtest rows scored (default 200000)")
    ap.add_argument("--model", nargs="+", default=["lgbm_all_mixed", *MODELS], help="models (default: all)")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[512, 2048, 8192],
                    help="deep models' batch sizes (default 512 2048 8192)")
    args = ap.parse_args()
    task = load_task(args.task, parse_assignments(args.set if args.set is not None else
                                                  ["epochs=1", "negative_rate=0.1"]))
    paths = TaskPaths.of(task)
    data = prepare(task, paths)
    split = data.splits["evaluation"]
    rows = np.arange(min(args.rows, len(split)))
    sample = split.take(rows)
    print(f"{task.name}: {len(rows):,} backtest rows, {torch.get_num_threads()} torch threads", flush=True)
    print(f"{'model':<16} {'batch':>6} {'pairs/s':>12}", flush=True)
    for name in args.model:
        if name == "lgbm_all_mixed":
            _lightgbm(paths, data.frame("evaluation").iloc[rows], len(rows))
            continue
        torch.manual_seed(0)
        model = build_model(name, data.fmap, ModelConfig()).eval()
        for batch in args.batch_sizes:
            predict(model, split.take(rows[:2 * batch]), batch_size=batch)  # warm up
            start = time.perf_counter()
            predict(model, sample, batch_size=batch)
            print(f"{name:<16} {batch:>6} {len(rows) / (time.perf_counter() - start):>12,.0f}", flush=True)


def _lightgbm(paths: TaskPaths, frame, n: int) -> None:  # noqa: ANN001
    from ml.train.bundle import Bundle
    from ml.train.gbdt import PREDICT_BLOCK_ROWS, booster_inputs, predict_gbdt

    folder = paths.models / "lgbm_all_mixed"
    if not (folder / "config.json").exists():
        print(f"{'lgbm_all_mixed':<16} {'-':>6} {'(no bundle: train it first)':>12}", flush=True)
        return
    bundle = Bundle.load(folder)
    predict_gbdt(bundle.gbdt(), frame.iloc[:1000], bundle.config["dense"])  # warm up
    start = time.perf_counter()
    predict_gbdt(bundle.gbdt(), frame, bundle.config["dense"])
    print(f"{'lgbm_all_mixed':<16} {'all':>6} {n / (time.perf_counter() - start):>12,.0f}  (one float32 matrix "
          "per block, as scored)", flush=True)
    # the same boosters fed the mixed-type frame they were trained on, which LightGBM copies to float64 first
    gbdt, dense = bundle.gbdt(), bundle.config["dense"]
    start = time.perf_counter()
    for name, booster in gbdt.boosters.items():
        targets = gbdt.group_targets.get(name)
        rows = np.arange(len(frame)) if targets is None else np.flatnonzero(frame["target_id"].isin(targets))
        for block in np.array_split(rows, max(1, -(-len(rows) // PREDICT_BLOCK_ROWS))):
            booster.predict(booster_inputs(frame.iloc[block], dense, gbdt.vocabularies),
                            num_iteration=booster.best_iteration)
    print(f"{'lgbm_all_mixed':<16} {'all':>6} {n / (time.perf_counter() - start):>12,.0f}  (the mixed-type frame)",
          flush=True)


if __name__ == "__main__":
    main()
