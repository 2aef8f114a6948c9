"""Airflow as deployed: `crowd airflow --db postgres` (what `make airflow DB=postgres` runs) starts a real
Postgres server from the pgserver wheel, migrates Airflow's metadata DB into it, and runs the scheduler with
the LocalExecutor and more than one worker slot. A backfill of two weekly runs of the default task's periods
DAG, created through the REST API, runs there, its DuckDB writes one at a time through the crowd_duckdb pool.

The test follows the first week until a dozen warehouse tasks have finished, not to the end: a week under a
scheduler costs about 5 minutes here (86 tasks at about 4 s each), more than this suite can spend. Run alone
with `pytest -m postgres`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from airflow_helpers import free_port, wait_for

from ml.task import Task

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
    return [(a[0], b[0]) for a, b in zip(ordered, ordered[1:]) if b[1] < a[2]]


def test_a_rest_backfill_runs_on_postgres_with_the_local_executor_and_serial_duckdb_writes(
        tmp_path: Path, tiny_dataset: Path, task: Task) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / task.dataset).symlink_to(tiny_dataset, target_is_directory=True)
    port = free_port()
    env = {**os.environ, "CROWD_DATA_DIR": str(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow")}
    log = tmp_path / "airflow.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([str(BIN / "crowd"), "airflow", "--db", "postgres", "--port", str(port)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    api = Api(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: "is ready" in log.read_text(), 300, "Airflow on Postgres:\n" + log.read_text()[-2000:])
        assert "metadata DB: Postgres at postgresql+psycopg2://" in log.read_text()
        password = json.loads((tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())
        api.token = api.call("POST", "/auth/token", {"username": "admin", "password": password["admin"]})["access_token"]
        periods = f"{task.name}.periods"
        wait_for(lambda: periods in {d["dag_id"] for d in api.call("GET", "/api/v2/dags")["dags"]}, 180, "the DAGs")
        # the metadata lives in Postgres: the server the command started answers for it on its socket
        import psycopg2

        with psycopg2.connect(host=str(tmp_path / "airflow" / "postgres"), user="postgres", dbname="airflow") as pg:
            with pg.cursor() as cur:
                cur.execute("select count(*) from dag where dag_id = %s", (periods,))
                assert cur.fetchone()[0] == 1
        assert api.call("GET", f"/api/v2/pools/{DUCKDB_POOL}")["slots"] == 1

        api.call("PATCH", f"/api/v2/dags/{periods}", {"is_paused": False})
        first = task.validation[0]
        backfill = api.call("POST", "/api/v2/backfills", {
            "dag_id": periods, "from_date": f"{first}T00:00:00Z", "to_date": f"{task.backtest}T00:00:00Z",
            "run_backwards": False, "reprocess_behavior": "completed", "max_active_runs": 1})
        runs = wait_for(lambda: [r for r in api.call("GET", f"/api/v2/dags/{periods}/dagRuns")["dag_runs"]
                                  if r["run_type"] == "backfill"] or None, 60, "the backfill's runs")
        assert sorted(r["logical_date"][:10] for r in runs) == [str(first), str(task.backtest)]
        assert backfill["dag_id"] == periods

        first_run = next(r for r in runs if r["logical_date"].startswith(str(first)))
        url = f"/api/v2/dags/{periods}/dagRuns/{first_run['dag_run_id']}/taskInstances?limit=500"

        def finished_dbt_tasks() -> list[dict] | None:
            tis = api.call("GET", url)["task_instances"]
            failed = [t["task_id"] for t in tis if t["state"] in ("failed", "upstream_failed")]
            assert not failed, failed
            done = [t for t in tis if t["task_id"].startswith("warehouse.") and t["state"] == "success"]
            return tis if len(done) >= 12 else None

        tis = wait_for(finished_dbt_tasks, 420, "a dozen warehouse tasks of the first week")
        executors = {t["executor"] or "" for t in tis if t["state"] == "success"}
        pooled = [(t["task_id"], t["start_date"], t["end_date"]) for t in tis
                  if t["pool"] == DUCKDB_POOL and t["start_date"] and t["end_date"]]
        assert len(pooled) >= 12 and all(t["pool"] == DUCKDB_POOL for t in tis if t["task_id"].startswith("warehouse."))
        assert not _overlapping(pooled), "two DuckDB writers ran at once"
        assert executors <= {"", "LocalExecutor"}
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
