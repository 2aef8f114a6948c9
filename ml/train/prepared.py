"""A task's training rows, read from the exports and encoded once, then shared by every model trained on them.

Each model used to read the four splits itself (about 8 s at the default size), encode them again and hold
them as pandas frames: `make run`'s resident memory grew to 11.5 GB over its nine models. Now the first
training of a task writes its splits as numpy arrays (ml.features.dataset.CrowdData's) under
models/prepared/KEY/, and every model memory-maps them: in one process (`crowd train`, `make run`), one open
serves them all; across processes (the training DAG's tasks, torchrun's ranks) the page cache holds one copy.

KEY covers what the rows depend on: the exports as they are on disk, the warehouse settings, the training
dates and their negative sampling (rate and seed), the series (when a model reads them) and the code that
encodes them. Another key is another folder; the folders of older keys are removed once a new one is
complete, and a folder is published whole (written beside, then renamed) under a file lock, so a second
process waits for the first one's instead of writing its own.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from ml.config import content_digest, json_digest
from ml.features.dataset import CrowdData, RawExports, check_one_build, fit_feature_map, read_buyers, read_exports
from ml.features.feature_map import FeatureMap
from ml.models.zoo import NEEDS_SERIES
from ml.outputs import file_lock, replacing
from ml.task import Task, TaskPaths
from ml.train.memory import freed_when_done
from ml.warehouse.export import export_dir, require_exports

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "valid_population", "evaluation")
FORMAT = 2  # bump when the folder's layout changes (2: sequences with their repeats collapsed, hist_count)
T = TypeVar("T")


@dataclass
class Prepared:
    """The splits of one key: train (negatives kept at the task's rate), valid (the validation dates' samples:
    early stopping), valid_population (the validation dates' evaluation set: calibration and the champion's
    metric) and evaluation (the backtest's), with the feature map fitted on train and the buyers."""

    folder: Path
    fmap: FeatureMap
    dense: list[str]  # every exported dense column, in the order of each split's `features`
    build: str  # the warehouse build the exports come from
    splits: dict[str, CrowdData]
    buyers: pd.DataFrame  # every buyer of the backtest's label window
    valid_buyers: pd.DataFrame  # the same for the validation dates
    cache: dict = field(default_factory=dict, repr=False)  # what does not depend on the model, once per process

    @property
    def rows(self) -> dict[str, int]:
        return {name: len(d) for name, d in self.splits.items()}

    def release_pages(self) -> None:
        """Drop the mapped pages from this process's resident set (MADV_DONTNEED on each file mapping): the
        data stays in the page cache, shared with every process, and a later read maps it again without
        reading the disk; the process's resident size then says what it holds itself."""
        for split in self.splits.values():
            split.release_pages()

    def cached(self, key: object, compute: Callable[[], T]) -> T:
        """compute() the first time `key` is asked for in this process, the same object after."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def stored(self, name: str, compute: Callable[[], T], write: Callable[[T, Path], None],
               read: Callable[[Path], T]) -> T:
        """compute() once for these rows across processes: the first process writes the result into the folder
        (derived/NAME, published whole under a file lock; NAME says what else it depends on), every other one
        reads it. The training DAG's tasks are processes of their own: what does not depend on the model (the
        ceiling's and the floors' evaluation) is then computed by the first model's task, not by each."""
        def load() -> T:
            folder = self.folder / "derived" / name
            with file_lock(self.folder / "derived" / f"{name}.lock"):
                if not folder.is_dir():
                    value = compute()
                    with replacing(folder) as tmp:
                        write(value, tmp)
                    return value
            return read(folder)
        return self.cached(("stored", name), load)

    def frame(self, split: str) -> pd.DataFrame:
        """The split as a samples-like frame (keys, labels, inclusion_prob and every dense column), for LightGBM,
        the floors and the evaluation: a view of the arrays, not a copy."""
        if split not in self.cache.setdefault("frames", {}):
            d = self.splits[split]
            meta = pd.DataFrame({
                "ds": d.ds, "user_id": d.user_id, "target_id": d.target_id, "target_category_id": d.target_category_id,
                "is_candidate": d.is_candidate, "inclusion_prob": d.inclusion_prob,
                # a column of its own: LightGBM copies a strided one
                "label_buy": np.ascontiguousarray(d.labels[:, 0]),
                "label_collect_cart": np.ascontiguousarray(d.labels[:, 1])}, copy=False)
            features = pd.DataFrame(d.features, columns=d.columns, copy=False)
            self.cache["frames"][split] = pd.concat([meta, features], axis=1)  # copy-on-write: no copy made
        return self.cache["frames"][split]


def with_series(task: Task) -> bool:
    return any(m in NEEDS_SERIES for m in task.model_names())


def exports_fingerprint(root: Path, dates: list[dt.date]) -> str:
    """The exported files of these dates as they are on disk (name, size, modification time): a re-export,
    even of the same rows, counts as other data. Cheap: no file is read."""
    require_exports(root, dates)
    files = sorted(p for ds in dates for p in export_dir(root, ds).iterdir() if p.is_file())
    stats = [(p, p.stat()) for p in files]
    return fingerprint(*[(p.parent.name, p.name, s.st_size, s.st_mtime_ns) for p, s in stats])


# the modules whose code decides what the prepared arrays and a checkpoint's weights mean
_TRAINING_CODE = ("models/zoo.py", "models/layers.py", "train/trainer.py", "train/calibration.py",
                  "train/prepared.py", "features/dataset.py", "features/feature_map.py")


_PACKAGE = Path(__file__).resolve().parents[1]  # ml/, in a checkout or installed


def code_version() -> str:
    return _digest(_PACKAGE / f for f in _TRAINING_CODE)


def evaluation_code_version(package: Path = _PACKAGE) -> str:
    """The code that evaluates a score column (every module of ml/evaluate, the pipeline's evaluation and the
    calibration summary): the floors' and the ceiling's evaluation kept beside the prepared rows is keyed to it,
    so a change of a metric is not met by figures the earlier code computed (the rows need no new encoding)."""
    return _digest([*sorted((package / "evaluate").glob("*.py")), package / "train" / "pipeline.py",
                    package / "train" / "calibration.py"])


def _digest(files: Iterable[Path]) -> str:
    return content_digest(b"".join(path.read_bytes() for path in files), 12)


def fingerprint(*parts: object) -> str:
    return json_digest(parts, 12)


def prepared_key(task: Task, paths: TaskPaths) -> str:
    dates = [*task.sample_dates, *task.validation, task.backtest]
    return fingerprint(FORMAT, task.warehouse_fingerprint(), exports_fingerprint(paths.exports, dates),
                        [str(d) for d in dates], task.target, task.training.negative_rate, task.training.seed,
                        with_series(task), code_version())


# the latest open of this process, with the identity of the folder it mapped: the next model of the task reuses it
_opened: dict[Path, tuple[tuple[int, int], Prepared]] = {}


def _identity(folder: Path) -> tuple[int, int] | None:
    """Which writing of the folder is on disk (its meta.json's inode and time), None when there is none."""
    try:
        meta = (folder / "meta.json").stat()
    except FileNotFoundError:
        return None
    return meta.st_ino, meta.st_mtime_ns


def prepare(task: Task, paths: TaskPaths) -> Prepared:
    """The task's prepared splits: written when no process wrote them for this key yet, then opened. The open of
    this process is reused while the folder it mapped is the one on disk: a preparation of other settings
    removes it (another task, another process), and an open of the removed files keeps their pages apart from
    every other process's (the page-release test, scoring such an open, found 9-12 MB of its 18 MB still
    resident in 2 runs of 3; with a fresh open, none of 5 did)."""
    folder = paths.models / "prepared" / prepared_key(task, paths)
    if folder in _opened and _opened[folder][0] == _identity(folder):
        return _opened[folder][1]
    with file_lock(paths.models / "prepared.lock"):
        if not (folder / "meta.json").exists():
            with freed_when_done():  # the frames read to encode them
                _write(task, paths, folder)
        identity, data = _identity(folder), _open(folder)
    check_buyers(data, task)
    _opened.clear()
    _opened[folder] = (identity, data)
    return data


def _write(task: Task, paths: TaskPaths, folder: Path) -> None:
    """Read, encode and write every split, one at a time (the peak is the largest split's frame), into a folder
    beside the final one, renamed into place once whole; older keys and abandoned folders are removed."""
    start = time.perf_counter()
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():  # under the lock: every other folder is of another key or left by a crash
        if old.is_dir() and old != folder:
            shutil.rmtree(old, ignore_errors=True)
    tmp = root / f".{folder.name}.partial"
    tmp.mkdir()
    shape = task.series_shape() if with_series(task) else None
    fp = task.warehouse_fingerprint()

    def read(dates: list, part: str = "samples", keep: Callable | None = None) -> RawExports:
        raw = read_exports(paths.exports, dates, part=part, series_shape=shape, fingerprint=fp, keep=keep)
        if task.target == "item" and part == "samples":
            # the next-day item task scores its candidate pairs only: the sampled non-candidates stand for no
            # one in that population, so they train as plain negatives instead of at their population weight
            # (which made them outweigh the candidates: LightGBM's backtest AUC fell from 0.92 to 0.76)
            raw.samples["inclusion_prob"] = 1.0
        return raw

    train = read(task.sample_dates, keep=negatives_kept(task.training.negative_rate, task.training.seed))
    valid = read(list(task.validation))
    fmap = fit_feature_map(train, task)
    # one build of the warehouse for every date: a mix of old and new data trains on nothing real
    builds = {train.build: "the training dates", valid.build: "the validation dates"}
    check_one_build(builds, paths.exports)
    dense, build = list(train.dense), train.build
    _write_split(tmp / "train", CrowdData(train, fmap))
    _write_split(tmp / "valid", CrowdData(valid, fmap))
    del train, valid
    for name, dates in (("valid_population", list(task.validation)), ("evaluation", [task.backtest])):
        raw = read(dates, part="evaluation")
        builds.setdefault(raw.build, f"the {name.replace('_', ' ')}")
        check_one_build(builds, paths.exports)
        _write_split(tmp / name, CrowdData(raw, fmap))
        del raw
    fmap.save(tmp / "feature_map.json")
    read_buyers(paths.exports, task.backtest).to_parquet(tmp / "buyers.parquet")
    pd.concat([read_buyers(paths.exports, d) for d in task.validation], ignore_index=True).to_parquet(
        tmp / "valid_buyers.parquet")
    (tmp / "meta.json").write_text(json.dumps({"dense": dense, "build": build, "task": task.name}))
    os.replace(tmp, folder)
    log.info("%s: training rows read and encoded once for every model in %.1f s (%s)", task.name,
             time.perf_counter() - start, folder)


def check_buyers(data: Prepared, task: Task) -> None:
    """Refuse splits with no buyer before any model trains: without one there is nothing to learn from, to
    choose a champion on or to measure, and a small or sampled log gets there after minutes of training with
    no word of why (each message says what the dates hold instead)."""
    splits = data.splits
    if not np.any(splits["train"].labels[:, 0] > 0):
        raise ValueError(f"the training dates ({task.sample_dates[0]} .. {task.sample_dates[-1]}) hold no buyer in "
                         f"their {len(splits['train']):,} samples: nothing to learn from (a log with more buys, or "
                         "more sample dates)")
    for split, buyers, dates, purpose in (
            ("valid_population", data.valid_buyers, "the validation dates hold",
             "choose a champion on (more validation dates, or a bigger log)"),
            ("evaluation", data.buyers, "the backtest date holds", "measure (a bigger log)")):
        if not np.any(splits[split].labels[:, 0] > 0):
            raise ValueError(f"{dates} no buyer among the {len(splits[split]):,} pairs ranked: {len(buyers):,} "
                             f"buyers of the evaluated targets were outside that population, so there is nothing "
                             f"to {purpose}")


def _write_split(folder: Path, data: CrowdData) -> None:
    folder.mkdir()
    for name, array in data.arrays().items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(array))


def _open(folder: Path) -> Prepared:
    meta = json.loads((folder / "meta.json").read_text())
    fmap = FeatureMap.load(folder / "feature_map.json")
    splits = {}
    for name in SPLITS:
        arrays = {p.stem: np.load(p, mmap_mode="r") for p in sorted((folder / name).glob("*.npy"))}
        splits[name] = CrowdData.from_arrays(arrays, fmap, meta["dense"])
    return Prepared(folder, fmap, meta["dense"], meta["build"], splits,
                    pd.read_parquet(folder / "buyers.parquet"), pd.read_parquet(folder / "valid_buyers.parquet"))


def negatives_kept(rate: float, seed: int) -> Callable | None:
    """Every buyer, and each other row with probability `rate` (drawn with `seed`: the same rows in every
    process), as read_exports' `keep`, date by date: one generator drawn in the dates' order gives the numbers
    one draw over all of them would, and the dropped rows are never held. The scores are corrected for it
    afterwards (ml.train.calibration.correct_for_sampling)."""
    if rate >= 1.0:
        return None
    rng = np.random.default_rng(seed)

    def keep(table) -> np.ndarray:  # noqa: ANN001
        buyers = table["label_buy"].to_numpy(zero_copy_only=False) > 0
        return buyers | (rng.random(table.num_rows) < rate)
    return keep
