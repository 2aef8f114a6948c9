"""Airflow as deployed: `crowd airflow --db postgres` (what `make airflow DB=postgres` runs) starts a real
Postgres server from the pgserver wheel, migrates Airflow's metadata DB into it, and runs the scheduler with
the LocalExecutor and more than one worker slot. A backfill of the backtest's weekly run of the default task's
periods DAG (the warehouse and the other weeks' exports in place, as earlier runs leave them), created through
the REST API, runs there to success; the backtest week's asset event starts the training DAG, whose two models
train at the same time while every DuckDB writer (each week's dbt build and export, the crowds) runs alone
through the crowd_duckdb pool. Run alone with `pytest -m postgres`."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from airflow_helpers import free_port, wait_for

from ml.task import Task, TaskPaths

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
BIN = Path(sys.executable).parent
DUCKDB_POOL = "crowd_duckdb"


class Api:
    def __init__(self, base: str) -> None:
        self.base, self.token = base, None

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)


def _overlapping(intervals: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    ordered = sorted(intervals, key=lambda t: t[1])
    return [(a[0], b[0]) for a, b in itertools.pairwise(ordered) if b[1] < a[2]]


def test_a_rest_backfill_runs_on_postgres_with_the_local_executor_and_serial_duckdb_writes(
        tmp_path: Path, tiny_dataset: Path, tiny_build, tiny_exports: Path, task: Task) -> None:
    import shutil

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / task.dataset).symlink_to(tiny_dataset, target_is_directory=True)
    # the warehouse and the training and validation dates' exports as an earlier backfill would have left them;
    # the backfill builds the backtest's week (its ADS and samples, as a week after the first does)
    paths = TaskPaths.of(task, tmp_path)
    shutil.copytree(tiny_build[0], paths.warehouse.parent)
    for ds in set(task.labelled_dates) - {task.backtest}:
        shutil.copytree(tiny_exports / f"ds={ds}", paths.exports / f"ds={ds}")
    port = free_port()
    env = {**os.environ, "CROWD_DATA_DIR": str(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow")}
    log = tmp_path / "airflow.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([str(BIN / "crowd"), "airflow", "--db", "postgres", "--port", str(port)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    api = Api(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: "is ready" in log.read_text(), 300, "Airflow on Postgres:\n" + log.read_text()[-2000:])
        said = log.read_text()
        assert "metadata DB: Postgres at postgresql+psycopg2://" in said
        # crowd's own lines: pgserver's INFO (each command it runs, initdb's output) and platformdirs' warning
        # about XDG_RUNTIME_DIR were 50 lines before Airflow's
        assert "INFO pgserver" not in said and "RuntimeDirWarning" not in said, said[:3000]
        password = json.loads((tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())
        login = {"username": "admin", "password": password["admin"]}
        api.token = api.call("POST", "/auth/token", login)["access_token"]
        periods = f"{task.name}.periods"
        wait_for(lambda: periods in {d["dag_id"] for d in api.call("GET", "/api/v2/dags")["dags"]}, 180, "the DAGs")
        # the metadata lives in Postgres: the server the command started answers for it on its socket
        import psycopg2

        with (psycopg2.connect(host=str(tmp_path / "airflow" / "postgres"), user="postgres", dbname="airflow") as pg,
              pg.cursor() as cur):
            cur.execute("select count(*) from dag where dag_id = %s", (periods,))
            assert cur.fetchone()[0] == 1
        assert api.call("GET", f"/api/v2/pools/{DUCKDB_POOL}")["slots"] == 1

        api.call("PATCH", f"/api/v2/dags/{periods}", {"is_paused": False})
        # the runs' overrides reach the training the backtest week triggers: two models, one epoch
        overrides = {"models": ["lgbm_all_mixed", "dnn"], "training.epochs": 1, "crowds.size": 20}
        backfill = api.call("POST", "/api/v2/backfills", {
            "dag_id": periods, "from_date": f"{task.backtest}T00:00:00Z", "to_date": f"{task.backtest}T00:00:00Z",
            "run_backwards": False, "reprocess_behavior": "completed", "max_active_runs": 1,
            "dag_run_conf": {"overrides": overrides}})
        assert backfill["dag_id"] == periods

        def finished(dag_id: str, count: int, run_type: str | None = None) -> list[dict] | None:
            runs = [r for r in api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]
                    if run_type in (None, r["run_type"])]
            failed = [r["dag_run_id"] for r in runs if r["state"] == "failed"]
            assert not failed, (dag_id, failed, log.read_text()[-2000:])
            done = [r for r in runs if r["state"] == "success"]
            return done if len(done) >= count else None

        # (unpausing also starts a scheduled run for today, which plan skips: not the backfill's)
        weeks = wait_for(lambda: finished(periods, 1, "backfill"), 420, "the backfill's week")
        assert [r["logical_date"][:10] for r in weeks] == [str(task.backtest)]
        training = wait_for(lambda: finished(f"{task.name}.training", 1), 420, "the training the backtest triggered")

        tis = [t for dag_id, run in [*((periods, r) for r in weeks), (f"{task.name}.training", training[0])]
               for t in api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances?limit=500")
               ["task_instances"]]
        assert {t["executor"] or "" for t in tis if t["state"] == "success"} <= {"", "LocalExecutor"}
        pooled = [t for t in tis if t["pool"] == DUCKDB_POOL and t["start_date"] and t["end_date"]]
        assert {t["task_id"] for t in pooled} >= {"dbt_build", "export", "crowds"}
        pooled = [(f"{t['dag_run_id']} {t['task_id']}", t["start_date"], t["end_date"]) for t in pooled]
        assert not _overlapping(pooled), "two DuckDB writers ran at once"
        trainings = [(str(t["map_index"]), t["start_date"], t["end_date"]) for t in tis
                     if t["task_id"] == "train" and t["state"] == "success"]
        assert len(trainings) == 2 and _overlapping(trainings), f"the two models did not train at once: {trainings}"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: crowd stops Airflow, then its Postgres
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    # the Postgres server went with it
    assert not (tmp_path / "airflow" / "postgres" / "postmaster.pid").exists()
