"""The real DAGs run in-process with dag.test() on the tiny dataset: periods through one dbt build each, then the
training DAG, with a real metadata DB, DuckDB file and MLflow store. A period's logical date is its ds."""

from __future__ import annotations

import datetime as dt
import html
import os
import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"
UTC = dt.UTC
PERIODS, TRAINING = "tmall-2013.periods", "tmall-2013.training"


def _at(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), UTC)


@pytest.fixture(scope="module")
def dags(airflow_db, tiny_dataset, tiny_exports):
    """The tiny dataset is where the default task looks for it; the labelled dates' exports are there. A run
    is dated (logical date and run_after) at its period's ds, as `crowd run-dags` dates it."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    yield bag
    import gc

    gc.unfreeze()  # what the dbt tasks froze (ml.orchestration.freeze_surviving_objects) is collectable again
    gc.collect()


@pytest.fixture(scope="module")
def backtest_period(dags, task):
    """The backtest's period with warehouse.airflow_tasks per_model (Cosmos's watcher tasks around the one
    build); the default one-task build runs in the run-dags test below and in every other period here."""
    from ml.orchestration import build_periods_dag
    from ml.task import load_task

    dag = build_periods_dag(load_task(task.name, {"warehouse.airflow_tasks": "per_model"}))
    run = dag.test(logical_date=_at(task.backtest), run_after=_at(task.backtest))
    return task.backtest, run


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_the_backtest_period_builds_and_exports_its_date_and_announces_it(backtest_period, task_paths, task):
    """Through per_model's tasks: one per model and per model's tests, each reporting its node of the
    producer's one dbt build. The warehouse holds ODS, DIM and DW from the same inputs (the session's build
    recorded them), so the build leaves them out, as the one-task build does, and their watchers are skipped."""
    ds, run = backtest_period
    states = _states(run)
    assert str(run.state) == "success", {t: s for t, s in states.items() if s not in ("success", "skipped")}
    assert run.logical_date.date() == ds and ds.isoformat() in run.run_id
    watchers = [t for t in states if t.startswith("warehouse.") and "producer" not in t]
    models = {t.split(".")[1]: t for t in watchers if t.endswith(".run") and "_checked" not in t}
    upstream = {t for name, t in models.items() if name.split("_")[0] in ("ods", "dim", "dw")}
    date_layers = {t for name, t in models.items() if name.split("_")[0] in ("ads", "samples")}
    assert len(upstream) >= 15 and len(date_layers) >= 10 and len(upstream) + len(date_layers) == len(models)
    assert {states[t] for t in upstream} == {"skipped"}, {t: states[t] for t in upstream}
    date_watchers = [t for t in watchers if t.split(".")[1].split("_")[0] in ("ads", "samples")]
    assert all(states[t] == "success" for t in date_watchers), {t: states[t] for t in date_watchers}
    assert not {t for t, s in states.items() if s not in ("success", "skipped")}
    assert states["warehouse.samples.run"] == states["warehouse.samples.test"] == "success"
    assert states["publish_backtest_ready"] == "success" and states["forward_crowds"] == "skipped"
    assert states["crowd_outcomes"] == "skipped"  # a labelled period publishes and measures no crowds
    with duckdb.connect(str(task_paths.warehouse)) as con:
        dates = {r[0] for r in con.execute("select distinct ds from samples.samples_evaluation").fetchall()}
    assert ds in dates and dates <= {ds, *task.validation}  # the validation dates have their evaluation set too
    export = task_paths.exports / f"ds={ds}"
    assert {"samples.parquet", "evaluation.parquet", "sequences.parquet"} <= {p.name for p in export.iterdir()}


def test_a_period_that_is_not_the_backtest_does_not_trigger_training(dags, task):
    ds = task.validation[0]
    run = dags.get_dag(PERIODS).test(logical_date=_at(ds))
    states = _states(run)
    assert str(run.state) == "success" and states["export"] == "success"
    assert states["publish_backtest_ready"] == "skipped"


def test_a_date_that_is_no_period_of_the_task_is_skipped_and_says_why(dags, task, caplog):
    run = dags.get_dag(PERIODS).test(logical_date=_at(task.samples.first + dt.timedelta(days=1)))
    states = _states(run)
    assert states["plan"] == "success" and states["export"] == "skipped"


def test_a_bad_parameter_fails_before_any_work(dags):
    with pytest.raises(Exception, match=r"shop|enum|not one of"):
        dags.get_dag(PERIODS).test(logical_date=dt.datetime(2013, 7, 8, tzinfo=UTC), run_conf={"target": "shop"})
    with pytest.raises(Exception, match=r"xgb|enum|not one of"):
        dags.get_dag(TRAINING).test(run_conf={"models": ["xgb"]})


def test_a_value_error_fails_its_task_at_once_and_run_dags_says_which_and_why(dags, task, tmp_path):
    """A ValueError is wrong input or data: the same try fails the same way, so no retry (with the default 2
    they took 20 + 40 s of back-off, 108.7 s for a sparse log's period against 11.9 s). A run-dags failure
    names the error, not only the failed tasks (downstream ones listed apart, as not run)."""
    import time

    from ml.local_airflow import last_error

    assert os.environ.get("CROWD_TASK_RETRIES") is None and dags.get_dag(PERIODS).get_task("plan").retries == 2
    start = time.perf_counter()
    # an engine for one run only: plan refuses it with a ValueError (every date of a task is in one warehouse)
    run = dags.get_dag(PERIODS).test(logical_date=_at(task.samples.first),
                                     run_conf={"overrides": {"warehouse.engine": "spark"}})
    plan = next(ti for ti in run.get_task_instances() if ti.task_id == "plan")
    assert str(run.state) == "failed" and str(plan.state) == "failed" and plan.try_number == 1
    assert time.perf_counter() - start < 20  # the first retry would have waited 20 s

    # a tag none of whose categories the log has: refused by plan too, before any build (a scheduler's runs)
    run = dags.get_dag(PERIODS).test(logical_date=_at(task.samples.first), run_conf={
        "overrides": {"target": "tag", "tags": [{"name": "elsewhere", "categories": [999_999_999]}]}})
    states = _states(run)
    assert states["plan"] == "failed" and states["dbt_build"] != "success"

    log = tmp_path / "run.log"
    log.write_text("before\nTraceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'old'\n")
    start_of_run = log.stat().st_size
    with open(log, "a") as f:
        f.write("[info] a task\nTraceback (most recent call last):\n  File \"y.py\", line 2, in export\n"
                "    raise ValueError(message)\nValueError: the warehouse has no samples\n\nThe above exception "
                "was the direct cause of the following exception:\n\nTraceback (most recent call last):\n"
                "  File \"z.py\", line 3\nairflow.sdk.exceptions.AirflowFailException: ValueError: the warehouse "
                "has no samples (not retried)\n[info] end task\n")
    assert last_error(log, start_of_run) == "ValueError: the warehouse has no samples (not retried)"
    assert last_error(log) == last_error(log, start_of_run) and last_error(log, log.stat().st_size) is None


def test_a_failing_dbt_test_fails_the_dag_run_and_leaves_no_rows_of_its_date(dags, task, task_paths, tmp_path,
                                                                              monkeypatch):
    import shutil

    from airflow.dag_processing.dagbag import DagBag

    from ml.warehouse.build import DBT_PROJECT_DIR, run_dbt

    project = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs", ".user.yml"))
    (project / "tests" / "always_fails.sql").write_text("select target_id from {{ ref('dim_targets') }}\n")
    monkeypatch.setenv("CROWD_DBT_PROJECT_DIR", str(project))
    monkeypatch.setenv("CROWD_TASK_RETRIES", "0")
    dag = DagBag(dag_folder=str(DAGS)).get_dag(PERIODS)
    run = dag.test(logical_date=_at(task.samples.first))
    states = _states(run)
    assert str(run.state) == "failed"
    failed = [t for t, s in states.items() if s == "failed"]
    assert failed == ["dbt_build"]
    assert states["export"] in ("upstream_failed", "skipped")
    ds = task.samples.first
    # the failed build purged its date's rows (dbt went on with the models on other branches, and skipped
    # those downstream of the failure): no samples of the date and no export
    with duckdb.connect(str(task_paths.warehouse)) as con:
        assert con.execute("select count(*) from samples.samples where ds = ?", [ds]).fetchone()[0] == 0
    # rebuilt once fixed (the tests after this one share the warehouse)
    run_dbt("run", dataset_dir=task_paths.dataset_dir, warehouse=task_paths.warehouse,
            dbt_vars=task.dbt_vars(ds=[ds]), quiet=True)
    with duckdb.connect(str(task_paths.warehouse)) as con:
        assert con.execute("select count(*) from samples.samples where ds = ?", [ds]).fetchone()[0] > 0


def test_run_dags_drives_the_periods_and_training_dags_and_ends_with_the_comparison(dags, task, task_paths, capsys,
                                                                                    caplog):
    """`crowd run-dags` is what `make run` calls: the real DAGs through dag.test(), then the table and paths. Its
    training DAG trains two models side by side, promotes a champion, publishes the forward crowds and the
    run's HTML report."""
    import logging

    from ml.cli import main
    from ml.crowds import last_log_day

    caplog.set_level(logging.INFO, logger="ml.local_airflow")

    began = dt.datetime.now(dt.UTC)
    assert main(["run-dags", "--ds", str(task.backtest), "--set", "models=[lgbm_all_mixed, dnn]",
                 "--set", "epochs=1", "--set", "crowd_size=10", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 DAG runs succeeded" in out
    # (a model row may carry "(not above the floor)" after its name)
    assert "| lgbm_all_mixed " in out and "| dnn " in out
    assert "| floor: decayed_count |" in out and "| oracle (ceiling) |" in out
    # the two trainings ran at the same time (train's max_active_tis_per_dag), each in a process of its own
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run_id = session.scalar(select(TaskInstance.run_id).filter_by(dag_id=f"{task.name}.training", task_id="train")
                                .order_by(TaskInstance.start_date.desc()).limit(1))
        trains = session.scalars(select(TaskInstance).filter_by(run_id=run_id, task_id="train")).all()
        spans = [(ti.start_date, ti.end_date, ti.pid) for ti in trains]
        forward = session.scalars(select(TaskInstance).filter_by(run_id=run_id, task_id="forward_features")).one()
        session.expunge(forward)
        # the training run took the backtest's asset event off the queue, as a scheduler's asset-triggered run
        # does: the first scheduler on this metadata DB (make airflow after make run) does not train again
        from airflow.models.asset import AssetDagRunQueue
        from airflow.models.dagrun import DagRun

        queued = session.scalars(select(AssetDagRunQueue).filter_by(target_dag_id=f"{task.name}.training")).all()
        training_run = session.scalars(select(DagRun).filter_by(dag_id=f"{task.name}.training", run_id=run_id)).one()
        consumed = [(e.source_dag_id, e.extra) for e in training_run.consumed_asset_events]
        # each run started when it ran, as the UI shows it (dag.test() dated a period's start at its logical date,
        # 2013, and the UI showed it lasting years)
        period = session.scalars(select(DagRun).filter_by(dag_id=f"{task.name}.periods")
                                 .order_by(DagRun.end_date.desc()).limit(1)).one()
        assert period.logical_date.date() == task.backtest
        for run in (period, training_run):
            assert began <= run.start_date <= run.end_date <= began + dt.timedelta(minutes=15), run
    assert not queued, queued
    assert consumed and all(dag_id == f"{task.name}.periods" for dag_id, _ in consumed), consumed
    assert len(spans) == 2 and all(str(ti.state) == "success" for ti in trains)
    (_, end_a, pid_a), (start_b, end_b, pid_b) = sorted(spans)
    assert start_b < end_a, f"the trainings ran one after the other: {spans}"
    assert pid_a != pid_b and os.getpid() not in (pid_a, pid_b)
    # handed out in map_index order, as a scheduler does (dag.test's own order is a set's)
    started = [r.getMessage().split()[3] for r in caplog.records if r.getMessage().startswith("side by side: ")]
    assert [s for s in started if s.startswith("train[")] == ["train[0]", "train[1]"], started
    # the forward features, which wait on no model, were built in a process of their own while the models trained
    assert "forward_features[-1]" in started
    assert forward.pid not in (os.getpid(), None) and forward.start_date < max(end_a, end_b), (forward, spans)
    as_of = last_log_day(task_paths.dataset_dir) + dt.timedelta(days=1)
    crowds = task_paths.crowds / f"ds={as_of}" / "crowds.parquet"
    assert f"crowds:  {crowds}" in out and str(task_paths.shared.mlflow_db) in out
    assert "?workflowType=machine_learning after make mlflow" in out  # the link that opens the runs, not GenAI
    # the crowds' line names the model that scored them, which the table marks as the champion (or names, when
    # an earlier run of that model, trained by another test of the session on these rows, holds the alias)
    served = pd.read_parquet(crowds, columns=["model", "model_version"]).iloc[0]
    assert f"(scored by {served['model']} version {served['model_version']}; " in out
    assert (f"| {served['model']} (champion" in out
            or f"is {served['model']} version {served['model_version']} (run " in out), out
    assert f"report:  {task_paths.reports / 'runs'}" in out
    crowd = pd.read_parquet(crowds)
    assert (crowd.groupby("target_id").size() == 10).all() and (crowd["feature_date"] == as_of).all()
    with duckdb.connect(str(task_paths.warehouse)) as con:
        n = con.execute("select count(*) from crowds.forward_crowds where feature_date = ?", [as_of]).fetchone()[0]
    assert n == len(crowd)
    import mlflow
    from mlflow.tracking import MlflowClient

    from ml.tracking import champion_alias, comparison_key, configure

    configure(task_paths)
    # the run changed models, epochs and the crowd size: the same comparison fingerprint as the task's
    champion = MlflowClient().get_model_version_by_alias(task_paths.registered_model,
                                                         champion_alias(comparison_key(task, task_paths.exports)))
    assert str(champion.version) == crowd["model_version"].iloc[0]
    runs = mlflow.search_runs(experiment_names=[task_paths.experiment])
    assert {"lgbm_all_mixed", "dnn"} <= set(runs["tags.model"])
    assert (runs.loc[runs["tags.model"] == "dnn", "params.task.training.epochs"] == "1").any()
    # the run's own HTML report, after the crowds: named by the run, showing the models it trained
    report = task_paths.reports / "runs" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}.html"
    text = report.read_text()
    assert "<td>dnn" in text and "10 to 10 (median 10)" in text and 'id="chart-gain"' in text
    assert f"<h1>Purchase Crowd: {task.name}</h1>" in text  # the run's id said in the text, not the title
    assert html.escape(f"by the training DAG's run {run_id}.") in text
    log = (task_paths.shared.airflow_home / "local_run.log").read_text()
    assert "samples.samples_evaluation" in log and "samples.samples_evaluation" not in out  # dbt's console
    # the results the commands print as their own lines are the task log's record (ml.cli.TASK_LOG_COMMANDS)
    assert "dbt build: " in log and "ml.results.warehouse" in log and "ml.results.train" in log
    # no third-party noise in the task log: dag.test's "No tasks to run" while the side-by-side children run its
    # instances, Cosmos's and Airflow's OpenLineage warnings (a provider this project does not use)
    noise = [line for line in log.splitlines() if "No tasks to run" in line or "openlineage" in line.lower()]
    assert not noise, noise[:3]
    # ... nor dbt's colour codes: the log is a file, read with less or grep (every dbt line began with one)
    coloured = [line for line in log.splitlines() if "\x1b[" in line]
    assert not coloured, coloured[:3]
    # a run that would build nothing fails before it starts, saying why
    assert main(["run-dags", "--ds", str(task.samples.first + dt.timedelta(days=2)), "--no-training"]) == 2
    assert "nothing to build" in capsys.readouterr().err


def test_a_forward_period_publishes_its_crowds_then_measures_those_whose_window_the_log_holds(dags, task, task_paths):
    """After the run-dags test's champion: crowds published as of the backtest date (whose week the log holds),
    then the period after it, a forward period, publishes its own crowds (whose week it does not) and its
    crowd_outcomes task measures the earlier ones: beside them, in the warehouse table and on the model's run."""
    from mlflow.tracking import MlflowClient

    from ml.cli import main
    from ml.crowd_outcomes import metric_step
    from ml.orchestration import build_periods_dag
    from ml.tracking import configure

    assert main(["score", "--as-of", str(task.backtest), "--set", "crowd_size=10"]) == 0
    forward = task.backtest + dt.timedelta(days=task.windows.step_days)
    # a DAG of its own: in a run of the whole file, the bag's planned this period with the engine override that an
    # earlier test's dag.test(run_conf=...) had given it, and failed
    run = build_periods_dag(task).test(logical_date=_at(forward), run_after=_at(forward))
    states = _states(run)
    assert str(run.state) == "success" and states["publish_backtest_ready"] == "skipped", states
    assert states["forward_crowds"] == states["crowd_outcomes"] == "success"
    assert (task_paths.crowds / f"ds={forward}" / "crowds.parquet").exists()
    assert not (task_paths.crowds / f"ds={forward}" / "crowds_outcomes.parquet").exists()  # its week is ahead
    measured = pd.read_parquet(task_paths.crowds / f"ds={task.backtest}" / "crowds_outcomes.parquet")
    assert (measured["crowd_size"] == 10).all() and measured["buyers"].sum() > 0
    with duckdb.connect(str(task_paths.warehouse)) as con:
        n = con.execute("select count(*) from crowds.crowd_outcomes where feature_date = ?",
                        [task.backtest]).fetchone()[0]
    assert n == len(measured)
    configure(task_paths)
    history = MlflowClient().get_metric_history(measured["run_id"].iloc[0], "outcome_buyers_in_crowd")
    assert (metric_step(task.backtest), measured["buyers_in_crowd"].sum()) in [(m.step, m.value) for m in history]
