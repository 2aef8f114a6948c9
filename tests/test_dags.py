"""The Airflow DAGs load from the DAGs folder with no import errors, with the expected tasks and order."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    # a real, migrated metadata DB (Cosmos caches the parsed dbt project in an Airflow Variable)
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_loads_without_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"crowd_weekly", "crowd_training"}


def test_weekly_dag_is_monday_to_monday_from_the_first_sample_date(dagbag):
    from airflow.timetables.interval import CronDataIntervalTimetable

    dag = dagbag.get_dag("crowd_weekly")
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.start_date.date().isoformat() == "2013-07-01" and dag.end_date.date().isoformat() == "2013-09-30"
    assert not dag.catchup and dag.max_active_runs == 1


def test_weekly_dag_runs_each_dbt_model_then_its_tests_in_the_duckdb_pool_then_exports(dagbag):
    dag = dagbag.get_dag("crowd_weekly")
    ids = set(dag.task_ids)
    for model in ("ods_events", "dim_targets", "dw_buy_events", "ads_user_target_features", "samples",
                  "samples_evaluation"):
        run, test = dag.get_task(f"warehouse.{model}.run"), dag.get_task(f"warehouse.{model}.test")
        assert test.task_id in run.downstream_task_ids
        assert run.pool == "crowd_duckdb" and run.retries >= 1
    assert {"check_params", "export", "is_evaluation_week", "publish_evaluation_ready"} <= ids
    check = dag.get_task("check_params")
    assert "warehouse.ods_items_checked_run" in check.downstream_task_ids or any(
        t.startswith("warehouse.") for t in check.downstream_task_ids)
    before_export = dag.get_task("export").get_flat_relative_ids(upstream=True)
    assert {t for t in dag.task_ids if t.startswith("warehouse.")} <= before_export  # every dbt task first
    assert dag.get_task("publish_evaluation_ready").outlets  # the training DAG's trigger


def test_training_dag_is_scheduled_on_the_evaluation_asset_and_fans_out_per_model(dagbag):
    dag = dagbag.get_dag("crowd_training")
    assert dag.task_ids == ["models_to_train", "train", "crowds"] or set(dag.task_ids) == {
        "models_to_train", "train", "crowds"}
    assert "train" in dag.get_task("models_to_train").downstream_task_ids
    assert "crowds" in dag.get_task("train").downstream_task_ids
    assert all(t.retries >= 1 for t in dag.tasks)


@pytest.mark.parametrize("params, message", [
    ({"target": "shop"}, "target: expected one of"),
    ({"evaluation_date": "2013-09-31"}, "evaluation_date"),
    ({"sequence_days": 120}, "sequence_days"),
])
def test_bad_weekly_parameters_fail_with_a_clear_message(params, message):
    from ml.orchestration import check_weekly_params

    base = {"target": "brand", "history_days": 90, "sequence_days": 30, "label_days": 7,
            "negatives_per_target": 100, "evaluation_date": "2013-09-23"}
    with pytest.raises(ValueError, match=message):
        check_weekly_params({**base, **params})


def test_unknown_models_fail_before_any_training():
    from ml.orchestration import check_training_params

    with pytest.raises(ValueError, match="unknown"):
        check_training_params({"models": ["din", "xgb"], "epochs": 1, "top_n": 10, "negative_rate": 0.2})


def test_compose_file_names_the_services_and_takes_every_secret_from_the_env_file():
    import re

    import yaml

    root = DAGS.parent
    compose = yaml.safe_load((root / "docker-compose.yaml").read_text())
    services = set(compose["services"])
    assert {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker", "mlflow"} <= services
    for name in services - {"postgres", "redis"}:
        assert "/data" in " ".join(compose["services"][name].get("volumes", [])), name
    text = (root / "docker-compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    documented = set(re.findall(r"^([A-Z_]+)=", (root / ".env.example").read_text(), flags=re.M))
    assert used <= documented, used - documented
    assert not re.search(r"(PASSWORD|SECRET|FERNET)[A-Z_]*:\s*[^$\s{]", text)  # no literal secret
    assert ".env" in (root / ".gitignore").read_text().split()
