"""Loaders on real public samples, on corrupted copies of them, and on files of the wrong format."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ml.cli import main
from ml.loaders.csv_reader import FileReport, FormatError, read_file
from ml.loaders.formats import FORMATS
from ml.loaders.load import load
from ml.loaders.mapping import CsvMapping, parse_pairs

REAL = Path(__file__).parent / "fixtures" / "real"
TIANCHI_LOG = REAL / "tianchi_mobile_user_sample.csv"
TIANCHI_ITEMS = REAL / "tianchi_mobile_item_sample.csv"
TMALL_REPEAT = REAL / "tmall_user_log_sample.csv"


def _events(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "events").to_pandas()


def test_tianchi_sample_loads_every_row_with_its_quirks(tmp_path):
    raw = pd.read_csv(TIANCHI_LOG, dtype=str)
    m = load("tianchi-mobile", [TIANCHI_LOG], tmp_path / "t", items_paths=[TIANCHI_ITEMS])
    ev = _events(tmp_path / "t")
    assert m["read"] == len(raw) + len(pd.read_csv(TIANCHI_ITEMS))
    assert m["rejected"] == 0 and m["reconciled"]
    assert len(ev) == len(raw)
    codes = {"1": "click", "2": "collect", "3": "cart", "4": "buy"}
    assert ev.action.value_counts().to_dict() == raw.behavior_type.map(codes).value_counts().to_dict()
    # hour resolution: every timestamp is on the hour
    assert (ev.ts.dt.minute == 0).all() and (ev.ts.dt.second == 0).all()
    assert str(ev.ts.min()) == raw.time.min() + ":00:00"
    # identical events (same user, item, action, hour) are kept and counted, not silently dropped
    assert m["exact_duplicates"] == int(raw[["user_id", "item_id", "behavior_type", "time"]].duplicated().sum()) > 0
    items = pq.read_table(tmp_path / "t" / "items.parquet").to_pandas()
    assert items.item_id.is_unique
    assert set(ev.item_id) <= set(items.item_id)
    assert items.brand_id.isna().all()
    # the item file is the competition's subset: its distinct ids, kept apart from the log's other items
    subset = pq.read_table(tmp_path / "t" / "item_subset.parquet").to_pandas()
    listed = set(pd.read_csv(TIANCHI_ITEMS)["item_id"])
    assert subset.item_id.is_unique and set(subset.item_id) == listed
    assert m["item_subset"] == len(listed) < len(items)
    # how much of the log the subset covers (this sample's two files share few items)
    logged = set(raw.item_id.astype("int64"))
    assert m["item_subset_in_log"] == len(logged & listed) > 0
    assert m["events_on_item_subset"] == int(raw.item_id.astype("int64").isin(listed).sum())


def test_tmall_repeat_sample_needs_a_year_and_reads_float_brand_ids(tmp_path):
    with pytest.raises(ValueError, match="--year"):
        load("tmall-repeat", [TMALL_REPEAT], tmp_path / "x")
    raw = pd.read_csv(TMALL_REPEAT, dtype=str)
    m = load("tmall-repeat", [TMALL_REPEAT], tmp_path / "r", year=2014)
    assert m["accepted"] == len(raw) and m["rejected"] == 0
    ev = _events(tmp_path / "r")
    codes = {"0": "click", "1": "cart", "2": "buy", "3": "collect"}
    assert ev.action.value_counts().to_dict() == raw.action_type.map(codes).value_counts().to_dict()
    first = raw.iloc[0]
    row = ev[(ev.user_id == int(first.user_id)) & (ev.item_id == int(first.item_id))].iloc[0]
    assert row.ts == pd.Timestamp(f"2014-{first.time_stamp[:2]}-{first.time_stamp[2:]}")
    items = pq.read_table(tmp_path / "r" / "items.parquet").to_pandas().set_index("item_id")
    assert items.loc[int(first.item_id), "brand_id"] == int(float(first.brand_id))
    assert items.loc[int(first.item_id), "shop_id"] == int(first.seller_id)
    no_brand = raw.drop_duplicates("item_id").brand_id.isna().sum()
    assert items.brand_id.isna().sum() == no_brand or m["item_conflicts"] > 0


def _corrupt_tianchi(path: Path) -> dict[int, str]:
    """A copy of the Tianchi sample with one defect per chosen line; returns line -> expected reason start."""
    lines = TIANCHI_LOG.read_bytes().split(b"\r\n")
    if lines[-1] == b"":
        lines = lines[:-1]
    fields = lambda i: lines[i].split(b",")  # noqa: E731

    def put(line_no: int, new: bytes) -> None:
        lines[line_no - 1] = new

    for line_no, column, value in ((6, 2, b"9"), (11, 0, b"-5"), (21, 5, b"2014-13-40 99"), (31, 0, b""),
                                   (36, 1, b"12x4")):
        f = fields(line_no - 1)
        f[column] = value
        put(line_no, b",".join(f))
    put(41, lines[40] + b",extra")
    put(51, b"")
    put(61, b"garbage")
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return {
        6: "behavior_type: unknown action",
        11: "user_id: negative id",
        21: "time: unparseable time",
        31: "user_id: missing",
        36: "item_id: not an id",
        41: "expected 6 fields, found 7",
        51: "line: blank",
        61: "expected 6 fields, found 1",
    }


@pytest.mark.parametrize("block_bytes", [1 << 20, 4096])
def test_corrupted_rows_are_rejected_with_file_line_and_reason(tmp_path, block_bytes):
    bad = tmp_path / "bad.csv"
    expected = _corrupt_tianchi(bad)
    report = FileReport(str(bad))
    batches = list(read_file(bad, FORMATS["tianchi-mobile"], FORMATS["tianchi-mobile"].events,
                             report=report, block_bytes=block_bytes))
    rejects = pd.concat([b.rejects.to_pandas() for b in batches], ignore_index=True)
    got = {int(r.line): r.reason for r in rejects.itertuples()}
    assert set(got) == set(expected)
    for line, reason in expected.items():
        assert got[line].startswith(reason), (line, got[line])
    assert (rejects.source_file == str(bad)).all()
    raw_lines = bad.read_bytes().decode().split("\r\n")
    for r in rejects.itertuples():
        if r.reason != "line: blank ''":
            assert r.raw.split(",")[:2] == raw_lines[r.line - 1].split(",")[:2]
    accepted = sum(b.accepted.num_rows for b in batches)
    assert report.read == accepted + report.rejected == 1999
    assert report.rejected == len(expected)


def test_load_keeps_rejects_and_reconciles_counts(tmp_path):
    bad = tmp_path / "bad.csv"
    expected = _corrupt_tianchi(bad)
    m = load("tianchi-mobile", [bad], tmp_path / "out")
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pandas()
    assert len(rejects) == m["rejected"] == len(expected)
    assert m["read"] == m["accepted"] + m["rejected"] and m["reconciled"]
    assert len(_events(tmp_path / "out")) == m["accepted"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["rejected"] == len(expected)


@pytest.mark.parametrize("packed", [".gz", ".bz2", ".zip"])
def test_a_compressed_log_loads_as_its_plain_file_does(tmp_path, packed):
    """The public logs download as archives (UserBehavior.csv.zip): read as they are, with the same events,
    rejects, line numbers and counts as the file inside. It said "line 1 has no ',' separator"."""
    import bz2
    import gzip
    import zipfile

    bad = tmp_path / "bad.csv"
    expected = _corrupt_tianchi(bad)
    archive = tmp_path / f"log{packed}" if packed == ".zip" else tmp_path / f"bad.csv{packed}"
    if packed == ".zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            z.write(bad, "bad.csv")
    else:
        archive.write_bytes((gzip if packed == ".gz" else bz2).compress(bad.read_bytes()))
    plain = load("tianchi-mobile", [bad], tmp_path / "plain")
    unpacked = load("tianchi-mobile", [archive], tmp_path / "p")
    assert unpacked["reconciled"] and unpacked["rejected"] == len(expected)
    assert (unpacked["read"], unpacked["accepted"]) == (plain["read"], plain["accepted"])
    pd.testing.assert_frame_equal(_events(tmp_path / "p"), _events(tmp_path / "plain"))

    def rejects(out: Path) -> pd.DataFrame:  # the file they name differs; where and why they are does not
        return pq.read_table(out / "rejects.parquet").to_pandas()[["line", "reason", "raw"]]
    pd.testing.assert_frame_equal(rejects(tmp_path / "p"), rejects(tmp_path / "plain"))


def test_an_archive_of_several_files_is_refused_naming_them(tmp_path):
    import zipfile

    two = tmp_path / "data_format1.zip"
    with zipfile.ZipFile(two, "w") as z:
        z.write(TMALL_REPEAT, "user_log_format1.csv")
        z.write(TIANCHI_ITEMS, "user_info_format1.csv")
    with pytest.raises(FormatError, match=r"a zip archive of 2 files \(user_log_format1.csv, user_info_format1.csv\)"
                                          r": the loader reads an archive of one log; unzip it"):
        load("tmall-repeat", [two], tmp_path / "o", year=2014)
    (tmp_path / "not.zip").write_text("user_id,item_id\n")
    with pytest.raises(FormatError, match="not a zip archive"):
        load("tmall-repeat", [tmp_path / "not.zip"], tmp_path / "o", year=2014)


def test_rows_outside_the_declared_range_are_rejected(tmp_path):
    m = load("tianchi-mobile", [TIANCHI_LOG], tmp_path / "o", start=dt.date(2014, 12, 1), end=dt.date(2014, 12, 10))
    ev = _events(tmp_path / "o")
    assert ev.ts.min() >= pd.Timestamp("2014-12-01") and ev.ts.max() < pd.Timestamp("2014-12-10")
    assert m["rejected"] > 0 and m["accepted"] + m["rejected"] == m["read"]
    assert all("outside" in k for k in m["files"][0]["reasons"])


def test_taobao_unix_seconds_are_read_as_china_time(tmp_path):
    f = tmp_path / "UserBehavior.csv"
    f.write_text("1,2268318,2520377,pv,1511544070\n1,2333346,2520771,buy,1511561733\n2,5,6,fav,1511572885\n")
    load("taobao-userbehavior", [f], tmp_path / "tb")
    ev = _events(tmp_path / "tb").sort_values("ts")
    # 1511544070 is 2017-11-24 17:21:10 UTC, i.e. 2017-11-25 01:21:10 in China
    assert ev.ts.iloc[0] == pd.Timestamp("2017-11-25 01:21:10")
    assert list(ev.action) == ["click", "buy", "collect"]
    items = pq.read_table(tmp_path / "tb" / "items.parquet").to_pandas()
    assert dict(zip(items.item_id, items.category_id, strict=True))[2268318] == 2520377


def test_tmall_rec_reads_x01_separators_prefixed_ids_and_category_paths(tmp_path):
    log = tmp_path / "user_log.txt"
    log.write_bytes(
        b"i100\x01u9774184\x01click\x012013-05-01 10:11:12\n"
        b"100\x01u9774184\x01alipay\x012013-05-01 10:20:00\n"
        b"200\x01u42\x01refund\x012013-05-02 00:00:00\n"
    )
    items = tmp_path / "product.txt"
    items.write_bytes(
        b"100\x01a title, with a comma\x01http://x/1.jpg\x0150025004-50011740\x01b89366\x01s86799\n"
        b"200\x01t\x01u\x0150011740\x01\x01s1\n"
    )
    m = load("tmall", [log], tmp_path / "tm", items_paths=[items])
    ev = _events(tmp_path / "tm")
    assert list(ev.user_id) == [9774184, 9774184] and list(ev.action) == ["click", "buy"]
    assert m["rejected"] == 1 and "unknown action" in next(iter(m["files"][0]["reasons"]))
    it = pq.read_table(tmp_path / "tm" / "items.parquet").to_pandas().set_index("item_id")
    assert it.loc[100].tolist() == [50011740, 50025004, 89366, 86799]
    assert it.loc[200, "category_id"] == 50011740 and pd.isna(it.loc[200, "brand_id"])


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("taobao-userbehavior", None, "column 'category_id' is missing"),            # the Tianchi file
        ("tianchi-mobile", "1,2,3,pv,1511544070\n", "has 5 fields, expected 6"),
        ("taobao-userbehavior", "", "empty"),
        ("taobao-userbehavior", "".join(f"{i},2,3,pv,2017-11-25 10:00\n" for i in range(20)), "column 'timestamp'"),
        ("tianchi-mobile", "user_id;item_id;behavior_type\n1;2;3\n", "separator"),
    ],
)
def test_a_file_of_another_format_fails_at_once_naming_file_and_column(tmp_path, fmt, content, message):
    if content is None:
        path = TIANCHI_LOG
    else:
        path = tmp_path / "input.csv"
        path.write_text(content)
    with pytest.raises(FormatError, match=message) as err:
        load(fmt, [path], tmp_path / "out")
    assert str(path) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_log_of_another_known_format_names_that_format(tmp_path):
    """The public logs look alike (the 2015 repeat-buyer log and the 2013 recommendation log are both Tmall's):
    a first line that fits another format says which, before anything is read."""
    plain = tmp_path / "plain.csv"
    plain.write_text("1,2,3,pv,1511544070\n")
    odd = tmp_path / "odd.csv"
    odd.write_text("1;2;3\n")
    for fmt, path, fits in (("tmall", TMALL_REPEAT, "tmall-repeat"),
                            ("taobao-userbehavior", TIANCHI_LOG, "tianchi-mobile"),
                            ("tianchi-mobile", plain, "taobao-userbehavior")):
        with pytest.raises(FormatError, match=f"; its first line fits --format {fits}$"):
            load(fmt, [path], tmp_path / "out")
    with pytest.raises(FormatError) as err:
        load("tianchi-mobile", [odd], tmp_path / "out")
    assert "fits" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_load_prints_the_reconciliation(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    _corrupt_tianchi(bad)
    assert main(["load", "--format", "tianchi-mobile", str(bad), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "read 1,999 = accepted 1,991 + rejected 8" in out
    assert "reconciled" in out


def test_cli_load_prints_the_logs_span_and_warns_of_an_item_subset_it_never_touches(tmp_path, capsys):
    log = tmp_path / "log.csv"
    lines = TIANCHI_LOG.read_text().splitlines()
    listed = set(pd.read_csv(TIANCHI_ITEMS)["item_id"].astype(str))
    log.write_text("\n".join([lines[0], *(ln for ln in lines[1:] if ln.split(",")[1] not in listed)]) + "\n")
    args = ["load", "--format", "tianchi-mobile", str(log), "--items", str(TIANCHI_ITEMS)]
    assert main([*args, "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "events from 2014-11-18 10:00:00 to 2014-12-18 23:00:00: buy " in out
    assert "item subset: 1,836 items, 0 of them in the log, with 0 of its " in out
    assert "\nwarning: no event of the log is on an item of the subset" in out and "this log's?" in out
    assert main(["load", "--format", "tianchi-mobile", str(TIANCHI_LOG), "--items", str(TIANCHI_ITEMS),
                 "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "item subset: 1,836 items, 2 of them in the log" in out and "warning" not in out


@pytest.mark.parametrize("line_end", [b"\r", b"\r\r\n"])
def test_lines_ending_in_a_lone_carriage_return_are_refused_saying_how_to_convert(tmp_path, line_end):
    """They failed as "counts do not reconcile" (the reader ends a row at \\r, the line count at \\n only);
    \\r\\n, the real Tianchi sample's own line end, reads as it is."""
    assert TIANCHI_LOG.read_bytes().count(b"\r\n") > 1000
    lines = TIANCHI_LOG.read_bytes().replace(b"\r\n", b"\n").split(b"\n")
    odd = tmp_path / "odd.csv"
    odd.write_bytes(line_end.join(lines))
    with pytest.raises(FormatError, match=r"odd.csv: line 1 holds a carriage return .* tr "):
        load("tianchi-mobile", [odd], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_wrong_format_as_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["load", "--format", "taobao-userbehavior", str(TIANCHI_LOG), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err


def test_item_votes_are_compacted_without_changing_the_items(tmp_path, monkeypatch):
    load("tmall-repeat", [TMALL_REPEAT], tmp_path / "a", year=2014)
    monkeypatch.setattr("ml.loaders.load._VOTES_COMPACT_ROWS", 10)
    load("tmall-repeat", [TMALL_REPEAT], tmp_path / "b", year=2014)
    a = pq.read_table(tmp_path / "a" / "items.parquet")
    b = pq.read_table(tmp_path / "b" / "items.parquet")
    assert a.equals(b) and a.num_rows > 0


TIANCHI_HEADER = b"user_id,item_id,behavior_type,user_geohash,item_category,time\n"


def _tianchi(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "log.csv"
    path.write_bytes(TIANCHI_HEADER + b"".join(lines))
    return path


def _reasons(tmp_path: Path, m: dict) -> dict[int, str]:
    rejects = pq.read_table(tmp_path / "o" / "rejects.parquet").to_pandas()
    assert len(rejects) == m["rejected"]
    return dict(zip(rejects.line, rejects.reason, strict=True))


def test_impossible_calendar_days_are_rejects_not_the_next_month(tmp_path):
    log = _tianchi(tmp_path, [b"1,2,1,,3,2014-02-30 01\n", b"1,2,1,,3,2014-04-31 05\n", b"1,2,1,,3,2014-12-06 01\n",
                              b"1,2,1,,3,2014-12-6 2\n"])
    m = load("tianchi-mobile", [log], tmp_path / "o")
    reasons = _reasons(tmp_path, m)
    assert set(reasons) == {2, 3} and all("no such calendar day" in r for r in reasons.values())
    assert sorted(_events(tmp_path / "o").ts.astype(str)) == ["2014-12-06 01:00:00", "2014-12-06 02:00:00"]
    mmdd = tmp_path / "repeat.csv"
    mmdd.write_text("user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"
                    "1,2,3,4,5,0229,0\n1,2,3,4,5,0228,0\n")
    m = load("tmall-repeat", [mmdd], tmp_path / "o", year=2015)
    assert m["accepted"] == 1 and "no such calendar day" in next(iter(m["files"][0]["reasons"]))


def test_timestamps_outside_the_plausible_range_are_rejects_unless_the_range_is_given(tmp_path):
    f = tmp_path / "UserBehavior.csv"
    f.write_text("1,2,3,pv,1511544070\n1,2,3,pv,0\n1,2,3,pv,4102444800\n1,2,3,pv,99999999999\n")
    m = load("taobao-userbehavior", [f], tmp_path / "o")
    assert m["accepted"] == 1 and m["rejected"] == 3
    assert all("plausible range" in k for k in m["files"][0]["reasons"])
    m = load("taobao-userbehavior", [f], tmp_path / "o", start=dt.date(1970, 1, 1), end=dt.date(2101, 1, 1))
    assert m["accepted"] == 3  # an explicit range wins: 1970 and 2100 are in it now


def test_ids_not_of_the_formats_shape_are_rejects(tmp_path):
    log = _tianchi(tmp_path, [b"x77,2,1,,3,2014-12-06 01\n", b"007,2,1,,3,2014-12-06 01\n",
                              b"77,2,1,,3,2014-12-06 01\n", b"0,2.0,1,,3,2014-12-06 01\n"])
    m = load("tianchi-mobile", [log], tmp_path / "o")
    reasons = _reasons(tmp_path, m)
    assert sorted(reasons) == [2, 3, 5] and all("not an id" in r for r in reasons.values())
    assert list(_events(tmp_path / "o").user_id) == [77]


def test_a_byte_that_is_not_utf8_rejects_its_row_not_the_file(tmp_path):
    log = _tianchi(tmp_path, [b"1,2,1,,3,2014-12-06 01\n", b"1\xff,2,1,,3,2014-12-06 01\n",
                              b"4,5,1,geo\xfe,3,2014-12-06 02\n"])
    m = load("tianchi-mobile", [log], tmp_path / "o")
    reasons = _reasons(tmp_path, m)
    assert list(reasons) == [3] and "\ufffd" in reasons[3]  # shown, replaced
    assert list(_events(tmp_path / "o").user_id) == [1, 4]  # a skipped column may hold anything
    assert m["reconciled"]


def test_an_unterminated_quote_merges_no_lines_and_physical_lines_reconcile(tmp_path, capsys):
    log = _tianchi(tmp_path, [b'1,2,1,"geo,3,2014-12-06 01\n', b"4,5,1,,3,2014-12-06 02\n", b"6,7,1,,3,2014-12-06 03"])
    m = load("tianchi-mobile", [log], tmp_path / "o")
    # the quote is a character of a skipped column: each line is its own record (it used to swallow the next)
    assert m["files"][0]["lines"] == 3 == m["read"] == m["accepted"] and m["reconciled"]
    assert list(_events(tmp_path / "o").user_id) == [1, 4, 6]
    log.write_bytes(TIANCHI_HEADER + b'1,2,1,,3,2014-12-06 01\n"4,5,1,,3,2014-12-06 02,x\n6,7,1,,3,2014-12-06 03')
    assert main(["load", "--format", "tianchi-mobile", str(log), "--out", str(tmp_path / "o")]) == 0
    assert "3 lines: read 3 = accepted 2 + rejected 1" in capsys.readouterr().out
    assert list(_events(tmp_path / "o").user_id) == [1, 6]


def test_a_log_of_ones_own_loads_from_csv_by_its_header_names_with_rejects_kept(tmp_path, capsys):
    """--format csv is the way in for a log in none of the public formats: columns found by their header names
    in any order, brand and shop optional, other columns ignored; a bad row is a reject with its reason."""
    log = tmp_path / "mylog.csv"
    log.write_text("time,action,user_id,item_id,category_id,session\n"
                   "2024-03-01 10:00:00,click,1,10,100,a\n"
                   "2024-03-01 10:05:00,cart,1,10,100,a\n"
                   "2024-03-02 09:00:00,buy,2,11,101,b\n"
                   "2024-03-02 09:00:00,refund,2,11,101,b\n"
                   "2024-03-02T09:00:00+08:00,buy,2,11,101,b\n"
                   "2024-03-03T08:30:15.250,click,3,11,101,c\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,category_id,brand_id\n10,100,7\n11,101,\n12,102,8\n")
    assert main(["load", "--format", "csv", str(log), "--items", str(items), "--name", "mine",
                 "--out", str(tmp_path / "mine")]) == 0
    assert "read 6 = accepted 4 + rejected 2" in capsys.readouterr().out
    ev = _events(tmp_path / "mine").sort_values("ts")
    assert list(ev.action) == ["click", "cart", "buy", "click"] and list(ev.user_id) == [1, 1, 2, 3]
    # ISO 8601's T reads as the space does; a fraction of a second is dropped; a zone is a reject (whose local
    # time would it be?)
    assert ev.ts.iloc[2] == pd.Timestamp("2024-03-02 09:00:00") and ev.ts.iloc[3] == pd.Timestamp("2024-03-03 08:30:15")
    reasons = pq.read_table(tmp_path / "mine" / "rejects.parquet").to_pandas()
    assert sorted(reasons.line) == [5, 6]
    assert reasons.reason.str.contains("action").any() and reasons.reason.str.contains("time").any()
    it = pq.read_table(tmp_path / "mine" / "items.parquet").to_pandas().set_index("item_id")
    assert it.loc[10, "brand_id"] == 7 and pd.isna(it.loc[11, "brand_id"]) and it.loc[12, "category_id"] == 102
    assert not (tmp_path / "mine" / "item_subset.parquet").exists()  # the item table is the catalogue here


def test_a_csv_log_without_a_required_column_names_it_and_what_is_optional(tmp_path):
    log = tmp_path / "mylog.csv"
    log.write_text("user_id,item_id,category_id,time\n1,10,100,2024-03-01 10:00:00\n")
    with pytest.raises(FormatError, match=r"column 'action' is missing from the header") as err:
        load("csv", [log], tmp_path / "out")
    assert "brand_id (optional)" in str(err.value)
    # four names are no data line of the four-column Tmall log (it said "its first line fits --format tmall")
    assert "fits" not in str(err.value)
    good = tmp_path / "good.csv"
    good.write_text("user_id,item_id,category_id,action,time\n1,10,100,click,2024-03-01 10:00:00\n")
    with pytest.raises(FormatError, match=r"; its first line fits --format csv$"):
        load("taobao-userbehavior", [good], tmp_path / "out")
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("1,10,100,click,2024-03-01 10:00:00\n")
    with pytest.raises(FormatError, match="column 'user_id' is missing from the header"):
        load("csv", [headerless], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_csv_log_under_its_own_names_loads_with_a_mapping_its_manifest_records(tmp_path, capsys):
    """A log in the wild (RetailRocket's events.csv) names its columns, actions and times its own way; the mapping
    reads it as it is, its item table by the same headers, values it does not name kept as rejects."""
    log = tmp_path / "events.csv"
    log.write_text("timestamp,visitorid,event,itemid,categoryid,transactionid\n"
                   "1433221332117,7,view,10,100,\n"
                   "1433224214164,8,transaction,11,100,4000\n"
                   "1433221999827,7,addtocart,11,100,\n"
                   "1433221999827,9,remove,12,101,\n"
                   "14332219998271234,9,view,12,101,\n")
    items = tmp_path / "items.csv"
    items.write_text("itemid,categoryid,brand_id\n10,100,5\n11,100,\n12,101,6\n")
    args = ["load", "--format", "csv", str(log), "--items", str(items), "--out", str(tmp_path / "rr"),
            "--column", "user_id=visitorid,item_id=itemid,category_id=categoryid", "--column", "action=event",
            "--column", "time=timestamp", "--action", "view=click,addtocart=cart,transaction=buy",
            "--time-format", "unix_millis"]
    assert main(args) == 0
    assert "read 5 = accepted 3 + rejected 2" in capsys.readouterr().out
    ev = _events(tmp_path / "rr").sort_values("ts")
    assert list(ev.action) == ["click", "cart", "buy"] and list(ev.user_id) == [7, 7, 8]
    # unix milliseconds in UTC, to the second as every format's times
    assert ev.ts.iloc[0] == pd.Timestamp("2015-06-02 05:02:12")
    reasons = pq.read_table(tmp_path / "rr" / "rejects.parquet").to_pandas().set_index("line").reason
    assert "event: unknown action" in reasons[5] and "timestamp: unparseable time (expected unix milli" in reasons[6]
    it = pq.read_table(tmp_path / "rr" / "items.parquet").to_pandas().set_index("item_id")
    assert it.loc[12, "brand_id"] == 6
    manifest = json.loads((tmp_path / "rr" / "manifest.json").read_text())
    assert manifest["mapping"]["actions"]["transaction"] == "buy"
    assert manifest["mapping"]["time_format"] == "unix_millis"
    # the log's local days: unix times of a shop in China, or India's half hour
    for offset, local in (("+08:00", "2015-06-02 13:02:12"), ("5.5", "2015-06-02 10:32:12")):
        load("csv", [log], tmp_path / "local", items_paths=[items], mapping=CsvMapping(
            {"user_id": "visitorid", "item_id": "itemid", "category_id": "categoryid", "action": "event",
             "time": "timestamp"}, {"view": "click", "addtocart": "cart", "transaction": "buy"}, "unix_millis",
            offset))
        assert _events(tmp_path / "local").sort_values("ts").ts.iloc[0] == pd.Timestamp(local)
    # a day-first pattern: the month and day as written, or a reject
    dmy = tmp_path / "dmy.csv"
    dmy.write_text("user_id,item_id,category_id,action,time\n1,10,100,click,02/03/2024 09:00\n"
                   "1,10,100,buy,31/02/2024 09:00\n")
    m = load("csv", [dmy], tmp_path / "dmy", mapping=CsvMapping(time_format="%d/%m/%Y %H:%M"))
    assert m["accepted"] == 1 and m["files"][0]["reasons"] == {"time: no such calendar day": 1}
    assert _events(tmp_path / "dmy").ts.iloc[0] == pd.Timestamp("2024-03-02 09:00")


def test_a_csv_log_may_leave_the_categories_to_its_item_table_and_not_to_nobody(tmp_path, capsys):
    log = tmp_path / "events.csv"
    log.write_text("user_id,item_id,action,time\n7,10,click,2024-03-01 10:00:00\n8,13,buy,2024-03-01 11:00:00\n")
    with pytest.raises(FormatError, match="no 'category_id' column and no item table"):
        load("csv", [log], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    items = tmp_path / "items.csv"
    items.write_text("item_id,category_id\n10,100\n11,100\n")
    assert main(["load", "--format", "csv", str(log), "--items", str(items), "--out", str(tmp_path / "out")]) == 0
    # item 13 has no category: the warehouse will reject its event, and the load says so
    assert "items of the log with no category: 1" in capsys.readouterr().out
    it = pq.read_table(tmp_path / "out" / "items.parquet").to_pandas().set_index("item_id")
    assert it.loc[10, "category_id"] == 100 and 13 not in it.index


@pytest.mark.parametrize(("mapping", "said"), [
    (CsvMapping(columns={"user": "visitorid"}), "'user' is not a column of --format csv"),
    (CsvMapping(columns={"user_id": "a", "item_id": "A"}), "two columns are read from one header"),
    (CsvMapping(columns={"item_id": "user_id"}), "'user_id' is the name of the column user_id too"),
    (CsvMapping(actions={"view": "see"}), "'see' is none of click, collect, cart, buy"),
    (CsvMapping(time_format="%s"), "%s is not read"),
    (CsvMapping(time_format="%d.%m %H"), "needs %Y, %m and %d"),
    (CsvMapping(time_format="epoch"), "expected one of iso, unix_seconds, unix_millis or a strptime pattern"),
    (CsvMapping(utc_offset="+08:00"), "only unix times"),
    (CsvMapping(time_format="unix_seconds", utc_offset="+15:00"), "within -14..14"),
    (CsvMapping(time_format="unix_seconds", utc_offset="UTC+8"), "expected +HH:MM or hours east of UTC"),
])
def test_a_mapping_that_cannot_be_read_fails_before_anything_is_written(tmp_path, mapping, said):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,category_id,action,time\n1,10,100,click,2024-03-01 10:00:00\n")
    with pytest.raises(ValueError, match=re.escape(said)):
        load("csv", [log], tmp_path / "out", mapping=mapping)
    with pytest.raises(ValueError, match="are for --format csv; taobao-userbehavior's are fixed"):
        load("taobao-userbehavior", [log], tmp_path / "out", mapping=CsvMapping(actions={"pv": "click"}))
    assert not (tmp_path / "out").exists()


def test_mapping_pairs_are_read_from_repeated_and_comma_separated_options():
    assert parse_pairs(["a=b,c = d", "e=f"], "--column") == {"a": "b", "c": "d", "e": "f"}
    with pytest.raises(ValueError, match="'a' is given twice"):
        parse_pairs(["a=b", "a=c"], "--column")
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_pairs(["a"], "--action")


def test_appending_a_logs_new_days_makes_the_dataset_one_load_of_every_file_makes(tiny_dataset, tmp_path, capsys):
    """`crowd load --append` adds a log's new days without reading the old ones again: events, rejects, items
    and counts as one load of all the files; a file given twice, another format or mapping, or a generated
    dataset are refused, and the dataset stays as it was."""
    events = pq.read_table(tiny_dataset / "events").to_pandas().sort_values("ts").head(20_000)
    items = pq.read_table(tiny_dataset / "items.parquet").to_pandas()
    log = events.assign(category_id=events.item_id.map(items.set_index("item_id").category_id),
                        time=events.ts.dt.strftime("%Y-%m-%d %H:%M:%S"))[["user_id", "item_id", "category_id",
                                                                          "action", "time"]]
    cut = log.time.str[:10] >= log.time.iloc[len(log) // 2][:10]
    first, late = tmp_path / "days-1.csv", tmp_path / "days-2.csv"
    log[~cut].to_csv(first, index=False)
    with late.open("w") as f:  # with a bad row, kept as a reject with the earlier file's, and a late copy of the
        # earlier file's last event: an identical row across the two, which the append counts as one load does
        f.write(log[cut].to_csv(index=False) + "1,2,3,refund,2013-09-30 10:00:00\n"
                + log[~cut].tail(1).to_csv(index=False, header=False))
    args = ["load", "--format", "csv", "--out", str(tmp_path / "inc")]
    assert main([*args, str(first)]) == 0
    capsys.readouterr()
    assert main([*args, str(late), "--append"]) == 0
    said = capsys.readouterr().out
    assert f"appended {cut.sum() + 1:,} events to the 1 file(s) loaded before" in said and "days-1" not in said
    assert "1 of the appended events are at or before" in said
    whole = load("csv", [first, late], tmp_path / "whole")
    appended = json.loads((tmp_path / "inc" / "manifest.json").read_text())
    for key in ("read", "accepted", "rejected", "events", "actions", "exact_duplicates", "items", "first_ts",
                "last_ts", "reconciled"):
        assert appended[key] == whole[key], key
    assert appended["appended"][0]["events"] == cut.sum() + 1
    assert appended["appended"][0]["events_up_to_previous_end"] == 1 and appended["exact_duplicates"] >= 1
    keys = ["user_id", "item_id", "action", "ts"]
    for table in ("events", "items.parquet", "rejects.parquet"):
        a, b = (pq.read_table(tmp_path / d / table).to_pandas() for d in ("inc", "whole"))
        a, b = (t.drop(columns=["source_file"], errors="ignore") for t in (a, b))
        order = keys if table == "events" else list(a.columns)
        pd.testing.assert_frame_equal(a.sort_values(order, ignore_index=True), b.sort_values(order, ignore_index=True))
    # a dataset whose manifest predates these counts has them counted again, over every part
    load("csv", [first], tmp_path / "legacy")
    legacy = json.loads((tmp_path / "legacy" / "manifest.json").read_text())
    del legacy["exact_duplicates"], legacy["actions"]
    (tmp_path / "legacy" / "manifest.json").write_text(json.dumps(legacy))
    again = load("csv", [late], tmp_path / "legacy", append=True)
    assert [again[k] for k in ("events", "exact_duplicates", "actions")] == [whole[k] for k in (
        "events", "exact_duplicates", "actions")]
    before = (tmp_path / "inc" / "manifest.json").read_text()
    with pytest.raises(ValueError, match="is loaded already"):
        load("csv", [late], tmp_path / "inc", append=True)
    more = tmp_path / "days-3.csv"
    more.write_text("user_id,item_id,category_id,action,time\n1,2,3,click,2013-10-01 10:00:00\n")
    with pytest.raises(ValueError, match="was loaded with another --column"):
        load("csv", [more], tmp_path / "inc", append=True, mapping=CsvMapping(actions={"click": "click"}))
    headerless = tmp_path / "days-3.txt"
    headerless.write_text("1,2,3,pv,1380600000\n")
    with pytest.raises(ValueError, match="was loaded from --format csv, not taobao-userbehavior"):
        load("taobao-userbehavior", [headerless], tmp_path / "inc", append=True)
    with pytest.raises(ValueError, match="holds no loaded log"):
        load("csv", [more], tiny_dataset, append=True)
    assert (tmp_path / "inc" / "manifest.json").read_text() == before


def test_the_generators_log_written_as_csv_loads_back_to_the_same_events_and_items(tiny_dataset, tmp_path):
    """The canonical tables round-trip through --format csv: what a user exporting their own log this way gets
    is what the generator hands the warehouse."""
    events = pq.read_table(tiny_dataset / "events").to_pandas()
    items = pq.read_table(tiny_dataset / "items.parquet").to_pandas()
    by_item = items.set_index("item_id")
    log = events.assign(category_id=events.item_id.map(by_item.category_id), time=events.ts.dt.strftime(
        "%Y-%m-%d %H:%M:%S"))[["user_id", "item_id", "category_id", "action", "time"]]
    log.to_csv(tmp_path / "log.csv", index=False)
    items[["item_id", "category_id", "brand_id", "shop_id"]].astype("Int64").to_csv(tmp_path / "items.csv",
                                                                                     index=False)
    m = load("csv", [tmp_path / "log.csv"], tmp_path / "out", items_paths=[tmp_path / "items.csv"])
    assert m["rejected"] == 0 and m["events"] == len(events)
    assert "mapping" not in m  # a log loaded as before keeps its manifest, so the warehouse keeps its build
    keys = ["user_id", "item_id", "action", "ts"]
    back = _events(tmp_path / "out")[keys].sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(back, events[keys].sort_values(keys, ignore_index=True), check_dtype=False)
    loaded = pq.read_table(tmp_path / "out" / "items.parquet").to_pandas().set_index("item_id").sort_index()
    for col in ("category_id", "brand_id", "shop_id"):
        assert loaded[col].astype("Int64").equals(by_item.sort_index()[col].astype("Int64")), col


def test_a_damaged_log_file_is_named_in_one_line(tiny_dataset, tmp_path, monkeypatch, capsys):
    """A parquet file cut short (a copy interrupted) failed as DuckDB's InvalidInputException, the query it ran
    quoted, and "run with --debug for the traceback", as a bug would: it is the input, said as one."""
    (tmp_path / "raw" / "synthetic" / "events").mkdir(parents=True)
    (tmp_path / "raw" / "synthetic" / "events" / "part-00000.parquet").write_bytes(b"PAR1" + b"\0" * 400)
    monkeypatch.setenv("CROWD_DATA_DIR", str(tmp_path))
    assert main(["warehouse", "--quiet"]) == 2
    said = capsys.readouterr().err
    assert "events: the log cannot be read (" in said and "part-00000.parquet" in said
    assert "select" not in said and "--debug" not in said
    # the item table too, read before any build for the task's targets (a brand task: are there brands?)
    import shutil

    shutil.rmtree(tmp_path / "raw" / "synthetic")
    shutil.copytree(tiny_dataset, tmp_path / "raw" / "synthetic")
    (tmp_path / "raw" / "synthetic" / "items.parquet").write_bytes(b"PAR1" + b"\0" * 400)
    assert main(["warehouse", "--quiet"]) == 2
    said = capsys.readouterr().err
    assert "items.parquet: the item table cannot be read (" in said and "--debug" not in said
    assert main(["warehouse", "--quiet", "--set", "target=category"]) == 2  # a task that needs no brand too
    assert "items.parquet: the item table cannot be read (" in capsys.readouterr().err
