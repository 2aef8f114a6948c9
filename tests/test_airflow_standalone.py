"""`crowd airflow` (what `make airflow` runs): a real Airflow (api-server, scheduler, dag-processor, triggerer)
over the project's DAGs, listening on 127.0.0.1 only, reachable with the admin password it shows, and stopped
whole by one Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from airflow_helpers import free_port, wait_for

from ml.local_airflow import COMPONENTS
from ml.task import available_tasks

BIN = Path(sys.executable).parent


def _get(url: str, token: str | None = None) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_crowd_airflow_serves_the_dags_with_the_shown_password_and_ctrl_c_stops_every_component(tmp_path):
    port = free_port()
    env = {**os.environ, "CROWD_DATA_DIR": str(tmp_path)}
    log = tmp_path / "standalone.log"  # a file, not a pipe: standalone's output would fill a pipe nobody reads
    with open(log, "w") as sink:
        # started with SIGINT ignored, as from a script's background job: Ctrl-C must still stop it
        proc = subprocess.Popen([str(BIN / "crowd"), "airflow", "--port", str(port)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    base = f"http://127.0.0.1:{port}"
    standalone_pgid, leftover, password = None, False, None
    try:
        health = wait_for(lambda: _get(f"{base}/api/v2/monitor/health"), 180, "the api-server")
        assert health["metadatabase"]["status"] == "healthy"
        wait_for(lambda: all(_get(f"{base}/api/v2/monitor/health")[c]["status"] == "healthy"
                              for c in ("scheduler", "triggerer", "dag_processor")), 120, "every component")
        # the four components are crowd's children, together in one process group that is not crowd's
        import psutil

        children = psutil.Process(proc.pid).children()
        commands = [" ".join(c.cmdline()) for c in children]  # (some rename themselves with setproctitle)
        assert len(children) == len(COMPONENTS), commands
        assert {n for n in COMPONENTS for c in commands if n in c.replace("_", "-")} == set(COMPONENTS), commands
        groups = {os.getpgid(c.pid) for c in children}
        assert len(groups) == 1 and groups != {os.getpgid(proc.pid)}
        standalone_pgid = groups.pop()
        # every socket any of them listens on is bound to 127.0.0.1 (no log server on all interfaces)
        listening = [conn.laddr for c in children for p in [c, *c.children(recursive=True)]
                     for conn in p.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN]
        assert listening and {a.ip for a in listening} == {"127.0.0.1"}, listening

        password_file = tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated"
        password = json.loads(password_file.read_text())["admin"]
        req = urllib.request.Request(f"{base}/auth/token", method="POST",
                                     data=json.dumps({"username": "admin", "password": password}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            token = json.load(resp)["access_token"]
        dags = wait_for(lambda: {d["dag_id"] for d in _get(f"{base}/api/v2/dags", token)["dags"]} or None,
                         120, "the DAGs to be parsed")
        assert dags == {f"{t}.{k}" for t in available_tasks() for k in ("periods", "training")}  # no examples
        assert _get(f"{base}/api/v2/importErrors", token)["total_entries"] == 0
        pools = {p["name"]: p["slots"] for p in _get(f"{base}/api/v2/pools", token)["pools"]}
        assert pools["crowd_duckdb"] == 1
        # crowd polls the same health once a second: on a busy machine this test can be done first, so it
        # waits for crowd to say so before Ctrl-C (the line is checked below)
        wait_for(lambda: "is ready" in log.read_text(), 60, "crowd's ready line:\n" + log.read_text()[-2000:])
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to crowd
        stopping = time.monotonic()
        try:
            proc.wait(timeout=90)
            stop_seconds = time.monotonic() - stopping
        finally:
            leftover = standalone_pgid is not None and _group_alive(standalone_pgid)
            if leftover:
                os.killpg(standalone_pgid, signal.SIGKILL)  # leave nothing behind, even on failure
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert standalone_pgid is not None and not leftover, "a component outlived Ctrl-C"
    # every component ended on SIGTERM and was reaped: no wait for the SIGKILL deadline
    assert "outlived" not in out and stop_seconds < 25, (stop_seconds, out[-2000:])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the port is still served"
    assert f"Airflow on http://127.0.0.1:{port} is ready. User 'admin', password '{password}'" in out
    # the API's tokens (one was issued above) are signed with the data directory's 64-byte key: PyJWT warned of
    # Airflow's own 16-byte one in the api-server's and scheduler's logs
    secret = tmp_path / "airflow" / "jwt_secret"
    assert len(bytes.fromhex(secret.read_text())) == 64 and secret.stat().st_mode & 0o077 == 0
    components = "".join(f.read_text() for f in (tmp_path / "airflow" / "logs" / "components").glob("*.log"))
    assert "HMAC key" not in components
    # Cosmos's plugin, imported by every component at its start, warned that the OpenLineage provider is missing
    # (airflow.env's logging configuration drops that line alone: ml/airflow_logging.py)
    assert "Openlineage" not in components and "Starting the scheduler" in components


def test_crowd_airflow_on_a_taken_port_fails_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run([str(BIN / "crowd"), "airflow", "--port", str(port)], capture_output=True, text=True,
                              env={**os.environ, "CROWD_DATA_DIR": str(tmp_path)}, timeout=60)
    assert done.returncode != 0
    assert f"cannot serve Airflow on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr


def test_crowd_airflow_whose_metadata_db_cannot_be_opened_fails_in_one_line_naming_the_step(tmp_path):
    """The metadata DB is prepared (migrated, the pool, the admin password) in one child process before any
    component starts: its failure names the step and the error, and keeps the child's whole output."""
    env = {**os.environ, "CROWD_DATA_DIR": str(tmp_path),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'no such folder' / 'airflow.db'}"}
    done = subprocess.run([str(BIN / "crowd"), "airflow", "--port", str(free_port())], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("crowd airflow: failed: airflow db migrate failed: ")
    assert "unable to open database file" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    output = tmp_path / "airflow" / "prepare.log"
    assert f"(the whole output: {output})" in done.stderr and "Traceback" in output.read_text()


def test_a_local_airflow_where_every_user_is_admin_needs_no_password_and_says_so(tmp_path):
    """`simple_auth_manager_all_admins` (Airflow's setting for a UI without a login) makes no password file:
    `crowd airflow` failed "creating the admin password failed: it said nothing"."""
    from ml.config import Paths
    from ml.local_airflow import admin_password_file, prepare_metadata_db

    paths = Paths(tmp_path)
    assert prepare_metadata_db(paths, {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True"}, admin_password=True)
    assert not admin_password_file(paths).exists()
    assert not prepare_metadata_db(paths, admin_password=True)  # with logins: the password is made, as before
    assert "admin" in json.loads(admin_password_file(paths).read_text())
