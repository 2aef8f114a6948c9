"""Task files: validated once into one typed object, failing with the file and the field named; one run's
overrides; the per-task namespace; nothing below the edge builds settings of its own."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import yaml

from ml.cli import main
from ml.config import Paths
from ml.task import (
    ALL_MODELS,
    DEEP_MODELS,
    GBDT_MODELS,
    TASKS_DIR,
    TaskError,
    TaskPaths,
    available_tasks,
    load_task,
    parse_assignments,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_tasks_load_and_keep_their_roles_apart():
    assert {"tmall-2013", "taobao-2017-category"} <= set(available_tasks())
    tmall = load_task("tmall-2013")
    assert tmall.target == "brand" and tmall.windows.step_days == 7 and tmall.windows.history_days == 90
    assert tmall.sample_dates[0] == dt.date(2013, 7, 1) and len(tmall.sample_dates) == 11
    assert tmall.validation == (dt.date(2013, 9, 16),) and tmall.backtest == dt.date(2013, 9, 23)
    assert tmall.model_names() == list(ALL_MODELS)
    taobao = load_task("taobao-2017-category")
    assert taobao.target == "category" and taobao.windows.label_days == 1 and taobao.windows.step_days == 1
    assert taobao.backtest == dt.date(2017, 12, 2)  # the 9-day log's second-to-last day
    assert max(taobao.warehouse.feature_windows) <= taobao.windows.history_days == 7
    assert taobao.series_shape()["month"][0] == 1  # a history shorter than a month is one period


def test_model_names_match_the_model_registries():
    from ml.models.zoo import MODELS
    from ml.train.gbdt import MODES

    assert set(DEEP_MODELS) == set(MODELS)
    assert tuple(f"lgbm_{m}" for m in MODES) == GBDT_MODELS


def _write(tmp_path: Path, changes: dict, drop: tuple[str, ...] = ()) -> Path:
    data = yaml.safe_load((TASKS_DIR / "tmall-2013.yaml").read_text())
    for key in drop:
        data.pop(key)
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path = tmp_path / "my-task.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("changes", "drop", "message"), [
    ({"windows.label_days": 0}, (), r"windows\.label_days: Input should be greater than or equal to 1"),
    ({"windows.history_days": "ninety"}, (), r"windows\.history_days"),
    ({"target": "shop"}, (), r"target: Input should be 'brand', 'category', 'item' or 'tag'"),
    ({"models": {"din": {}, "xgb": {}}}, (), r"models: .*unknown model\(s\) \['xgb'\]"),
    ({"models": {"din": {"epochs": 2}, "lgbm_all_mixed": {"epochs": 3}}}, (),
     r"models: lgbm_all_mixed: epochs, batch_size and lr are the deep models' settings"),
    ({"validation": ["2013-09-10"]}, (), r"validation: 2013-09-10 is inside the label window"),
    # a backtest before validation is not "inside" its label window (it said so)
    ({"backtest": "2013-09-09"}, (), (r"backtest: 2013-09-09 comes before validation date 2013-09-16; move it to "
                                      r"2013-09-23 or later$")),
    # a misspelt key names the key it should be and the one written, in one line
    ({"windows": {"history_days": 90, "sequence_days": 30, "label_dayz": 7, "step_days": 7}}, (),
     r"windows\.label_days: Field required; windows\.label_dayz: Extra inputs are not permitted$"),
    ({"backtest": "2013-09-31"}, (), r"backtest: "),
    ({"warehouse.feature_windows": [7, 120]}, (), r"warehouse.feature_windows: 120 days is longer than"),
    ({"windoes": {}}, (), r"windoes: Extra inputs are not permitted"),
    ({}, ("dataset",), r"dataset: Field required"),
    ({"dataset": "../../etc"}, (), r"dataset: String should match pattern"),
    ({"evaluate.select_by": "recall_at_20"}, (),
     r"evaluate: .*select_by: expected one of auc_per_target, gauc, auc, recall_at_10"),
])
def test_a_bad_task_file_fails_naming_the_file_and_the_field(tmp_path, changes, drop, message):
    path = _write(tmp_path, changes, drop)
    with pytest.raises(TaskError, match=rf"^{re.escape(str(path))}: {message}"):
        load_task(path)


def test_the_cli_reports_a_bad_task_in_one_line(tmp_path, capsys):
    path = _write(tmp_path, {"windows.sequence_days": 400})
    assert main(["paths", "--task", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "sequence_days" in err
    assert main(["paths", "--task", "no-such-task"]) == 2
    assert "known tasks: " in capsys.readouterr().err


def test_an_override_changes_one_field_and_is_validated_again():
    task = load_task("tmall-2013", {"label_days": 2, "models": ["din", "dnn"], "warehouse.sequence_length": 20})
    assert task.windows.label_days == 2 and task.model_names() == ["dnn", "din"]
    assert task.warehouse.sequence_length == 20
    assert task.warehouse_fingerprint() != load_task("tmall-2013").warehouse_fingerprint()
    with pytest.raises(TaskError, match=r"windows\.label_days: Input should be greater"):
        load_task("tmall-2013", {"label_days": 0})
    with pytest.raises(TaskError, match="labl_days: no such setting"):
        load_task("tmall-2013", {"labl_days": 3})


def test_set_models_takes_names_separated_by_commas_as_a_user_types_them():
    """`--set models=lgbm_all_mixed,dnn` is read as YAML: one string, refused before as "Input should be a valid
    dictionary". A list, a comma-separated string and one name mean the same; a model the task sets keeps its
    own budget, and an unknown name is still refused."""
    own = load_task("tmall-2013", {"models": {"dnn": {"epochs": 9}, "din": {}}})
    for given in ("dnn, lgbm_all_mixed", "[dnn, lgbm_all_mixed]"):
        task = own.override(parse_assignments([f"models={given}"]))
        assert task.model_names() == ["lgbm_all_mixed", "dnn"] and task.models["dnn"].epochs == 9
    assert load_task("tmall-2013", parse_assignments(["models=din"])).model_names() == ["din"]
    with pytest.raises(TaskError, match=r"unknown model\(s\) \['xgb'\]"):
        load_task("tmall-2013", parse_assignments(["models=din,xgb"]))
    with pytest.raises(TaskError, match="models: Dictionary should have at least 1 item"):
        load_task("tmall-2013", parse_assignments(["models="]))


def test_two_tasks_and_two_datasets_have_separate_namespaces(tmp_path):
    tmall, taobao = load_task("tmall-2013"), load_task("taobao-2017-category")
    other = load_task("tmall-2013", {"dataset": "tmall-real"})
    spaces = [TaskPaths(tmp_path, t.name, t.dataset) for t in (tmall, taobao, other)]
    for attr in ("warehouse", "exports", "models", "crowds", "experiment", "registered_model"):
        values = [getattr(p, attr) for p in spaces]
        assert len(set(values)) == 3, attr
    assert len({p.shared.mlflow_db for p in spaces}) == 1  # one MLflow store, one Airflow home


def test_paths_prints_the_tasks_namespace(capsys):
    import json

    assert main(["paths", "--task", "taobao-2017-category"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "tasks/taobao-2017-category/taobao-userbehavior" in printed["warehouse"]
    assert printed["registered_model"] == "purchase-crowd.taobao-2017-category.taobao-userbehavior"


def test_paths_mlflow_env_points_the_mlflow_command_at_the_projects_store_and_registered_model(capsys):
    """`mlflow models serve` and `mlflow ui` find nothing of the project's by themselves (its store is a SQLite
    file under the data directory); `eval "$(crowd paths --mlflow-env)"` points them there."""
    import os
    import subprocess
    import sys

    from ml.tracking import tracking_uri

    script = ('eval "$(crowd paths --task taobao-2017-category --mlflow-env)" && python -c "import mlflow, os; '
              'print(mlflow.get_tracking_uri()); print(mlflow.get_registry_uri()); '
              'print(os.environ[\'MLFLOW_EXPERIMENT_NAME\']); print(os.environ[\'CROWD_REGISTERED_MODEL\'])"')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    paths = TaskPaths.of(load_task("taobao-2017-category"))
    uri = tracking_uri(paths.shared)
    assert uri.startswith("sqlite:///") and done.stdout.split() == [uri, uri, paths.experiment, paths.registered_model]
    with pytest.raises(SystemExit):  # one kind of exports at a time
        main(["paths", "--dbt-env", "--mlflow-env"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_no_module_below_the_edge_builds_default_settings():
    """Defaults live in ml/task.py; the task is read at the edges (the CLI, the DAG builders and their local
    runner) and passed down. Below them nothing loads the default task or constructs settings objects."""
    edges = {"ml/task.py", "ml/cli.py", "ml/orchestration.py", "dags/crowd.py"}
    pattern = re.compile(r"DEFAULT_TASK|load_task\(\s*\)|\b(Task|Windows|Warehouse|Training|Crowds|Evaluate)\(|"
                         r"\b(Schedule|WarehouseSettings)\b")
    offenders = []
    for path in [*ROOT.glob("ml/**/*.py"), *ROOT.glob("dags/*.py")]:
        rel = str(path.relative_to(ROOT))
        if rel in edges:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


def test_dates_fitted_to_a_log_end_the_backtest_on_its_last_day_and_keep_the_roles_apart():
    from ml.task_new import fit_dates

    weekly = load_task("tmall-2013")
    d = fit_dates(weekly, dt.date(2013, 4, 1), dt.date(2013, 9, 30))
    assert (d.first, d.last, d.validation, d.backtest) == (dt.date(2013, 7, 2), dt.date(2013, 9, 10),
                                                            dt.date(2013, 9, 17), dt.date(2013, 9, 24))
    assert d.first - dt.timedelta(days=90) >= dt.date(2013, 4, 1)  # every history window inside the log
    # a nine-day log cannot give a daily task its 7 days of history: the dates start on its second day at most
    daily = load_task("taobao-2017-category")
    d = fit_dates(daily, dt.date(2017, 11, 25), dt.date(2017, 12, 3))
    assert (d.first, d.last, d.validation, d.backtest) == (dt.date(2017, 11, 29), dt.date(2017, 12, 1),
                                                            dt.date(2017, 12, 2), dt.date(2017, 12, 3))
    assert d.full_history_from == dt.date(2017, 12, 2)
    # a label window longer than the cadence pushes each role a whole number of periods on
    longer = weekly.override({"windows.label_days": 10, "validation": [dt.date(2013, 9, 19)],
                              "backtest": dt.date(2013, 9, 29)})
    d = fit_dates(longer, dt.date(2013, 1, 1), dt.date(2013, 9, 30))
    assert d.backtest == dt.date(2013, 9, 21) and d.validation == dt.date(2013, 9, 7) and d.last == dt.date(2013, 8, 24)
    with pytest.raises(TaskError, match=r"the log's 20 days \(2013-09-11 \.\. 2013-09-30\) are too few"):
        fit_dates(weekly, dt.date(2013, 9, 11), dt.date(2013, 9, 30))


def test_crowd_tasks_new_writes_a_task_that_fits_the_log_and_never_writes_over_one(tiny_dataset, tmp_path, capsys):
    from ml.crowds import log_days
    from ml.orchestration import check_date_in_log, short_history

    args = ["tasks", "--new", "mine", "--dataset", tiny_dataset.name, "--out", str(tmp_path)]
    assert main(args) == 0
    said = capsys.readouterr().out
    made = load_task(tmp_path / "mine.yaml")
    first_day, last_day = log_days(tiny_dataset)
    assert made.name == "mine" and made.dataset == tiny_dataset.name and made.target == "brand"
    assert made.backtest + dt.timedelta(days=made.windows.label_days - 1) == last_day
    for ds in made.labelled_dates:
        check_date_in_log(made, ds, first_day, last_day)
    assert short_history(made, made.labelled_dates, first_day) is None
    assert len(made.sample_dates) == len(load_task("tmall-2013").sample_dates)
    assert f"wrote {tmp_path / 'mine.yaml'}: brand of the log {tiny_dataset.name}" in said
    assert "crowd warehouse --task " in said and "note:" not in said
    assert yaml.safe_load((tmp_path / "mine.yaml").read_text())["models"] == yaml.safe_load(
        (TASKS_DIR / "tmall-2013.yaml").read_text())["models"]
    before = (tmp_path / "mine.yaml").read_text()
    assert main(args) == 2
    assert "exists: choose another name (nothing was written)" in capsys.readouterr().err
    assert (tmp_path / "mine.yaml").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]  # no partial file left
    # the item task's subset is the dataset's own: a log without one ranks every item, and says so
    assert main([*args[:2], "items", *args[3:], "--like", "tianchi-mobile-2014"]) == 0
    assert "note: warehouse.item_subset left out" in capsys.readouterr().out
    assert load_task(tmp_path / "items.yaml").warehouse.item_subset is None
    # a log without brands cannot feed a brand task: said before anything is written
    from ml.loaders.load import load

    (tmp_path / "log.csv").write_text("user_id,item_id,category_id,action,time\n"
                                      + "".join(f"{u},{u % 7},{u % 3},click,2024-03-{d:02d} 10:00:00\n"
                                                for u in range(1, 30) for d in range(1, 29)))
    load("csv", [tmp_path / "log.csv"], Paths.default().dataset("nobrands"))
    assert main(["tasks", "--new", "nb", "--dataset", "nobrands", "--out", str(tmp_path)]) == 2
    assert "has no brand on any item" in capsys.readouterr().err and not (tmp_path / "nb.yaml").exists()
    # nor can a brand task's build: refused before it starts (its dbt tests had reported a leak of the labels)
    assert main(["warehouse", "--set", "dataset=nobrands"]) == 2
    said = capsys.readouterr()
    assert "task tmall-2013 ranks brands, and the log's item table" in said.err and "dbt" not in said.out
    assert main(["tasks", "--new", "nb", "--dataset", "nobrands", "--out", str(tmp_path),
                 "--like", "taobao-2017-category"]) == 0
    assert load_task(tmp_path / "nb.yaml").target == "category"
    capsys.readouterr()
    # make run's first step on such a task uses the loaded log (it asked for a generator preset the task has not)
    assert main(["generate", "--task", str(tmp_path / "nb.yaml"), "--skip-if-present"]) == 0
    assert "already holds a loaded csv log" in capsys.readouterr().out
    assert main(["generate", "--task", str(tmp_path / "nb.yaml"), "--set", "dataset=absent", "--skip-if-present"]) == 2
    assert "load the log (crowd load --name absent) or pass --preset" in capsys.readouterr().err
    # a tag task's tags are categories of its own log
    assert main([*args[:2], "tags", *args[3:], "--like", "tmall-2013-tags"]) == 2
    assert "write the tags of yours" in capsys.readouterr().err
    assert main(["tasks", "--new", "mine2", "--out", str(tmp_path)]) == 2
    assert "needs --dataset" in capsys.readouterr().err
    assert main(["tasks", "--dataset", tiny_dataset.name]) == 2
    assert "go with --new NAME" in capsys.readouterr().err


def test_crowd_tasks_fit_dates_moves_a_tasks_dates_on_its_cadence_to_the_latest_its_log_labels(
        tiny_dataset, tmp_path, capsys):
    """After a log grows (crowd load --append), a task's dates move forward by whole periods, so the roles keep
    their spacing and the weekly DAG its weekday; printed as the file's lines and as --set overrides (the task
    file is the user's and is not written)."""
    import shlex

    from ml.crowds import log_days

    task = load_task("tmall-2013")
    earlier = yaml.safe_load((TASKS_DIR / "tmall-2013.yaml").read_text())
    back = dt.timedelta(days=14)
    earlier.update(dataset=tiny_dataset.name, samples={"first": task.samples.first - back,
                                                       "last": task.samples.last - back},
                   validation=[d - back for d in task.validation], backtest=task.backtest - back)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(earlier))
    before = path.read_text()
    assert main(["tasks", "--fit-dates", str(path)]) == 0
    said = capsys.readouterr().out
    assert "moved +2 period(s) of 7 day(s)" in said and path.read_text() == before
    overrides = shlex.split(said.splitlines()[-1].removeprefix("or for one run: "))[1::2]
    moved = load_task(path, parse_assignments(overrides))  # as `crowd ... --set` reads them
    assert (moved.samples.first, moved.backtest) == (task.samples.first, task.backtest)
    assert moved.validation == task.validation and moved.samples.first.weekday() == task.samples.first.weekday()
    _, last_day = log_days(tiny_dataset)
    assert moved.backtest + dt.timedelta(days=moved.windows.label_days - 1) <= last_day < (
        moved.backtest + dt.timedelta(days=moved.windows.label_days - 1 + 7))
    assert f"  backtest: {task.backtest}" in said
    # and as the DAGs' overrides Param, which the periods and training DAGs apply as load_task does here
    import json

    param = json.loads(said.split("its overrides Param: ")[1].splitlines()[0])
    assert load_task(path, param) == moved
    assert main(["tasks", "--fit-dates", "tmall-2013"]) == 0  # the shipped task's dates are the tiny log's latest
    assert "these are the latest dates the log labels" in capsys.readouterr().out


def test_a_labelled_date_at_or_before_the_logs_first_day_is_refused_before_any_build(tiny_dataset, capsys):
    """The 2013 task on a 2017 log built its thirteen dates (its warning said their features saw "-1608--1524 of
    its 90 days"), then the export failed for want of samples. A date with no event before it fails first now,
    in `crowd warehouse` and in run-dags, as a date past the log's end does; the warning counts no such date."""
    from ml.crowds import log_days

    first = log_days(tiny_dataset)[0]
    warehouse = TaskPaths.of(load_task()).warehouse
    before = warehouse.stat().st_mtime_ns if warehouse.exists() else None
    assert main(["warehouse", "--ds", str(first)]) == 2
    said = capsys.readouterr().err
    assert f"{first}: the log starts on {first}, so no event comes before it to build its features from" in said
    assert "their features see" not in said  # the history warning counts no date before the log's first day
    assert (warehouse.stat().st_mtime_ns if warehouse.exists() else None) == before
    early = ["--set", f"samples.first={first}"]  # the task's first sample date on the log's first day
    assert main(["run-dags", *early]) == 2
    assert f"error: {first}: the log starts on {first}" in capsys.readouterr().err
