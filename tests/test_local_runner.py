"""The local runner's side-by-side children (ml.local_airflow.side_by_side) as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RUNNER = """
import multiprocessing as mp
import sys
import time

import sleeper

if __name__ == "__main__":
    ctx = mp.get_context("forkserver")  # as side_by_side starts its children
    alive_r, alive_w = ctx.Pipe(duplex=False)
    child = ctx.Process(target=sleeper.train, args=(alive_r,))
    child.start()
    print(child.pid, flush=True)
    time.sleep(120)
"""

SLEEPER = """
import time

from ml.local_airflow import leave_when_orphaned


def train(runner):
    leave_when_orphaned(runner)
    time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has ended (nobody has reaped it yet)


def test_a_child_running_a_task_ends_when_the_runner_is_killed(tmp_path):
    (tmp_path / "runner.py").write_text(RUNNER)
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])}
    runner = subprocess.Popen([sys.executable, str(tmp_path / "runner.py")], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        child = int(runner.stdout.readline())
        assert _running(child)
        time.sleep(0.5)
        assert _running(child)  # an orphan's watch is not a timer: it stays while its runner does
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        deadline = time.monotonic() + 20
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(child)
    finally:
        runner.kill()


RESTARTS = """
import os
from multiprocessing import forkserver

from ml.local_airflow import _start_fork_server

if __name__ == "__main__":
    pids = []
    for home in ("a", "a", "b"):
        os.environ["AIRFLOW_HOME"] = home
        _start_fork_server()
        pids.append(forkserver._forkserver._forkserver_pid)
    print(*pids)
"""


def test_the_fork_server_starts_again_only_when_airflows_settings_change(tmp_path):
    """Its children run with the Airflow it preloaded, which read AIRFLOW_HOME and AIRFLOW__* when imported."""
    (tmp_path / "restarts.py").write_text(RESTARTS)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, str(tmp_path / "restarts.py")], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    first, same, other = map(int, done.stdout.split())
    assert first == same and other != first
