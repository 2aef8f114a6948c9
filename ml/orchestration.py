"""The Airflow DAGs of a task, built here so that dags/crowd.py stays wiring only (one pair per tasks/*.yaml).

<task>.periods   one run per period of the task's cadence (DeltaTriggerTimetable every step_days from the
                 first sample date, with no data interval). Its logical date is the period's date ds, for every
                 kind of run (scheduled, backfill, manual, dag.test): a backfill from D1 to D2 builds ds D1..D2.
                 Features use the events before ds, so the run can build as soon as ds begins. `plan` decides
                 what ds is: a labelled date of the task (samples; the backtest date also builds the evaluation
                 set and announces it with an asset event that carries the run's overrides), a forward date
                 after the backtest (features only, then crowds by the champion, then how the crowds published
                 before did whose window the log now holds: crowd_outcomes), or neither (skipped, saying why).
                 Then the date's one `dbt build` (dbt_build; or, with warehouse.airflow_tasks per_model,
                 Cosmos's watcher tasks around the same build) in a pool of one slot because DuckDB takes one
                 writer, and the date's parquet export.
<task>.training  scheduled on that asset (so a backfill over the task's dates ends by training), or
                 triggered by hand: every model of the task in parallel from the exports, each resuming from its
                 checkpoint on retry; then the forward crowds as of the day after the log's last day, and the
                 run's HTML report (reports/runs/RUN_ID.html: the comparison, the curves, the crowds' sizes).

Params are the task's values (with descriptions); a changed Param, or the free-form `overrides` Param
(dotted paths such as windows.label_days), changes that field for the run, and the run's effective task is
what every step uses: dbt vars, training, scoring, and the MLflow run's params.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from ml.task import ALL_MODELS, DEEP_MODELS, TARGETS, Task, TaskError, TaskPaths, available_tasks, load_task

log = logging.getLogger(__name__)
DUCKDB_POOL = "crowd_duckdb"
T = TypeVar("T")


def periods_dag_id(task: str) -> str:
    return f"{task}.periods"


def training_dag_id(task: str) -> str:
    return f"{task}.training"


def backtest_asset_uri(task: Task) -> str:
    return f"crowd://{task.name}/{task.dataset}/backtest"


# The models from the longest training task to the shortest (train, score and evaluate, two at a time): in two
# `make run`s of the default task on 2 cores (2026-11-27) their MLflow runs took ple 134 and 138 s, moe 82 and
# 87, din 58 and 69, lstm 61 and 63, lgbm_few_mixed 52 and 60, lgbm_per_target 48 and 53, deepfm 44 and 40,
# lgbm_all_mixed 38 and 45, dnn 34 and 31. Only an order of work: no result depends on it.
LONGEST_FIRST: tuple[str, ...] = ("ple", "moe", "din", "lstm", "lgbm_few_mixed", "lgbm_per_target", "deepfm",
                                  "lgbm_all_mixed", "dnn")


def longest_first(models: list[str]) -> list[str]:
    """The models in LONGEST_FIRST's order; a model it does not list goes first (unknown: assumed long)."""
    return sorted(models, key=lambda m: LONGEST_FIRST.index(m) if m in LONGEST_FIRST else -1)


def fails_for_good(fn: Callable[..., T]) -> Callable[..., T]:
    """A task whose ValueError fails it at once. A ValueError is this project's word for wrong input or data (a
    bad Param, a log too sparse for the task, exports of two builds): the next try fails the same way, and
    retrying cost a failing run 20 + 40 s of back-off before saying so (AirflowFailException skips the retries).
    Anything else (a killed process, a lock, a lost connection) keeps its retries."""
    @functools.wraps(fn)  # Airflow reads the function's signature (its context arguments) through the wrapper
    def run(*args: object, **kwargs: object) -> T:
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"{type(e).__name__}: {e} (not retried: the same input fails the same "
                                       "way)") from e
    return run


def default_args() -> dict:
    """Retries with exponential back-off on every task ($CROWD_TASK_RETRIES, default 2)."""
    return {"owner": "purchase-crowd", "retries": int(os.environ.get("CROWD_TASK_RETRIES", "2")),
            "retry_delay": dt.timedelta(seconds=20),
            "retry_exponential_backoff": True, "max_retry_delay": dt.timedelta(minutes=10)}


# ---- Params: the task's values, changeable for one run ---------------------------------------------------
PERIOD_PARAMS: dict[str, tuple[str, str]] = {  # Param -> (task field, description)
    "dataset": ("dataset", "dataset under DATA/raw/ (made by crowd load or crowd generate)"),
    "target": ("target", f"the entity whose crowds are ranked: {', '.join(TARGETS[:-1])} or {TARGETS[-1]}"),
    "history_days": ("windows.history_days", "features use events in [ds - history_days, ds)"),
    "sequence_days": ("windows.sequence_days", "behaviour sequences cover the last sequence_days"),
    "label_days": ("windows.label_days", "the label: a buy in [ds, ds + label_days)"),
    "negatives_per_target": ("warehouse.negatives_per_target", "sampled users with no history, per target and date"),
    "top_targets": ("evaluate.top_targets", "targets of the backtest (most recent buyers)"),
}
TRAINING_PARAMS: dict[str, tuple[str, str]] = {
    "models": ("models", "the models to train"),
    "epochs": ("training.epochs", "epochs of every deep model (a model's own budget in the task file wins)"),
    "negative_rate": ("training.negative_rate", "share of training negatives kept (scores are corrected)"),
    "crowd_size": ("crowds.size", "users per target in the crowds (at most crowds.share of the scored users)"),
}
OVERRIDES_HELP = "any other setting for this run, as dotted paths: {\"windows.step_days\": 1}"


def _field(task: Task, path: str) -> object:
    if path == "models":
        return task.model_names()
    node: object = task
    for part in path.split("."):
        node = getattr(node, part)
    return node


def dag_params(task: Task, spec: dict[str, tuple[str, str]]) -> dict:
    from airflow.sdk import Param

    params = {}
    for name, (path, description) in spec.items():
        value = _field(task, path)
        if name == "models":
            params[name] = Param(value, type="array", items={"type": "string", "enum": list(ALL_MODELS)},
                                 description=description)
        elif name == "target":
            params[name] = Param(value, enum=list(TARGETS), description=description)
        elif isinstance(value, str):
            params[name] = Param(value, type="string", description=description)
        elif isinstance(value, int):
            params[name] = Param(value, type="integer", minimum=0 if name == "negatives_per_target" else 1,
                                 description=description)
        else:
            params[name] = Param(value, type="number", exclusiveMinimum=0, maximum=1, description=description)
    params["overrides"] = Param({}, type="object", description=OVERRIDES_HELP)
    return params


def effective_task(name: str, params: dict | None, spec: dict[str, tuple[str, str]],
                   inherited: dict | None = None) -> tuple[Task, dict]:
    """The run's task: the file, then overrides inherited from the run that triggered this one, then the
    Params that differ from the file's values, then the free-form `overrides` Param. Returns it with the
    overrides that made it (what the next DAG inherits and MLflow records)."""
    base = load_task(name)
    params = dict(params or {})
    changes: dict = dict(inherited or {})
    for key, (path, _) in spec.items():
        if key in params and params[key] != _field(base, path):
            changes[path] = params[key]
    changes.update(params.get("overrides") or {})
    return base.override(changes, source=f"tasks/{name}.yaml (this run's Params)"), changes


def plan_period(task: Task, ds: dt.date, first_day: dt.date, last_day: dt.date) -> str:
    """What a period run does at ds: 'labelled', 'forward', or a reason to skip; a labelled date the log does not
    hold, with events before it and its label window after, fails (check_date_in_log)."""
    if ds in task.labelled_dates:
        check_date_in_log(task, ds, first_day, last_day)
        return "labelled"
    if ds > task.backtest:
        if ds > last_day + dt.timedelta(days=1):
            return f"skip: the log ends on {last_day}, so {ds} has no complete day before it to build features from"
        return "forward"
    return (f"skip: {ds} is neither a labelled date of task {task.name} (samples every {task.windows.step_days} "
            f"day(s) {task.samples.first}..{task.samples.last}, validation, backtest {task.backtest}) nor after "
            f"its backtest")


def check_date_in_log(task: Task, ds: dt.date, first_day: dt.date, last_day: dt.date) -> None:
    """A labelled date's label window must lie inside the log: past its last day, the buyers of the missing days
    would be labelled non-buyers. Said before any build, naming the dates that fit; dbt's test
    label_windows_are_covered_by_the_log still checks each day's events (a gap, a stray late event) after it,
    but said only "Got 5 results", and a DAG retried the build twice before failing. Nor may the date come on or
    before the log's first day, with no event before it to build features from: the 2013 task on a 2017 log
    built all thirteen dates (a warning said their features saw "-1608--1524 of its 90 days"), then the export
    failed for want of samples."""
    if ds <= first_day:
        raise ValueError(f"{ds}: the log starts on {first_day}, so no event comes before it to build its features "
                         f"from: the task's labelled dates (from {task.labelled_dates[0]}) must come after "
                         f"{first_day}, or the log earlier")
    end = ds + dt.timedelta(days=task.windows.label_days - 1)
    if end > last_day:
        latest = last_day - dt.timedelta(days=task.windows.label_days - 1)
        raise ValueError(f"{ds}: its label window runs to {end}, past the log's last day {last_day}, so its late "
                         f"buyers would count as non-buyers: the task's labelled dates (backtest {task.backtest}) "
                         f"must be {latest} or earlier, or the log longer")


def item_table_facts(dataset_dir: Path) -> tuple[bool, set[int]]:
    """Whether any item of the log has a brand (the Taobao and Tianchi logs have none), and its leaf categories:
    the item table read once for the checks of a task's targets."""
    from ml.crowds import query_dataset

    items = Path(dataset_dir) / "items.parquet"
    ((brands, categories),) = query_dataset("select count(brand_id) > 0, list(distinct category_id) "
                                            "from read_parquet(?)", items, f"{items}: the item table")
    return brands, set(categories or ())  # an empty table: no list


def check_targets_in_log(task: Task, dataset_dir: Path) -> None:
    """The task's targets must be in its log. Brands: a brand task on a log without them built every date, then
    its dbt tests failed with a leak of the label window into the features (5,159 rows), which there was not.
    Tags: a tag is a rule over its log's own leaf categories, and one none of whose categories the item table
    holds has no buyer and no candidate, so its dates built empty and the export failed blaming a sparse log
    (the default world's tags on a log generated at the tiny preset's sizes, whose categories are others)."""
    items = Path(dataset_dir) / "items.parquet"
    if not items.exists():
        return  # the warehouse's own reader says what is missing
    # read for every task: an item table cut short is said here in one line, not in dbt's words mid-build
    brands, known = item_table_facts(dataset_dir)
    if task.target == "brand" and not brands:
        raise ValueError(f"task {task.name} ranks brands, and the log's item table {items} has no brand on any "
                         "item: rank categories or items (target: category, or --set target=category for one run), "
                         "or load a log with brands")
    absent = [t for t in task.tags if not known.intersection(t.categories)]
    if not absent:
        return
    named = "; ".join(f"{t.name}: {', '.join(map(str, t.categories))}" for t in absent)
    why = "set the tags to categories of this log"
    manifest = Path(dataset_dir) / "manifest.json"
    if task.generate and manifest.exists():
        import json

        from ml.synth.params import PRESETS

        sizes = json.loads(manifest.read_text()).get("sizes", {})
        own = PRESETS[task.generate.preset].sizes
        if sizes and (sizes.get("users"), sizes.get("items"), sizes.get("brands")) != (own.users, own.items,
                                                                                        own.brands):
            why = (f"the tags are categories of the {task.generate.preset} preset's world, and a log generated at "
                   f"other sizes has other categories: generate it at the preset's (crowd generate --task "
                   f"{task.name}), or {why}")
    raise ValueError(f"task {task.name}: no category of {'these tags' if len(absent) > 1 else 'the tag'} is in "
                     f"the log's item table {items} ({len(known):,} categories): {named}; {why}")


def task_doc(task: Task) -> str:
    """The DAGs' page in the Airflow UI: this task's own settings and the dates a backfill takes, above the
    DAGs' general description. It showed that general text alone, so a user about to backfill looked up the
    dates in the task file."""
    w, dates = task.windows, task.sample_dates
    return (f"## Task `{task.name}`: {task.description or task.name}\n\n"
            f"`tasks/{task.name}.yaml`: target **{task.target}**, dataset `{task.dataset}`, every {w.step_days} "
            f"day(s), label {w.label_days} day(s), history {w.history_days} day(s), engine "
            f"{task.warehouse.engine}.\n\n"
            f"Labelled dates: samples {dates[0]} .. {dates[-1]} ({len(dates)}), validation "
            f"{', '.join(map(str, task.validation))}, backtest {task.backtest}. **A backfill of "
            f"`{periods_dag_id(task.name)}` from {task.samples.first} to {task.backtest}** builds them all and ends "
            f"by training (`{training_dag_id(task.name)}`); a date after the backtest builds features and crowds "
            f"by the champion, then measures the crowds published before whose window the log now holds "
            f"(`crowd outcomes`).\n\n"
            f"Models: {', '.join(task.model_names())}. Crowds: at most {task.crowds.size} users per {task.target} "
            f"and {task.crowds.share:.0%} of the scored ones ({task.crowds.population} population)."
            f"\n\n---\n\n{__doc__}")


def short_history(task: Task, dates: Iterable[dt.date], first_day: dt.date) -> str | None:
    """A warning when some dates' history window starts before the log's first day: their features count fewer
    days than later dates' (a model trained on them meets longer histories at the backtest and in the crowds).
    Not an error: a short log (Taobao's nine days) leaves no other choice, and the task file says so."""
    days = task.windows.history_days
    # a date on or before the first day sees no day of the log: an error (check_date_in_log), not this warning
    short = sorted(ds for ds in set(dates) if first_day < ds and ds - dt.timedelta(days=days) < first_day)
    if not short:
        return None
    seen = [(ds - first_day).days for ds in short]
    named = ", ".join(map(str, short[:4])) + (f" and {len(short) - 4} more" if len(short) > 4 else "")
    return (f"the history window (windows.history_days {days}) of {named} starts before the log's first day "
            f"{first_day}: their features see {min(seen)}"
            + (f"-{max(seen)}" if max(seen) > min(seen) else "")
            + f" of its {days} days, the dates from {first_day + dt.timedelta(days=days)} on all {days}")


def freeze_surviving_objects(project_dir: str, **_: object) -> None:
    """The Cosmos callback of a dbt invocation (the watcher mode's producer, warehouse.airflow_tasks per_model).
    Cosmos runs a full gc.collect() after each in-process dbt invocation (to release dbt's adapter semaphores);
    in a process as large as Airflow's that costs 0.3-0.6 s. Freezing what survived keeps the next collection
    to what the next task creates (when every model was a Cosmos task: a week went from 66 s to 30 s).
    Harmless in a worker's short-lived task process;
    the local runner (ml.local_airflow) unfreezes and collects between DAG runs."""
    gc.freeze()


def _dbt_on_path() -> None:
    """Cosmos checks that a `dbt` executable is on PATH even when it runs dbt in-process (dbtRunner); the one
    installed beside this interpreter (the project's venv) is the right one."""
    import shutil
    import sys

    if shutil.which("dbt") is None:
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _watch_after_the_build(group) -> None:  # noqa: ANN001
    """The watcher tasks of a Cosmos task group start once its producer (the one `dbt build`) is done, whatever
    its outcome (as Cosmos wires a DbtDag, not a task group): each then finds its node's status at its first
    look, so no sensor holds a worker slot or a triggerer while dbt runs, and `dag.test()`, which runs one task
    at a time, never waits on a sensor that runs before the build. A failed node fails its task; the task's
    retry runs that node alone (Cosmos's fallback), outside the DuckDB pool: a retry after a failed build.
    A watcher whose upstream node was left out of the build (skipped: ODS, DIM and DW already held, see
    _leave_out_held_upstream) still looks at its own node: none failed is enough, as for what follows the group."""
    from cosmos.constants import PRODUCER_WATCHER_TASK_ID

    producer = group.children[f"{group.group_id}.{PRODUCER_WATCHER_TASK_ID}"]
    roots = list(group.get_roots())
    for root in roots:
        if root is not producer:
            producer >> root
            root.trigger_rule = "always"
    for watcher in group.iter_tasks():
        if watcher is not producer and watcher not in roots and watcher.trigger_rule == "all_success":
            watcher.trigger_rule = "none_failed"


def _leave_out_held_upstream(task_name: str, project_dir: Path, manifest: Path):  # noqa: ANN202
    """A Cosmos interceptor of the per_model producer, run before its dbt command is built: the date's build
    leaves out ODS, DIM and DW when the warehouse already holds them from the same inputs, as the one-task build
    does (ml.warehouse.build.date_selection, in the DuckDB pool like the build). The watchers of the models left
    out find them skipped (Cosmos's own status for a node its build did not run), and so do their tests'."""

    def intercept(context, producer) -> None:  # noqa: ANN001
        from cosmos.operators._watcher.aggregation import get_tests_status_xcom_key
        from cosmos.operators._watcher.state import get_status_xcom_key

        from ml.warehouse.build import date_selection, upstream_models
        from ml.warehouse.subset import item_subset_path

        ti = context["ti"]
        planned = ti.xcom_pull(task_ids="plan")
        run_task = load_task(task_name, planned["overrides"])
        paths = TaskPaths.of(run_task)
        engine = run_task.warehouse.engine
        chosen = date_selection(dataset_dir=paths.dataset_dir, warehouse=paths.warehouse_of(engine),
                                dbt_vars=producer.vars, select=producer.select or (), project_dir=project_dir,
                                item_subset=item_subset_path(run_task, paths), engine=engine)
        producer.vars = chosen.dbt_vars
        if not chosen.upstream_held:
            return
        producer.select = chosen.select
        for unique_id in upstream_models(manifest):  # where Cosmos's watchers read a node's and its tests' status
            ti.xcom_push(key=get_status_xcom_key(unique_id), value={"status": "skipped", "outlet_uris": []})
            ti.xcom_push(key=get_tests_status_xcom_key(unique_id), value="skipped")

    return intercept


def _watched_dbt_build(task: Task):  # noqa: ANN202
    """The date's one `dbt build` as Cosmos's watcher mode shows it (warehouse.airflow_tasks per_model): a
    producer task runs the build in the DuckDB pool, then a task per model and per model's tests reports that
    node's outcome. What it costs over one build task: the producer's per-node XComs and a task per node
    (a week of the default data: 48 s under dag.test against 15-18 s for the build alone, measured by hand)."""
    _dbt_on_path()  # before cosmos is imported: it resolves the executable at import
    from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
    from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, TestBehavior

    from ml.config import Paths
    from ml.warehouse.build import ensure_manifest

    project_dir = _dbt_project_dir()
    manifest = ensure_manifest(Paths.default().root / "dbt" / "manifests", project_dir)
    with warnings.catch_warnings():
        # Cosmos deprecates operator_args' `env` for ProjectConfig.env_vars, which is fixed when the DAG is
        # parsed: each run's environment (its dataset and warehouse) is templated from `plan`, so it stays here
        warnings.filterwarnings("ignore", message="operator_args with 'env' is deprecated", category=DeprecationWarning)
        group = DbtTaskGroup(
            group_id="warehouse",
            project_config=ProjectConfig(project_dir, manifest_path=manifest, install_dbt_deps=False),
            # the task file's engine: every run of this DAG writes one warehouse (a Param cannot move a week)
            profile_config=ProfileConfig(profile_name="purchase_crowd", target_name=task.warehouse.engine,
                                         profiles_yml_filepath=project_dir / "profiles.yml"),
            execution_config=ExecutionConfig(
                execution_mode=ExecutionMode.WATCHER, invocation_mode=InvocationMode.DBT_RUNNER,
                setup_operator_args={"pool": DUCKDB_POOL, "callback": "ml.orchestration.freeze_surviving_objects",
                                     "interceptors": [_leave_out_held_upstream(task.name, project_dir, manifest)]}),
            # the graph comes from the cached manifest: parsing the DAG file runs no dbt command
            render_config=RenderConfig(load_method=LoadMode.DBT_MANIFEST, test_behavior=TestBehavior.AFTER_EACH),
            operator_args={"vars": "{{ ti.xcom_pull(task_ids='plan')['dbt_vars'] }}",
                           "env": "{{ ti.xcom_pull(task_ids='plan')['env'] }}",
                           # the watchers start once the producer is done (below): one look, no triggerer
                           "deferrable": False, "mode": "reschedule", "poke_interval": 5},
            default_args=default_args(),
        )
    _watch_after_the_build(group)
    return group


def period_start(day: dt.date) -> dt.datetime:
    """A period's logical date (and, for local runs, its run_after): midnight UTC of its ds."""
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def _dbt_project_dir() -> Path:
    """$CROWD_DBT_PROJECT_DIR points the DAGs at another copy of the dbt project (a fork, or a test's)."""
    from ml.warehouse.build import DBT_PROJECT_DIR

    return Path(os.environ.get("CROWD_DBT_PROJECT_DIR", DBT_PROJECT_DIR))


def build_periods_dag(task: Task):  # noqa: ANN201
    from airflow.sdk import DAG, Asset
    from airflow.sdk import task as af_task
    from airflow.timetables.trigger import DeltaTriggerTimetable

    project_dir = _dbt_project_dir()
    backtest_ready = Asset(backtest_asset_uri(task))
    step = dt.timedelta(days=task.windows.step_days)
    with DAG(
        dag_id=periods_dag_id(task.name),
        description=f"{task.description or task.name}: one run per period (ds = its logical date): dbt "
                    f"ODS -> DIM -> DW -> ADS -> samples for ds, its export, then backtest-ready or forward crowds",
        # no data interval: a trigger timetable's logical date is run_after minus its interval, and a
        # backfill from D1 to D2 must build ds D1..D2, as the UI's dates say
        schedule=DeltaTriggerTimetable(step),
        start_date=period_start(task.samples.first),
        catchup=False,
        max_active_runs=1,
        render_template_as_native_obj=True,
        default_args=default_args(),
        params=dag_params(task, PERIOD_PARAMS),
        tags=["purchase-crowd", task.name, "warehouse"],
        doc_md=task_doc(task),
    ) as dag:

        @af_task.short_circuit
        @fails_for_good
        def plan(logical_date=None, params: dict | None = None) -> dict | bool:  # noqa: ANN001
            """Fail on a bad Param before any work; skip (saying why) a date that is neither labelled nor forward."""
            from ml.crowds import log_days
            from ml.warehouse.build import dbt_environment
            from ml.warehouse.subset import item_subset_path

            run_task, overrides = effective_task(task.name, params, PERIOD_PARAMS)
            paths = TaskPaths.of(run_task)
            ds = logical_date.date()
            first_day, last_day = log_days(paths.dataset_dir)
            mode = plan_period(run_task, ds, first_day, last_day)
            if mode.startswith("skip"):
                log.warning("%s %s", ds, mode)
                return False
            check_targets_in_log(run_task, paths.dataset_dir)
            if mode == "labelled" and (short := short_history(run_task, [ds], first_day)):
                log.warning("%s", short)
            engine = run_task.warehouse.engine
            if engine != task.warehouse.engine:
                raise ValueError(f"warehouse.engine: this DAG's dbt tasks run on {task.warehouse.engine} (the task "
                                 f"file's engine); set it there, not for one run, so every date is in one warehouse")
            paths.warehouse.parent.mkdir(parents=True, exist_ok=True)  # dbt-duckdb will not create it
            forward = ds if mode == "forward" else None
            env = dbt_environment(paths.dataset_dir, paths.warehouse_of(engine), item_subset_path(run_task, paths),
                                  engine)
            return {"ds": ds.isoformat(), "mode": mode, "overrides": overrides, "env": env,
                    "dbt_vars": run_task.dbt_vars(ds=[ds], forward=forward)}

        @af_task(pool=DUCKDB_POOL)
        @fails_for_good
        def dbt_build(planned: dict) -> dict:
            """The date's warehouse in one `dbt build`: every model, each followed by its tests, in dependency
            order (dbt's lines for each node are this task's log); ODS, DIM and DW only when the warehouse does
            not already hold them from this dataset and these settings (ml.warehouse.build.build_dates). A
            failing model or test fails the task, and the project's end hook removes the date's rows."""
            from ml.warehouse.build import build_dates
            from ml.warehouse.subset import item_subset_path

            run_task = load_task(task.name, planned["overrides"])
            paths = TaskPaths.of(run_task)
            engine = run_task.warehouse.engine
            report = build_dates(dataset_dir=paths.dataset_dir, warehouse=paths.warehouse_of(engine),
                                 dbt_vars=planned["dbt_vars"], project_dir=project_dir,
                                 item_subset=item_subset_path(run_task, paths), engine=engine)
            return {"models": report.n_models, "tests": report.n_tests, "seconds": round(report.seconds, 1)}

        @af_task(pool=DUCKDB_POOL)
        @fails_for_good
        def export(planned: dict) -> dict:
            from ml.warehouse.export import export_dates

            run_task = load_task(task.name, planned["overrides"])  # the plan's task: one decision per run
            paths = TaskPaths.of(run_task)
            engine = run_task.warehouse.engine
            e = export_dates(paths.warehouse_of(engine), paths.exports, [dt.date.fromisoformat(planned["ds"])],
                             fingerprint=run_task.warehouse_fingerprint(), dataset_dir=paths.dataset_dir,
                             engine=engine)[0]
            return {"ds": str(e.ds), "path": str(e.path), "rows": e.rows, "mode": planned["mode"],
                    "backtest": e.ds == run_task.backtest}

        @af_task.branch
        @fails_for_good
        def next_step(exported: dict) -> list[str]:
            if exported["mode"] == "forward":
                return ["forward_crowds"]
            return ["publish_backtest_ready"] if exported["backtest"] else []

        @af_task(outlets=[backtest_ready])
        @fails_for_good
        def publish_backtest_ready(planned: dict | None = None, outlet_events=None) -> None:  # noqa: ANN001
            """An asset event carrying the run's overrides: the training DAG is scheduled on it and trains on
            exports built with exactly these settings."""
            outlet_events[backtest_ready].extra = {"overrides": planned["overrides"], "ds": planned["ds"]}

        @af_task(pool=DUCKDB_POOL)
        @fails_for_good
        def forward_crowds(planned: dict) -> dict:
            """The coming period's crowds at ds, by the task's champion (none yet: nothing to score, said so)."""
            from ml.crowds import score_forward

            run_task = load_task(task.name, planned["overrides"])
            try:
                r = score_forward(run_task, TaskPaths.of(run_task), dt.date.fromisoformat(planned["ds"]))
            except ValueError as e:
                if "no champion" not in str(e):
                    raise
                log.warning("%s", e)
                return {"skipped": str(e)}
            return {"path": str(r.path), "rows": r.rows, "model": r.model}

        @af_task(pool=DUCKDB_POOL)
        @fails_for_good
        def crowd_outcomes(planned: dict) -> dict:
            """How the crowds published earlier did, each whose window the log now holds and that was not
            measured since it was published (ml.crowd_outcomes): to the crowds' folder, the warehouse table
            crowds.crowd_outcomes and the scoring model's MLflow run."""
            from ml.crowd_outcomes import measure_published

            run_task = load_task(task.name, planned["overrides"])
            done, pending = measure_published(run_task, TaskPaths.of(run_task), only_new=True)
            for o in done:
                log.info("%s %s: %d of the crowds' %d users bought (expected %.1f), lift %.2f", run_task.name,
                         o.feature_date, o.sums["buyers_in_crowd"], o.sums["crowd_size"],
                         o.sums["expected_buyers_in_crowd"], o.pooled["lift"])
                if o.population_differs:
                    log.warning("%s %s: %s", run_task.name, o.feature_date, o.population_differs)
            return {"measured": {str(o.feature_date): o.finite_figures() for o in done},
                    "pending": [str(p.feature_date) for p in pending]}

        p = plan()
        exported = export(p)
        if task.warehouse.airflow_tasks == "per_model":
            p >> _watched_dbt_build(task) >> exported
            exported.operator.trigger_rule = "none_failed"  # the watchers of upstream layers left out are skipped
        else:
            dbt_build(p) >> exported
        branch = next_step(exported)
        published = forward_crowds(p)
        branch >> [publish_backtest_ready(p), published]
        published >> crowd_outcomes(p)  # after the crowds: both write the warehouse's crowds schema
    return dag


# Tasks of the training DAG that wait on nothing the trainings make: a scheduler runs them while the models train,
# and so does the local runner (ml.local_airflow.side_by_side), in a process of their own
RUN_BESIDE = ("forward_features",)

# the training DAG's trainings at a time (its `train` task's max_active_tis_per_dag)
TRAININGS_AT_ONCE = 2


def training_threads() -> int | None:
    """The torch and OpenMP threads of one training task: its share of the cores this process may use, or None
    where OMP_NUM_THREADS decides (side_by_side's children, make test's workers, a deployment that sets it).
    Under a real executor each training is a process that would otherwise start a thread per core, and
    OpenMP's threads spin while they wait: DIN and DeepFM side by side on 2 cores, 300 steps each, took 30.7-32.5 s
    on two threads each against 15.3-19.7 s on one (bench/trainings_at_once.py, 2026-11-28)."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    from ml.train.distributed import share_of_cores

    return share_of_cores(TRAININGS_AT_ONCE)


def build_training_dag(task: Task):  # noqa: ANN201
    from airflow.sdk import DAG, Asset
    from airflow.sdk import task as af_task

    with DAG(
        dag_id=training_dag_id(task.name),
        description=f"{task.description or task.name}: train every model on the exports, backtest, move the "
                    f"champion, publish the forward crowds",
        schedule=[Asset(backtest_asset_uri(task))],
        start_date=period_start(task.samples.first),
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,  # a backfill of the periods DAG ends by training, with no click
        default_args=default_args(),
        params=dag_params(task, TRAINING_PARAMS),
        tags=["purchase-crowd", task.name, "training"],
        doc_md=task_doc(task),
    ) as dag:

        @af_task
        @fails_for_good
        def plan(params: dict | None = None, triggering_asset_events=None) -> dict:  # noqa: ANN001
            """The run's task: the overrides of the backfill run that announced the backtest, then this run's Params."""
            inherited: dict = {}
            for events in (triggering_asset_events or {}).values():
                for event in events:
                    inherited.update((event.extra or {}).get("overrides") or {})
            run_task, overrides = effective_task(task.name, params, TRAINING_PARAMS, inherited)
            return {"overrides": overrides, "models": run_task.model_names()}

        @af_task
        @fails_for_good
        def models_of(planned: dict) -> list[str]:
            """Longest first: the mapped trainings start in map_index order (a scheduler's order among equal
            priorities, and side_by_side's), so the longest does not start last and run alone at the end."""
            return longest_first(planned["models"])

        @af_task
        @fails_for_good
        def prepare(planned: dict) -> dict:
            """The task's training rows read and encoded once (ml.train.prepared): each model's task memory-maps
            them instead of reading its own copy."""
            from ml.train.prepared import prepare as prepare_rows

            run_task = load_task(task.name, planned["overrides"])
            data = prepare_rows(run_task, TaskPaths.of(run_task))
            return {"folder": str(data.folder), **data.rows}

        @af_task(max_active_tis_per_dag=TRAININGS_AT_ONCE)
        @fails_for_good
        def train(model: str, planned: dict) -> dict:
            """Retries resume from the model's last epoch checkpoint (same data and settings, same key). Each
            training takes its share of the cores (training_threads)."""
            from ml.train.pipeline import train_and_evaluate, train_config

            run_task = load_task(task.name, planned["overrides"])
            threads = training_threads()
            if run_task.training.processes > 1 and model in DEEP_MODELS:
                return _train_distributed(run_task, model, planned["overrides"], threads)
            if threads is not None:
                import torch

                os.environ["OMP_NUM_THREADS"] = str(threads)  # and any process the training starts
                torch.set_num_threads(threads)  # LightGBM, loaded beside torch, runs on its OpenMP runtime
            cfg = train_config(run_task, model, progress=False)
            o = train_and_evaluate(model, run_task, TaskPaths.of(run_task), train_cfg=cfg)
            # an XCom is JSON: a metric with no value (NaN, e.g. no untouched pair in the population) is left out
            return {"model": model, "run_id": o.run_id, "champion": o.champion,
                    **{k: v for k, v in o.summary.items() if math.isfinite(v)}}

        @af_task(pool=DUCKDB_POOL)
        @fails_for_good
        def forward_features(planned: dict) -> dict:
            """The forward date's features and export (the day after the log's last day, or the task's
            crowds.as_of): they need no model, so they are built while the models train, and `crowds` only
            scores them."""
            from ml.crowds import build_forward, forward_date

            run_task = load_task(task.name, planned["overrides"])
            paths = TaskPaths.of(run_task)
            as_of = forward_date(run_task, paths)
            return {"feature_date": str(as_of), "rows": build_forward(run_task, paths, as_of)}

        @af_task(pool=DUCKDB_POOL)
        @fails_for_good
        def crowds(results: list[dict], planned: dict, features: dict) -> dict:
            """The forward crowds of the features just built, by the champion the trainings left."""
            from ml.crowds import score_forward

            run_task = load_task(task.name, planned["overrides"])
            as_of = dt.date.fromisoformat(features["feature_date"])
            r = score_forward(run_task, TaskPaths.of(run_task), as_of)
            return {"path": str(r.path), "rows": r.rows, "model": r.model, "feature_date": str(as_of)}

        @af_task
        @fails_for_good
        def report(published: dict, planned: dict, run_id: str | None = None) -> str:
            """This run's self-contained HTML report (ml.report_html): the comparison, every model's curves
            against the floors and the ceiling, and the crowds just published."""
            from ml.outputs import checked_name
            from ml.report_html import write_report

            run_task = load_task(task.name, planned["overrides"])
            paths = TaskPaths.of(run_task)
            name = checked_name(re.sub(r"[^A-Za-z0-9_.-]", "_", run_id or "run").lstrip("._-") or "run", "run id")
            return str(write_report(run_task, paths, paths.reports / "runs" / f"{name}.html", run=run_id or ""))

        planned = plan()
        prepared = prepare(planned)
        models = models_of(planned)
        prepared >> models
        results = train.partial(planned=planned).expand(model=models)
        report(crowds(results, planned, forward_features(planned)), planned)
    return dag


def _train_distributed(task: Task, model: str, overrides: dict, cores: int | None) -> dict:
    """A deep model trained as training.processes ranks (torchrun, ml.train.distributed): the same `crowd
    train` a user runs, with the run's overrides, the ranks sharing `cores` (None: as launch decides); rank 0
    writes its result for this task's XCom."""
    import json
    import tempfile

    from ml.train.distributed import launch

    with tempfile.TemporaryDirectory(prefix="crowd-train-") as tmp:
        outcome = Path(tmp) / "outcome.json"
        argv = ["train", "--task", task.name, "--model", model, "--outcome", str(outcome),
                *[a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]]
        code = launch(argv, task.training.processes, cores)
        if code != 0 or not outcome.exists():
            raise RuntimeError(f"distributed training of {model} failed (exit code {code}): see the task log")
        result = json.loads(outcome.read_text())
    return {"model": model, "run_id": result["run_id"], "champion": result["champion"], **result["summary"]}


def build_task_dags(task: Task) -> list:
    return [build_periods_dag(task), build_training_dag(task)]


def build_dags_to_parse() -> list:
    """Every task file's pair of DAGs; but when Airflow parses the file to run one task instance (its parsing
    context names the DAG), that DAG alone. Each task process of an executor parses the DAG file: building
    every task file's pair there costs time per task instance, for the one DAG it needs."""
    from airflow.sdk import get_parsing_context

    _dbt_on_path()  # before anything imports cosmos (a task may ask for its watcher mode)
    wanted = get_parsing_context().dag_id
    dags = []
    for name in available_tasks():
        if wanted is None:
            try:
                task = load_task(name)
            except TaskError:  # its own DAGs are left out, the others' kept: dags/task_files.py says why
                continue
            dags += build_task_dags(task)
        elif wanted == periods_dag_id(name):
            dags.append(build_periods_dag(load_task(name)))
        elif wanted == training_dag_id(name):
            dags.append(build_training_dag(load_task(name)))
    return dags


def check_task_files() -> None:
    """Raise why each task file under tasks/ that does not validate has no DAGs (dags/task_files.py: Airflow lists
    it as that file's import error, while dags/crowd.py keeps the DAGs of every task file that validates). One
    file being edited (a copy with a typo) took every task's DAGs out of Airflow, and failed `crowd run-dags` of
    the others."""
    errors = []
    for name in available_tasks():
        try:
            load_task(name)
        except TaskError as e:
            errors.append(str(e))
    if errors:
        raise TaskError(f"{len(errors)} task file(s) under tasks/ do not validate, and have no DAGs: "
                        + "; ".join(errors))
