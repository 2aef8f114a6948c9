"""Tasks end to end through the CLI, as a user would run them: a real-format Taobao log loaded, the category
task built, trained and scored forward; one run's override reaching labels and MLflow; two tasks side by side
in one data directory."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ml.cli import main
from ml.crowds import last_log_day
from ml.task import TaskPaths, load_task

TAOBAO = "taobao-2017-category"


def _snapshot(paths: TaskPaths) -> dict:
    """What a task has built: its exports' schemas and its warehouse's sample counts per date."""
    schemas = {p.parent.name: json.loads(p.read_text()) for p in sorted(paths.exports.glob("ds=*/schema.json"))}
    with duckdb.connect(str(paths.warehouse)) as con:  # dbt-duckdb holds it open in this process: same config
        counts = con.execute("select ds, count(*), sum(label_buy) from samples.samples group by ds order by ds"
                             ).fetchall()
    return {"schemas": schemas, "counts": counts}


@pytest.fixture(scope="module")
def taobao_log(tmp_path_factory) -> Path:
    """A Taobao UserBehavior CSV (no header, pv/fav/cart/buy, unix seconds) written from the look-alike preset."""
    from ml.synth.generate import generate
    from ml.synth.params import PRESETS, GeneratorConfig

    preset = PRESETS["taobao"]
    gen = tmp_path_factory.mktemp("taobao-gen") / "generated"
    from dataclasses import replace

    generate(GeneratorConfig(sizes=replace(preset.sizes, users=1500, items=3000, brands=400), seed=5,
                             item_brands=False, workers=1), gen, progress=False)
    items = pd.read_parquet(gen / "items.parquet")
    events = pd.read_parquet(gen / "events").merge(items[["item_id", "category_id"]], on="item_id")
    # the log's times are China's local time (UTC+8): unix seconds are 8 hours earlier in UTC
    unix = (events["ts"] - pd.Timedelta(hours=8) - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    behaviour = events["action"].map({"click": "pv", "collect": "fav", "cart": "cart", "buy": "buy"})
    csv = tmp_path_factory.mktemp("taobao-raw") / "UserBehavior.csv"
    pd.DataFrame({"u": events["user_id"], "i": events["item_id"], "c": events["category_id"], "b": behaviour,
                  "t": unix}).to_csv(csv, header=False, index=False)
    return csv


@pytest.mark.slow
def test_the_taobao_category_task_runs_from_a_loaded_log_to_tomorrows_crowds(taobao_log, tiny_exports, task_paths,
                                                                              capsys):
    before = _snapshot(task_paths)  # the default task, built in the same data directory
    assert main(["load", "--format", "taobao-userbehavior", str(taobao_log)]) == 0
    assert main(["generate", "--task", TAOBAO, "--skip-if-present"]) == 0  # a loaded log is kept, not replaced
    assert "already holds a loaded" in capsys.readouterr().out
    assert main(["warehouse", "--task", TAOBAO]) == 0
    assert main(["train", "--task", TAOBAO, "--model", "lgbm_all_mixed", "dnn", "--epochs", "1"]) == 0
    assert main(["score", "--task", TAOBAO]) == 0
    task = load_task(TAOBAO)
    paths = TaskPaths.of(task)
    last_day = last_log_day(paths.dataset_dir)
    assert last_day == dt.date(2017, 12, 3)
    crowds = sorted(paths.crowds.glob("ds=*/crowds.parquet"))
    assert [c.parent.name for c in crowds] == ["ds=2017-12-04"]
    crowd = pd.read_parquet(crowds[0])
    assert (crowd["feature_date"] > last_day).all() and set(crowd["target"]) == {"category"}
    assert crowd.groupby("target_id").size().max() <= task.crowds.size and crowd["target_id"].nunique() > 5
    assert set(crowd["model"]) <= {"lgbm_all_mixed", "dnn"}
    assert main(["report", "--task", TAOBAO, "--html"]) == 0  # the crowds' summary speaks of categories
    page = (paths.reports / "report.html").read_text()
    assert "categories with a crowd" in page and "categorys" not in page
    # recall@N counts every buyer of the backtest, also those the evaluation set could not score
    buyers = pd.read_parquet(paths.exports / f"ds={task.backtest}" / "buyers.parquet")
    assert 0 < (~buyers["in_population"]).sum() < len(buyers)  # users first seen on the backtest day buy too
    import mlflow

    from ml.tracking import configure

    configure(paths)
    runs = mlflow.search_runs(experiment_names=[paths.experiment])
    assert (runs["metrics.eval_coverage"] < 1).all()
    # both models rank buyers first even after one epoch (a deep model used to start at P = 0.5 and rank
    # backwards: AUC 0.18)
    assert (runs["metrics.eval_auc"] > 0.7).all(), runs[["tags.model", "metrics.eval_auc"]]
    for n in task.evaluate.n:
        assert (runs[f"metrics.eval_recall_at_{n}"] <= runs["metrics.eval_coverage"] + 1e-12).all()
    # the default task in the same data directory is untouched
    assert _snapshot(task_paths) == before
    assert paths.warehouse != task_paths.warehouse and task_paths.warehouse.exists()


@pytest.mark.slow
def test_an_override_for_one_run_changes_the_labels_and_is_recorded_in_mlflow(tiny_dataset, tiny_exports, task,
                                                                              task_paths, capsys):
    """label_days 7 -> 3 on the default task, in its own namespace (another dataset name for the same log)."""
    os.symlink(tiny_dataset, task_paths.shared.dataset("synthetic-l3"))
    changed = ["--set", "dataset=synthetic-l3", "--set", "label_days=3"]
    assert main(["warehouse", *changed, "--skip-tests"]) == 0
    other = TaskPaths.of(load_task(task.name, {"dataset": "synthetic-l3", "label_days": 3}))
    ds = task.backtest
    short = pd.read_parquet(other.exports / f"ds={ds}" / "evaluation.parquet")
    full = pd.read_parquet(task_paths.exports / f"ds={ds}" / "evaluation.parquet")
    assert len(short) == len(full) and 0 < short["label_buy"].sum() < full["label_buy"].sum()
    # training with other settings than the exports were built with is refused, not mixed
    assert main(["train", "--set", "dataset=synthetic-l3", "--model", "lgbm_all_mixed"]) == 2
    assert "built with other warehouse settings" in capsys.readouterr().err
    assert main(["train", *changed, "--model", "lgbm_all_mixed"]) == 0
    import mlflow

    from ml.tracking import configure

    configure(other)
    runs = mlflow.search_runs(experiment_names=[other.experiment])
    # the refused training stopped while its rows were read, before any model's run (the rows are read once
    # for every model, ml.train.prepared): one clear error line, and no run to clean up
    assert list(runs["status"]) == ["FINISHED"]
    runs = runs[runs["status"] == "FINISHED"]
    assert list(runs["params.task.windows.label_days"]) == ["3"]
    assert list(runs["params.task.dataset"]) == ["synthetic-l3"]
