"""`crowd load`: convert a real log into the canonical tables, with rejects and reconciliation.

Output (a dataset directory, the same layout the generator writes):
    events/part-NNNNN.parquet   user_id, item_id, action, ts (one part per input file)
    items.parquet               item_id, category_id, parent_category_id, brand_id, shop_id
    item_subset.parquet         item_id (formats whose item file is the ranked subset: Tianchi mobile)
    rejects.parquet             source_file, line, reason, raw
    manifest.json               per-file read / accepted / rejected, reasons, duplicates, time range

Item attributes come from the item table when the format has one, and from the
log's own columns otherwise (the most frequent value per item when rows disagree;
the disagreements are counted).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ml.loaders.csv_reader import (
    REJECTS_SCHEMA,
    FileReport,
    FormatError,
    Layout,
    first_line,
    parse_ids,
    read_file,
    sniff,
)
from ml.loaders.formats import FORMATS, FileFormat, LogFormat
from ml.loaders.mapping import CsvMapping, mapped_format
from ml.outputs import file_lock, replacing
from ml.synth.generate import EVENTS_SCHEMA

log = logging.getLogger(__name__)
# each file's reconciled counts: `crowd load` prints its own line per file (ml.cli.RESULTS_LOGGER)
results_log = logging.getLogger("ml.results.load")

ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("category_id", pa.int64()),
        ("parent_category_id", pa.int64()),
        ("brand_id", pa.int64()),
        ("shop_id", pa.int64()),
    ]
)
_ITEM_ATTRS = ("category_id", "parent_category_id", "brand_id", "shop_id")
_VOTES_COMPACT_ROWS = 4_000_000


def _with_item_columns(table: pa.Table) -> pa.Table:
    cols = {}
    for f in ITEMS_SCHEMA:
        cols[f.name] = table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
    return pa.table(cols, schema=ITEMS_SCHEMA)


def _item_votes(table: pa.Table) -> pa.Table | None:
    """(item, attributes) combinations of a batch with their counts: small, whatever the log size."""
    if not any(a in table.column_names for a in _ITEM_ATTRS) or table.num_rows == 0:
        return None
    items = _with_item_columns(table).append_column("votes", pa.array(np.ones(table.num_rows, np.int64)))
    return _sum_votes(items)


def _sum_votes(votes: pa.Table) -> pa.Table:
    """One row per distinct (item, attributes) with the summed votes."""
    agg = votes.group_by(list(ITEMS_SCHEMA.names), use_threads=False).aggregate([("votes", "sum")])
    return agg.rename_columns(["votes" if c == "votes_sum" else c for c in agg.column_names])


def _add_votes(votes: list[pa.Table], new: pa.Table | None) -> None:
    """Append a batch's votes; re-aggregate when they pile up, so memory follows distinct items, not batches."""
    if new is None:
        return
    votes.append(new)
    if sum(v.num_rows for v in votes) > _VOTES_COMPACT_ROWS:
        votes[:] = [_sum_votes(pa.concat_tables(votes))]


def _resolve_items(con: duckdb.DuckDBPyConnection, votes: pa.Table, source: str) -> tuple[pa.Table, int]:
    """One row per item: the attribute combination seen most often (ties: smallest values)."""
    con.register(source, votes)
    conflicts = con.execute(
        f"select count(*) from (select item_id from {source} group by item_id having count(*) > 1)"
    ).fetchall()[0][0]
    table = con.sql(
        f"""
        select item_id, category_id, parent_category_id, brand_id, shop_id
        from (
            select *, row_number() over (
                partition by item_id
                order by votes desc, category_id nulls last, brand_id nulls last, shop_id nulls last
            ) as rn
            from (select item_id, category_id, parent_category_id, brand_id, shop_id, sum(votes) as votes
                  from {source} group by all)
        ) where rn = 1 order by item_id
        """
    ).to_arrow_table()
    con.unregister(source)
    return _with_item_columns(table), int(conflicts)


def load(
    format_name: str,
    paths: list[Path],
    out: Path,
    *,
    items_paths: list[Path] | None = None,
    year: int | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    mapping: CsvMapping | None = None,
    append: bool = False,
) -> dict:
    """Read the files of one format into a canonical dataset directory. Returns the manifest.

    `mapping` names a csv log's own headers, action values and time format (ml.loaders.mapping). `append` adds
    the files to the dataset already at `out` (the new days of a log, without reading the old ones again).

    `out` is replaced only when it is a dataset folder the project made (ml.outputs), and only once the new
    one is complete and holds events: a bad range or a log with nothing accepted keeps the old dataset."""
    if format_name not in FORMATS:
        raise FormatError(f"unknown format {format_name!r}: expected one of {sorted(FORMATS)}")
    mapping = mapping or CsvMapping()
    fmt: LogFormat = mapped_format(FORMATS[format_name], mapping)
    if fmt.needs_year and year is None:
        raise ValueError(f"{format_name} stores dates as mmdd without a year: give --year")
    if items_paths and fmt.items is None:
        raise ValueError(f"{format_name} has no separate item table: its item attributes are in the log")
    if not paths:
        raise ValueError("no input files")
    if start is not None and end is not None and start > end:
        raise ValueError(f"--start {start} is after --end {end}: no event could be kept")
    for path in [*paths, *(items_paths or [])]:
        if not Path(path).exists():
            raise ValueError(f"{path}: no such file")
        if not Path(path).is_file():
            raise ValueError(f"{path}: not a file (give the log's files, not a folder)")
    for path in paths:
        layout = _check_first_line(Path(path), fmt)
        _check_categories(Path(path), layout, fmt, items_paths, append)
    t0 = time.perf_counter()
    # one append to a dataset at a time: two at once would each publish the old dataset plus their own files
    locked = file_lock(Path(out).parent / f".{Path(out).name}.lock") if append else contextlib.nullcontext()
    with locked, replacing(out, inputs=[*paths, *(items_paths or [])]) as tmp:
        previous = _appendable(Path(out), fmt, mapping, year, paths) if append else None
        manifest = _load_into(tmp, fmt, paths, items_paths, year, start, end, t0, mapping,
                              Path(out) if append else None, previous)
        before = previous or {}
        if manifest["events"] == before.get("events", 0):
            raise ValueError(f"no event of {len(paths)} file(s) was accepted (read "
                             f"{manifest['read'] - before.get('read', 0):,}, rejected "
                             f"{manifest['rejected'] - before.get('rejected', 0):,}): nothing written, "
                             f"{out} is as it was")
    return manifest


def _appendable(out: Path, fmt: LogFormat, mapping: CsvMapping, year: int | None, paths: list[Path]) -> dict:
    """The manifest of the loaded dataset at `out` that `paths` may be appended to: one loaded from the same
    format, mapping and year, none of whose files is among them (the same name and size: a day's file given
    twice would count its events twice)."""
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if "files" not in manifest:
        raise ValueError(f"--append: {out} holds no loaded log (a generated one, or none): load the first files "
                         "without --append")
    if manifest.get("source") != fmt.name:
        raise ValueError(f"--append: {out} was loaded from --format {manifest.get('source')}, not {fmt.name}")
    if manifest.get("mapping") != (mapping.as_json() if mapping else None):
        raise ValueError(f"--append: {out} was loaded with another --column/--action/--time-format/--utc-offset "
                         f"({manifest.get('mapping')}): append with the same, or load every file again")
    if fmt.needs_year and manifest.get("year") != year:
        raise ValueError(f"--append: {out} was loaded with --year {manifest.get('year')}, not {year}")
    # a file loaded before sizes were recorded (bytes absent, or 0 once an append carried it) by its name alone
    loaded = {(Path(f["path"]).name, f.get("bytes") or None) for f in manifest["files"]}
    for path in paths:
        name, size = Path(path).name, Path(path).stat().st_size
        if (name, size) in loaded or (name, None) in loaded:
            raise ValueError(f"--append: {path} is loaded already (a file of that name and size is in {out}): "
                             "give only the new files")
    return manifest


def _check_first_line(path: Path, fmt: LogFormat) -> Layout:
    """A log file whose first line does not fit its format's columns fails before anything is read, naming the
    formats it does fit: the public logs look alike (Tmall's 2013 recommendation log and its 2015 repeat-buyer
    log are both "Tmall"), and a wrong --format is the likeliest cause."""
    try:
        return sniff(path, fmt.events)
    except FormatError as e:
        fits = [name for name, other in FORMATS.items() if name != fmt.name and _fits(path, other)]
        if not fits:
            raise
        raise FormatError(f"{e}; its first line fits --format {' or '.join(fits)}") from None


def _check_categories(path: Path, layout: Layout, fmt: LogFormat, items_paths: list[Path] | None,
                      append: bool) -> None:
    """A log may leave its items' categories to the item table (csv), or to the dataset it is appended to, not to
    nobody: every target and feature of the warehouse hangs off an item's category."""
    column = next((c for c in fmt.events.columns if c.target == "category_id"), None)
    if column is None or not column.optional or items_paths or append:
        return
    if column.name not in layout.names:
        raise FormatError(f"{path}: the header has no {column.name!r} column and no item table (--items) gives the "
                          "items' categories; add one or the other")


def _fits(path: Path, fmt: LogFormat) -> bool:
    """Whether the first line reads as the format's: its header, or a data line whose ids look like the format's
    ids (a header of another format has as many fields as a headerless one, and is no data line of it)."""
    try:
        layout = sniff(path, fmt.events)
    except FormatError:
        return False
    if layout.header:
        return True
    fields = [f.strip().strip('"') for f in first_line(path).split(layout.delimiter)]
    ids = [v for c, v in zip(fmt.events.columns, fields, strict=True) if c.kind == "id" and not c.nullable]
    _, empty, bad = parse_ids(pa.array(ids, pa.string()), fmt.id_prefix, fmt.id_float_look)
    return not (empty.any() or bad.any())


def _load_into(tmp: Path, fmt: LogFormat, paths: list[Path], items_paths: list[Path] | None, year: int | None,
               start: dt.date | None, end: dt.date | None, t0: float, mapping: CsvMapping,
               prev_dir: Path | None = None, previous: dict | None = None) -> dict:
    """Read the files into tmp; given the dataset being appended to (`prev_dir`, its manifest `previous`), its
    events, rejects, items and file reports come first, linked or copied, never read from the log again."""
    (tmp / "events").mkdir(parents=True)
    reports: list[FileReport] = [FileReport(**f) for f in (previous or {}).get("files", [])]
    log_votes: list[pa.Table] = []
    file_votes: list[pa.Table] = []
    old_parts = sorted((prev_dir / "events").glob("part-*.parquet")) if prev_dir is not None else []
    for part in old_parts:
        _link_or_copy(part, tmp / "events" / part.name)

    with pq.ParquetWriter(tmp / "rejects.parquet", REJECTS_SCHEMA, compression="zstd") as rejects_out:
        if prev_dir is not None and (prev_dir / "rejects.parquet").is_file():
            for batch in pq.ParquetFile(prev_dir / "rejects.parquet").iter_batches():
                rejects_out.write_batch(batch)

        def read_all(files: list[Path], ff: FileFormat, on_batch: Callable[[pa.Table, Path], None]) -> None:
            for path in files:
                report = FileReport(str(path), bytes=Path(path).stat().st_size)
                for batch in read_file(path, fmt, ff, year=year, ts_range=(start, end), report=report):
                    if batch.rejects.num_rows:
                        rejects_out.write_table(batch.rejects)
                    if batch.accepted.num_rows:
                        on_batch(batch.accepted, path)
                reports.append(report)
                results_log.info("%s: read %d = accepted %d + rejected %d", path, report.read, report.accepted,
                                 report.rejected)

        writers: dict[Path, pq.ParquetWriter] = {}

        def on_events(table: pa.Table, path: Path) -> None:
            if path not in writers:
                writers[path] = pq.ParquetWriter(
                    tmp / "events" / f"part-{len(old_parts) + len(writers):05d}.parquet", EVENTS_SCHEMA,
                    compression="zstd"
                )
            writers[path].write_table(pa.table({n: table.column(n) for n in EVENTS_SCHEMA.names},
                                               schema=EVENTS_SCHEMA))
            _add_votes(log_votes, _item_votes(table))

        try:
            read_all(list(paths), fmt.events, on_events)
        finally:
            for w in writers.values():
                w.close()
        if items_paths:
            read_all(list(items_paths), fmt.items, lambda table, _: _add_votes(file_votes, _item_votes(table)))

    con = duckdb.connect()
    empty_votes = _with_item_columns(pa.table({"item_id": pa.array([], pa.int64())})).append_column(
        "votes", pa.array([], pa.int64())
    )
    log_items, log_conflicts = _resolve_items(con, pa.concat_tables([empty_votes, *log_votes]), "log_votes")
    file_items, file_conflicts = _resolve_items(con, pa.concat_tables([empty_votes, *file_votes]), "file_votes")
    old_items = _with_item_columns(pq.read_table(prev_dir / "items.parquet") if prev_dir is not None
                                   else pa.table({"item_id": pa.array([], pa.int64())}))
    con.register("log_items", log_items)
    con.register("file_items", file_items)
    con.register("old_items", old_items)
    # the declared item table wins; then what the dataset appended to says of an item; the log fills in the rest
    items = con.sql(
        "select * from file_items union all "
        "select * from old_items where item_id not in (select item_id from file_items) union all "
        "select * from log_items where item_id not in (select item_id from file_items) "
        "and item_id not in (select item_id from old_items) order by item_id"
    ).to_arrow_table()
    items = _with_item_columns(items)
    pq.write_table(items, tmp / "items.parquet")
    # the ranked items: the item file's (Tianchi's set P), and those of the files appended to
    subsets = [file_items.select(["item_id"])] if items_paths and fmt.items_are_subset else []
    if prev_dir is not None and (prev_dir / "item_subset.parquet").is_file():
        subsets.append(pq.read_table(prev_dir / "item_subset.parquet").select(["item_id"]))
    subset = 0
    if subsets:
        con.register("subset_parts", pa.concat_tables(subsets))
        subset_items = con.sql("select distinct item_id from subset_parts order by item_id").to_arrow_table()
        pq.write_table(subset_items, tmp / "item_subset.parquet")
        subset = subset_items.num_rows
        con.register("subset_items", subset_items)
    con.register("items", items)

    events = "loaded_events"
    new_parts = [str(tmp / "events" / f"part-{len(old_parts) + i:05d}.parquet") for i in range(len(writers))]
    if writers or old_parts:
        con.register(events, con.read_parquet(str(tmp / "events" / "*.parquet")))
        n_events, ts_min, ts_max, dups, actions = _event_counts(con, new_parts, old_parts, previous)
        # items with no category (in no item table, or the log's rows give none): the warehouse rejects their events
        missing = con.execute(
            f"select count(distinct item_id) from {events} "
            "where item_id not in (select item_id from items where category_id is not null)"
        ).fetchall()[0][0]
        # a subset that is not this log's (another sample's item file) leaves the item task no target: say so
        # at load, not at the warehouse's first empty date
        subset_in_log, events_on_subset = con.execute(
            f"select count(distinct item_id), count(*) from {events} "
            "where item_id in (select item_id from subset_items)"
        ).fetchall()[0] if subset else (0, 0)
    else:
        n_events, ts_min, ts_max, dups, missing, actions = 0, None, None, 0, 0, {}
        subset_in_log, events_on_subset = 0, 0

    totals = {k: sum(getattr(r, k) for r in reports) for k in ("read", "accepted", "rejected")}
    manifest = {
        "source": fmt.name,
        "description": fmt.description,
        "notes": list(fmt.notes),
        "year": year,
        "range": [str(start) if start else None, str(end) if end else None],
        "files": [asdict(r) for r in reports],
        **totals,
        "reconciled": all(r.lines == r.read == r.accepted + r.rejected for r in reports),
        "events": int(n_events),
        "actions": {k: int(v) for k, v in sorted(actions.items())},
        "exact_duplicates": int(dups),
        "items": items.num_rows,
        "item_subset": subset,
        "item_subset_in_log": int(subset_in_log),
        "events_on_item_subset": int(events_on_subset),
        "item_conflicts": log_conflicts + file_conflicts + (previous or {}).get("item_conflicts", 0),
        "event_items_without_metadata": int(missing),
        "first_ts": str(ts_min) if ts_min else None,
        "last_ts": str(ts_max) if ts_max else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if mapping:  # only then: a log loaded again as it was keeps its manifest, and the warehouse its build
        manifest["mapping"] = mapping.as_json()
    if previous is not None:
        # the first load's settings stay the dataset's; each append says what it added, and how much of it falls
        # on or before the last time the dataset held (late events, or a day given twice under another name)
        manifest.update(year=previous.get("year"), range=previous.get("range"))
        before_end = con.execute("select count(*) from read_parquet($parts) where ts <= $end",
                                 {"parts": new_parts, "end": previous["last_ts"]}).fetchall()[0][0] \
            if new_parts and previous.get("last_ts") else 0
        manifest["appended"] = [*previous.get("appended", []), {
            "files": [str(p) for p in [*paths, *(items_paths or [])]],
            "range": [str(start) if start else None, str(end) if end else None],
            "events": int(n_events) - int(previous.get("events", 0)),
            "events_up_to_previous_end": int(before_end),
            "previous_last_ts": previous.get("last_ts")}]
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _event_counts(con: duckdb.DuckDBPyConnection, new_parts: list[str], old_parts: list[Path],
                  previous: dict | None) -> tuple[int, dt.datetime | None, dt.datetime | None, int, dict[str, int]]:
    """Events, first and last time, identical rows (kept: they can be real repeats, as in Tianchi's hour, only
    counted) and events per action of the whole dataset. Appended to one (`previous`, its manifest), they are its
    counts and the new parts', so that an append costs its own rows: the identical rows are the old ones, the new
    ones' among themselves, and the new rows equal to an old one, found only where the two overlap in time (the
    old parts' row groups outside it are skipped by their statistics). A manifest from before it held these counts
    has them counted again, over every part."""
    if previous is not None and not {"events", "exact_duplicates", "actions"} <= previous.keys():
        return _event_counts(con, [*map(str, old_parts), *new_parts], [], None)
    if not new_parts:
        n, first, last, distinct, actions = 0, None, None, 0, {}
    else:
        con.read_parquet(new_parts).create_view("new_events")
        n, first, last = con.execute("select count(*), min(ts), max(ts) from new_events").fetchall()[0]
        distinct = con.execute("select count(*) from (select distinct * from new_events)").fetchall()[0][0]
        actions = dict(con.execute("select action, count(*) from new_events group by 1").fetchall())
    if previous is None:
        return n, first, last, n - distinct, actions
    shared = 0
    if n and previous.get("last_ts"):
        con.read_parquet([str(p) for p in old_parts]).create_view("old_events")
        shared = con.execute("select count(*) from ((select * from new_events where ts <= $last) intersect "
                             "(select * from old_events where ts >= $first))",
                             {"last": previous["last_ts"], "first": first}).fetchall()[0][0]
    prev_first, prev_last = (dt.datetime.fromisoformat(previous[k]) if previous.get(k) else None
                             for k in ("first_ts", "last_ts"))
    times = [t for t in (prev_first, prev_last, first, last) if t is not None]
    merged = {a: previous["actions"].get(a, 0) + actions.get(a, 0) for a in sorted({*previous["actions"], *actions})}
    return (previous["events"] + n, min(times, default=None), max(times, default=None),
            previous["exact_duplicates"] + n - distinct + shared, merged)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link when both are on one file system (an append costs no copy of the log), a copy otherwise."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
