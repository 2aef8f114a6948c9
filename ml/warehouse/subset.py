"""The item subset a task with target item ranks (the Tianchi competition's item set P).

A task names it (`warehouse.item_subset`): `dataset` for the subset its dataset carries (`crowd load` writes
one from the Tianchi item file, the `tianchi` generator preset writes its own), or a file of item ids (parquet
with an item_id column, or a CSV / text file with an item_id header or a single column). Whatever the source,
it is read and checked here, once per build, and written as the warehouse's own `item_subset.parquet`, which
dbt reads (env CROWD_ITEM_SUBSET, models/dim/dim_target_subset.sql). Rows that are not item ids are kept with
their reason in `item_subset_rejects.parquet` beside it, and the counts reconcile.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ml.task import Task, TaskPaths

log = logging.getLogger(__name__)

DATASET_SUBSET = "item_subset.parquet"  # in a dataset directory, next to items.parquet


@dataclass(frozen=True)
class SubsetReport:
    path: Path
    read: int
    items: int
    duplicates: int
    rejected: int


def subset_source(task: Task, paths: TaskPaths) -> Path | None:
    """The file the task's subset comes from, or None when it ranks every target."""
    setting = task.warehouse.item_subset
    if setting is None:
        return None
    if setting == "dataset":
        path = paths.dataset_dir / DATASET_SUBSET
        if not path.exists():
            raise ValueError(f"warehouse.item_subset: dataset: {paths.dataset_dir} has no {DATASET_SUBSET} "
                             f"(load the log with its item file, `crowd load --items ...`, or name a file of item ids)")
        return path
    path = Path(setting).expanduser()
    if not path.is_file():
        raise ValueError(f"warehouse.item_subset: {path}: no such file")
    return path


def prepare_item_subset(task: Task, paths: TaskPaths) -> SubsetReport | None:
    """Validate the task's subset and write the warehouse's copy (replaced atomically); None: no subset."""
    source = subset_source(task, paths)
    if source is None:
        return None
    out = paths.warehouse.parent / "item_subset.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect() as con:
        con.execute(f"create temp table raw as select * from {_reader(source)}", [str(source)])
        columns = [r[0] for r in con.execute("describe raw").fetchall()]
        column = "item_id" if "item_id" in columns else (columns[0] if len(columns) == 1 else None)
        if column is None:
            raise ValueError(f"warehouse.item_subset: {source}: expected an item_id column or a single column, "
                             f"got {', '.join(columns)}")
        checked = con.sql(f"""
            select try_cast(trim(cast("{column.replace('"', '""')}" as varchar)) as bigint) as item_id,
                   cast("{column.replace('"', '""')}" as varchar) as raw_value
            from raw""").to_arrow_table()
        con.register("checked", checked)
        good = con.sql("select distinct item_id from checked where item_id >= 0 order by item_id").to_arrow_table()
        rejects = con.sql("""
            select raw_value, case when item_id is null then 'not an integer item id'
                                   else 'negative item id' end as reason
            from checked where item_id is null or item_id < 0""").to_arrow_table()
        n_read = checked.num_rows
    n_valid = n_read - rejects.num_rows
    if good.num_rows == 0:
        raise ValueError(f"warehouse.item_subset: {source}: no item id in {n_read:,} rows")
    _write_atomic(good, out)
    _write_atomic(rejects.cast(pa.schema([("raw_value", pa.string()), ("reason", pa.string())])),
                  out.with_name("item_subset_rejects.parquet"))
    report = SubsetReport(out, n_read, good.num_rows, n_valid - good.num_rows, rejects.num_rows)
    log.info("item subset %s: %d rows read = %d items + %d repeated + %d rejected", source, report.read,
             report.items, report.duplicates, report.rejected)
    return report


def item_subset_path(task: Task, paths: TaskPaths) -> Path | None:
    """The checked subset a build passes to dbt (prepared now), or None when the task ranks every target."""
    report = prepare_item_subset(task, paths)
    return report.path if report else None


def _reader(path: Path) -> str:
    if path.suffix == ".parquet":
        return "read_parquet(?)"
    return "read_csv(?, all_varchar = true, header = true)" if _has_header(path) else \
        "read_csv(?, all_varchar = true, header = false, columns = {'item_id': 'VARCHAR'})"


def _has_header(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip().split(",")[0]
    return not first.lstrip("-").isdigit()


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Replaced whole, and only when it changed: the checked copy's modification time is part of the upstream
    key (ml.warehouse.build.upstream_key), and a copy rewritten with the same items at every build made every
    date of an item task build ODS, DIM and DW again."""
    tmp = path.with_name(f".{path.name}.partial")
    pq.write_table(table, tmp)
    if path.exists() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
        return
    os.replace(tmp, path)
