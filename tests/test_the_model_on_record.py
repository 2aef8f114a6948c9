"""The model on record is the one trained: per-run model folders, runs of killed processes marked FAILED, the
champion tied to the data it was trained on, and `crowd score` saying which model and data it used."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ml.cli import main
from ml.crowds import last_log_day
from ml.tracking import PROCESS_TAG, abandoned_runs_failed, comparison_key, configure, process_alive, process_token
from ml.train.gbdt import GbdtConfig
from ml.train.pipeline import sweep_abandoned_run_folders, train_and_evaluate
from ml.warehouse.export import export_dir

KILLED_MID_RUN = """
import os, sys
from ml.task import load_task, TaskPaths
from ml.tracking import PROCESS_TAG, configure, process_token
import mlflow
import numpy as np
import pandas as pd
configure(TaskPaths.of(load_task("tmall-2013")))
with mlflow.start_run(run_name="killed", tags={PROCESS_TAG: process_token()}) as run:
    print(run.info.run_id, flush=True)
    os.kill(os.getpid(), 9)  # SIGKILL: no handler, no context manager closes the run
"""


def test_a_run_whose_process_was_killed_is_marked_failed_on_the_next_start(task_paths):
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_RUN], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert killed.returncode == -9, killed.stderr
    run_id = killed.stdout.split()[0]
    experiment = configure(task_paths)
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"  # stuck, as a kill leaves it
    other_host = client.create_run(experiment, tags={PROCESS_TAG: "some-other-host:1:1"}).info.run_id
    with mlflow.start_run(tags={PROCESS_TAG: process_token()}) as alive:  # this process's own open run
        failed = abandoned_runs_failed(experiment)
        assert run_id in failed and alive.info.run_id not in failed and other_host not in failed
    assert client.get_run(run_id).info.status == "FAILED"
    assert client.get_run(other_host).info.status == "RUNNING"  # another host's process: this one cannot tell
    client.set_terminated(other_host)


def test_a_reused_pid_is_not_taken_for_the_process_that_died():
    host, pid, started = process_token().rsplit(":", 2)
    assert process_alive(process_token())
    assert not process_alive(f"{host}:{pid}:{int(started) - 5000}")  # same pid, started at another time


def _train_lgbm(task, task_paths, leaves: int, out: dict) -> None:
    try:
        out[leaves] = train_and_evaluate("lgbm_all_mixed", task, task_paths,
                                         gbdt_cfg=GbdtConfig(mode="all_mixed", num_leaves=leaves, seed=1))
    except BaseException as e:  # noqa: BLE001  (raised again by the fixture, in the test's own thread)
        out.setdefault("errors", []).append(e)


@pytest.fixture(scope="module")
def concurrent(tiny_exports, tiny_dataset, task, task_paths) -> dict:
    """Two trainings of one model at once, with different settings, in one process (as a DAG's parallel
    tasks would be in separate ones)."""
    out: dict = {}
    threads = [threading.Thread(target=_train_lgbm, args=(task, task_paths, leaves, out)) for leaves in (4, 31)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    if out.get("errors"):
        raise out["errors"][0]
    assert set(out) == {4, 31}
    return out


def test_two_trainings_of_one_model_at_once_each_log_their_own_model(concurrent, task_paths, tmp_path):
    configure(task_paths)
    for leaves, outcome in concurrent.items():
        run = MlflowClient().get_run(outcome.run_id)
        assert run.data.params["gbdt_num_leaves"] == str(leaves)
        bundle = Path(mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="bundle",
                                                          dst_path=str(tmp_path / str(leaves))))
        assert json.loads((bundle / "config.json").read_text())["run_id"] == outcome.run_id
        booster = (bundle / "lgbm" / "all.txt").read_text()
        assert f"[num_leaves: {leaves}]" in booster  # the booster trained with this run's settings
        assert run.info.end_time - run.info.start_time >= 1000 * outcome.train_seconds  # open the whole time
    # the run folders are gone once published; the local bundle is one of the two, whole
    assert not list((task_paths.models / "runs").glob("lgbm_all_mixed-*"))
    local = json.loads((task_paths.models / "lgbm_all_mixed" / "config.json").read_text())
    assert local["run_id"] in {o.run_id for o in concurrent.values()}


TRAINING_TASK = """
import json, os
from ml.orchestration import build_training_dag
from ml.task import load_task
train = build_training_dag(load_task("tmall-2013")).task_dict["train"].python_callable
result = train(model="lgbm_all_mixed", planned={"overrides": {}, "models": ["lgbm_all_mixed"]})
print(json.dumps({"run_id": result["run_id"], "omp": os.environ.get("OMP_NUM_THREADS")}))
"""


def test_a_training_task_under_an_executor_takes_its_share_of_the_cores(concurrent, task_paths):
    """An executor's task process starts with no OMP_NUM_THREADS: left at a thread per core, two trainings at
    once spin against each other (ml.orchestration.training_threads)."""
    from ml.orchestration import TRAININGS_AT_ONCE

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", TRAINING_TASK], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    share = max(1, len(os.sched_getaffinity(0)) // TRAININGS_AT_ONCE)
    assert out["omp"] == str(share)  # for any process the training starts too
    configure(task_paths)
    assert MlflowClient().get_run(out["run_id"]).data.metrics["threads"] == share


def test_a_killed_trainings_folder_is_swept_by_the_next_one(task_paths):
    folder = task_paths.models / "runs" / "dnn-killed"
    (folder / "bundle").mkdir(parents=True)
    host, _, _ = process_token().rsplit(":", 2)
    (folder / "owner").write_text(f"{host}:{2 ** 22 + 7}:1")  # no such process
    mine = task_paths.models / "runs" / "dnn-mine"
    (mine / "bundle").mkdir(parents=True)
    (mine / "owner").write_text(process_token())
    assert sweep_abandoned_run_folders(task_paths) == [folder]
    assert mine.exists() and not folder.exists()
    mine.joinpath("owner").unlink()
    mine.joinpath("bundle").rmdir()
    mine.rmdir()


def test_new_data_is_served_by_the_champion_of_the_same_features_and_other_dbt_models_are_refused(
        concurrent, task, task_paths, tmp_path, capsys):
    """The champion is keyed to the warehouse build, and a build of new data (a log loaded again with more days)
    has none until a model is trained on it; meanwhile the latest champion of the same features and settings
    serves its crowds, saying so (they were held back until a training: the DAG's scheduled crowds of a growing
    log never came). Features of other dbt models are refused; a model named with --model scores them, and the
    output says so."""
    out = tmp_path / "crowd.parquet"
    assert main(["score", "--out", str(out)]) == 0  # the champion, on the data it was trained on
    printed = capsys.readouterr().out
    as_of = last_log_day(task_paths.dataset_dir) + dt.timedelta(days=1)
    schema_path = export_dir(task_paths.exports, as_of) / "schema.json"
    schema = json.loads(schema_path.read_text())
    assert f"data: dataset {task.dataset}, build {schema['build']}" in printed
    assert f"trained on build {schema['build']}" in printed and "NOT the build" not in printed
    assert "run " in printed and "version " in printed
    assert comparison_key(task, task_paths.exports) == task.comparison_fingerprint(schema["build"])
    original = schema_path.read_text()
    try:
        schema_path.write_text(json.dumps({**schema, "build": "newdata00000"}))
        assert main(["score", "--no-build", "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "build newdata00000" in printed and "(NOT the build the model was trained on)" in printed
        assert (f"was trained on warehouse build {schema['build']}, the features of {as_of} are of build "
                "newdata00000" in printed and "it serves until a model is trained on this data" in printed)
        served = pd.read_parquet(out)
        assert set(served["data_build"]) == {"newdata00000"} and set(served["model_build"]) == {schema["build"]}
        schema_path.write_text(json.dumps({**schema, "build": "newdata00000", "dbt_project": "otherdbt0000"}))
        assert main(["score", "--no-build", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "no champion model for the current data" in err and "latest champion (version" in err
        assert "trained on other dbt models or settings" in err
        assert main(["score", "--no-build", "--model", "lgbm_all_mixed", "--out", str(out)]) == 0
        assert "NOT the build the model was trained on" in capsys.readouterr().out
    finally:
        schema_path.write_text(original)
    # the backtest of new data measures the champion that serves it, and says so
    backtest_schema = export_dir(task_paths.exports, task.backtest) / "schema.json"
    original = backtest_schema.read_text()
    try:
        backtest_schema.write_text(json.dumps({**json.loads(original), "build": "newdata00000"}))
        assert main(["evaluate"]) == 0
        assert "trained on warehouse build" in capsys.readouterr().out
    finally:
        backtest_schema.write_text(original)


def test_a_named_model_that_is_not_there_says_which_are(tmp_path):
    """It said "<path> is not a model bundle (no config.json)", and advised training a model name that
    does not exist."""
    from ml.task import TaskPaths
    from ml.train.bundle import load_bundle

    paths = TaskPaths(tmp_path, "brands", "mine")
    (paths.models / "dnn").mkdir(parents=True)
    (paths.models / "dnn" / "config.json").write_text("{}")
    (paths.models / "din").mkdir()  # a folder left without its bundle is no trained model
    with pytest.raises(ValueError, match=r"^task brands on mine has no trained model din \(trained: dnn\): train "
                                         r"it with `crowd train --task brands --model din`$"):
        load_bundle("din", paths, "")
    with pytest.raises(ValueError, match=r"^no model named 'xgb': expected one of lgbm_per_target, .* \(trained for "
                                         r"task brands on mine: dnn\)$"):
        load_bundle("xgb", paths, "")


def test_scoring_without_a_champion_fails_before_building_the_forward_features(concurrent, task_paths, capsys):
    """The champion is looked up before the forward date's dbt build (which on a large log takes minutes), not
    after it: other settings (another selection metric) have none, and no export of the date is made."""
    as_of = last_log_day(task_paths.dataset_dir) - dt.timedelta(days=1)  # a date no other test exports
    assert not export_dir(task_paths.exports, as_of).exists()
    capsys.readouterr()
    assert main(["score", "--set", "evaluate.select_by=auc", "--as-of", str(as_of)]) == 2
    captured = capsys.readouterr()
    assert "no champion model for the current data and settings" in captured.err
    assert "features as of" not in captured.out and not export_dir(task_paths.exports, as_of).exists()


def test_a_feature_date_after_the_day_after_the_log_is_refused_before_any_build(tiny_dataset, task_paths, capsys):
    """Its features would show every user inactive over the days the log does not hold; it was built, and then
    said "not built" of itself."""
    last = last_log_day(task_paths.dataset_dir)
    late = last + dt.timedelta(days=30)
    assert main(["score", "--as-of", str(late), "--model", "lgbm_all_mixed"]) == 2
    said = capsys.readouterr().err
    assert f"as_of {late}: the log ends on {last}" in said
    assert f"the latest feature date is {last + dt.timedelta(days=1)}" in said
    assert not export_dir(task_paths.exports, late).exists()
    # and one on or before the log's first day has no event to build from (it was told to build it)
    from ml.crowds import log_days

    first = log_days(task_paths.dataset_dir)[0]
    assert main(["score", "--as-of", str(first), "--model", "lgbm_all_mixed"]) == 2
    said = capsys.readouterr().err
    assert f"as_of {first}: the log starts on {first}" in said and "crowd warehouse" not in said
    assert f"the earliest feature date is {first + dt.timedelta(days=1)}" in said


def test_the_champion_is_downloaded_once_into_the_task_and_nothing_is_left_in_the_temporary_folder(
        concurrent, task_paths, tmp_path, monkeypatch, capsys):
    """MLflow's download without a destination leaves a copy of the model in a new temporary folder at every
    call: crowds scored every day would fill /tmp, and the compiled trees cached beside the boosters would be
    compiled again each time."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    registered = task_paths.models / "registered"
    assert main(["score", "--out", str(tmp_path / "crowd.parquet")]) == 0
    run_id = re.search(r"^model: .*, run (\w+)", capsys.readouterr().out, re.M).group(1)  # the champion's
    folder = registered / run_id
    config = folder / "bundle" / "config.json"
    assert json.loads(config.read_text())["run_id"] == folder.name
    downloaded = config.stat().st_mtime_ns
    assert main(["score", "--no-build", "--out", str(tmp_path / "again.csv")]) == 0
    assert config.stat().st_mtime_ns == downloaded  # read from the task's folder, not downloaded again
    # a name ending .csv is a CSV for a merchant's tools, its expected buyers beside it as CSV too: the same rows
    first = pd.read_parquet(tmp_path / "crowd.parquet")
    again = pd.read_csv(tmp_path / "again.csv", parse_dates=["feature_date", "window_start", "window_end"])
    assert list(again.columns) == list(first.columns) and len(again) == len(first) > 0
    pd.testing.assert_frame_equal(again[["target_id", "rank", "user_id"]], first[["target_id", "rank", "user_id"]],
                                  check_dtype=False)
    assert np.allclose(again["score"], first["score"])
    assert len(pd.read_csv(tmp_path / "again_expected_buyers.csv")) == len(
        pd.read_parquet(tmp_path / "crowd_expected_buyers.parquet"))
    assert list(temp.iterdir()) == []


def test_only_the_most_recently_used_registered_bundles_are_kept(concurrent, task_paths):
    from ml.outputs import mark
    from ml.train.bundle import KEPT_REGISTERED, registered_bundle

    configure(task_paths)
    registered = task_paths.models / "registered"
    shutil.rmtree(registered, ignore_errors=True)  # the other tests' downloads: downloaded again when needed
    registered.mkdir(parents=True)
    olds = []
    for i in range(KEPT_REGISTERED + 1):
        (registered / f"old{i}").mkdir()
        old = mark(registered / f"old{i}")
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
        olds.append(old)
    foreign = registered / "not-ours"  # no marker: never removed
    foreign.mkdir(exist_ok=True)
    os.utime(foreign, (1, 1))
    run_id = next(iter(concurrent.values())).run_id
    assert registered_bundle(task_paths, run_id) == registered / run_id / "bundle"
    kept = [p for p in olds if p.exists()]
    assert kept == olds[-(KEPT_REGISTERED - 1):]  # the newest ones beside the one just used
    assert foreign.is_dir()
    for p in [*kept, foreign]:
        shutil.rmtree(p)


def test_only_plain_names_reach_an_mlflow_search():
    from ml.tracking import filter_value

    assert filter_value("lgbm_all_mixed") == "'lgbm_all_mixed'"
    for crafted in ("din' or '1' = '1", "", "a b", "x\n"):
        with pytest.raises(ValueError, match="not a plain name"):
            filter_value(crafted)
