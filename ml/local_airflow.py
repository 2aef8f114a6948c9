"""A task's whole pipeline through its real DAGs, in this process: what `make run` does.

A migrated metadata DB (SQLite under DATA/airflow) and the DuckDB pool, then `dag.test()` of the task's
periods DAG for every labelled date (logical date = ds, as a backfill dates them), then of its training DAG
(models, champion, forward crowds). The same DAG objects, Cosmos tasks, dbt runs, retries and MLflow store as
under a scheduler; only the executor differs: tasks run one after another here, but for those a DAG lets run
several at a time (the trainings: side_by_side). The runs are in the metadata
DB afterwards, so `make airflow` shows them, and a UI backfill over the same dates finds them.

Airflow and dbt log every task at length; that goes to DATA/airflow/local_run.log and the terminal shows a
progress bar with one line per DAG run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
import json
import logging
import multiprocessing.util
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from ml.config import Paths
from ml.task import Task, TaskPaths

log = logging.getLogger(__name__)
DAGS_FOLDER = Path(__file__).resolve().parents[1] / "dags"
# the DAGs' file: run-dags and a task's process parse it alone (not dags/task_files.py, whose import error
# names another task file that does not validate)
DAGS_FILE = DAGS_FOLDER / "crowd.py"


SHARED_SETTINGS = DAGS_FOLDER.parent / "airflow.env"
DATABASES = ("sqlite", "postgres")


def shared_settings(path: Path = SHARED_SETTINGS) -> dict[str, str]:
    """The Airflow settings every deployment shares (airflow.env, also docker-compose.yaml's env_file)."""
    settings = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{n}: expected KEY=VALUE, got {line!r}")
        settings[key.strip()] = value.strip()
    return settings


def airflow_environment(paths: Paths) -> dict[str, str]:
    """The settings of a local Airflow over the project's DAGs; set before airflow is first imported."""
    return {
        **shared_settings(),
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__API_AUTH__JWT_SECRET": local_jwt_secret(paths),
        "CROWD_DATA_DIR": str(paths.root),
    }


def local_jwt_secret(paths: Paths) -> str:
    """The key a local Airflow signs its API tokens with (HS512), made once per data directory: Airflow's own,
    written into airflow.cfg, is 16 random bytes, under the 64 of RFC 7518 for HS512, and PyJWT warned of it in
    every component's log. 64 random bytes as hex, in an owner-only file under DATA/airflow, never committed."""
    path = paths.airflow_home / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(64))
    with contextlib.suppress(FileExistsError):
        os.link(partial, path)  # the first writer's key wins: processes starting together share one key
    partial.unlink()
    return path.read_text().strip()


@contextlib.contextmanager
def postgres_metadata_db(paths: Paths) -> Iterator[str]:
    """A real Postgres server (the pgserver wheel's binaries) for Airflow's metadata DB, its data under
    DATA/airflow/postgres, listening on a Unix socket in that folder only (no TCP port); yields the
    SQLAlchemy URL and stops the server when done. The database `airflow` is created on first use."""
    with warnings.catch_warnings():
        # pgserver keeps a lock file for all its servers in the user's runtime folder, which platformdirs, where
        # XDG_RUNTIME_DIR is not set (a container, a CI machine), finds under /tmp, saying so in a warning
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver

    pgdata = paths.airflow_home / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        if "(0 rows)" in server.psql("select 1 from pg_database where datname = 'airflow';"):
            server.psql("create database airflow;")
        yield f"postgresql+psycopg2://postgres@/airflow?host={pgdata}"
    finally:
        server.cleanup()


def prepare_metadata_db(paths: Paths, extra_env: dict[str, str] | None = None, admin_password: bool = False) -> bool:
    """`airflow db migrate` and the one-slot DuckDB pool, through Airflow's CLI as an operator would run them,
    and (admin_password) the simple auth manager's admin password, which it creates on first use. Returns
    whether the UI takes no login (`simple_auth_manager_all_admins`, Airflow's setting for a local UI: no
    password is made; `crowd airflow` failed saying "creating the admin password failed: it said nothing").

    All in one child process: each `airflow ...` process spends about 2 s of CPU importing Airflow and reading
    its settings before it does anything, more than migrating an up-to-date DB and setting a pool take."""
    from ml.orchestration import DUCKDB_POOL

    paths.airflow_home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **airflow_environment(paths), **(extra_env or {})}
    commands = [["db", "migrate"],
                ["pools", "set", DUCKDB_POOL, "1", "DuckDB takes one writer: dbt tasks and warehouse writes"]]
    password_file = admin_password_file(paths)
    done = subprocess.run([sys.executable, "-c", _AIRFLOW_CLI, json.dumps(commands),
                           str(password_file) if admin_password else ""], env=env, capture_output=True, text=True)
    output = paths.airflow_home / "prepare.log"  # a failure's, kept until a preparation succeeds
    no_login = _NO_LOGIN in done.stdout.splitlines()
    password_missing = admin_password and not no_login and not password_file.exists()
    if done.returncode == 0 and not password_missing:
        output.unlink(missing_ok=True)
        return no_login
    output.write_text(done.stdout + done.stderr)
    steps = [line.removeprefix(_STEP) for line in done.stdout.splitlines() if line.startswith(_STEP)]
    raise RuntimeError(f"{steps[-1] if steps else 'preparing the metadata DB'} failed: "
                       f"{_last_error(done.stderr)} (the whole output: {output})")


def _last_error(output: str) -> str:
    """What a Python process that failed said last: its last `Type: message` line (the exception a traceback
    ends with, before any notes after it), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Exit)\b", line)]
    return (errors or lines or ["it said nothing"])[-1]


def admin_password_file(paths: Paths) -> Path:
    """Where the simple auth manager keeps the generated admin password (created on first use, kept after)."""
    return paths.airflow_home / "simple_auth_manager_passwords.json.generated"


_STEP = "crowd step: "
_NO_LOGIN = "crowd: every user is admin"
# Airflow's CLI entry point run once per command in one process (argv[1]: the commands as JSON), then, with a
# file named in argv[2] that is not there yet, the auth manager, which writes the admin password into it; each
# step named on stdout before it runs, so that a failure says which
_AIRFLOW_CLI = f"""
import json, os, sys
from airflow.__main__ import main
commands, password_file = json.loads(sys.argv[1]), sys.argv[2]
for argv in commands:
    print({_STEP!r} + "airflow " + " ".join(argv[:2]), flush=True)
    sys.argv = ["airflow", *argv]
    main()
from airflow.configuration import conf
if password_file and conf.getboolean("core", "simple_auth_manager_all_admins", fallback=False):
    print({_NO_LOGIN!r}, flush=True)
elif password_file and not os.path.exists(password_file):
    print({_STEP!r} + "creating the admin password", flush=True)
    from airflow.api_fastapi.app import create_auth_manager
    create_auth_manager().init()
"""


@dataclass
class DagRunResult:
    dag_id: str
    label: str
    state: str
    seconds: float
    failed_tasks: list[str]
    skipped_plan: bool = False
    not_run: list[str] = dataclasses.field(default_factory=list)  # upstream_failed: downstream of a failure


@contextlib.contextmanager
def _output_to(log_file: Path) -> Iterator[object]:
    """Send everything written to stdout and stderr (Airflow's task logs, dbt's console) to log_file, at the
    file-descriptor level and at sys.stdout/sys.stderr; yield a stream on the real terminal for progress."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    with open(log_file, "a", buffering=1) as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved_out, 1), os.dup2(saved_err, 2)
            os.close(saved_out), os.close(saved_err)
            terminal.close()


def _result(run, dag_id: str, label: str, seconds: float) -> DagRunResult:  # noqa: ANN001
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    failed = sorted(t for t, s in states.items() if s == "failed")
    not_run = sorted(t for t, s in states.items() if s == "upstream_failed")
    return DagRunResult(dag_id, label, str(run.state), seconds, failed, states.get("export") == "skipped", not_run)


# what _fail_if_it_dies logs when a task's process ends before its task instance does
_DIED = re.compile(r"the process of \S+ (?:was killed by|ended with) .*? before its task ended")


def last_error(log_file: Path, start: int = 0) -> str | None:
    """The last exception a task raised in log_file after byte `start`: the line that ends its traceback
    (the exception and its message), or the runner's line for a task process that died without one (killed
    by the kernel for memory, say). A failed run then says why on the console, not only in a log of
    thousands of lines."""
    with open(log_file, "rb") as f:
        f.seek(start)
        lines = f.read().decode("utf-8", "replace").splitlines()
    found, in_traceback = None, False
    for line in lines:
        died = _DIED.search(line)
        if died:  # no traceback for a process killed from outside: the runner's own line says it
            found, in_traceback = died.group(0), False
        elif line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            found, in_traceback = line.strip(), False
    # a ValueError failed for good (ml.orchestration.fails_for_good) is named as itself
    return found.removeprefix("airflow.sdk.exceptions.AirflowFailException: ") if found else None


def consume_queued_asset_events(dag_id: str, run_id: str, before: dt.datetime) -> int:
    """The training run just made by dag.test stands for the asset-triggered run that the backtest's asset event
    queued for the same DAG: left queued, the first scheduler to start on this metadata DB (`make airflow` after
    `make run`) created that run and trained every model again. Consumed as a scheduler consumes them when it
    creates the run: the DAG's queue rows from before the run deleted, and the events not yet consumed by a run
    of this DAG recorded as this run's (the Airflow UI shows them on it). Returns the events recorded."""
    from airflow.models.asset import AssetDagRunQueue, AssetEvent
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        queued = session.scalars(select(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id,
                                                                 AssetDagRunQueue.created_at <= before)).all()
        if not queued:
            return 0
        assets = [q.asset_id for q in queued]
        events = session.scalars(
            select(AssetEvent)
            .where(AssetEvent.asset_id.in_(assets), AssetEvent.timestamp <= before,
                   ~AssetEvent.created_dagruns.any(DagRun.dag_id == dag_id))
            .order_by(AssetEvent.timestamp, AssetEvent.id)).all()
        run = session.scalars(select(DagRun).filter_by(dag_id=dag_id, run_id=run_id)).one()
        run.consumed_asset_events.extend(events)
        for row in queued:
            session.delete(row)
    log.info("%s: run %s consumed %d queued asset event(s); no scheduler will train again for them",
             dag_id, run_id, len(events))
    return len(events)


def record_start(dag_id: str, run_id: str, started: dt.datetime) -> None:
    """The run's start as a scheduler records it, when it started. dag.test() dates a run's start at its logical
    date: after `make run` the UI showed each period run started in 2013, lasting years (its grid and duration
    columns read "9d08:14:58"), where it took seconds."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
                        .values(start_date=started))


def run_pipeline(task: Task, overrides: dict | None = None, dates: list[dt.date] | None = None,
                 training: bool = True, quiet: bool = False) -> list[DagRunResult]:
    """The task's periods DAG for each date (default: every labelled date), then its training DAG, each run with
    `overrides` as its free-form Param. Stops at the first failed run, naming its tasks; a run that would do
    nothing (a date that is neither labelled nor forward, or a log that ends too early) fails before it starts."""
    from tqdm.auto import tqdm

    from ml.crowds import log_days
    from ml.orchestration import check_targets_in_log, period_start, periods_dag_id, plan_period, training_dag_id

    paths = TaskPaths.of(task)
    shared = paths.shared
    dates = list(task.labelled_dates if dates is None else dates)
    first_day, last_day = log_days(paths.dataset_dir)
    for ds in dates:
        mode = plan_period(task, ds, first_day, last_day)
        if mode.startswith("skip"):
            raise ValueError(f"--ds {ds}: nothing to build ({mode.removeprefix('skip: ')})")
    check_targets_in_log(task, paths.dataset_dir)
    os.environ.update(airflow_environment(shared))
    # every task's output goes to the run's log file, where dbt's colour codes were escape sequences on each line
    # (`crowd airflow` keeps them: its UI renders them); DBT_USE_COLORS=true brings them back
    os.environ.setdefault("DBT_USE_COLORS", "false")
    prepare_metadata_db(shared)
    log_file = shared.airflow_home / "local_run.log"
    conf = {"overrides": dict(overrides or {})}
    results: list[DagRunResult] = []
    with _output_to(log_file) as terminal:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(DAGS_FILE))
        if bag.import_errors:
            raise RuntimeError(f"the DAGs do not import: {bag.import_errors}")
        runs = [(periods_dag_id(task.name), f"period {ds}",
                 {"logical_date": period_start(ds), "run_after": period_start(ds), "run_conf": conf})
                for ds in dates]
        if training:
            runs.append((training_dag_id(task.name), "training", {"run_conf": conf}))
            _fork_server_context()  # its imports overlap the periods; the training DAG's first child finds it ready
        # on a terminal only (disable=None): `make run > run.log` keeps the per-run lines, not the bar's frames
        bar = tqdm(runs, desc="DAG runs", unit="run", file=terminal, disable=True if quiet else None)
        try:
            for dag_id, label, kwargs in bar:
                bar.set_postfix_str(f"{dag_id}, {label}")
                _collect_garbage()
                start = time.perf_counter()
                dag = bag.get_dag(dag_id)
                queued_before = dt.datetime.now(dt.UTC)
                log_start = log_file.stat().st_size
                with side_by_side(dag, log_file):
                    run = dag.test(**kwargs)
                record_start(dag_id, run.run_id, queued_before)
                if dag_id == training_dag_id(task.name):
                    consume_queued_asset_events(dag_id, run.run_id, queued_before)
                result = _result(run, dag_id, label, time.perf_counter() - start)
                results.append(result)
                bar.write(f"{dag_id:<32} {label:<18} {result.state:<8} {result.seconds:6.1f} s", file=terminal)
                if result.state != "success":
                    sys.stdout.flush(), sys.stderr.flush()
                    error = last_error(log_file, log_start)
                    raise RuntimeError(
                        f"{dag_id} ({label}) ended {result.state}; failed tasks: "
                        f"{', '.join(result.failed_tasks) or 'none'}" + (f" ({error})" if error else "")
                        + (f"; not run: {', '.join(result.not_run)}" if result.not_run else "")
                        + f"; task logs in {log_file}")
                if result.skipped_plan:
                    raise RuntimeError(f"{dag_id} ({label}) did nothing: its plan skipped the run; see {log_file}")
        finally:
            gc.unfreeze()
            gc.collect()
    return results


# what side_by_side's fork server imports once for all its children: the heavy modules that read no setting of
# this run at import, then Airflow and dag.test's in-process execution API (ml.airflow_preload), which read
# Airflow's settings: the fork server is started again when those change (_start_fork_server)
_PRELOAD = ["numpy", "pandas", "pyarrow.parquet", "sklearn.metrics", "torch", "lightgbm", "mlflow", "ml.train.pipeline",
            "fastapi", "sqlalchemy.orm", "cadwyn", "ml.airflow_preload"]
_forkserver_settings: dict[str, str] | None = None  # the Airflow settings the running fork server preloaded


def _airflow_settings() -> dict[str, str]:
    """What Airflow reads from the environment when first imported."""
    return {k: v for k, v in os.environ.items() if k in ("AIRFLOW_HOME", "AIRFLOW_CONFIG") or k.startswith("AIRFLOW__")}


def _fork_server_context():  # noqa: ANN202
    """multiprocessing's forkserver context, its server started with _PRELOAD."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    _start_fork_server()
    return ctx


def _start_fork_server() -> None:
    """The fork server, started before it is needed so that its imports (about 10 s on 2 cores, 17 s beside
    `prepare`) overlap other work instead of delaying the first child: run_pipeline starts it before the
    periods of a run that trains; started again if it preloaded Airflow with other settings than this run's
    (another AIRFLOW_HOME in the same process)."""
    global _forkserver_settings
    from multiprocessing import forkserver

    settings = _airflow_settings()
    if _forkserver_settings is not None and _forkserver_settings != settings:
        forkserver._forkserver._stop()  # (the stdlib's own way to stop it, used by its tests)
    forkserver.ensure_running()
    _forkserver_settings = settings


@contextlib.contextmanager
def side_by_side(dag, log_file: Path) -> Iterator[None]:  # noqa: ANN001
    """dag.test() runs one task instance at a time. Here the instances of a task whose max_active_tis_per_dag is
    above 1 (the training DAG's `train`: two models at a time, as under a scheduler) run that many at a time,
    each in a process of its own, with the cores shared among them; a task of ml.orchestration.RUN_BESIDE (the
    forward features, which wait on no model) starts in a process of its own as soon as it is scheduled, beside
    whatever dag.test runs next (`prepare`, then the trainings); every other task runs as dag.test runs it.

    Each such instance is handed to a child of a fork server (multiprocessing's forkserver, started clean: no
    thread, no OpenMP pool, no CUDA context of this process is copied into it), which sets this run's
    environment, parses the DAG and runs the instance as dag.test would (its state, XComs and log lines the
    same). dag.test meanwhile waits on the instance's state in the metadata DB; a child that dies without
    recording an end (killed, out of memory) has its instance marked failed, so the run ends. The children
    write their task logs to log_file."""
    from multiprocessing.connection import wait

    import airflow.sdk.definitions.dag as dag_module
    from airflow.utils.state import TaskInstanceState

    from ml.orchestration import RUN_BESIDE

    limits = {t.task_id: t.max_active_tis_per_dag for t in dag.tasks if (t.max_active_tis_per_dag or 0) > 1}
    beside = [t.task_id for t in dag.tasks if t.task_id in RUN_BESIDE]
    limits |= dict.fromkeys(beside, 1)
    if not limits:
        yield
        return
    serial = dag_module._run_task
    ctx = _fork_server_context()
    running: dict[str, list] = {task_id: [] for task_id in limits}
    alive_r, alive_w = ctx.Pipe(duplex=False)  # the children's way to see this process end (leave_when_orphaned)
    watchers: list[threading.Thread] = []

    def run_task(*, ti, task, run_triggerer: bool = False):  # noqa: ANN001, ANN202
        # what a scheduler would have started by now, whatever order dag.test takes the others in: a task that
        # waits on nothing the others make (the training DAG's forward features), in a process of its own
        for task_id in beside:
            waiting = _task_instance({"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": task_id},
                                     state=TaskInstanceState.SCHEDULED)
            if waiting is not None:
                start(waiting, 1, run_triggerer)
        if task.task_id in beside:  # started above, when it was scheduled
            return None
        if task.task_id not in limits:
            return serial(ti=ti, task=task, run_triggerer=run_triggerer)
        slots = limits[task.task_id]
        alive = running[task.task_id]
        while len(alive) >= slots:
            wait([proc.sentinel for proc in alive])
            alive[:] = [proc for proc in alive if proc.is_alive()]
        # dag.test hands the scheduled instances out in a set's order; a scheduler takes them by map_index
        ti = _first_scheduled(ti)
        if ti is None:  # every scheduled instance of the task is taken already
            return None
        start(ti, slots, run_triggerer)
        return None

    def start(ti, slots: int, run_triggerer: bool) -> None:  # noqa: ANN001
        ti.set_state(TaskInstanceState.QUEUED)  # taken: the loop must not hand it out again
        key = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index}
        threads = max(1, _torch_threads() // slots)
        proc = ctx.Process(target=_run_in_child,
                           args=(key, dict(os.environ), threads, run_triggerer, log_file, alive_r),
                           name=f"{ti.task_id}[{ti.map_index}]")
        proc.start()
        log.info("side by side: %s[%s] started in process %s", ti.task_id, ti.map_index, proc.pid)
        running[ti.task_id].append(proc)
        watcher = threading.Thread(target=_fail_if_it_dies, args=(proc, key), daemon=True)
        watcher.start()
        watchers.append(watcher)

    dag_module._run_task = run_task
    waiting = _WaitingOnChildren()
    dag_module.log.addFilter(waiting)
    try:
        yield
    finally:
        dag_module._run_task = serial
        dag_module.log.removeFilter(waiting)
        for watcher in watchers:  # the run is over once every instance has an end state: its child too
            watcher.join()
        alive_r.close(), alive_w.close()


class _WaitingOnChildren(logging.Filter):
    """dag.test warns "No tasks to run. unrunnable tasks: ..." every second in which nothing is scheduled and
    some instance is unfinished: under side_by_side, while its children run instances (queued or running), that
    is waiting, not a stall, and it filled the task log. The warning stays when none of them is in progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        from airflow.utils.state import TaskInstanceState

        if not str(record.msg).startswith("No tasks to run") or not record.args:
            return True
        unfinished = record.args[0] if isinstance(record.args, tuple) else ()
        in_progress = (TaskInstanceState.QUEUED, TaskInstanceState.RUNNING)
        return not any(getattr(ti, "state", None) in in_progress for ti in unfinished)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _run_in_child(key: dict, environment: dict[str, str], threads: int, run_triggerer: bool, log_file: Path,
                  runner: Connection) -> None:
    """A task instance of side_by_side, in its child: its output to the run's log, this run's environment, its
    share of the cores (torch's threads; LightGBM, loaded beside torch, runs on torch's OpenMP runtime and so
    takes the same count; OMP_NUM_THREADS for any process the task starts), the DAG as the executor's worker
    parses it, then dag.test's own way of running an instance."""
    leave_when_orphaned(runner)
    sink = open(log_file, "a", buffering=1)  # noqa: SIM115 (the child's output until it exits)
    os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
    sys.stdout = sys.stderr = sink
    os.environ.clear()
    os.environ.update(environment)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = key["dag_id"]  # only this DAG is built (build_dags_to_parse)
    import torch

    torch.set_num_threads(threads)
    import airflow.sdk.definitions.dag as dag_module
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FILE))
    dag = bag.get_dag(key["dag_id"])
    if dag is None:
        raise RuntimeError(f"{key['dag_id']} is not in {DAGS_FILE}: {bag.import_errors}")
    dag_module._run_task(ti=_task_instance(key), task=dag.task_dict[key["task_id"]], run_triggerer=run_triggerer)
    # the instance's end is recorded: leave without the interpreter's teardown (about 2 s of other libraries'
    # exit handlers and threads), which would hold the slot
    sink.flush()
    leave_without_teardown(0)


def leave_without_teardown(code: int) -> None:
    """os._exit, after multiprocessing's own finalizers only (what an ordinary exit runs first). A lock of the
    spawn or forkserver context is a named semaphore that its finalizer unlinks: in a side-by-side child, dbt's
    manifest and adapter hold one each (the forward features' build) and tqdm's write lock another (a training),
    and left behind they made the resource tracker warn at the end of every `make run` ("There appear to be 8
    leaked semaphore objects to clean up at shutdown")."""
    with contextlib.suppress(Exception):  # (a private function of the standard library: if it goes, leave anyway)
        multiprocessing.util._run_finalizers(0)
    os._exit(code)


def leave_when_orphaned(runner: Connection) -> threading.Thread:
    """A child of side_by_side ends when the runner does (killed, say, by a CI timeout or `kill`): `runner` is
    the read end of a pipe whose only write end the runner holds, so it reads EOF once the runner is gone.
    Without this the child's training would go on, an orphan holding cores and memory, after the run was
    stopped (its fork server stays too: it leaves only after its last child). Ctrl-C reaches the whole process
    group and ends the children anyway."""

    def watch() -> None:
        try:
            while True:
                runner.recv()
        except (EOFError, OSError):
            os._exit(1)

    watcher = threading.Thread(target=watch, name="leave-when-orphaned", daemon=True)
    watcher.start()
    return watcher


def _task_instance(key: dict, **more: object):  # noqa: ANN202
    """The task instance matching key and more (detached from the session), the lowest map_index where several
    match; None where none does."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(select(TaskInstance).filter_by(**key, **more).order_by(TaskInstance.map_index)
                             .limit(1)).first()
        if ti is not None:
            session.expunge(ti)
    return ti


def _first_scheduled(ti):  # noqa: ANN001, ANN202
    """The scheduled instance of ti's task in ti's run with the lowest map_index (ti's own if it is not mapped):
    the order a scheduler queues a mapped task's instances of equal priority."""
    from airflow.utils.state import TaskInstanceState

    return _task_instance({"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id},
                          state=TaskInstanceState.SCHEDULED)


def _fail_if_it_dies(proc, key: dict) -> None:  # noqa: ANN001
    from airflow.utils.state import State, TaskInstanceState

    proc.join()
    if proc.exitcode == 0:
        return
    ti = _task_instance(key)
    if ti.state not in State.finished and ti.state != TaskInstanceState.UP_FOR_RETRY:
        log.error("%s", death_line(f"{key['task_id']}[{key['map_index']}]", proc.exitcode))
        ti.set_state(TaskInstanceState.FAILED)


def death_line(task: str, exitcode: int) -> str:
    """The runner's line for a task process that ended before its task instance did (last_error finds it)."""
    return f"the process of {task} {exit_reason(exitcode)} before its task ended: marked failed"


def exit_reason(exitcode: int) -> str:
    """How a process ended, for a person: a negative exit code is the signal that killed it, and SIGKILL from
    nobody in the project is most often the kernel's out-of-memory killer, which leaves no traceback."""
    if exitcode >= 0:
        return f"ended with exit code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    hint = " (out of memory? the kernel's OOM killer sends it, as does kill -9)" if -exitcode == signal.SIGKILL else ""
    return f"was killed by {name}{hint}"


def _collect_garbage() -> None:
    """Between DAG runs: what the dbt tasks froze (ml.orchestration.freeze_surviving_objects) is released and
    collected once, so that a long series of runs in one process does not keep its garbage."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


# The components `airflow standalone` would start, each a process of its own. Not standalone itself: its
# scheduler and triggerer start log servers bound to every interface (ports 8793 and 8794, no host setting),
# and a local executor's logs are files the api-server reads directly.
COMPONENTS: dict[str, list[str]] = {
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
    "api-server": ["api-server"],
}


def standalone(paths: Paths | None = None, host: str = "127.0.0.1", port: int = 8080,
               stop_timeout: float = 30.0, ready_timeout: float = 300.0, db: str = "sqlite") -> int:
    """A local Airflow over the project's DAGs (what `make airflow` does): api-server on host:port, scheduler
    (LocalExecutor), dag-processor and triggerer, in one process group of their own. db: the metadata DB,
    SQLite under DATA/airflow, or a real Postgres server started here (postgres_metadata_db), as deployed.

    The group is kept out of the terminal's signals and stopped as a whole (SIGTERM, then SIGKILL after
    stop_timeout): a Ctrl-C that reached only some components would leave the others holding the port and the
    SQLite DB. A component that exits stops the rest, and the command fails naming it and its log."""
    if db not in DATABASES:
        raise ValueError(f"--db: expected one of {', '.join(DATABASES)}, got {db!r}")
    paths = paths or Paths.default()
    _require_free_port(host, port)
    if db == "sqlite":
        return _standalone(paths, host, port, stop_timeout, ready_timeout, {})
    with postgres_metadata_db(paths) as url:
        log.info("Airflow's metadata DB: Postgres at %s", url)
        return _standalone(paths, host, port, stop_timeout, ready_timeout,
                           {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url})


def _standalone(paths: Paths, host: str, port: int, stop_timeout: float, ready_timeout: float,
                db_env: dict[str, str]) -> int:
    no_login = prepare_metadata_db(paths, db_env, admin_password=True)
    bin_dir = Path(sys.executable).parent  # Cosmos needs `dbt` on PATH when the DAG file is parsed
    env = {**os.environ, **airflow_environment(paths), **db_env,
           "AIRFLOW__API__HOST": host, "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
           # a worker process per core and at least two, not Airflow's 32, plus one for the DuckDB pool's single
           # writer: the dbt tasks share it anyway, and the training DAG's forward features (a dbt build) run
           # beside the trainings, as side_by_side runs them. With a slot per core only, that build took one of
           # the two trainings' slots and the second training waited for it (a Postgres test saw 30 s)
           "AIRFLOW__CORE__PARALLELISM": str(max(2, os.cpu_count() or 2) + 1),
           # task processes report to the api-server's execution API, which defaults to localhost:8080
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{host}:{port}/execution/",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    password_file = admin_password_file(paths)
    logs = paths.airflow_home / "logs" / "components"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too, explicitly: a process started from a non-interactive shell's background job inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for name, args in COMPONENTS.items():
            with open(logs / f"{name}.log", "ab") as sink:
                # the first component leads a new process group in this session (not the terminal's foreground
                # group, so Ctrl-C reaches only this process); the others join it
                group = 0 if not procs else next(iter(procs.values())).pid
                procs[name] = subprocess.Popen([str(bin_dir / "airflow"), *args], env=env, stdin=subprocess.DEVNULL,
                                               stdout=sink, stderr=subprocess.STDOUT, process_group=group)
        leader = next(iter(procs.values()))
        log.info("starting Airflow on http://%s:%d (process group %d; component logs in %s)", host, port,
                 leader.pid, logs)
        ready = False
        deadline = time.monotonic() + ready_timeout
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    log.error("airflow %s exited with code %s; its log: %s", name, proc.returncode,
                              logs / f"{name}.log")
                    return 1
            if not ready and _healthy(host, port):
                ready = True
                # the command's own result line (`crowd airflow`), for the person at the terminal
                login = ("No login: every user is admin (simple_auth_manager_all_admins)" if no_login else
                         f"User 'admin', password {json.loads(password_file.read_text())['admin']!r} (in "
                         f"{password_file})")
                print(f"Airflow on http://{host}:{port} is ready. {login}. Ctrl-C stops it.", flush=True)  # noqa: T201
            elif not ready and time.monotonic() > deadline:
                log.error("Airflow was not healthy after %.0f s; component logs in %s", ready_timeout, logs)
                return 1
            time.sleep(1)
    except KeyboardInterrupt:
        log.info("stopping Airflow")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if procs:
            _stop_group(procs, stop_timeout)


def _require_free_port(host: str, port: int) -> None:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise RuntimeError(f"cannot serve Airflow on {host}:{port}: {e.strerror} (choose another --port)") from None


def _healthy(host: str, port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/api/v2/monitor/health", timeout=2) as resp:
            health = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return all((health.get(c) or {}).get("status") == "healthy"
               for c in ("metadatabase", "scheduler", "triggerer", "dag_processor"))


def _stop_group(procs: dict[str, subprocess.Popen], timeout: float) -> None:
    """SIGTERM to the whole group (led by the first component), SIGKILL to what is left after timeout; returns
    once the group is gone. Every component is reaped as it exits: a zombie would keep the group alive. What
    outlives SIGTERM is named (the components still running, or their children)."""
    pgid = next(iter(procs.values())).pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in procs.values():
                proc.poll()
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        running = [name for name, proc in procs.items() if proc.poll() is None] or ["their children"]
        log.warning("Airflow's process group %d outlived %s after %.0f s (%s); killing it", pgid, sig.name, timeout,
                    ", ".join(running))
