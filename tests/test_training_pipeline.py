"""Train, evaluate, record and score on the tiny exports, with a real MLflow store (SQLite) in the session's
data directory."""

from __future__ import annotations

import datetime as dt

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ml.cli import main
from ml.crowds import CROWD_COLUMNS, last_log_day
from ml.tracking import CHAMPION, configure
from ml.train.pipeline import train_and_evaluate
from ml.train.trainer import TrainConfig

FAST = TrainConfig(epochs=2, batch_size=512, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def outcomes(tiny_exports, tiny_dataset, task, task_paths):
    return {m: train_and_evaluate(m, task, task_paths, train_cfg=FAST)
            for m in ("lgbm_all_mixed", "lgbm_per_target", "din", "ple")}


def test_every_run_is_recorded_with_metrics_plots_table_and_model(outcomes, task_paths):
    configure(task_paths)
    client = MlflowClient()
    for name, o in outcomes.items():
        run = client.get_run(o.run_id)
        assert run.info.run_name == name
        assert run.data.params["task.name"] == "tmall-2013" and run.data.params["task.windows.label_days"] == "7"
        metrics = run.data.metrics
        assert 0.5 < metrics["eval_gauc"] <= 1 and "eval_auc" in metrics, name and "eval_recall_at_100" in metrics
        assert metrics["oracle_auc"] > 0.5  # the ceiling sits beside every run
        artifacts = {a.path for a in client.list_artifacts(o.run_id)}
        assert {"plots", "bundle", "per_target_metrics.json"} <= artifacts
        plots = {a.path.split("/")[-1] for a in client.list_artifacts(o.run_id, "plots")}
        assert {"roc.png", "recall_at_n.png", "calibration.png"} <= plots
    din_history = client.get_metric_history(outcomes["din"].run_id, "valid_auc")
    assert [m.step for m in din_history] == [0, 1]
    assert "se_field_importance.png" in {a.path.split("/")[-1] for a in client.list_artifacts(outcomes["ple"].run_id, "plots")}
    assert "feature_importance.png" in {
        a.path.split("/")[-1] for a in client.list_artifacts(outcomes["lgbm_all_mixed"].run_id, "plots")}


def test_the_champion_alias_points_at_the_best_registered_run(outcomes, task_paths):
    configure(task_paths)
    client = MlflowClient()
    name = task_paths.registered_model
    versions = client.search_model_versions(f"name='{name}'")
    registered = {v.run_id: client.get_run(v.run_id).data.metrics["eval_auc"] for v in versions}
    assert outcomes["lgbm_per_target"].run_id not in registered  # many boosters: logged as a bundle only
    champion = client.get_model_version_by_alias(name, CHAMPION)
    assert registered[champion.run_id] == max(registered.values())
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    assert loaded is not None


def test_the_metrics_table_covers_every_evaluated_target(outcomes, tiny_exports, task):
    ev = pd.read_parquet(tiny_exports / f"ds={task.backtest}" / "evaluation.parquet")
    for o in outcomes.values():
        assert set(o.per_target.index) == set(ev["target_id"].unique())
        assert o.per_target["positives"].sum() == ev["label_buy"].sum()


def test_score_publishes_forward_crowds_after_the_end_of_the_log(outcomes, task, task_paths, tmp_path, capsys):
    out = tmp_path / "crowd.parquet"
    assert main(["score", "--model", "din", "--size", "25", "--out", str(out)]) == 0
    crowd = pd.read_parquet(out)
    assert list(crowd.columns) == list(CROWD_COLUMNS)
    last_day = last_log_day(task_paths.dataset_dir)
    assert (crowd["feature_date"] == last_day + dt.timedelta(days=1)).all()  # no label exists yet
    assert (crowd["window_end"] == crowd["window_start"] + dt.timedelta(days=task.windows.label_days)).all()
    assert set(crowd["target"]) == {"brand"} and set(crowd["model"]) == {"din"}
    sizes = crowd.groupby("target_id").size()
    assert (sizes == 25).all() and len(sizes) > 10
    first = crowd[crowd["rank"] == 1].set_index("target_id")["score"]
    last = crowd[crowd["rank"] == 25].set_index("target_id")["score"]
    assert (first >= last).all()
    # the champion, from the registry, into the task's crowds and warehouse table
    assert main(["score", "--no-build", "--set", "crowd_size=5"]) == 0
    published = pd.read_parquet(task_paths.crowds / f"ds={last_day + dt.timedelta(days=1)}" / "crowds.parquet")
    assert (published.groupby("target_id").size() == 5).all() and published["model_version"].iloc[0] != "local"
    import duckdb

    with duckdb.connect(str(task_paths.warehouse)) as con:
        n = con.execute("select count(*) from crowds.forward_crowds where task = 'tmall-2013'").fetchone()[0]
    assert n == len(published)
    assert main(["score", "--no-build", "--set", "crowd_size=0"]) == 2
    assert "crowds.size" in capsys.readouterr().err


def test_evaluate_recomputes_the_recorded_metrics_from_the_bundle(outcomes, capsys, tiny_dataset):
    assert main(["evaluate", "--model", "lgbm_all_mixed"]) == 0
    printed = capsys.readouterr().out
    auc_line = next(line for line in printed.splitlines() if line.strip().startswith("auc "))
    assert float(auc_line.split()[1]) == pytest.approx(outcomes["lgbm_all_mixed"].summary["auc"], abs=1e-4)
    assert "oracle" in auc_line


def test_an_unknown_model_fails_with_a_clear_message(tiny_exports, task, task_paths):
    with pytest.raises(ValueError, match="unknown model 'xgb'"):
        train_and_evaluate("xgb", task, task_paths)


def test_deep_models_train_on_the_device_they_are_given(outcomes):
    bundle = outcomes["din"].bundle
    assert (bundle / "weights.pt").exists() and (bundle / "feature_map.json").exists()
    assert np.isfinite(outcomes["din"].summary["logloss"])


def test_lgbm_baselines_train_one_model_per_evaluated_target_or_group(outcomes, tiny_exports, task):
    from ml.train.bundle import Bundle

    ev = pd.read_parquet(tiny_exports / f"ds={task.backtest}" / "evaluation.parquet")
    bundle = Bundle.load(outcomes["lgbm_per_target"].bundle)
    boosters = list((bundle.path / "lgbm").glob("*.txt"))
    assert 0 < len(boosters) <= ev["target_id"].nunique()
