"""Streaming, validating reader for delimited logs.

Files are read in blocks (pyarrow's streaming CSV reader), every column as text,
and validated with vectorised checks. A row that fails a check becomes a reject
with its file, physical line number, reason and raw text; a row with the wrong
number of fields is caught by the parser and rejected the same way. A file that
is not of the declared format fails at once (FormatError) instead of producing a
table of rejects: missing header columns, a wrong field count on the first line,
or a first block where most values of a column are not of the expected kind.

What cannot be a real event is a reject too: a calendar date that does not exist (30 Feb is not read as
2 Mar), a time outside the format's plausible range (1970, 9999) unless --start/--end widen it, an id that
is not of the format's shape (a letter prefix or a leading zero where the format has none), a byte that is
not UTF-8 (the row is refused, not the file). None of the formats quotes its fields, so a quote is an
ordinary character and every physical line is one record: the report reconciles the file's lines with
the rows read (a stray quote used to merge lines into one).
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ml.loaders.formats import Column, FileFormat, LogFormat

REJECTS_SCHEMA = pa.schema(
    [("source_file", pa.string()), ("line", pa.int64()), ("reason", pa.string()), ("raw", pa.string())]
)
_BLOCK_BYTES = 8 << 20
_FORMAT_CHECK_MIN_VALUES = 5


class FormatError(ValueError):
    """The file is not of the declared format; the message names the file, the column and what was expected."""


@dataclass
class FileReport:
    path: str
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    lines: int = 0  # physical data lines of the file (header excluded): each is one record read
    bytes: int = 0  # the file's size as given (compressed or not): `crowd load --append` knows a file again by it

    def check(self) -> None:
        if self.read != self.accepted + self.rejected or self.read != self.lines:
            raise RuntimeError(
                f"{self.path}: counts do not reconcile: {self.lines} data lines, read {self.read}, "
                f"accepted {self.accepted} + rejected {self.rejected}"
            )


def open_log(path: Path) -> BinaryIO:
    """The file's bytes, decompressed as they are read when it is a .gz, .bz2 or one-file .zip: the public logs
    download as archives (UserBehavior.csv.zip is 0.9 GB for a 3.5 GB CSV), and nothing is unpacked on disk.
    Line numbers, rejects and counts are those of the log inside."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix != ".zip":
        return open(path, "rb")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise FormatError(f"{path}: not a zip archive") from None
    files = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
    if len(files) != 1:
        archive.close()
        shown = ", ".join(m.filename for m in files[:5]) + (", ..." if len(files) > 5 else "")
        raise FormatError(f"{path}: a zip archive of {len(files)} files ({shown}): the loader reads an archive "
                          "of one log; unzip it and name the log's file")
    member = archive.open(files[0])
    archive.close()  # the member keeps the archive's file open until it is closed itself
    return member


def count_lines(path: Path) -> int:
    """Physical lines (a last line without its newline counts), in blocks of bounded memory."""
    n, last = 0, b"\n"
    with open_log(path) as f:
        while block := f.read(_BLOCK_BYTES):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


@dataclass(frozen=True)
class Layout:
    delimiter: str
    header: bool
    names: list[str]  # the file's column names, in file order


def first_line(path: Path) -> str:
    with open_log(path) as f:
        raw = f.readline(1 << 20)
    body = raw.removesuffix(b"\n").removesuffix(b"\r")
    if b"\r" in body:  # the reader ends a row at a lone \r, the line count does not: nothing would reconcile
        raise FormatError(f"{path}: line 1 holds a carriage return (\\r) that is not part of its line end: lines "
                          "must end in \\n or \\r\\n; convert a file of lone \\r line ends (old Mac) with "
                          "tr '\\r' '\\n', one of \\r\\r\\n with tr -d '\\r'")
    return body.decode("utf-8", errors="replace").lstrip("\ufeff")


def sniff(path: Path, ff: FileFormat) -> Layout:
    """Delimiter and header from the first line, checked against the declared columns."""
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    line = first_line(path)
    if not line.strip():
        raise FormatError(f"{path}: the file is empty; expected columns {', '.join(ff.names)}")
    delim = next((d for d in ff.delimiters if d in line), None)
    if delim is None:
        if len(ff.columns) > 1:
            shown = " or ".join(repr(d) for d in ff.delimiters)
            raise FormatError(
                f"{path}: line 1 has no {shown} separator; expected columns {', '.join(ff.names)}"
            )
        delim = ff.delimiters[0]
    fields = [f.strip().strip('"') for f in line.split(delim)]
    header = ff.header if ff.header is not None else fields[0].lower() == ff.columns[0].name
    if header:
        present = {f.lower() for f in fields}
        missing = [c.name for c in ff.columns if c.kind != "skip" and not c.optional and c.name not in present]
        if missing:
            expected = ", ".join(f"{c.name} (optional)" if c.optional else c.name for c in ff.columns)
            raise FormatError(f"{path}: column {missing[0]!r} is missing from the header {fields}; "
                              f"expected columns {expected}")
        return Layout(delim, True, [f.lower() for f in fields])
    if len(fields) != len(ff.columns):
        raise FormatError(
            f"{path}: line 1 has {len(fields)} fields, expected {len(ff.columns)} "
            f"({', '.join(ff.names)}) separated by {delim!r}"
        )
    return Layout(delim, False, ff.names)


# ---- column parsers: each returns (values, failure mask, failure message) ---------------------


def _text(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The values without surrounding blanks and quotes; trimmed as bytes, since a value may not be UTF-8
    (the reader does not check it: such a value fails its column's check like any other bad value)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    try:
        return pc.utf8_trim(arr, characters=' "\t\r')
    except pa.ArrowInvalid:  # not UTF-8 somewhere: the slower trim of bytes, for this block only
        trimmed = pc.replace_substring_regex(arr.view(pa.binary()), r'^[ "\t\r]+|[ "\t\r]+$', "")
        return trimmed.view(pa.string())


def _empty(s: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.equal(s, ""), True).to_numpy(zero_copy_only=False)


def parse_ids(s: pa.Array, prefix: bool = False, float_look: bool = False
              ) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Integer ids without leading zeros (007 is no id: it would silently become 7); a letter prefix (u123)
    and a float look (123.0) only where the format has them. Returns values, empty, bad."""
    stripped = s
    if prefix:
        stripped = pc.replace_substring_regex(stripped, r"^[A-Za-z]+", "")
    if float_look:
        stripped = pc.replace_substring_regex(stripped, r"\.0+$", "")
    good = pc.fill_null(pc.match_substring_regex(stripped, r"^(0|[1-9]\d{0,17})$"), False)
    values = pc.cast(pc.if_else(good, stripped, None), pa.int64())
    empty = _empty(s)
    bad = ~good.to_numpy(zero_copy_only=False) & ~empty
    return values, empty, bad


def _negative(s: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.match_substring_regex(s, r"^-\d"), False).to_numpy(zero_copy_only=False)


# how a reject names the time rules that are no strptime pattern
TIME_RULES_SAID = {"iso_local": "YYYY-MM-DD HH:MM:SS or YYYY-MM-DDTHH:MM:SS, local time without a zone",
                   "unix_seconds": "unix seconds", "unix_millis": "unix milliseconds", "mmdd": "mmdd"}
# unix times: the digits a value may have (to the year 5138), and the units in a second
_UNIX_RULES = {"unix_seconds": (11, 1), "unix_millis": (14, 1000)}


def parse_time(s: pa.Array, rule: str, year: int | None, utc_offset_s: int = 0
               ) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Timestamps (us, naive), the mask of values that could not be read, and of those that name no real
    calendar day (strptime rolls 30 Feb over to 2 Mar: a value is kept only when its month and day are the
    ones written). Unix times are turned into the log's local time, `utc_offset_s` east of UTC, so that
    calendar days are the log's days (Taobao's, in China, are UTC+8)."""
    if rule == "iso_local":  # 2024-03-02 09:00:00 or 2024-03-02T09:00:00[.123]: local time, no zone
        plain = pc.replace_substring_regex(s, r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d{1,9})?$", r"\1 \2")
        return parse_time(plain, "%Y-%m-%d %H:%M:%S", year)
    if rule in _UNIX_RULES:
        digits, per_second = _UNIX_RULES[rule]
        good = pc.fill_null(pc.match_substring_regex(s, rf"^\d{{1,{digits}}}$"), False)
        units = pc.cast(pc.if_else(good, s, None), pa.int64())
        seconds = pc.divide(units, per_second)  # to the second, as every format's times (integers: truncated)
        micros = pc.multiply(pc.add(seconds, utc_offset_s), 1_000_000)
        ts = pc.cast(micros, pa.timestamp("us"))
        return ts, pc.is_null(ts).to_numpy(zero_copy_only=False), np.zeros(len(s), bool)
    if rule == "mmdd":
        if year is None:
            raise ValueError("this format stores dates as mmdd: give the year (--year)")
        short = pc.fill_null(pc.match_substring_regex(s, r"^\d{3,4}$"), False)
        s = pc.utf8_lpad(pc.if_else(short, s, None), width=4, padding="0")
        ts = pc.strptime(pc.binary_join_element_wise(str(year), s, ""), format="%Y%m%d", unit="us",
                         error_is_null=True)
        rule = "%m%d"
    else:
        ts = pc.strptime(s, format=rule, unit="us", error_is_null=True)
    read = pc.is_valid(ts).to_numpy(zero_copy_only=False)
    same = _month_and_day_as_written(s, ts, rule, read)
    return pc.if_else(pa.array(same), ts, None), ~read, read & ~same


FIELD_WIDTHS = {"Y": 4, "m": 2, "d": 2, "H": 2, "M": 2, "S": 2}


def _month_and_day_as_written(s: pa.Array, ts: pa.Array, rule: str, read: np.ndarray) -> np.ndarray:
    """Where the value was read, whether its month and day are those written. A value of the rule's full
    width has them at fixed places (sliced, no regex: this runs on every row); one written without leading
    zeros, rare, is printed back and compared."""
    offsets, width, i = {}, 0, 0
    while i < len(rule):
        if rule[i] == "%" and i + 1 < len(rule):
            code = rule[i + 1]
            if code not in FIELD_WIDTHS:
                raise ValueError(f"time rule {rule!r}: %{code} has no fixed width")
            offsets[code], width, i = width, width + FIELD_WIDTHS[code], i + 2
        else:
            width, i = width + 1, i + 1
    fixed = read & pc.fill_null(pc.equal(pc.utf8_length(s), width), False).to_numpy(zero_copy_only=False)
    same = np.zeros(len(s), bool)
    mask = pa.array(fixed)

    def written(code: str) -> np.ndarray:
        start = offsets[code]
        part = pc.if_else(mask, pc.utf8_slice_codeunits(s, start, start + 2), None)
        return pc.fill_null(pc.cast(part, pa.int64()), -1).to_numpy(zero_copy_only=False)

    same[fixed] = ((pc.month(ts).to_numpy(zero_copy_only=False) == written("m"))
                   & (pc.day(ts).to_numpy(zero_copy_only=False) == written("d")))[fixed]
    loose = np.flatnonzero(read & ~fixed)
    if len(loose):
        idx = pa.array(loose)
        seconds = ts.take(idx).cast(pa.timestamp("s"))  # (at "us", %S prints fractions)
        printed = pc.strftime(seconds, format=rule)
        same[loose] = pc.equal(_unpadded(printed), _unpadded(s.take(idx))).to_numpy(zero_copy_only=False)
    return same


def _unpadded(s: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(s, r"\b0+(\d)", r"\1")


def parse_category_path(s: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray]:
    """"parent-leaf" (or just "leaf") into leaf and parent ids."""
    parts = pc.extract_regex(s, r"^(?:(?P<parent>[^-]*)-)?(?P<leaf>[^-]*)$")
    shaped = pc.is_valid(parts).to_numpy(zero_copy_only=False)
    leaf, empty, bad_leaf = parse_ids(pc.fill_null(pc.struct_field(parts, "leaf"), ""))
    parent, _, bad_parent = parse_ids(pc.fill_null(pc.struct_field(parts, "parent"), ""))
    return leaf, parent, empty & shaped, bad_leaf | bad_parent | ~shaped


# ---- the reader --------------------------------------------------------------------------------


@dataclass
class Batch:
    accepted: pa.Table
    rejects: pa.Table


class _Reasons:
    """The first failing check of each row, with the offending value."""

    def __init__(self, n: int):
        self.reason = np.full(n, None, dtype=object)
        self.kind = np.full(n, None, dtype=object)  # the reason without the value, for the summary

    def add(self, mask: np.ndarray, column: str, message: str, values: pa.Array) -> None:
        mask = mask & np.equal(self.reason, None)
        idx = np.flatnonzero(mask)
        if len(idx):
            shown = _as_text(values.take(pa.array(idx)))
            self.reason[idx] = [f"{column}: {message} {v!r}" for v in shown]
            self.kind[idx] = f"{column}: {message}"


def _check_shape(path: Path, first: bool, column: Column, bad: np.ndarray, empty: np.ndarray,
                 values: pa.Array, expected: str) -> None:
    """On the first block, a column that is mostly not of its kind means a wrong format, not bad rows."""
    if not first:
        return
    filled = ~empty
    n = int(filled.sum())
    if n >= _FORMAT_CHECK_MIN_VALUES and bad[filled].mean() > 0.5:
        example = _as_text(values.take(pa.array(np.flatnonzero(bad)[:1])))[0]
        raise FormatError(
            f"{path}: column {column.name!r} does not look like {expected}: "
            f"{bad[filled].mean():.0%} of the first {n} values fail (e.g. {example!r})"
        )


def _as_text(values: pa.Array) -> list[str]:
    """Rejected values as Python text, bytes that are not UTF-8 replaced (rejects only: few rows)."""
    return [b.decode("utf-8", "replace") for b in values.view(pa.binary()).to_pylist()]


def _parser_rejects(path: Path, rows: list[tuple[int, str, str]]) -> pa.Table:
    """Rows the CSV parser itself refused (wrong field count, blank line), as rejects."""
    return pa.table(
        {
            "source_file": [str(path)] * len(rows),
            "line": [r[0] for r in rows],
            "reason": [r[1] for r in rows],
            "raw": [r[2] for r in rows],
        },
        schema=REJECTS_SCHEMA,
    )


def _count_rejects(report: FileReport, kinds: list[str]) -> None:
    report.rejected += len(kinds)
    for key, count in zip(*np.unique(np.asarray(kinds, dtype=str), return_counts=True), strict=True):
        report.reasons[str(key)] = report.reasons.get(str(key), 0) + int(count)


def read_file(
    path: Path,
    fmt: LogFormat,
    ff: FileFormat,
    *,
    year: int | None = None,
    ts_range: tuple[dt.date | None, dt.date | None] = (None, None),
    report: FileReport,
    block_bytes: int = _BLOCK_BYTES,
) -> Iterator[Batch]:
    """Yield validated batches of one file; `report` is filled as it goes and reconciled at the end."""
    layout = sniff(path, ff)
    invalid_lines: list[int] = []   # physical lines the parser rejected, in order
    invalid_rows: list[tuple[int, str, str]] = []
    first_data_line = 2 if layout.header else 1

    def on_invalid(row: pacsv.InvalidRow) -> str:
        # the parser counts physical lines from 1, header included
        line = int(row.number) if row.number is not None else -1
        text = row.text or ""
        reason = ("blank line" if not text.strip()
                  else f"expected {row.expected_columns} fields, found {row.actual_columns}")
        invalid_rows.append((line, reason, text))
        invalid_lines.append(line)
        return "skip"

    read_opts = pacsv.ReadOptions(
        column_names=layout.names,
        skip_rows=1 if layout.header else 0,
        block_size=block_bytes,
        use_threads=False,
    )
    parse_opts = pacsv.ParseOptions(
        delimiter=layout.delimiter, quote_char=False, ignore_empty_lines=False, invalid_row_handler=on_invalid
    )
    # bytes that are not UTF-8 fail the checks of the row's values (and are shown replaced), not the file
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in layout.names}, strings_can_be_null=False,
        quoted_strings_can_be_null=False, check_utf8=False,
    )
    lo, hi = ts_range
    plausible = lo is None and hi is None
    lo = lo or dt.date.fromisoformat(fmt.plausible_start)
    hi = hi or dt.date.today() + dt.timedelta(days=1)
    where = (f"outside the plausible range [{lo}, {hi}) of {fmt.name} (widen it with --start/--end)" if plausible
             else f"outside [{lo}, {hi})")
    targets_order = [c for c in ff.columns if c.kind != "skip"]
    rows_seen = 0
    flushed_invalid = 0
    first = True
    source = open_log(path)  # closed when the generator ends, is closed or fails
    try:
        try:
            reader = pacsv.open_csv(source, read_options=read_opts, parse_options=parse_opts, convert_options=convert)
        except pa.ArrowInvalid as e:
            raise FormatError(f"{path}: cannot be read as {fmt.name}: {e}") from None
        while True:
            try:
                rb = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise FormatError(f"{path}: cannot be read as {fmt.name}: {e}") from None
            n = rb.num_rows
            # physical line of each row: skip the lines the parser took out (binary search on their positions)
            inv = np.asarray(invalid_lines, dtype=np.int64)
            k = np.arange(rows_seen, rows_seen + n, dtype=np.int64)
            before = inv - first_data_line - np.arange(len(inv))
            lines = first_data_line + k + np.searchsorted(before, k, side="right")
            rows_seen += n

            reasons = _Reasons(n)
            # the parser reads an empty line as a row of empty fields
            blank = np.logical_and.reduce([_empty(_text(rb.column(c))) for c in layout.names])
            if blank.any():
                reasons.add(blank, "line", "blank", pa.array([""] * n))
            out: dict[str, pa.Array] = {}
            for col in targets_order:
                if col.name not in layout.names:
                    continue
                s = _text(rb.column(col.name))
                if col.kind == "id":
                    values, empty, bad = parse_ids(s, fmt.id_prefix, fmt.id_float_look)
                    if not col.nullable:
                        reasons.add(empty, col.name, "missing", s)
                    neg = _negative(s)
                    reasons.add(neg, col.name, "negative id", s)
                    reasons.add(bad & ~neg, col.name, "not an id", s)
                    _check_shape(path, first, col, bad, empty, s, "integer ids")
                    out[col.target] = values
                elif col.kind == "action":
                    keys = pa.array(list(fmt.actions), pa.string())
                    idx = pc.index_in(s, value_set=keys)
                    unknown = pc.is_null(idx).to_numpy(zero_copy_only=False)
                    reasons.add(unknown, col.name, f"unknown action (expected one of {list(fmt.actions)})", s)
                    _check_shape(path, first, col, unknown, _empty(s), s, f"action codes {list(fmt.actions)}")
                    out[col.target] = pa.array(list(fmt.actions.values()), pa.string()).take(idx)
                elif col.kind == "time":
                    ts, bad, no_day = parse_time(s, fmt.time_rule, year, fmt.utc_offset_s)
                    empty = _empty(s)
                    reasons.add(empty, col.name, "missing time", s)
                    expected = TIME_RULES_SAID.get(fmt.time_rule, fmt.time_rule)
                    reasons.add(bad, col.name, f"unparseable time (expected {expected})", s)
                    reasons.add(no_day, col.name, "no such calendar day", s)
                    _check_shape(path, first, col, bad, empty, s, f"times as {expected}")
                    tsn = pc.fill_null(ts.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
                    out_of = (tsn < np.datetime64(lo, "us").astype(np.int64)) | \
                             (tsn >= np.datetime64(hi, "us").astype(np.int64))
                    reasons.add(out_of & ~bad & ~no_day, col.name, where, s)
                    out[col.target] = ts
                elif col.kind == "category_path":
                    leaf, parent, empty, bad = parse_category_path(s)
                    reasons.add(empty, col.name, "missing", s)
                    reasons.add(bad, col.name, "not a category path (parent-leaf)", s)
                    _check_shape(path, first, col, bad, empty, s, "category paths parent-leaf")
                    out["category_id"] = leaf
                    out["parent_category_id"] = parent
                else:
                    raise ValueError(f"unknown column kind {col.kind!r} for {col.name}")
            first = False

            ok = np.equal(reasons.reason, None)
            keep = pa.array(ok)
            accepted = pa.table({k: v.filter(keep) for k, v in out.items()})
            bad_idx = np.flatnonzero(~ok)
            raw = pc.binary_join_element_wise(*[rb.column(c) for c in layout.names], layout.delimiter) \
                if len(bad_idx) else pa.array([], pa.string())
            rejects_parts = [
                pa.table(
                    {
                        "source_file": pa.array([str(path)] * len(bad_idx), pa.string()),
                        "line": pa.array(lines[bad_idx], pa.int64()),
                        "reason": pa.array(reasons.reason[bad_idx].tolist(), pa.string()),
                        "raw": pa.array(_as_text(raw.take(pa.array(bad_idx))), pa.string()) if len(bad_idx) else raw,
                    },
                    schema=REJECTS_SCHEMA,
                )
            ]
            fresh = invalid_rows[flushed_invalid:]
            flushed_invalid = len(invalid_rows)
            rejects = pa.concat_tables([*rejects_parts, _parser_rejects(path, fresh)])
            report.read += n + len(fresh)
            report.accepted += accepted.num_rows
            _count_rejects(report, [*reasons.kind[bad_idx].tolist(), *(r[1] for r in fresh)])
            yield Batch(accepted, rejects)

        # rows the parser rejected after the last batch
        tail = invalid_rows[flushed_invalid:]
        if tail:
            report.read += len(tail)
            _count_rejects(report, [r[1] for r in tail])
            yield Batch(pa.table({}), _parser_rejects(path, tail))
        if report.read == 0:
            raise FormatError(f"{path}: no data rows after the header; expected columns {', '.join(ff.names)}")
        report.lines = count_lines(path) - (1 if layout.header else 0)
        report.check()
    finally:
        source.close()
