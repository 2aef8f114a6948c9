"""Two trainings at once, as the training DAG runs them under an executor: on a thread per core each, or on
their share of the cores (ml.orchestration.training_threads).

    python bench/trainings_at_once.py                     # din and deepfm, 300 batches each, after make run
    python bench/trainings_at_once.py --model dnn dnn --steps 500 --rounds 2

Each training is a process of its own, as an executor's task is: it maps the task's prepared rows
(ml.train.prepared, make run's settings by default), builds the model and runs `--steps` optimiser steps over
the training split, timed from the first batch. The processes of one setting start together; a setting's
wall time is until both end. Settings: `every core` (torch's default, what a task process had before), `share`
(the cores divided by the trainings at once), and one training alone on every core, for scale. The settings
alternate over --rounds, so the machine's drift falls on each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(task_name: str, sets: list[str], model_name: str, steps: int, threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from ml.models.zoo import ModelConfig, build_model
    from ml.task import TaskPaths, load_task, parse_assignments
    from ml.train.prepared import prepare
    from ml.train.trainer import TrainConfig, model_loss, seed_everything

    task = load_task(task_name, parse_assignments(sets))
    data = prepare(task, TaskPaths.of(task))
    seed_everything(0)
    model = build_model(model_name, data.fmap, ModelConfig()).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = TrainConfig()
    n, start = 0, time.perf_counter()
    for step, b in enumerate(data.splits["train"].batches(cfg.batch_size, shuffle=True, seed=0)):
        if step == steps:
            break
        loss = model_loss(model(b), b["labels"], cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(b["labels"])
    seconds = time.perf_counter() - start
    print(json.dumps({"model": model_name, "threads": torch.get_num_threads(), "seconds": seconds,
                      "samples_per_s": n / seconds}), flush=True)


def run_setting(args: argparse.Namespace, models: list[str], threads: int | None) -> tuple[float, list[dict]]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as an executor's task process
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    base = [sys.executable, __file__, "--task", args.task, "--steps", str(args.steps),
            *[a for s in args.set for a in ("--set", s)]]
    start = time.perf_counter()
    procs = [subprocess.Popen([*base, "--child", m, *(["--threads", str(threads)] if threads else [])], env=env,
                              stdout=subprocess.PIPE, text=True) for m in models]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a training process failed (exit code {p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return time.perf_counter() - start, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tmall-2013")
    ap.add_argument("--set", action="append", default=["epochs=1", "negative_rate=0.1"], metavar="KEY=VALUE",
                    help="task settings (default: make run's epochs=1, negative_rate=0.1: its prepared rows)")
    ap.add_argument("--model", nargs=2, default=["din", "deepfm"], help="the two models (default din deepfm)")
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps per training (default 300)")
    ap.add_argument("--rounds", type=int, default=1, help="times each setting runs, alternated (default 1)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.task, args.set, args.child, args.steps, args.threads)
        return
    from ml.orchestration import TRAININGS_AT_ONCE

    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // TRAININGS_AT_ONCE)
    settings = [("alone, every core", args.model[:1], None), ("two, every core", args.model, None),
                (f"two, share ({share})", args.model, share)]
    print(f"{cores} cores; {args.steps} steps of {' and '.join(args.model)}", flush=True)
    print(f"{'round':<6} {'setting':<20} {'wall s':>8}  per training: model threads seconds samples/s", flush=True)
    walls: dict[str, list[float]] = {}
    for r in range(1, args.rounds + 1):
        for label, models, threads in settings:
            wall, results = run_setting(args, models, threads)
            walls.setdefault(label, []).append(wall)
            each = "; ".join(f"{x['model']} {x['threads']} {x['seconds']:.1f} {x['samples_per_s']:,.0f}"
                             for x in results)
            print(f"{r:<6} {label:<20} {wall:>8.1f}  {each}", flush=True)
    every, shared = min(walls[settings[1][0]]), min(walls[settings[2][0]])
    print(f"two at once, best wall: every core {every:.1f} s, share {shared:.1f} s: {every / shared:.1f}x", flush=True)


if __name__ == "__main__":
    main()
