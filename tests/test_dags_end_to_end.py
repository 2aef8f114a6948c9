"""The real DAGs run in-process with dag.test() on the tiny dataset: the evaluation week through Cosmos and
dbt, then the training DAG, with a real metadata DB, DuckDB file and MLflow store."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ml.config import Paths, Schedule

DAGS = Path(__file__).resolve().parents[1] / "dags"
UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def dags(airflow_db, tiny_dataset, tiny_exports):
    """The tiny dataset where the DAGs look for it; the sample dates' exports already there (tiny_exports)."""
    target = Paths.default().dataset("synthetic")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.symlink(tiny_dataset, target)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    yield bag
    import gc

    gc.unfreeze()  # what the dbt tasks froze (ml.orchestration.freeze_surviving_objects) is collectable again
    gc.collect()


@pytest.fixture(scope="module")
def evaluation_week(dags):
    """A run's data interval ends at its run time: the week starting on the evaluation date runs a week later."""
    ds = Schedule().evaluation
    run = dags.get_dag("crowd_weekly").test(logical_date=dt.datetime.combine(ds + dt.timedelta(days=7), dt.time(), UTC))
    return ds, run


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_the_weekly_dag_builds_and_exports_its_week_and_announces_the_evaluation_set(evaluation_week):
    ds, run = evaluation_week
    assert str(run.state) == "success"
    states = _states(run)
    assert states["warehouse.samples_evaluation.run"] == "success"
    assert states["warehouse.samples.test"] == "success"
    assert states["publish_evaluation_ready"] == "success"
    paths = Paths.default()
    with duckdb.connect(str(paths.warehouse)) as con:
        dates = [r[0] for r in con.execute("select distinct ds from samples.samples_evaluation").fetchall()]
    assert dates == [ds]
    export = paths.exports / f"ds={ds}"
    assert {"samples.parquet", "evaluation.parquet", "sequences.parquet"} <= {p.name for p in export.iterdir()}


def test_a_week_that_is_not_the_evaluation_week_does_not_trigger_training(dags):
    ds = Schedule().sample_dates[-1]
    run = dags.get_dag("crowd_weekly").test(logical_date=dt.datetime.combine(ds + dt.timedelta(days=7), dt.time(), UTC))
    states = _states(run)
    assert str(run.state) == "success" and states["export"] == "success"
    assert states["publish_evaluation_ready"] == "skipped"


def test_the_training_dag_trains_promotes_a_champion_and_exports_the_crowds(dags, evaluation_week):
    run = dags.get_dag("crowd_training").test(run_conf={"models": ["lgbm_all_mixed", "dnn"], "epochs": 1,
                                                        "top_n": 20})
    assert str(run.state) == "success"
    paths = Paths.default()
    crowd = pd.read_parquet(paths.crowds / f"ds={Schedule().evaluation}" / "crowds.parquet")
    assert (crowd.groupby("target_id").size() == 20).all()
    with duckdb.connect(str(paths.warehouse)) as con:
        n = con.execute("select count(*) from crowds.crowd_list").fetchall()[0][0]
    assert n == len(crowd)
    import mlflow
    from mlflow.tracking import MlflowClient

    from ml.tracking import CHAMPION, REGISTERED_MODEL, configure

    configure(paths)
    assert MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, CHAMPION) is not None
    names = set(mlflow.search_runs(experiment_names=["purchase-crowd"])["tags.mlflow.runName"])
    assert {"lgbm_all_mixed", "dnn"} <= names


def test_a_bad_parameter_fails_before_any_work(dags):
    with pytest.raises(Exception, match="shop|enum|not one of"):
        dags.get_dag("crowd_weekly").test(
            logical_date=dt.datetime(2013, 7, 8, tzinfo=UTC), run_conf={"target": "shop"})
    with pytest.raises(Exception, match="xgb|enum|not one of"):
        dags.get_dag("crowd_training").test(run_conf={"models": ["xgb"]})


def test_a_failing_dbt_test_fails_the_dag_run(dags, tmp_path, monkeypatch):
    import shutil

    from airflow.dag_processing.dagbag import DagBag

    from ml.warehouse.build import DBT_PROJECT_DIR

    project = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs", ".user.yml"))
    (project / "tests" / "always_fails.sql").write_text("select target_id from {{ ref('dim_targets') }}\n")
    monkeypatch.setenv("CROWD_DBT_PROJECT_DIR", str(project))
    monkeypatch.setenv("CROWD_TASK_RETRIES", "0")
    dag = DagBag(dag_folder=str(DAGS)).get_dag("crowd_weekly")
    ds = Schedule().sample_dates[0]
    run = dag.test(logical_date=dt.datetime.combine(ds + dt.timedelta(days=7), dt.time(), UTC))
    states = _states(run)
    assert str(run.state) == "failed"
    failed = [t for t, s in states.items() if s == "failed"]
    assert failed == ["warehouse.dim_targets.test"]  # Cosmos runs a model's singular tests in its test task
    assert states["export"] in ("upstream_failed", "skipped")


def test_run_dags_drives_the_weekly_and_training_dags_and_ends_with_the_comparison(dags, capsys):
    """`crowd run-dags` is what `make run` calls: the real DAGs through dag.test(), then the table and paths."""
    from ml.cli import main

    ds = Schedule().evaluation
    assert main(["run-dags", "--ds", str(ds), "--model", "lgbm_all_mixed", "--epochs", "1", "--top", "10",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 DAG runs succeeded" in out
    assert "| lgbm_all_mixed |" in out and "| oracle (ceiling) |" in out
    paths = Paths.default()
    assert f"crowds:  {paths.crowds / f'ds={ds}' / 'crowds.parquet'}" in out and str(paths.mlflow_db) in out
    crowd = pd.read_parquet(paths.crowds / f"ds={ds}" / "crowds.parquet")
    assert (crowd.groupby("target_id").size() == 10).all()
    log = (paths.airflow_home / "local_run.log").read_text()
    assert "samples.samples_evaluation" in log and "samples.samples_evaluation" not in out  # dbt's console
