"""Shared fixtures: one tiny generated dataset (with its oracle) for the whole session."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from filelock import FileLock

# `make test` runs a worker per core (pytest-xdist): torch's and LightGBM's thread pools, one per core in every
# worker, would spin against each other's; each worker's pools get its share of the cores (before torch loads)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from ml.config import Paths
from ml.synth.generate import generate
from ml.synth.params import PRESETS, GeneratorConfig
from ml.task import DEFAULT_TASK, Task, TaskPaths, load_task

FIXTURES = Path(__file__).parent / "fixtures"


def _built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> tuple[Path, object]:
    """A fixture's files built by the first of the parallel workers that needs them, in the folder every worker
    of the session shares, then read by the others (a file lock orders them): one tiny dataset and one
    warehouse build per `make test`, not one per worker. build(folder) returns something JSON can hold."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder, done = root / "built" / name, root / "built" / f"{name}.json"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed halfway left it
            done.write_text(json.dumps(build(folder)))
    return folder, json.loads(done.read_text())


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Nothing a test writes may land in the developer's data/ directory."""
    mp = pytest.MonkeyPatch()
    data = tmp_path_factory.mktemp("data")
    mp.setenv("CROWD_DATA_DIR", str(data))
    # Airflow reads its home when first imported: point it at this session's data directory before that
    mp.setenv("AIRFLOW_HOME", str(data / "airflow"))
    mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[1] / "dags"))
    mp.setenv("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
    mp.setenv("AIRFLOW__COSMOS__CACHE_DIR", str(data / "cosmos"))  # not /tmp/cosmos, shared by parallel workers
    mp.setenv("DO_NOT_TRACK", "true")
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def task() -> Task:
    """The default task (tmall-2013), as the CLI and the DAGs read it."""
    return load_task(DEFAULT_TASK)


@pytest.fixture(scope="session")
def task_paths(task: Task) -> TaskPaths:
    return TaskPaths.of(task)


@pytest.fixture(scope="session")
def tiny_config(task: Task) -> GeneratorConfig:
    return GeneratorConfig(sizes=PRESETS["tiny"].sizes, seed=11, oracle_dates=tuple(task.labelled_dates),
                           oracle_label_days=task.windows.label_days, ceiling_dates=(task.backtest,), workers=1)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_config: GeneratorConfig, task: Task, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset, where the default task looks for its dataset (the session's data directory): a link to
    the one generation all workers share. Read-only: a test that alters a dataset alters a copy."""
    shared, _ = _built_once(tmp_path_factory, "tiny-dataset", lambda d: generate(tiny_config, d, progress=False))
    out = Paths.default().dataset(task.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.symlink_to(shared, target_is_directory=True)
    return out


@pytest.fixture(scope="session")
def tiny_db(tiny_dataset: Path) -> duckdb.DuckDBPyConnection:
    """Views over the tiny dataset: events (with brand), items, oracle, truth tables."""
    con = duckdb.connect()
    d = tiny_dataset
    con.execute(f"create view items as select * from read_parquet('{d}/items.parquet')")
    con.execute(
        f"create view events as select e.*, i.brand_id, i.category_id "
        f"from read_parquet('{d}/events/*.parquet') e join items i using (item_id)"
    )
    con.execute(f"create view oracle as select * from read_parquet('{d}/oracle/*.parquet')")
    con.execute(f"create view brands_truth as select * from read_parquet('{d}/truth/brands.parquet')")
    con.execute(f"create view users_truth as select * from read_parquet('{d}/truth/users/*.parquet')")
    return con


@pytest.fixture(scope="session")
def tiny_build(tiny_dataset: Path, task: Task, task_paths: TaskPaths, tmp_path_factory: pytest.TempPathFactory):
    """A real dbt build of every layer and labelled date of the default task over the tiny dataset, the one all
    workers share: (its folder, the dbt report). Read-only: tests take copies (tiny_warehouse). Built as a
    date's build is (build_dates), so it records its upstream key; the dataset's link resolves to the same files
    in every worker, so a copy holds the key its own build would, and a later date's build in a copy leaves
    ODS, DIM and DW out, as the DAGs' weeks do after the first."""
    from dataclasses import asdict

    from ml.warehouse.build import DbtReport, build_dates

    def build(folder: Path) -> dict:
        return asdict(build_dates(dataset_dir=tiny_dataset, warehouse=folder / task_paths.warehouse.name,
                                  dbt_vars=task.dbt_vars(), quiet=True))

    folder, report = _built_once(tmp_path_factory, "tiny-warehouse", build)
    return folder, DbtReport(**report)


@pytest.fixture(scope="session")
def tiny_warehouse(tiny_build, task_paths: TaskPaths):
    """The tiny build copied into the task's warehouse: (warehouse path, dbt report)."""
    shutil.copytree(tiny_build[0], task_paths.warehouse.parent, dirs_exist_ok=True)
    return task_paths.warehouse, tiny_build[1]


@pytest.fixture(scope="session")
def tiny_exports(tiny_warehouse, task: Task, task_paths: TaskPaths) -> Path:
    """The tiny warehouse exported where the default task's trainers look."""
    from ml.warehouse.export import export_dates

    export_dates(tiny_warehouse[0], task_paths.exports, task.labelled_dates, fingerprint=task.warehouse_fingerprint(),
                 dataset_dir=task_paths.dataset_dir)
    return task_paths.exports


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A real, migrated Airflow metadata DB in the session's AIRFLOW_HOME, with the DuckDB pool."""
    from ml.local_airflow import prepare_metadata_db

    prepare_metadata_db(Paths.default())


# `make test` hands whole files to its workers (--dist loadfile --no-loadscope-reorder) in the order collected:
# the longest first, then shorter and shorter ones (longest-processing-time-first), so that no long file starts
# near the end and runs alone while the other worker idles, and the short ones even out the two workers' ends.
# By default pytest-xdist hands out the files with the most tests first: the Spark and Postgres files came last.
# The Spark file leads: its fixture generates and builds the tiny dataset (about 30 s), which the other worker
# does not wait for, as the item task's file needs none. The rest took, in this order, 150, 187, 160, 152, 74, 62,
# 48, 45, 40, 34, 22 and 17 s in a fresh clone's `make test` on 2 cores (2026-11-27, 18:09); the files after them
# under 10 s each.
LONGEST_FILES = ("test_spark_warehouse.py", "test_item_task.py", "test_airflow_on_postgres.py",
                 "test_dags_end_to_end.py", "test_warehouse.py", "test_training_pipeline.py", "test_tag_task.py",
                 "test_tasks_end_to_end.py", "test_distributed_training.py", "test_dags.py",
                 "test_services_are_private.py", "test_airflow_standalone.py", "test_local_runner.py",
                 "test_the_model_on_record.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept
