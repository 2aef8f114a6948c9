"""A task's training rows are read and encoded once, written as arrays, and memory-mapped by every model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ml.features.dataset import CrowdData, read_exports
from ml.task import TaskPaths, load_task
from ml.train import prepared
from ml.train.prepared import evaluation_code_version, negatives_kept, prepare, prepared_key


@pytest.fixture
def fresh_process(monkeypatch):
    """What another process sees: no split opened yet (the folder on disk is shared)."""
    monkeypatch.setattr(prepared, "_opened", {})


def test_the_rows_are_written_once_and_every_later_open_maps_the_same_files(tiny_exports, task, task_paths,
                                                                           fresh_process):
    first = prepare(task, task_paths)
    assert prepare(task, task_paths) is first  # the next model in this process: the same open
    assert all(isinstance(d.features, np.memmap) and isinstance(d.ids, np.memmap) for d in first.splits.values())
    written = {p: p.stat().st_mtime_ns for p in first.folder.rglob("*.npy")}
    prepared._opened.clear()  # another process: it opens the folder and writes nothing
    again = prepare(task, task_paths)
    assert again is not first and again.folder == first.folder
    assert {p: p.stat().st_mtime_ns for p in again.folder.rglob("*.npy")} == written
    assert again.rows == first.rows
    # pages dropped from the process's resident set are read again from the page cache, unchanged
    before = np.asarray(again.splits["valid"].features[:50]).copy()
    again.release_pages()
    np.testing.assert_array_equal(np.asarray(again.splits["valid"].features[:50]), before)


def test_a_prepared_split_is_what_encoding_a_direct_read_gives(tiny_exports, task, task_paths):
    data = prepare(task, task_paths)
    raw = read_exports(task_paths.exports, list(task.validation), series_shape=task.series_shape(),
                       fingerprint=task.warehouse_fingerprint())
    direct, mapped = CrowdData(raw, data.fmap), data.splits["valid"]
    for name in ("ids", "features", "labels", "weights", "user_id", "target_id", "row", "offsets", "hist_target",
                 "hist_age", "series_month"):
        np.testing.assert_array_equal(direct.arrays()[name], np.asarray(mapped.arrays()[name]), err_msg=name)
    rows = np.arange(0, len(mapped), 7)
    a, b = direct.batch(rows), mapped.batch(rows)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # the dense inputs, scaled per batch, are the feature map's encoding of the samples
    np.testing.assert_allclose(b["dense"].numpy(), data.fmap.encode_dense(raw.samples)[rows], rtol=1e-6)
    # and the frame LightGBM and the evaluation read is a view of the same arrays
    frame = data.frame("valid")
    assert np.shares_memory(frame[data.dense[0]].to_numpy(), mapped.features)
    assert (frame["label_buy"].to_numpy() == raw.samples["label_buy"].to_numpy()).all()


def test_an_open_whose_folder_was_removed_and_written_again_is_not_reused(tiny_exports, task, task_paths,
                                                                          fresh_process):
    """A preparation of other settings (another task or process) removes this key's folder, and a later one
    writes it again: this process reopened nothing and kept serving the removed files' mapping, whose pages
    are no other process's and which release_pages left resident."""
    import shutil

    first = prepare(task, task_paths)
    shutil.rmtree(first.folder)
    again = prepare(task, task_paths)
    assert again is not first and again.folder == first.folder and (again.folder / "meta.json").exists()
    address = again.splits["train"].features.ctypes.data
    with open("/proc/self/smaps") as smaps:
        mapping = next(line for line in smaps if "-" in line.split()[0] and ":" in line.split()[3]
                       and int(line.split()[0].split("-")[0], 16) <= address < int(line.split()[0].split("-")[1], 16))
    assert mapping.split()[5] == str(again.folder / "train" / "features.npy") and "(deleted)" not in mapping
    assert prepare(task, task_paths) is again  # while it is the folder on disk, the open is reused


def test_other_training_settings_prepare_other_rows_and_replace_the_old_folder(tiny_exports, task, task_paths,
                                                                               fresh_process):
    first = prepare(task, task_paths)
    other = load_task(task.name, {"negative_rate": min(1.0, task.training.negative_rate * 2)})
    assert prepared_key(other, task_paths) != prepared_key(task, task_paths)
    second = prepare(other, TaskPaths.of(other))
    assert second.folder != first.folder and not first.folder.exists()
    assert len(second.splits["train"]) > len(first.splits["train"])
    # the populations the models are measured on do not depend on the training's sampling
    assert second.rows["evaluation"] == first.rows["evaluation"]
    prepare(task, task_paths)  # back to the task's own for the tests after this one


def test_a_preparation_killed_halfway_is_discarded_by_the_next(tiny_exports, task, task_paths, fresh_process):
    folder = task_paths.models / "prepared" / prepared_key(task, task_paths)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    partial = folder.with_name(f".{folder.name}.partial")
    (partial / "train").mkdir(parents=True)
    (partial / "train" / "ids.npy").write_bytes(b"half a file")
    data = prepare(task, task_paths)
    assert not partial.exists() and data.folder == folder and len(data.splits["train"]) > 0


def _one_draw(samples, rate: float, seed: int):
    """Every buyer and each other row with probability `rate`, in one draw over the rows of every date."""
    keep = (samples["label_buy"].to_numpy() > 0) | (np.random.default_rng(seed).random(len(samples)) < rate)
    return samples[keep].reset_index(drop=True)


def test_the_negatives_drawn_date_by_date_while_reading_are_those_of_one_draw_over_all_dates(tiny_exports, task):
    dates = task.sample_dates[:3]
    whole = _one_draw(read_exports(tiny_exports, dates).samples, 0.3, 7)
    streamed = read_exports(tiny_exports, dates, keep=negatives_kept(0.3, 7)).samples
    assert 0 < len(streamed) < len(read_exports(tiny_exports, dates).samples)
    keys = ["ds", "user_id", "target_id"]
    assert (streamed[keys].to_numpy() == whole[keys].to_numpy()).all()


def _mapped_kib(path, array: np.ndarray) -> int:
    """Resident KiB of the mapping of `path` that holds `array`'s data (/proc/self/smaps). That mapping alone:
    an earlier open of the same path (of files since removed and written again, not yet collected) is another
    mapping with its own pages."""
    address, total, inside = array.ctypes.data, 0, False
    with open("/proc/self/smaps") as smaps:
        lines = smaps.readlines()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and "-" in fields[0] and ":" in fields[3]:  # a mapping's header line
            start, end = (int(x, 16) for x in fields[0].split("-"))
            inside = fields[5] == str(path) and start <= address < end
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def test_scoring_hands_back_the_pages_of_the_rows_it_has_scored(tiny_exports, task, task_paths, monkeypatch):
    """A million scored rows would otherwise keep every mapped page they touched resident until the model is
    done (0.6 GB of PLE's 3 GiB peak on the default data)."""
    from ml.models.zoo import ModelConfig, build_model
    from ml.train import scoring

    data = prepare(task, task_paths)
    split = data.splits["evaluation"]
    features = data.folder / "evaluation" / "features.npy"
    data.release_pages()
    float(np.asarray(split.features).sum())  # every page read once
    assert _mapped_kib(features, split.features) >= 0.9 * features.stat().st_size / 1024
    monkeypatch.setattr(scoring, "TRIM_EVERY", 1)
    model = build_model("dnn", data.fmap, ModelConfig()).eval()
    rows = len(split)
    scoring.predict(model, split, batch_size=max(64, rows // 8), processes=1)
    # released after each batch: at most the last batch's pages are resident, not the split's
    assert _mapped_kib(features, split.features) < 0.5 * features.stat().st_size / 1024


def test_what_every_model_shares_is_computed_by_the_first_process_and_read_back_by_the_others(
        tiny_exports, task, task_paths, fresh_process):
    import pandas as pd

    from ml.train.pipeline import _read_references, _write_references

    calls = []

    def compute():  # the shape of the ceiling's and the floors' evaluation, NaN included
        calls.append(1)
        curves = pd.DataFrame({"series": ["oracle", "floor: x"], "x": [0.5, 1.0], "y": [0.25, float("nan")]})
        return {"auc": 0.9}, {"auc": 0.001}, curves, {"x": {"auc": 0.8, "logloss": float("nan")}}

    def shared(data):
        return data.stored("references-k", compute, _write_references, _read_references)

    first = shared(prepare(task, task_paths))
    prepared._opened.clear()  # another process: it reads what the first one wrote
    again = shared(prepare(task, task_paths))
    assert calls == [1]
    assert again[0] == first[0] and again[1] == first[1]
    pd.testing.assert_frame_equal(again[2], first[2])
    assert again[3]["x"]["auc"] == 0.8 and np.isnan(again[3]["x"]["logloss"])


def test_the_stored_evaluation_of_the_floors_and_the_ceiling_is_keyed_to_the_code_that_evaluates(tmp_path):
    package = tmp_path / "ml"
    shutil.copytree(Path(prepared.__file__).resolve().parents[1], package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = evaluation_code_version(package)
    assert before == evaluation_code_version()  # the copy is the package
    metric = package / "evaluate" / "pairs.py"
    metric.write_text(metric.read_text() + "\n# a metric changed\n")
    changed = evaluation_code_version(package)
    (package / "evaluate" / "new_metric.py").write_text("# a metric added\n")
    added = evaluation_code_version(package)
    assert len({before, changed, added}) == 3
    (package / "models" / "zoo.py").write_text("# a model changed: the evaluation is not\n")
    assert evaluation_code_version(package) == added


def test_a_task_never_exported_is_refused_naming_the_dates_to_build(tmp_path):
    """`crowd train` on a data folder whose warehouse was never built failed as "No such file or directory:
    .../exports/ds=2013-07-01" (exit 1, as if a component had failed)."""
    task = load_task("tmall-2013")
    paths = TaskPaths(tmp_path, task.name, task.dataset)
    with pytest.raises(ValueError, match=r"^no export for ds 2013-07-01, 2013-07-08, 2013-07-15 and 10 more under "
                                         r".*: build them first \(crowd warehouse\)$"):
        prepare(task, paths)
    from ml.warehouse.export import read_schema

    with pytest.raises(ValueError, match=r"^no export for ds 2013-09-23 under .*: build it first "
                                         r"\(crowd warehouse --ds 2013-09-23\)$"):
        read_schema(paths.exports, task.backtest)
