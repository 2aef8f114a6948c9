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
    # TMPDIR: a killed runner cannot remove its fork server's folder (pymp-*): it stays in the test's own
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])]),
           "TMPDIR": str(tmp_path)}
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
import multiprocessing as mp
import os
from multiprocessing import forkserver

from ml.local_airflow import _PRELOAD, _start_fork_server


def preloaded(out):
    import sys

    from mlflow.utils import requirements_utils

    from airflow.sdk.execution_time.supervisor import in_process_api_server

    out.send((requirements_utils._PACKAGES_TO_MODULES is not None, "airflow" in sys.modules,
              in_process_api_server().app._cadwyn_initialized))


if __name__ == "__main__":
    pids = []
    ctx = mp.get_context("forkserver")
    for home in ("a", "a", "b"):
        os.environ["AIRFLOW_HOME"] = os.path.abspath(home)
        if home == "b":  # the last one as side_by_side starts it, with what it preloads for its children
            ctx.set_forkserver_preload(_PRELOAD)
        _start_fork_server()
        pids.append(forkserver._forkserver._forkserver_pid)
    here, there = ctx.Pipe(duplex=False)
    child = ctx.Process(target=preloaded, args=(there,))
    child.start()
    print(*pids, *here.recv())
    child.join()
"""


def test_the_fork_server_preloads_its_children_and_starts_again_only_when_airflows_settings_change(tmp_path):
    """Its children run with the Airflow it preloaded, which read AIRFLOW_HOME and AIRFLOW__* when imported."""
    (tmp_path / "restarts.py").write_text(RESTARTS)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, str(tmp_path / "restarts.py")], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    first, same, other, *preloaded = done.stdout.split()
    assert first == same and other != first
    # its children find MLflow's package map, Airflow and the execution API's routes made before they forked
    assert preloaded == ["True", "True", "True"]


LEAVES = """
import multiprocessing as mp
import sys

from ml.local_airflow import leave_without_teardown


def run_task(how):
    lock = mp.get_context("spawn").RLock()  # as dbt's adapters hold one each
    if how == "leave_without_teardown":
        leave_without_teardown(0)
    import os
    os._exit(0)


if __name__ == "__main__":
    child = mp.get_context("forkserver").Process(target=run_task, args=(sys.argv[1],))  # as side_by_side
    child.start()
    child.join()
    print(child.exitcode)
"""


def test_a_child_leaving_without_teardown_leaves_no_named_semaphore_behind(tmp_path):
    """A side-by-side child leaves by os._exit, but first unlinks the named semaphores its libraries made (dbt's
    adapters' locks): else the run's resource tracker warns of them as leaked when the run ends."""
    (tmp_path / "leaves.py").write_text(LEAVES)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}

    def run(how: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(tmp_path / "leaves.py"), how], capture_output=True, text=True,
                              env=env, timeout=120)

    bare, leaving = run("os._exit"), run("leave_without_teardown")
    assert bare.stdout.split() == leaving.stdout.split() == ["0"]
    assert "leaked semaphore" in bare.stderr  # what the test would miss
    assert "leaked semaphore" not in leaving.stderr, leaving.stderr[-2000:]


def test_dag_tests_no_tasks_warning_is_dropped_only_while_an_instance_is_in_progress():
    """side_by_side's children run instances that dag.test sees as unrunnable: its once-a-second warning is waiting
    then, and dropped; with nothing queued or running it may be a real stall, and it stays."""
    import logging
    from types import SimpleNamespace

    from airflow.utils.state import TaskInstanceState

    from ml.local_airflow import _WaitingOnChildren

    def record(msg: str, *states) -> logging.LogRecord:
        tis = [SimpleNamespace(state=s) for s in states]  # (a set in dag.test)
        return logging.LogRecord("airflow.sdk.definitions.dag", logging.WARNING, __file__, 1, msg, (tis,), None)

    keep = _WaitingOnChildren().filter
    stall = "No tasks to run. unrunnable tasks: %s"
    assert not keep(record(stall, TaskInstanceState.RUNNING, None))
    assert not keep(record(stall, TaskInstanceState.QUEUED, None))
    assert keep(record(stall, None, TaskInstanceState.UP_FOR_RETRY))
    assert keep(record("Waiting for Human-in-the-loop input for tasks: %s", TaskInstanceState.RUNNING))


def test_a_task_process_killed_without_a_traceback_is_named_with_its_signal_in_the_failure(tmp_path):
    """A side-by-side child killed from outside (the kernel's OOM killer sends SIGKILL) writes no traceback:
    run-dags' one-line failure said "failed tasks: train" and nothing more; now it names the signal."""
    import logging
    import multiprocessing as mp

    from ml.local_airflow import death_line, exit_reason, last_error, log

    child = mp.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert exit_reason(child.exitcode).startswith("was killed by SIGKILL (out of memory?")
    assert exit_reason(-signal.SIGTERM) == "was killed by SIGTERM" and exit_reason(3) == "ended with exit code 3"

    run_log = tmp_path / "local_run.log"
    run_log.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'an earlier run'\n")
    start = run_log.stat().st_size
    handler = logging.FileHandler(run_log)  # as the runner's own log lines reach the run's log
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    try:
        log.error("%s", death_line("train[3]", child.exitcode))
    finally:
        log.removeHandler(handler)
        handler.close()
    said = last_error(run_log, start)
    assert said is not None and said.startswith("the process of train[3] was killed by SIGKILL (out of memory?")
    assert said.endswith("before its task ended") and last_error(run_log) == said
