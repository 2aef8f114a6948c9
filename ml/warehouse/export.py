"""Per-ds parquet exports: what the trainers and the scorer read, so that they never open the DuckDB file
while dbt writes it. One directory per date, swapped in whole so a reader never sees half an export.

Each directory's schema.json records the task's warehouse fingerprint (ml.task.Task.warehouse_fingerprint):
a training run refuses exports built with other settings instead of mixing them silently.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from ml.config import content_digest
from ml.warehouse.engine import open_warehouse

if TYPE_CHECKING:
    from ml.task import Task

log = logging.getLogger(__name__)

# file name -> (warehouse table, sort keys)
EXPORTS: dict[str, tuple[str, str]] = {
    "samples": ("samples.samples", "user_id, target_id"),
    "evaluation": ("samples.samples_evaluation", "target_id, user_id"),
    "buyers": ("samples.samples_evaluation_buyers", "target_id, user_id"),
    "forward": ("samples.samples_forward", "target_id, user_id"),
    "sequences": ("ads.ads_user_sequences", "user_id"),
    "category_series": ("ads.ads_user_category_series", "user_id, timescale, step, slot"),
}
POPULATIONS = ("samples", "evaluation", "forward")  # a date has at least one of these
FORWARD_EXPORTS = ("forward", "sequences", "category_series")  # what the forward date's build must make
KEY_COLUMNS = ("ds", "user_id", "target_id", "target_category_id", "is_candidate", "inclusion_prob")
LABEL_COLUMNS = ("label_buy", "label_collect_cart")


@dataclass(frozen=True)
class Export:
    ds: dt.date
    path: Path
    rows: dict[str, int]


def export_dir(root: Path, ds: dt.date) -> Path:
    return Path(root) / f"ds={ds.isoformat()}"


def built_dates(warehouse: Path, engine: str = "duckdb") -> list[dt.date]:
    with open_warehouse(engine, warehouse) as con:
        rows = con.execute("select distinct ds from samples.samples union select distinct ds "
                           "from samples.samples_forward order by ds").fetchall()
    return [r[0] for r in rows]


def _rows(con: duckdb.DuckDBPyConnection, table: str, ds: dt.date) -> int:
    return con.execute(f"select count(*) from {table} where ds = ?", [ds]).fetchall()[0][0]


def no_population_message(con: duckdb.DuckDBPyConnection, dates: list[dt.date]) -> str:
    """Why dates hold no pair to train on, score or rank, from the warehouse's own tables. A date never built
    reads like one whose build found no pair, and the two need different fixes: a sample of a real log, or an
    item subset that is not the log's, builds every date and still gives none (the real Tianchi sample's
    1,999 events touch 2 items of its item file)."""
    named = ", ".join(str(d) for d in dates[:5]) + (f" and {len(dates) - 5} more" if len(dates) > 5 else "")
    first = dates[0]
    head = f"the warehouse has no samples for ds {named}"
    try:
        built = con.execute("select count(*) from ads.ads_user_features where ds = ?", [first]).fetchall()[0][0]
        n_targets = con.execute("select count(*) from dim.dim_target_subset").fetchall()[0][0]
        n_rows, n_on_targets, last = con.execute(
            "select count(*), count(s.target_id), max(case when s.target_id is not null then d.day end) "
            "from dw.dw_user_target_daily as d "
            "left join (select distinct target_id from dim.dim_target_subset) as s on d.target_id = s.target_id "
            "where d.day < ?", [first]).fetchall()[0]
        log_days = con.execute("select min(day), max(day) from dw.dw_user_target_daily").fetchall()[0]
    except duckdb.Error:  # no ADS, DIM or DW table here: nothing built, or a Spark warehouse (ADS, samples read)
        return (f"{head}: not built (crowd warehouse --ds {first}), or its build found no (user, target) pair "
                "to rank: a log too small or too sparse on the task's targets for its dates")
    if not built:
        return (f"{head}: {first} was not built, or no user was active in its history window (the log's events "
                f"run from {log_days[0]} to {log_days[1]}): build it (crowd warehouse --ds {first}) or pick dates "
                "inside the log")
    on_targets = (f"{n_on_targets:,} of the log's {n_rows:,} (user, target, day) rows before it "
                  f"{'is' if n_on_targets == 1 else 'are'} on those targets, the last on {last}" if n_on_targets else
                  f"none of the log's {n_rows:,} (user, target, day) rows before it is on those targets")
    return (f"{head}: {first} was built ({built:,} users active before it), but no user touched one of the task's "
            f"{n_targets:,} targets in the days before it that make a candidate (warehouse.candidate_days): "
            f"{on_targets}. The log is too small or too sparse on the task's targets for its dates (for the item "
            "task: is the item subset this log's?)")


def require_exports(root: Path, dates: list[dt.date]) -> None:
    """Every date exported (its schema.json is the last file an export writes), else one line naming the
    missing ones: `crowd train` on a task never built said "No such file or directory: .../ds=2013-07-01"."""
    missing = [ds for ds in dates if not (export_dir(root, ds) / "schema.json").exists()]
    if len(missing) == 1:
        ds = missing[0]
        raise ValueError(f"no export for ds {ds} under {root}: build it first (crowd warehouse --ds {ds})")
    if missing:
        shown = ", ".join(map(str, missing[:3])) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ValueError(f"no export for ds {shown} under {root}: build them first (crowd warehouse)")


def read_schema(root: Path, ds: dt.date) -> dict:
    require_exports(root, [ds])
    return json.loads((export_dir(root, ds) / "schema.json").read_text())


def build_id(dataset_dir: Path | None, project: str | None = None) -> str:
    """Which data and which models built the warehouse: the dataset's manifest (a new load or generation is
    new data) and the dbt project's sources (`project`: their digest, when the caller has it already). Exports
    record it, and training refuses dates of different builds (a kill between re-exports used to leave some
    dates of the old data, trained on without a word)."""
    from ml.warehouse.build import project_digest

    manifest = Path(dataset_dir) / "manifest.json" if dataset_dir is not None else None
    data = manifest.read_bytes() if manifest is not None and manifest.exists() else b""
    return content_digest(data + (project or project_digest()).encode(), 12)


def exports_build(root: Path, ds: dt.date) -> str:
    """The warehouse build an export of ds was made from ("" for an export older than build ids)."""
    return str(read_schema(root, ds).get("build", ""))


def serving_key(task: Task, root: Path, ds: dt.date | None = None) -> str | None:
    """The task's serving fingerprint (Task.serving_fingerprint) for the dbt project that built its export of ds
    (the backtest's by default): what the features mean, whatever data they were computed from. None for an
    export from before the project was recorded: its champion serves its own data only."""
    project = read_schema(root, ds or task.backtest).get("dbt_project")
    return task.serving_fingerprint(str(project)) if project else None


def export_dates(warehouse: Path, out_root: Path, dates: list[dt.date] | None = None,
                 fingerprint: str = "", dataset_dir: Path | None = None, engine: str = "duckdb",
                 forward_key: str | None = None) -> list[Export]:
    """Write exports/ds=YYYY-MM-DD/{samples,evaluation,buyers,forward,sequences,category_series}.parquet and
    schema.json (with the settings' fingerprint and the build id of dataset_dir's data, and forward_key when
    given: what the forward date's export was made from, ml.crowds.build_forward). `warehouse` is where
    `engine` built it (ml.warehouse.engine): the same files come out whichever engine it was."""
    from ml.warehouse.build import project_digest

    project = project_digest()  # read once: the build id and the exports' dbt_project are of the same sources
    build = build_id(dataset_dir, project)
    out_root = Path(out_root)
    dates = dates if dates is not None else built_dates(warehouse, engine)
    done = []
    with open_warehouse(engine, warehouse) as con:
        out_root.mkdir(parents=True, exist_ok=True)
        # each table's rows of each date, counted once: every empty date in one message, before any export is
        # replaced, and the counts each export records
        counts = {ds: {name: _rows(con, table, ds) for name, (table, _) in EXPORTS.items()} for ds in dates}
        empty = [ds for ds in dates if not any(counts[ds][p] for p in POPULATIONS)]
        if empty:
            raise ValueError(no_population_message(con, empty))
        done.extend(_export_one(con, ds, counts[ds], out_root, fingerprint, build, project, forward_key)
                    for ds in dates)
    return done


def sql_path(path: Path) -> str:
    """A file path as a SQL string literal (COPY ... TO takes no bound parameter)."""
    return "'" + str(path).replace("'", "''") + "'"


def _export_one(con: duckdb.DuckDBPyConnection, ds: dt.date, counts: dict[str, int], out_root: Path,
                fingerprint: str, build: str, project: str, forward_key: str | None = None) -> Export:
    """ds's export; counts: each table's rows of ds, of which a population is not empty (export_dates)."""
    final = export_dir(out_root, ds)
    partial = out_root / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    rows: dict[str, int] = {}
    for name, (table, keys) in EXPORTS.items():
        n = counts[name]
        # samples on labelled dates, the evaluation set on the backtest and the validation dates, forward on
        # the forward date
        if n == 0 and name in POPULATIONS:
            continue
        if name == "buyers" and n == 0:
            continue  # recall's denominator, on the backtest and the validation dates
        con.execute(f"copy (select * from {table} where ds = $ds order by {keys}) "
                    f"to {sql_path(partial / (name + '.parquet'))} (format parquet, compression zstd)", {"ds": ds})
        rows[name] = n
    # the columns of a population this date has (an empty Spark table has no files to describe)
    population = next(EXPORTS[p][0] for p in POPULATIONS if p in rows)
    columns = [r[0] for r in con.execute(f"describe {population}").fetchall()]
    schema = {
        "ds": ds.isoformat(),
        "rows": rows,
        "fingerprint": fingerprint,
        "build": build,
        "dbt_project": project,
        "keys": [c for c in columns if c in KEY_COLUMNS],
        "labels": list(LABEL_COLUMNS),
        "dense": [c for c in columns if c not in KEY_COLUMNS and c not in LABEL_COLUMNS],
        "sequences": ["hist_target_id", "hist_category_id", "hist_action", "hist_age_days", "hist_age_hours"],
        **({"forward_key": forward_key} if forward_key else {}),
    }
    (partial / "schema.json").write_text(json.dumps(schema, indent=2))
    old = out_root / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)
    log.debug("exported ds %s: %s", ds, ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    return Export(ds, final, rows)
