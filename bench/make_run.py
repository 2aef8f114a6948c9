"""`make run` from a fresh clone, timed stage by stage, against issue 17's budget of 10 minutes on 2 cores.

    python bench/make_run.py                          # a clone of this checkout's HEAD, make run's defaults
    python bench/make_run.py --make-args RUN_EPOCHS=4 RUN_NEGATIVE_RATE=0.2 --keep

The clone is made in a scratch folder (removed afterwards unless --keep) from the committed HEAD: what a user
who clones the project gets, not the working tree. Its `make setup` runs first (the venv and the lock; pip's and
uv's download caches are this machine's, warm or not), then `make run` itself, whose output is kept in
make_run.log beside the clone. The stages come from that output: the generation's own line, and the line each
DAG run prints as it ends (ml.local_airflow). What is left of make run's time (the metadata DB's migration,
parsing the DAGs, the comparison table) is "other".
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 600.0
DAG_RUN = re.compile(r"^(?P<dag>\S+)\s+(?P<label>.+?)\s+(?P<state>success|failed|\S+)\s+(?P<seconds>[\d.]+) s$")
GENERATED = re.compile(r" in (?P<seconds>[\d.]+)s \([\d,]+ events/s\)$")


def timed(cmd: list[str], cwd: Path, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "a") as sink:
        done = subprocess.run(cmd, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit code {done.returncode}): see {log}")
    return time.perf_counter() - start


def stages(output: str) -> dict[str, float]:
    """The generation's seconds and the DAG runs' seconds (periods and training) from make run's output."""
    found = {"generate": 0.0, "periods": 0.0, "training": 0.0, "period_runs": 0}
    for line in output.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]|.*\r", "", line).strip()  # the progress bar's redraws
        if (m := GENERATED.search(line)) and line.startswith("wrote "):
            found["generate"] = float(m["seconds"])
        elif (m := DAG_RUN.match(line)) and m["dag"].endswith((".periods", ".training")):
            kind = "periods" if m["dag"].endswith(".periods") else "training"
            found[kind] += float(m["seconds"])
            found["period_runs"] += kind == "periods"
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-args", nargs="*", default=[], help="variables for make run (KEY=VALUE)")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its data, venv and log)")
    args = ap.parse_args()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    if dirty:
        print(f"note: the working tree has uncommitted changes; the clone is of HEAD {head} without them")
    scratch = Path(tempfile.mkdtemp(prefix="crowd-make-run-"))
    clone, log = scratch / "clone", scratch / "make_run.log"
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        print(f"HEAD {head}, clone {clone}, log {log}", flush=True)
        setup = timed(["make", "setup"], clone, log)
        print(f"make setup: {setup:.0f} s", flush=True)
        mark = log.stat().st_size
        run = timed(["make", "run", *args.make_args], clone, log)
        with open(log, errors="replace") as f:
            f.seek(mark)
            found = stages(f.read())
        other = run - found["generate"] - found["periods"] - found["training"]
        total = setup + run
        print(f"{'stage':<34} {'seconds':>8}")
        for name, seconds in (("setup (venv, lock, bytecode)", setup), ("generation", found["generate"]),
                              (f"periods DAG ({found['period_runs']} runs)", found["periods"]),
                              ("training DAG", found["training"]), ("other", other), ("total", total)):
            print(f"{name:<34} {seconds:>8.1f}")
        print(f"total / the 10-minute budget: {total / BUDGET_S:.2f} ({'within' if total <= BUDGET_S else 'over'})")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
