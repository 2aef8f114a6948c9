"""`crowd train --nproc 2`: torch DDP through torchrun (gloo on this CPU machine), each rank training on its
shard with half the batch, reaches the single process's validation AUC with the same number of optimiser
steps; rank 0 alone reports and writes the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml.task import Task, TaskPaths

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _train(data: Path, nproc: int, out: Path) -> dict:
    temp = data / f"temp-{nproc}"  # the command's temporary directory: empty again when it ends
    temp.mkdir()
    env = {**os.environ, "CROWD_DATA_DIR": str(data), "TMPDIR": str(temp)}
    done = subprocess.run([sys.executable, "-m", "ml.cli", "train", "--model", "dnn", "--epochs", "2", "--no-track",
                           "--nproc", str(nproc), "--outcome", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("dnn   ") == 1, done.stdout  # one report, from rank 0
    # torchrun's torchelastic_* folder went with the launch (torchinductor_USER is torch's cache, one reused)
    assert [p.name for p in temp.iterdir() if not p.name.startswith("torchinductor_")] == []
    return json.loads(out.read_text())


def test_two_processes_reach_the_single_process_auc_with_the_same_steps(
        tiny_exports: Path, tiny_dataset: Path, task: Task, tmp_path: Path) -> None:
    # the session's exports, read only, under a data directory of this test's own (models are written there)
    paths = TaskPaths.of(task, tmp_path)
    paths.base.mkdir(parents=True)
    paths.exports.symlink_to(tiny_exports, target_is_directory=True)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / task.dataset).symlink_to(tiny_dataset, target_is_directory=True)
    one = _train(tmp_path, 1, tmp_path / "one.json")
    two = _train(tmp_path, 2, tmp_path / "two.json")
    assert [e["steps"] for e in two["history"]] == [e["steps"] for e in one["history"]]
    assert one["history"][-1]["steps"] >= 2
    best = {k: max(e["valid_auc"] for e in o["history"]) for k, o in (("one", one), ("two", two))}
    assert abs(best["two"] - best["one"]) <= 0.005, best
    assert best["one"] > 0.6  # a model that learned something, not two equal coin flips
    assert (paths.models / "dnn" / "weights.pt").exists()
