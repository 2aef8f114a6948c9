"""The Airflow DAGs: one pair per task file, loading from the DAGs folder fast and with no import errors, with
the expected tasks, order, timetable and Params."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.orchestration import period_start
from ml.task import available_tasks, load_task

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_task_file_has_its_pair_of_dags_and_none_fails_to_import(dagbag):
    assert dagbag.import_errors == {}
    expected = {f"{t}.{kind}" for t in available_tasks() for kind in ("periods", "training")}
    assert set(dagbag.dag_ids) == expected


def test_a_task_file_that_does_not_validate_loses_its_own_dags_only_and_is_named_as_an_import_error(
        airflow_db, tmp_path, monkeypatch, capsys):
    """A copy of a task file with a typo under tasks/ took every task's DAGs out of Airflow (the DAG file failed
    to import) and failed `crowd run-dags` of the other tasks."""
    from airflow.dag_processing.dagbag import DagBag

    from ml.local_airflow import DAGS_FILE
    from ml.task import TASKS_DIR

    (tmp_path / "tmall-2013.yaml").write_text((TASKS_DIR / "tmall-2013.yaml").read_text())
    (tmp_path / "mine.yaml").write_text((TASKS_DIR / "tmall-2013.yaml").read_text().replace(
        "label_days: 7", "label_days: seven"))
    monkeypatch.setattr("ml.task.TASKS_DIR", tmp_path)
    bag = DagBag(dag_folder=str(DAGS))
    assert set(bag.dag_ids) == {"tmall-2013.periods", "tmall-2013.training"}
    ((where, error),) = bag.import_errors.items()
    assert where.endswith("task_files.py") and "mine.yaml" in error and "label_days" in error
    assert "tmall-2013.yaml" not in error
    # what run-dags and a task's process parse: the DAGs' file, with no error from the other task file
    assert not DagBag(dag_folder=str(DAGS_FILE)).import_errors
    # `crowd tasks` lists both, the one with its error, and exits 2
    from ml.cli import main

    capsys.readouterr()  # (the parses' log lines)
    assert main(["tasks"]) == 2
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("mine ") and "does not validate (no DAGs): " in listed[0] and "label_days" in listed[0]
    assert listed[1].startswith("tmall-2013 ") and "brand" in listed[1]


def _parse_in_a_fresh_process(env: dict | None = None) -> tuple[float, list[str]]:
    import os
    import subprocess
    import sys

    code = ("import time; from airflow.dag_processing.dagbag import DagBag; "
            f"t = time.perf_counter(); b = DagBag(dag_folder={str(DAGS)!r}); "
            "assert not b.import_errors, b.import_errors; "
            "print(time.perf_counter() - t); print(','.join(sorted(b.dag_ids)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, dag_ids = done.stdout.strip().splitlines()[-2:]
    return float(seconds), dag_ids.split(",")


def test_the_dag_file_parses_in_under_two_seconds_from_the_cached_manifest(dagbag):
    """The first parse caches the dbt manifest; later parses run no dbt command (Cosmos LoadMode.DBT_MANIFEST)."""
    seconds, dag_ids = _parse_in_a_fresh_process()
    assert seconds < 2.0 and len(dag_ids) == 2 * len(available_tasks()), f"parsing the DAG file took {seconds:.2f} s"


def test_a_task_process_parses_only_the_dag_it_runs(dagbag):
    """What an executor's task process sees (Airflow's parsing context): one DAG built, not every task's. (Its
    time is not compared: with one build task per period the whole file parses in about 0.3 s, within the
    noise of two processes on a busy machine.)"""
    _, whole = _parse_in_a_fresh_process()
    _, dag_ids = _parse_in_a_fresh_process({"_AIRFLOW_PARSING_CONTEXT_DAG_ID": "tmall-2013.periods",
                                            "_AIRFLOW_PARSING_CONTEXT_TASK_ID": "export"})
    assert dag_ids == ["tmall-2013.periods"] and len(whole) == 2 * len(available_tasks())


@pytest.mark.parametrize("name", ["tmall-2013", "taobao-2017-category"])
def test_the_periods_dag_runs_on_the_tasks_cadence_dated_at_each_period(dagbag, name):
    from airflow.timetables.trigger import DeltaTriggerTimetable

    task = load_task(name)
    dag = dagbag.get_dag(f"{name}.periods")
    assert isinstance(dag.timetable, DeltaTriggerTimetable)
    assert dag.start_date.date() == task.samples.first and not dag.catchup and dag.max_active_runs == 1
    # a backfill creates one run per step from the first sample date: every labelled date is one of them
    step = task.windows.step_days
    assert all((d - task.samples.first).days % step == 0 for d in task.labelled_dates)
    # what a backfill from the first sample date to the backtest creates (Airflow's own iteration over the
    # serialized DAG, as the scheduler sees it): one run per step, logical date = ds, the backtest included
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    infos = list(serialized.iter_dagrun_infos_between(period_start(task.samples.first), period_start(task.backtest)))
    dates = [i.logical_date.date() for i in infos]
    assert dates[0] == task.samples.first and dates[-1] == task.backtest and set(task.labelled_dates) <= set(dates)
    assert all(i.run_after == i.logical_date for i in infos)
    params = dag.params
    assert params["label_days"] == task.windows.label_days and params["dataset"] == task.dataset
    assert all(params.get_param(k).description for k in params)  # every Param says what it is
    # its page says the task's own settings and the dates a backfill takes, above the general description
    assert dag.doc_md.startswith(f"## Task `{name}`: {task.description}")
    assert f"A backfill of `{name}.periods` from {task.samples.first} to {task.backtest}**" in dag.doc_md
    assert dagbag.get_dag(f"{name}.training").doc_md == dag.doc_md
    from ml.task import TARGETS

    target = params.get_param("target")  # its description names every choice its form offers (it left out tag)
    assert target.schema["enum"] == list(TARGETS) and all(t in target.description for t in TARGETS)


def test_the_periods_dag_plans_then_builds_the_date_in_one_dbt_build_then_exports(dagbag):
    dag = dagbag.get_dag("tmall-2013.periods")
    build = dag.get_task("dbt_build")
    assert build.pool == "crowd_duckdb" and build.retries >= 1 and build.upstream_task_ids == {"plan"}
    assert {"plan", "dbt_build", "export", "next_step", "publish_backtest_ready", "forward_crowds",
            "crowd_outcomes"} == set(dag.task_ids)
    # a forward run measures the crowds published before it whose window the log now holds, after its own
    assert dag.get_task("crowd_outcomes").upstream_task_ids == {"plan", "forward_crowds"}
    assert dag.get_task("crowd_outcomes").pool == "crowd_duckdb"
    assert "dbt_build" in dag.get_task("export").upstream_task_ids
    assert dag.get_task("publish_backtest_ready").outlets  # the training DAG's trigger


def test_per_model_tasks_watch_the_one_build_when_the_task_asks_for_them():
    from ml.orchestration import build_periods_dag

    dag = build_periods_dag(load_task("tmall-2013", {"warehouse.airflow_tasks": "per_model"}))
    producer = dag.get_task("warehouse.dbt_producer_watcher")  # the run's one `dbt build`
    assert producer.pool == "crowd_duckdb" and "plan" in producer.upstream_task_ids
    after_build = producer.get_flat_relative_ids(upstream=False)
    for model in ("ods_events", "dim_targets", "dw_buy_events", "ads_user_target_features", "samples",
                  "samples_evaluation", "samples_forward"):
        run, test = dag.get_task(f"warehouse.{model}.run"), dag.get_task(f"warehouse.{model}.test")
        assert test.task_id in run.downstream_task_ids and run.task_id in after_build
        # watchers read the producer's result: no dbt, no DuckDB slot, unless a retry runs the model alone
        assert run.pool != "crowd_duckdb" and run.retries >= 1 and run.mode == "reschedule"
    watchers = {t for t in dag.task_ids if t.startswith("warehouse.")} - {producer.task_id}
    assert watchers <= after_build and len(watchers) > 50
    before_export = dag.get_task("export").get_flat_relative_ids(upstream=True)
    assert {t for t in dag.task_ids if t.startswith("warehouse.")} <= before_export  # every dbt task first
    # a watcher of a layer the build left out (held from the same inputs) is skipped; what follows it still
    # looks at its own node, and the export follows unless a node failed
    assert dag.get_task("warehouse.ads_user_target_features.run").trigger_rule == "none_failed"
    assert dag.get_task("export").trigger_rule == "none_failed"
    assert len(producer.interceptors) == 1  # the decision of what the date's build leaves out


def test_the_upstream_models_are_the_layers_a_dates_build_may_leave_out(dagbag):
    from ml.config import Paths
    from ml.warehouse.build import ensure_manifest, upstream_models

    # the manifest the DAG file's parse cached (the dagbag's)
    models = upstream_models(ensure_manifest(Paths.default().root / "dbt" / "manifests"))
    layers = {m.split(".")[-1].split("_")[0] for m in models}
    assert layers == {"ods", "dim", "dw"} and "model.purchase_crowd.dw_user_target_daily" in models
    assert not any(m.split(".")[-1].startswith(("ads_", "samples")) for m in models)


def test_the_training_dag_is_scheduled_on_the_tasks_backtest_asset_and_fans_out_per_model(dagbag):
    dag = dagbag.get_dag("tmall-2013.training")
    assert set(dag.task_ids) == {"plan", "prepare", "models_of", "train", "forward_features", "crowds", "report"}
    assert "models_of" in dag.get_task("prepare").downstream_task_ids  # the rows are ready before any model
    assert "crowds" in dag.get_task("train").downstream_task_ids
    # the forward features wait on no model: built while the models train, then scored by the crowds
    assert dag.get_task("forward_features").upstream_task_ids == {"plan"}
    assert "crowds" in dag.get_task("forward_features").downstream_task_ids
    assert dag.get_task("forward_features").pool == dag.get_task("crowds").pool == "crowd_duckdb"
    assert "report" in dag.get_task("crowds").downstream_task_ids  # the report shows the crowds just published
    assert all(t.retries >= 1 for t in dag.tasks)
    assert not dag.is_paused_upon_creation  # a backfill ends by training, with no click in the UI
    assert dag.params["models"] == load_task("tmall-2013").model_names()


def test_the_trainings_are_mapped_longest_first_and_every_model_has_its_place():
    from ml.orchestration import LONGEST_FIRST, longest_first
    from ml.task import ALL_MODELS

    assert sorted(LONGEST_FIRST) == sorted(ALL_MODELS)  # a new model is placed, not left to go first
    assert longest_first(["dnn", "lgbm_all_mixed", "ple"]) == ["ple", "lgbm_all_mixed", "dnn"]
    assert longest_first(["dnn", "xgb_new"]) == ["xgb_new", "dnn"]  # an unplaced one is assumed long


def test_plan_period_says_what_a_date_is_or_why_it_is_skipped():
    import datetime as dt

    from ml.orchestration import plan_period

    task = load_task("taobao-2017-category")
    first, last = dt.date(2017, 11, 25), dt.date(2017, 12, 3)
    assert plan_period(task, dt.date(2017, 11, 28), first, last) == "labelled"
    assert plan_period(task, dt.date(2017, 12, 4), first, last) == "forward"
    assert "neither a labelled date" in plan_period(task, dt.date(2017, 11, 27), first, last)
    assert "the log ends on 2017-12-03" in plan_period(task, dt.date(2017, 12, 9), first, last)
    # a labelled date whose label window the log does not reach fails, before a dbt build whose test said only
    # "Got 5 results" (and was retried twice)
    with pytest.raises(ValueError, match=rf"{task.backtest}: its label window runs to {task.backtest}, past the "
                                         rf"log's last day {task.backtest - dt.timedelta(days=1)}"):
        plan_period(task, task.backtest, first, task.backtest - dt.timedelta(days=1))
    # nor one on or before the log's first day: no event before it (the 2013 task on a 2017 log built every date)
    with pytest.raises(ValueError, match=r"2017-11-28: the log starts on 2017-11-28, so no event comes before it"):
        plan_period(task, dt.date(2017, 11, 28), dt.date(2017, 11, 28), last)


def test_dates_whose_history_window_starts_before_the_log_are_named_with_the_days_they_see():
    """Taobao's nine days leave its first dates 3-6 of their 7 days of history: said, not refused."""
    import datetime as dt

    from ml.orchestration import short_history

    task = load_task("taobao-2017-category")
    first = dt.date(2017, 11, 25)
    said = short_history(task, task.labelled_dates, first)
    assert said == ("the history window (windows.history_days 7) of 2017-11-28, 2017-11-29, 2017-11-30, 2017-12-01 "
                    "starts before the log's first day 2017-11-25: their features see 3-6 of its 7 days, the dates "
                    "from 2017-12-02 on all 7")
    assert short_history(task, [task.backtest], first) is None
    assert "of 2017-11-26 starts" in short_history(task, [dt.date(2017, 11, 26)], first)
    assert "see 1 of its 7 days" in short_history(task, [dt.date(2017, 11, 26)], first)
    # a date that sees no day of the log is refused elsewhere (check_date_in_log), not counted here
    assert short_history(task, [dt.date(2017, 11, 25), dt.date(2017, 11, 20)], first) is None


def test_a_changed_param_or_override_reaches_the_runs_task(tmp_path):
    from ml.orchestration import PERIOD_PARAMS, TRAINING_PARAMS, effective_task

    task, changes = effective_task("tmall-2013", {"label_days": 3, "target": "brand"}, PERIOD_PARAMS)
    assert task.windows.label_days == 3 and changes == {"windows.label_days": 3}
    inherited = {"windows.label_days": 3}  # what the backtest run's asset event carries to training
    task, changes = effective_task("tmall-2013", {"epochs": 1, "overrides": {"crowds.size": 5}},
                                   TRAINING_PARAMS, inherited)
    assert task.windows.label_days == 3 and task.training.epochs == 1 and task.crowds.size == 5
    assert changes == {"windows.label_days": 3, "training.epochs": 1, "crowds.size": 5}
    with pytest.raises(ValueError, match="label_days"):
        effective_task("tmall-2013", {"label_days": 0}, PERIOD_PARAMS)
    with pytest.raises(ValueError, match="inside the label window"):  # daily samples: a 2-day label would leak
        effective_task("taobao-2017-category", {"label_days": 2}, PERIOD_PARAMS)


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
    # no literal secret (a *_FILE setting names where one is kept, written from .env at startup)
    assert not re.search(r"(PASSWORD|SECRET|FERNET)[A-Z_]*(?<!_FILE):\s*[^$\s{]", text)
    assert ".env" in (root / ".gitignore").read_text().split()


def test_airflows_logging_configuration_drops_cosmoss_openlineage_warning_alone():
    """airflow.env names ml.airflow_logging.LOGGING_CONFIG: Airflow's own, with a filter on the Cosmos logger
    that warned in every process that the OpenLineage provider is missing (Cosmos's other lines stay)."""
    import logging.config

    from airflow.config_templates.airflow_local_settings import DEFAULT_LOGGING_CONFIG

    from ml.airflow_logging import COSMOS_LOGGER, LOGGING_CONFIG
    from ml.local_airflow import shared_settings

    assert shared_settings()["AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS"] == "ml.airflow_logging.LOGGING_CONFIG"
    assert LOGGING_CONFIG["handlers"] == DEFAULT_LOGGING_CONFIG["handlers"]
    spec = dict(LOGGING_CONFIG["filters"][LOGGING_CONFIG["loggers"][COSMOS_LOGGER]["filters"][0]])
    drop = logging.config.DictConfigurator({}).configure_custom(spec)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord(COSMOS_LOGGER, logging.WARNING, "local.py", 146, msg, (), None)

    assert not drop.filter(record("To enable emitting Openlineage events, install apache-airflow-providers-"
                                  "openlineage."))
    assert drop.filter(record("Could not parse JSON from %s"))
