"""The ceiling's Monte Carlo error at a few rollout counts: the oracle's AUC over every user x brand of a
generated dataset on the task's backtest date, from all its rollouts and from half of them.

    .venv/bin/python bench/ceiling.py [--preset default] [--rollouts 32 1024]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ml.synth.ceiling import ceiling_auc
from ml.synth.generate import generate
from ml.synth.params import PRESETS
from ml.task import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--task", default="tmall-2013")
    ap.add_argument("--rollouts", type=int, nargs="+", default=[32, 1024])
    args = ap.parse_args()
    task = load_task(args.task)
    ds, label = task.backtest, task.windows.label_days
    print(f"preset {args.preset}, oracle of {ds} ({label}-day window), every user x brand of the log")
    print(f"{'rollouts':>9} {'auc':>8} {'auc_half':>9} {'error':>8} {'buyers':>7} {'p=0 buyers':>11} {'oracle_s':>9}")
    for r in args.rollouts:
        cfg = PRESETS[args.preset].config(oracle_dates=(ds,), oracle_label_days=label, ceiling_dates=(ds,),
                                          ceiling_rollouts=r, seed=task.generate.seed if task.generate else 7)
        with tempfile.TemporaryDirectory() as tmp:
            m = generate(cfg, Path(tmp) / "d", progress=False)
            c = ceiling_auc(Path(tmp) / "d", ds, label)
        print(f"{r:>9} {c.auc:>8.4f} {c.auc_half:>9.4f} {c.error:>8.4f} {c.buyers:>7} {c.zero_buyers:>11} "
              f"{m['oracle_cpu_seconds']:>9.1f}")


if __name__ == "__main__":
    main()
