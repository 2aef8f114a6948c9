"""The heuristic floors on a task's backtest, with the evaluator the models use: what no model gets.

    python bench/floors.py --task tmall-2013      # after `make run` (it reads the task's exports)

Prints, per floor (ml/evaluate/floors.py), AUC with its 95 % interval (users resampled), GAUC, recall@N and
NDCG@100 over every active user x every evaluated target, recall counting every buyer, and the AUC over the
pairs with history together only (auc_touched). The training runs log
the same figures (`floor_*` metrics) and `crowd report` shows them beside the models.
"""

from __future__ import annotations

import argparse
import time

from ml.evaluate.floors import floor_scores
from ml.evaluate.intervals import auc_interval
from ml.evaluate.metrics import auc, evaluate_scores
from ml.features.dataset import read_buyers, read_exports
from ml.report import ranking_cutoffs
from ml.task import DEFAULT_TASK, TaskPaths, load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=DEFAULT_TASK)
    args = parser.parse_args()
    task = load_task(args.task)
    paths = TaskPaths.of(task)
    ev = read_exports(paths.exports, [task.backtest], part="evaluation").samples
    buyers = read_buyers(paths.exports, task.backtest)
    y, target, user = ev["label_buy"].to_numpy(), ev["target_id"].to_numpy(), ev["user_id"].to_numpy()
    print(f"{task.name}: backtest {task.backtest}, {len(ev):,} rows, {int(y.sum()):,} positives, "
          f"{len(buyers):,} buyers")
    for name, scores in floor_scores(ev, task.target).items():
        start = time.perf_counter()
        summary, _ = evaluate_scores(y, scores, target, user, task.evaluate.n, buyers=buyers, by=task.ranked_by)
        iv = auc_interval(y, scores, user, n_boot=100, seed=task.training.seed)
        touched = ev["is_candidate"].to_numpy(dtype=bool)
        summary["auc_touched"] = auc(y[touched], scores[touched])
        cells = "  ".join(f"{k} {summary[k]:.4f}" for k in summary
                          if k.startswith(("auc_touched", "auc_per_target", "gauc", "recall_at"))
                          or k == f"ndcg_at_{ranking_cutoffs(task)[-1]}")  # the report's NDCG
        print(f"{name:<18} auc {summary['auc']:.4f} ({iv.low:.4f}-{iv.high:.4f})  {cells}  "
              f"[{time.perf_counter() - start:.1f} s]")


if __name__ == "__main__":
    main()
