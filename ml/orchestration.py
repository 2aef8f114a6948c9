"""The Airflow DAGs of the pipeline, built here so that the files in dags/ stay wiring only.

crowd_weekly   one run per week (Monday to Monday, CronDataIntervalTimetable): the dbt layers for that week's
               sample date ds = data_interval_start, as Cosmos tasks (one per model, its tests after it) in a
               pool of one slot because DuckDB takes one writer; then the week's parquet export. The run of
               the evaluation week also publishes the EVALUATION_READY asset.
crowd_training triggered by that asset (so a backfill over the whole schedule ends by training): every
               model in parallel from the parquet exports, each resuming from its checkpoint on retry;
               then the champion's crowds exported as parquet and as a warehouse table.
"""

from __future__ import annotations

import datetime as dt
import gc

from ml.config import Paths, Schedule, WarehouseSettings, dbt_vars, parse_date

DUCKDB_POOL = "crowd_duckdb"
WEEKLY_DAG_ID = "crowd_weekly"
TRAINING_DAG_ID = "crowd_training"
EVALUATION_READY_URI = "crowd://exports/evaluation"


def default_args() -> dict:
    """Retries with exponential back-off on every task ($CROWD_TASK_RETRIES, default 2)."""
    import os

    return {"owner": "purchase-crowd", "retries": int(os.environ.get("CROWD_TASK_RETRIES", "2")),
            "retry_delay": dt.timedelta(seconds=20),
            "retry_exponential_backoff": True, "max_retry_delay": dt.timedelta(minutes=10)}


def check_weekly_params(params: dict) -> dict:
    """Fail before any work, naming the parameter: the same checks as ml.config and the dbt vars."""
    from ml.config import Windows

    windows = Windows(history_days=int(params["history_days"]), sequence_days=int(params["sequence_days"]),
                      label_days=int(params["label_days"]))
    schedule = Schedule(evaluation=parse_date(params["evaluation_date"], "evaluation_date"),
                        target=str(params["target"]), windows=windows)
    settings = WarehouseSettings(negatives_per_target=int(params["negatives_per_target"]))
    return dbt_vars(schedule, settings)


def check_training_params(params: dict) -> list[str]:
    from ml.train.pipeline import ALL_MODELS

    models = list(params["models"])
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown or not models:
        raise ValueError(f"models: unknown {unknown or 'empty list'}; expected some of {', '.join(ALL_MODELS)}")
    if int(params["epochs"]) < 1 or int(params["top_n"]) < 1:
        raise ValueError("epochs and top_n must be positive")
    if not 0 < float(params["negative_rate"]) <= 1:
        raise ValueError(f"negative_rate: expected a share in (0, 1], got {params['negative_rate']}")
    return models


def export_week(ds: str, paths: Paths | None = None) -> dict:
    from ml.warehouse.export import export_dates

    paths = paths or Paths.default()
    e = export_dates(paths.warehouse, paths.exports, [parse_date(ds, "ds")])[0]
    return {"ds": str(e.ds), "path": str(e.path), "rows": e.rows}


def export_crowds(top_n: int, paths: Paths | None = None) -> dict:
    """Score the evaluation population with the champion; write the crowds as parquet and as a warehouse table."""
    import duckdb

    from ml.train.bundle import crowd_table, load_bundle

    paths, schedule = paths or Paths.default(), Schedule()
    bundle = load_bundle(None, paths)
    raw = bundle.read_population(paths.exports, schedule.evaluation)
    crowd = crowd_table(raw.samples, bundle.score(raw), top_n)
    crowd.insert(0, "ds", schedule.evaluation)
    crowd["model"] = bundle.name
    out = paths.crowds / f"ds={schedule.evaluation}" / "crowds.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    crowd.to_parquet(out)
    with duckdb.connect(str(paths.warehouse)) as con:
        con.execute("create schema if not exists crowds")
        con.execute("create table if not exists crowds.crowd_list as select * from crowd where false")
        con.execute("delete from crowds.crowd_list where ds = ?", [schedule.evaluation])
        con.execute("insert into crowds.crowd_list by name select * from crowd")
    return {"path": str(out), "rows": len(crowd), "model": bundle.name}


def freeze_surviving_objects(project_dir: str, **_: object) -> None:
    """A Cosmos callback after every dbt task. Cosmos runs a full gc.collect() after each in-process dbt
    invocation (to release dbt's adapter semaphores); in a process as large as Airflow's that costs 0.3-0.6 s,
    more than most models take to build. Freezing what survived keeps the next collection to what the next
    task creates: a week went from 66 s to 30 s in `make run`. Harmless in a worker's short-lived task process;
    the local runner (ml.local_airflow) unfreezes and collects between DAG runs."""
    gc.freeze()


def _dbt_on_path() -> None:
    """Cosmos checks that a `dbt` executable is on PATH even when it runs dbt in-process (dbtRunner); the one
    installed beside this interpreter (the project's venv) is the right one."""
    import os
    import shutil
    import sys
    from pathlib import Path

    if shutil.which("dbt") is None:
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def build_weekly_dag():  # noqa: ANN201
    _dbt_on_path()  # before cosmos is imported: it resolves the executable at import
    from airflow.sdk import DAG, Asset, Param, task
    from airflow.timetables.interval import CronDataIntervalTimetable
    from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
    from cosmos.constants import InvocationMode, LoadMode, TestBehavior

    from ml.warehouse.build import DBT_PROJECT_DIR

    import os
    from pathlib import Path

    # $CROWD_DBT_PROJECT_DIR points the DAG at another copy of the dbt project (a fork, or a test's)
    project_dir = Path(os.environ.get("CROWD_DBT_PROJECT_DIR", DBT_PROJECT_DIR))
    schedule, settings, paths = Schedule(), WarehouseSettings(), Paths.default()
    evaluation_ready = Asset(EVALUATION_READY_URI)
    env = {"CROWD_DATASET_DIR": str(paths.dataset("synthetic")), "CROWD_WAREHOUSE": str(paths.warehouse)}
    with DAG(
        dag_id=WEEKLY_DAG_ID,
        description="dbt ODS -> DIM -> DW -> ADS -> samples for one weekly sample date, then its parquet export",
        schedule=CronDataIntervalTimetable("0 0 * * 1", timezone="UTC"),
        start_date=dt.datetime.combine(schedule.first_sample, dt.time(), dt.timezone.utc),
        # a manual run's logical date is the end of its interval: the evaluation week's manual run is dated a
        # week after the evaluation date; later weeks have no labels and are skipped by check_params
        end_date=dt.datetime.combine(schedule.evaluation + dt.timedelta(days=7), dt.time(), dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        render_template_as_native_obj=True,
        default_args=default_args(),
        params={
            "target": Param(schedule.target, enum=["brand", "category"]),
            "history_days": Param(schedule.windows.history_days, type="integer", minimum=1),
            "sequence_days": Param(schedule.windows.sequence_days, type="integer", minimum=1),
            "label_days": Param(schedule.windows.label_days, type="integer", minimum=1),
            "negatives_per_target": Param(settings.negatives_per_target, type="integer", minimum=0),
            "evaluation_date": Param(schedule.evaluation.isoformat(), type="string", format="date"),
        },
        tags=["purchase-crowd", "warehouse"],
    ) as dag:

        @task.short_circuit
        def check_params(data_interval_start=None, params: dict | None = None) -> bool:  # noqa: ANN001
            """Fail on a bad parameter before any work; skip the run for a week after the evaluation date."""
            checked = check_weekly_params(params or {})
            Paths.default().warehouse.parent.mkdir(parents=True, exist_ok=True)  # dbt-duckdb will not create it
            return data_interval_start.date() <= parse_date(checked["evaluation_date"])

        run_vars = {
            "ds": "{{ data_interval_start | ds }}", "target": "{{ params.target }}",
            "history_days": "{{ params.history_days }}", "sequence_days": "{{ params.sequence_days }}",
            "label_days": "{{ params.label_days }}", "negatives_per_target": "{{ params.negatives_per_target }}",
            "evaluation_date": "{{ params.evaluation_date }}",
        }
        warehouse = DbtTaskGroup(
            group_id="warehouse",
            project_config=ProjectConfig(project_dir, env_vars=env),
            profile_config=ProfileConfig(profile_name="purchase_crowd", target_name="duckdb",
                                         profiles_yml_filepath=project_dir / "profiles.yml"),
            # dbt runs in-process (dbtRunner), both to list the project and to run each node
            execution_config=ExecutionConfig(invocation_mode=InvocationMode.DBT_RUNNER),
            render_config=RenderConfig(load_method=LoadMode.DBT_LS, test_behavior=TestBehavior.AFTER_EACH,
                                       invocation_mode=InvocationMode.DBT_RUNNER,
                                       # singular tests reading several models run once all of them are built
                                       should_detach_multiple_parents_tests=True),
            operator_args={"vars": run_vars, "pool": DUCKDB_POOL, "install_deps": False,
                           "callback": "ml.orchestration.freeze_surviving_objects"},
            default_args={**default_args(), "pool": DUCKDB_POOL},
        )

        @task(pool=DUCKDB_POOL)
        def export(data_interval_start=None) -> dict:  # noqa: ANN001
            return export_week(data_interval_start.date().isoformat())

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def is_evaluation_week(data_interval_start=None, params: dict | None = None) -> bool:  # noqa: ANN001
            return data_interval_start.date() == parse_date((params or {})["evaluation_date"])

        @task(outlets=[evaluation_ready])
        def publish_evaluation_ready() -> None:
            """An asset event: the training DAG is scheduled on it."""

        check_params() >> warehouse >> export() >> is_evaluation_week() >> publish_evaluation_ready()
    return dag


def build_training_dag():  # noqa: ANN201
    from airflow.sdk import DAG, Asset, Param, task

    from ml.train.pipeline import ALL_MODELS

    with DAG(
        dag_id=TRAINING_DAG_ID,
        description="train every model on the weekly exports, evaluate, move the champion, export the crowds",
        schedule=[Asset(EVALUATION_READY_URI)],
        start_date=dt.datetime(2013, 7, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args=default_args(),
        params={
            "models": Param(list(ALL_MODELS), type="array", items={"type": "string", "enum": list(ALL_MODELS)}),
            "epochs": Param(4, type="integer", minimum=1),
            "negative_rate": Param(0.2, type="number", exclusiveMinimum=0, maximum=1),
            "top_n": Param(1000, type="integer", minimum=1),
        },
        tags=["purchase-crowd", "training"],
    ) as dag:

        @task
        def models_to_train(params: dict | None = None) -> list[str]:
            return check_training_params(params or {})

        @task(max_active_tis_per_dag=2)
        def train(model: str, params: dict | None = None) -> dict:
            """Retries resume from the model's last epoch checkpoint (same data and settings, same key)."""
            from ml.train.pipeline import train_and_evaluate
            from ml.train.trainer import TrainConfig

            p = params or {}
            o = train_and_evaluate(model, train_cfg=TrainConfig(epochs=int(p["epochs"]), progress=False),
                                   negative_rate=float(p["negative_rate"]))
            return {"model": model, "run_id": o.run_id, "champion": o.champion, **o.summary}

        @task(pool=DUCKDB_POOL)
        def crowds(results: list[dict], params: dict | None = None) -> dict:
            return export_crowds(int((params or {})["top_n"]))

        crowds(train.expand(model=models_to_train()))
    return dag
