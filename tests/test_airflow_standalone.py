"""`crowd airflow` (what `make airflow` runs): a real `airflow standalone` over the project's DAGs, reachable
with the admin password it shows, and stopped whole by one Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ml.task import available_tasks

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str | None = None) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def _wait_for(condition, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, KeyError, OSError):
            pass
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_crowd_airflow_serves_the_dags_with_the_shown_password_and_ctrl_c_stops_every_component(tmp_path):
    port = _free_port()
    env = {**os.environ, "CROWD_DATA_DIR": str(tmp_path)}
    log = tmp_path / "standalone.log"  # a file, not a pipe: standalone's output would fill a pipe nobody reads
    with open(log, "w") as sink:
        proc = subprocess.Popen([str(BIN / "crowd"), "airflow", "--port", str(port)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    standalone_pgid, leftover = None, False
    try:
        health = _wait_for(lambda: _get(f"{base}/api/v2/monitor/health"), 180, "the api-server")
        assert health["metadatabase"]["status"] == "healthy"
        _wait_for(lambda: all(_get(f"{base}/api/v2/monitor/health")[c]["status"] == "healthy"
                              for c in ("scheduler", "triggerer", "dag_processor")), 120, "every component")
        # the standalone leader is crowd's only child, alone in its own process group
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1
        standalone_pgid = int(children[0])
        assert os.getpgid(standalone_pgid) == standalone_pgid != os.getpgid(proc.pid)

        password_file = tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated"
        password = json.loads(password_file.read_text())["admin"]
        req = urllib.request.Request(f"{base}/auth/token", method="POST",
                                     data=json.dumps({"username": "admin", "password": password}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            token = json.load(resp)["access_token"]
        dags = _wait_for(lambda: {d["dag_id"] for d in _get(f"{base}/api/v2/dags", token)["dags"]} or None,
                         120, "the DAGs to be parsed")
        assert dags == {f"{t}.{k}" for t in available_tasks() for k in ("periods", "training")}  # no examples
        assert _get(f"{base}/api/v2/importErrors", token)["total_entries"] == 0
        pools = {p["name"]: p["slots"] for p in _get(f"{base}/api/v2/pools", token)["pools"]}
        assert pools["crowd_duckdb"] == 1
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to crowd
        try:
            proc.wait(timeout=90)
        finally:
            leftover = standalone_pgid is not None and _group_alive(standalone_pgid)
            if leftover:
                os.killpg(standalone_pgid, signal.SIGKILL)  # leave nothing behind, even on failure
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert standalone_pgid is not None and not leftover, "a component outlived Ctrl-C"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the port is still served"
    assert f"Airflow on http://127.0.0.1:{port}" in out and "Password for user 'admin'" in out
