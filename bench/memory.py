"""Peak resident memory and time of each stage of training, in one process, as `make run` trains: the task's rows
prepared once (ml.train.prepared), then every model in turn, each tracked in MLflow.

    python bench/memory.py                                   # tmall-2013, make run's settings
    python bench/memory.py --set epochs=4 --set negative_rate=0.2 --model lgbm_all_mixed din

The peak of a stage is the process's high-water mark of resident memory (VmHWM) over that stage alone: the
kernel's counter is reset before each stage (/proc/self/clear_refs). It counts every resident page, the
memory-mapped splits included (file pages the kernel may drop under pressure, unlike the heap). The task's
exports must exist (`make run`, or `crowd warehouse`); the bench reads them through a scratch data directory
that links them and the dataset, so the models, checkpoints and MLflow runs it writes never reach yours
(removed at the end unless --keep).

The collector's time of each stage (gc s: every collection, from gc.callbacks) depends on how many objects the
process holds: `--heap-of-a-task` first imports what make run's fork server preloads for the task processes that
train (Airflow, MLflow, torch: ml.local_airflow), and `--walk-everything` collects as training did before
2026-11-28 (every collection walking every object of the process, not only the training's own:
ml.train.memory.freed_when_done), for the two to be compared on one machine:

    python bench/memory.py --heap-of-a-task --model lgbm_all_mixed dnn din
    python bench/memory.py --heap-of-a-task --walk-everything --model lgbm_all_mixed dnn din

Scoring on a CPU forks processes (ml.train.scoring), whose memory this process's VmHWM does not hold: the
tree's peak is the most that this process and its descendants held together, each page counted once (the sum
of their proportional set sizes, PSS: a page shared by n processes counts 1/n in each), sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

GIB = 2**30


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the thread or the process has ended
            children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in _descendants(c)]


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:  # ended
        pass
    return 0


class TreePeak(threading.Thread):
    """The most this process and its descendants held together (sum of PSS), sampled every `every` s."""

    def __init__(self, every: float = 0.1):
        super().__init__(daemon=True)
        self.every, self.peak = every, 0

    def run(self) -> None:
        me = os.getpid()
        while True:
            self.peak = max(self.peak, sum(_pss(p) for p in [me, *_descendants(me)]))
            time.sleep(self.every)


class CollectorTime:
    """Seconds the garbage collector ran, summed over its collections (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds, self._start = 0.0, 0.0
        gc.callbacks.append(self._observe)

    def _observe(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start


def _walk_everything() -> None:
    """Each training's garbage collected by a full collection of the process, as before freed_when_done."""
    import contextlib

    import ml.train.pipeline
    import ml.train.prepared
    from ml.train.memory import trim_heap

    @contextlib.contextmanager
    def full_collection():  # noqa: ANN202
        try:
            yield
        finally:
            gc.collect()
            trim_heap()

    ml.train.pipeline.freed_when_done = ml.train.prepared.freed_when_done = full_collection


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from the current resident size


def _scratch(task_name: str, settings: list[str]) -> Path:
    """A data directory whose dataset and exports are links to the real ones (read only)."""
    from ml.config import data_dir
    from ml.task import TaskPaths, load_task, parse_assignments

    real = TaskPaths.of(load_task(task_name, parse_assignments(settings)), data_dir())
    if not real.exports.is_dir():
        raise SystemExit(f"no exports under {real.exports}: run `make run` or `crowd warehouse --task {task_name}`")
    root = Path(tempfile.mkdtemp(prefix="crowd-memory-"))
    scratch = TaskPaths(root, real.task, real.dataset)
    scratch.base.mkdir(parents=True)
    scratch.exports.symlink_to(real.exports, target_is_directory=True)
    scratch.dataset_dir.parent.mkdir(parents=True)
    scratch.dataset_dir.symlink_to(real.dataset_dir, target_is_directory=True)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tmall-2013")
    ap.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                    help="a task setting, as `crowd --set` (default: make run's epochs=1, negative_rate=0.1)")
    ap.add_argument("--model", nargs="+", help="the models (default: the task's)")
    ap.add_argument("--heap-of-a-task", action="store_true",
                    help="import first what make run's task processes hold (ml.local_airflow's preload)")
    ap.add_argument("--walk-everything", action="store_true",
                    help="collect each training's garbage with a full collection (the behaviour before 2026-11-28)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the scratch data directory (its prepared rows, models and MLflow runs)")
    args = ap.parse_args()
    settings = args.set if args.set is not None else ["epochs=1", "negative_rate=0.1"]
    if args.model:
        settings.append(f"models=[{', '.join(args.model)}]")
    root = _scratch(args.task, settings)
    if not args.keep:  # (the prepared rows alone are 1.35 GB at the default size)
        atexit.register(shutil.rmtree, root, True)
    os.environ["CROWD_DATA_DIR"] = str(root)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # as `crowd train` runs it

    if args.heap_of_a_task:
        import importlib

        from ml.config import Paths
        from ml.local_airflow import _PRELOAD, airflow_environment

        # Airflow reads its home when imported: the scratch's, as run-dags sets it (unset, it made ~/airflow)
        os.environ.update(airflow_environment(Paths(root)))
        for module in _PRELOAD:
            importlib.import_module(module)
    if args.walk_everything:
        _walk_everything()
    from ml.task import TaskPaths, load_task, parse_assignments
    from ml.train.pipeline import train_and_evaluate, train_config
    from ml.train.prepared import prepare

    task = load_task(args.task, parse_assignments(settings))
    paths = TaskPaths.of(task)
    heap = " (a task process's heap)" if args.heap_of_a_task else ""
    collected = "full collections" if args.walk_everything else "each training's own objects collected"
    print(f"{task.name}: {', '.join(settings)}; scratch data directory {paths.root}; "
          f"{len(gc.get_objects()):,} objects{heap}; {collected}", flush=True)
    print(f"{'stage':<18} {'seconds':>8} {'gc s':>6} {'peak GiB':>9} {'tree peak GiB':>14} {'resident after':>15}",
          flush=True)
    stages = []
    tree = TreePeak()
    tree.start()
    collector = CollectorTime()

    def stage(name: str, work) -> object:  # noqa: ANN001
        _reset_peak()
        tree.peak, collector.seconds = 0, 0.0
        t0 = time.perf_counter()
        out = work()
        stages.append((name, time.perf_counter() - t0, _status("VmHWM") / GIB, tree.peak / GIB))
        print(f"{name:<18} {stages[-1][1]:>8.1f} {collector.seconds:>6.2f} {stages[-1][2]:>9.2f} "
              f"{stages[-1][3]:>14.2f} {_status('VmRSS') / GIB:>15.2f}", flush=True)
        return out

    data = stage("prepare", lambda: prepare(task, paths))
    for model in task.model_names():
        cfg = train_config(task, model, progress=False)
        stage(model, lambda model=model, cfg=cfg: train_and_evaluate(model, task, paths, train_cfg=cfg, data=data))
    total = sum(s for _, s, _, _ in stages)
    peak, tree_peak = max(p for _, _, p, _ in stages), max(t for *_, t in stages)
    print(f"{'all':<18} {total:>8.1f} {'':>6} {peak:>9.2f} {tree_peak:>14.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
