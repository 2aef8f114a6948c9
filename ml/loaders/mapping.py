"""A log of one's own in `--format csv` under its own names: which header holds each column, which of its action
values is a click, a collect, a cart or a buy, and how its times are written.

Logs in the wild name these their own way (RetailRocket's `visitorid`, `event` of `view`, `addtocart`,
`transaction`, times in unix milliseconds); renaming them in a copy of a large file first costs a pass over it and
a second copy on disk, and hides the source's own names from the rejects. The mapping is applied to the csv
format's declaration instead, so the reader validates and rejects the file as it is, and the manifest records
the mapping (the warehouse's build key reads the manifest: another mapping is another build).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ml.config import ACTIONS
from ml.loaders.csv_reader import FIELD_WIDTHS
from ml.loaders.formats import FORMATS, FileFormat, LogFormat

# the rules a log of one's own may name, and the strptime patterns (of fixed-width fields) it may give instead
TIME_FORMATS = {"iso": "iso_local", "unix_seconds": "unix_seconds", "unix_millis": "unix_millis"}


@dataclass(frozen=True)
class CsvMapping:
    """columns: the csv format's column -> the file's header name; actions: the log's value -> one of ACTIONS
    (empty: the format's own values); time_format: a key of TIME_FORMATS or a strptime pattern (None: iso);
    utc_offset: where unix times are local, as +HH:MM or hours east of UTC (None: UTC)."""

    columns: dict[str, str] = field(default_factory=dict)
    actions: dict[str, str] = field(default_factory=dict)
    time_format: str | None = None
    utc_offset: str | None = None

    def __bool__(self) -> bool:
        return bool(self.columns or self.actions or self.time_format or self.utc_offset)

    def as_json(self) -> dict:
        return {"columns": self.columns, "actions": self.actions, "time_format": self.time_format,
                "utc_offset": self.utc_offset}


def parse_pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """`--column user_id=visitorid` (repeatable, or comma-separated) as a dict; a name given twice fails."""
    pairs: dict[str, str] = {}
    for value in values or []:
        for part in value.split(","):
            key, sep, val = (x.strip() for x in part.partition("="))
            if not sep or not key or not val:
                raise ValueError(f"{option} {part!r}: expected NAME=VALUE")
            if key in pairs:
                raise ValueError(f"{option} {key!r} is given twice ({pairs[key]!r} and {val!r})")
            pairs[key] = val
    return pairs


def mapped_format(fmt: LogFormat, mapping: CsvMapping) -> LogFormat:
    """The format with the mapping applied, checked: only the csv format takes one (the public formats are fixed
    by their publishers), each column is one of the format's and each header name one column's, each action
    value names one of ACTIONS, and a time pattern has a year, a month and a day in fields of fixed width."""
    if not mapping:
        return fmt
    if fmt is not FORMATS["csv"]:
        raise ValueError(f"--column, --action, --time-format and --utc-offset are for --format csv; {fmt.name}'s "
                         "are fixed")
    known = [c.name for c in fmt.events.columns]
    for name in mapping.columns:
        if name not in known:
            raise ValueError(f"--column {name}=...: {name!r} is not a column of --format csv "
                             f"(one of {', '.join(known)})")
    headers = {name: header.lower() for name, header in mapping.columns.items()}  # headers are read in lower case
    renamed = {header: name for name, header in headers.items()}
    if len(renamed) < len(headers):
        raise ValueError(f"--column: two columns are read from one header ({', '.join(mapping.columns.values())})")
    for header, name in renamed.items():  # a header that is another column's own name would be read twice
        if header in known and header != name and header not in headers:
            raise ValueError(f"--column {name}={header}: {header!r} is the name of the column {header} too; "
                             f"map {header} to another header")
    for value, action in mapping.actions.items():
        if action not in ACTIONS:
            raise ValueError(f"--action {value}={action}: {action!r} is none of {', '.join(ACTIONS)}")
    rule = time_rule(mapping.time_format) if mapping.time_format else fmt.time_rule
    if mapping.utc_offset is not None and not rule.startswith("unix_"):
        raise ValueError(f"--utc-offset {mapping.utc_offset}: only unix times (--time-format unix_seconds or "
                         "unix_millis) have a zone to turn into local time; other times are read as written")
    return replace(
        fmt,
        events=_renamed(fmt.events, headers),
        items=_renamed(fmt.items, headers) if fmt.items is not None else None,
        actions=dict(mapping.actions) or fmt.actions,
        time_rule=rule,
        utc_offset_s=offset_seconds(mapping.utc_offset) if mapping.utc_offset is not None else fmt.utc_offset_s,
    )


def offset_seconds(offset: str) -> int:
    """+08:00, -05:00, +05:30 or a number of hours (8, -5, 5.5) as seconds east of UTC, within a day."""
    hhmm = re.fullmatch(r"([+-])(\d{2}):(\d{2})", offset.strip())
    try:
        hours = (int(hhmm[2]) + int(hhmm[3]) / 60) * (-1 if hhmm[1] == "-" else 1) if hhmm else float(offset)
    except ValueError:
        hours = None
    if hours is None or not -14 <= hours <= 14:
        raise ValueError(f"--utc-offset {offset!r}: expected +HH:MM or hours east of UTC, within -14..14 (+08:00, "
                         "-5, 5.5)")
    return round(hours * 3600)


def _renamed(ff: FileFormat, headers: dict[str, str]) -> FileFormat:
    return replace(ff, columns=tuple(replace(c, name=headers.get(c.name, c.name)) for c in ff.columns))


def time_rule(time_format: str) -> str:
    """The reader's rule for a --time-format: a named rule, or a strptime pattern of %Y, %m, %d, %H, %M, %S (fixed
    widths: the reader checks each value's month and day where they were written)."""
    if time_format in TIME_FORMATS:
        return TIME_FORMATS[time_format]
    codes = re.findall(r"%(.)", time_format)
    if not codes:
        raise ValueError(f"--time-format {time_format!r}: expected one of {', '.join(TIME_FORMATS)} or a strptime "
                         "pattern such as '%Y-%m-%d %H:%M:%S'")
    unknown = sorted({c for c in codes if c not in FIELD_WIDTHS})
    if unknown:
        raise ValueError(f"--time-format {time_format!r}: %{unknown[0]} is not read (a pattern may use "
                         f"{', '.join('%' + c for c in FIELD_WIDTHS)})")
    if not {"Y", "m", "d"} <= set(codes):
        raise ValueError(f"--time-format {time_format!r}: a pattern needs %Y, %m and %d (the day each event is on)")
    return time_format
