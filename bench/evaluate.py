"""Time the evaluation a model's training task runs after scoring, on a population the size of the default task's
backtest (every active user x every evaluated brand: 19,875 x 50 = 993,750 pairs).

    python bench/evaluate.py                          # 3 passes, the best of each is printed
    PYTHONPATH=/path/to/other/checkout python bench/evaluate.py   # the same on another version of ml/

Each model's task evaluates its backtest scores (evaluate_scores, their bootstrap intervals, the curves of its
plots and report) and its validation dates' population (evaluate_scores again, for the champion's metric); the
ceiling's and the floors' are evaluated once per prepared data and stored. The scores here are made up: a
model's (continuous, a little signal) and a floor's (a count, many ties), so that both sort paths are timed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from ml.evaluate.curves import series_curves
from ml.evaluate.intervals import auc_interval, backtest_intervals
from ml.evaluate.metrics import DEFAULT_NS, evaluate_scores, ranking_groups
from ml.train.calibration import calibration_summary

USERS, TARGETS = 19_875, 50


def population(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(USERS) * 7 + 3, TARGETS)
    target = np.tile(np.arange(TARGETS) * 13 + 5, USERS)
    n = len(user)
    touched = rng.random(n) < 0.2
    y = (rng.random(n) < np.where(touched, 0.02, 0.001)).astype(np.float64)
    model = np.clip(0.002 + 0.01 * touched + 0.02 * y * rng.random(n) + 0.003 * rng.random(n), 0, 1)
    floor = np.floor(rng.poisson(0.3, n) + 3 * touched + 2 * y * rng.random(n))  # counts: ties everywhere
    return {"y": y, "user": user, "target": target, "touched": touched,
            "model": model.astype(np.float32).astype(np.float64), "floor": floor}


def stages(d: dict[str, np.ndarray]) -> dict[str, Callable[[], object]]:
    y, user, target, touched, p = d["y"], d["user"], d["target"], d["touched"], d["model"]
    group = ranking_groups(target, user, "target")
    _, table = evaluate_scores(y, p, target, user, DEFAULT_NS)
    return {
        "evaluate_scores (model)": lambda: evaluate_scores(y, p, target, user, DEFAULT_NS),
        "evaluate_scores (floor, ties)": lambda: evaluate_scores(y, d["floor"], target, user, DEFAULT_NS),
        "backtest_intervals": lambda: backtest_intervals(y, p, target, user, table, seed=0),
        "auc_interval (touched pairs)": lambda: auc_interval(y[touched], p[touched], user[touched], n_boot=100),
        "series_curves (model)": lambda: series_curves("model", y, p, group, None),
        "calibration_summary": lambda: calibration_summary(y, p, touched),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    d = population()
    print(f"{len(d['y']):,} pairs, {int(d['y'].sum()):,} buyers; best of {args.passes} passes, seconds")
    total = 0.0
    for name, run in stages(d).items():
        best = np.inf
        for _ in range(args.passes):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        total += best
        print(f"{name:32s} {best:6.3f}")
    print(f"{'sum of the above':32s} {total:6.3f}")


if __name__ == "__main__":
    main()
