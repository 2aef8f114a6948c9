"""The dbt warehouse, built for real on DuckDB over the tiny generated dataset."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ml.features.dataset import read_exports
from ml.task import DEFAULT_TASK, load_task
from ml.warehouse.build import (
    DBT_PROJECT_DIR,
    SHOWN_FAILURES,
    WarehouseError,
    build_dates,
    parse_key,
    project_digest,
    recorded_upstream,
    run_dbt,
    upstream_key,
)
from ml.warehouse.export import export_dates
from ml.warehouse.reference import (
    ONE_QUERY_MODELS,
    assert_frames_match,
    load_events,
    one_query_feature_sql,
    reference_features,
    window_events_sql,
)

TASK = load_task(DEFAULT_TASK)
PIT_DS = dt.date(2013, 8, 5)
PER_DS_TABLES = ["ads.ads_user_features", "ads.ads_target_features", "ads.ads_user_target_features",
                 "ads.ads_user_sequences", "ads.ads_user_category_series", "samples.samples_candidates",
                 "samples.samples", "samples.samples_evaluation", "samples.samples_evaluation_buyers"]


def _vars(dates: list[dt.date] | None = None, **changes) -> dict:
    return {**TASK.dbt_vars(ds=dates), **changes}


def _query(warehouse: Path, sql: str) -> pd.DataFrame:
    # dbt-duckdb keeps its connection open in this process: open the file with the same (default) config
    with duckdb.connect(str(warehouse)) as con:
        return con.execute(sql).df()


@pytest.fixture(scope="module")
def built(tiny_warehouse):
    return tiny_warehouse


@pytest.fixture(scope="module")
def reference_events(tiny_dataset: Path) -> pd.DataFrame:
    return load_events(tiny_dataset)


def test_build_runs_every_layer_and_its_tests(built):
    warehouse, report = built
    layers = {uid.split(".")[2] for uid in report.statuses if uid.startswith("model.")}
    assert report.n_models >= 20 and report.n_tests >= 80
    assert {"ods_events", "dim_targets", "dw_buy_events", "ads_user_sequences", "samples_evaluation"} <= layers
    built = {uid: status for uid, status in report.statuses.items() if not uid.startswith("exposure.")}
    assert set(built.values()) <= {"success", "pass"}
    # the exposures (what reads the samples layer outside dbt) are nodes dbt build passes over
    assert {uid: s for uid, s in report.statuses.items() if uid.startswith("exposure.")} == {
        "exposure.purchase_crowd.model_training": "no-op", "exposure.purchase_crowd.forward_crowds": "no-op",
        "exposure.purchase_crowd.crowd_outcomes": "no-op"}
    assert any(uid.startswith("unit_test.") for uid in report.statuses)
    dates = _query(warehouse, "select distinct ds from samples.samples order by ds")["ds"].dt.date.tolist()
    assert dates == TASK.labelled_dates


def test_ods_folds_identical_events_without_losing_any(built, tiny_dataset):
    warehouse, _ = built
    raw = duckdb.sql(f"select count(*) from read_parquet('{tiny_dataset}/events/*.parquet')").fetchall()[0][0]
    ods = _query(warehouse, "select count(*) as n_rows, sum(n_raw) as n_raw from ods.ods_events").iloc[0]
    assert ods.n_raw == raw and ods.n_rows < raw  # the generator's same-second repeats were folded
    distinct = _query(warehouse, "select count(*) as n from (select distinct user_id, item_id, action, ts "
                                 "from ods.ods_events)")["n"][0]
    assert distinct == ods.n_rows


def test_bad_rows_are_rejected_with_a_reason_and_counts_reconcile(tiny_dataset, tmp_path):
    data = tmp_path / "dirty"
    shutil.copytree(tiny_dataset, data)
    bad_events = pa.table({
        "user_id": pa.array([None, 5, 5, 5], pa.int64()),
        "item_id": pa.array([1, None, 999_999_999, 1], pa.int64()),
        "action": ["click", "click", "click", "view"],
        "ts": pa.array([dt.datetime(2013, 5, 1)] * 4, pa.timestamp("us")),
    })
    first_item = pq.read_table(tiny_dataset / "items.parquet").slice(0, 1)
    bad_events = bad_events.set_column(1, "item_id", pa.array([first_item["item_id"][0].as_py(), None, 999_999_999,
                                                                first_item["item_id"][0].as_py()], pa.int64()))
    pq.write_table(bad_events, data / "events" / "part-bad.parquet")
    pq.write_table(pa.concat_tables([pq.read_table(data / "items.parquet"), first_item]), data / "items.parquet")
    warehouse = tmp_path / "wh" / "crowd.duckdb"
    run_dbt("build", dataset_dir=data, warehouse=warehouse, dbt_vars=_vars(), select=["path:models/ods"],
            extra_args=["--indirect-selection", "cautious"], quiet=True)
    reasons = _query(warehouse, "select reject_reason, count(*) as n from ods.ods_event_rejects group by 1")
    assert dict(zip(reasons.reject_reason, reasons.n, strict=True)) == {
        "missing user_id": 1, "missing item_id": 1, "item not in the item table": 1, "unknown action": 1}
    items = _query(warehouse, "select reject_reason, count(*) as n from ods.ods_item_rejects group by 1")
    assert dict(zip(items.reject_reason, items.n, strict=True)) == {"duplicate item_id": 1}


def test_features_match_the_pandas_reference_value_for_value(built, reference_events):
    warehouse, _ = built
    for ds in (TASK.samples.first, PIT_DS, TASK.backtest):
        ref = reference_features(reference_events, ds)
        lit = f"cast('{ds}' as date)"
        for table, name, keys in [("ads_user_features", "user", ["user_id"]),
                                  ("ads_target_features", "target", ["target_id"]),
                                  ("ads_user_target_features", "user_target", ["user_id", "target_id"]),
                                  ("ads_user_sequences", "sequences", ["user_id"])]:
            got = _query(warehouse, f"select * exclude (ds) from ads.{table} where ds = {lit}")
            assert len(got) > 0
            assert_frames_match(got, ref[name], keys)
        samples = _query(warehouse, f"select user_id, target_id, label_buy, label_collect_cart from samples.samples "
                                    f"where ds = {lit}")
        merged = samples.merge(ref["labels"], on=["user_id", "target_id"], how="left", suffixes=("", "_ref"))
        merged = merged.fillna(0)
        assert merged.label_buy.sum() > 0
        assert (merged.label_buy == merged.label_buy_ref).all()
        assert (merged.label_collect_cart == merged.label_collect_cart_ref).all()


def test_the_one_query_features_equal_the_ads_models_on_deduplicated_events(built, tiny_dataset):
    """bench/warehouse.py times the build's feature models against these queries: they must compute the same
    columns. On the raw events (the generator's same-second repeats not folded) the counts differ."""
    warehouse, _ = built
    items = f"read_parquet('{tiny_dataset}/items.parquet')"
    raw = f"read_parquet('{tiny_dataset}/events/*.parquet')"
    distinct = f"(select distinct user_id, item_id, action, ts from {raw})"
    for ds in (TASK.samples.first, PIT_DS, TASK.backtest):
        for events, equal in ((distinct, True), (raw, False)):
            con = duckdb.connect()
            con.execute(f"create table window_events as {window_events_sql(events, items, 'brand_id')}",
                        {"ds": ds, "history_days": TASK.windows.history_days})
            for prefix, (model, keys, _) in ONE_QUERY_MODELS.items():
                got = con.execute(one_query_feature_sql(prefix, TASK.warehouse.feature_windows)).df()
                built_rows = _query(warehouse, f"select * exclude (ds) from ads.{model} "
                                               f"where ds = cast('{ds}' as date)")
                assert len(got) > 0 and sorted(got.columns) == sorted(built_rows.columns)
                if equal:
                    assert_frames_match(built_rows, got, list(keys))
                elif prefix == "ub":
                    with pytest.raises(AssertionError, match="differs"):
                        assert_frames_match(built_rows, got, list(keys))
            con.close()


def test_samples_hold_every_active_pair_plus_sampled_negatives(built):
    warehouse, _ = built
    s = _query(warehouse, f"select * from samples.samples where ds = cast('{PIT_DS}' as date)")
    active = _query(warehouse, f"select user_id, target_id from ads.ads_user_target_features "
                               f"where ds = cast('{PIT_DS}' as date)")
    assert len(s[s.is_candidate]) == len(active)
    negatives = s[~s.is_candidate]
    per_target = negatives.groupby("target_id").size()
    assert per_target.max() <= TASK.warehouse.negatives_per_target
    assert per_target.mean() > 0.8 * TASK.warehouse.negatives_per_target
    assert (negatives.ub_click_90d == 0).all() and negatives.ub_recency_any.isna().all()
    assert negatives.label_buy.sum() <= s.label_buy.sum()


def test_evaluation_set_is_every_active_user_times_every_evaluated_target(built):
    warehouse, _ = built
    every_date = _query(warehouse, "select * from samples.samples_evaluation")
    # the backtest's, and the validation dates' (where scores are calibrated and the champion chosen)
    days = every_date.ds.dt.date
    assert set(days) == {*TASK.validation, TASK.backtest}
    for day in set(days):
        ev = every_date[days == day]
        users = _query(warehouse, f"select count(*) as n from ads.ads_user_features "
                                  f"where ds = cast('{day}' as date)")["n"][0]
        n_targets = TASK.evaluate.top_targets
        assert len(ev) == users * n_targets == len(ev.drop_duplicates(["user_id", "target_id"]))
        assert ev.label_buy.sum() > 0 and ev.is_candidate.mean() < 0.5
    # one set of targets on every date: the backtest's, chosen from the history before it
    assert len({frozenset(every_date[days == day].target_id) for day in set(days)}) == 1


def test_every_buyer_of_an_evaluated_target_is_counted_even_outside_the_evaluation_set(built):
    """recall@N's denominator: the buyers table holds the evaluation set's positives (in_population) and any
    buyer it could not score (a user with no history before the backtest: the Taobao task's test sees some)."""
    warehouse, _ = built
    every_date = _query(warehouse, "select * from samples.samples_evaluation_buyers")
    # the validation dates' buyers too (the denominators of choices made there), the backtest's reconciled here
    days = pd.to_datetime(every_date.ds).dt.date
    assert set(days) == {*TASK.validation, TASK.backtest}
    buyers = every_date[days == TASK.backtest]
    ev = _query(warehouse, f"select user_id, target_id, label_buy from samples.samples_evaluation "
                           f"where ds = cast('{TASK.backtest}' as date)")
    positives = ev[ev.label_buy == 1]
    reachable = buyers[buyers.in_population]
    assert len(reachable) == len(positives) > 0
    reached = set(zip(reachable.user_id, reachable.target_id, strict=True))
    assert reached == set(zip(positives.user_id, positives.target_id, strict=True))
    assert not (buyers.is_candidate & ~buyers.in_population).any()
    assert set(buyers.target_id) <= set(ev.target_id)


def _snapshot(warehouse: Path, ds: dt.date, drop: tuple[str, ...] = ()) -> dict[str, pd.DataFrame]:
    out = {}
    for table in PER_DS_TABLES:
        if table in ("samples.samples_evaluation", "samples.samples_evaluation_buyers"):
            continue
        frame = _query(warehouse, f"select * from {table} where ds = cast('{ds}' as date)")
        frame = frame.drop(columns=[c for c in drop if c in frame.columns])
        keys = [c for c in ("user_id", "target_id", "timescale", "step", "slot") if c in frame.columns]
        out[table] = frame.sort_values(keys).reset_index(drop=True)
    return out


def test_features_at_ds_ignore_every_event_on_or_after_ds(built, tiny_dataset, tmp_path):
    """Delete, change and add events at or after ds: every feature (and the candidates) at ds stay identical."""
    warehouse, _ = built
    data = tmp_path / "future_changed"
    shutil.copytree(tiny_dataset, data)
    events = pq.read_table(data / "events").to_pandas()
    cut = pd.Timestamp(PIT_DS)
    future = events.ts >= cut
    assert future.sum() > 1000
    changed = events[future].sample(frac=0.5, random_state=1)  # half the future deleted...
    changed["action"] = "buy"  # ...the rest all turned into buys...
    extra = events[~future].sample(n=500, random_state=2).assign(ts=cut)  # ...plus new events at ds exactly
    mutated = pd.concat([events[~future], changed, extra], ignore_index=True)
    shutil.rmtree(data / "events")
    (data / "events").mkdir()
    pq.write_table(pa.Table.from_pandas(mutated, preserve_index=False).cast(pq.read_schema(
        next((tiny_dataset / "events").glob("*.parquet")))), data / "events" / "part-0.parquet")
    other = tmp_path / "wh" / "crowd.duckdb"
    run_dbt("run", dataset_dir=data, warehouse=other, dbt_vars=_vars([PIT_DS]), quiet=True)
    labels = ("label_buy", "label_collect_cart")
    before, after = _snapshot(warehouse, PIT_DS, labels), _snapshot(other, PIT_DS, labels)
    for table in before:
        assert len(before[table]) > 0, table
        pd.testing.assert_frame_equal(before[table], after[table], obj=table)
    # and the labels did see the change
    buys = f"select sum(label_buy) as n from samples.samples where ds = cast('{PIT_DS}' as date)"
    assert _query(other, buys)["n"][0] > _query(warehouse, buys)["n"][0]


def test_rebuilding_a_date_replaces_it_and_never_duplicates(built, tiny_dataset, capfd, monkeypatch):
    warehouse, _ = built
    counts = {t: _query(warehouse, f"select count(*) as n from {t}")["n"][0] for t in PER_DS_TABLES}
    before = _snapshot(warehouse, PIT_DS)
    capfd.readouterr()
    run_dbt("run", dataset_dir=tiny_dataset, warehouse=warehouse, dbt_vars=_vars([PIT_DS]))
    console = capfd.readouterr().out
    # dbt's console, written to a file or a pipe (not a terminal), holds no colour escape codes
    assert "Completed successfully" in console and "\x1b[" not in console
    # ... unless the user asks for them (the run-dags comment said DBT_USE_COLORS=true brings them back: it did not)
    monkeypatch.setenv("DBT_USE_COLORS", "true")
    run_dbt("run", dataset_dir=tiny_dataset, warehouse=warehouse, dbt_vars=_vars([PIT_DS]))
    assert "\x1b[" in capfd.readouterr().out
    assert {t: _query(warehouse, f"select count(*) as n from {t}")["n"][0] for t in PER_DS_TABLES} == counts
    after = _snapshot(warehouse, PIT_DS)
    for table in before:
        pd.testing.assert_frame_equal(before[table], after[table], obj=table)


def test_a_dates_build_leaves_out_the_upstream_layers_it_holds_and_builds_the_same_rows(built, tiny_dataset,
                                                                                        tmp_path):
    """A week's build reads ODS, DIM and DW as the first complete build left them (a record in the warehouse)
    and builds the same rows as a build of every layer; a run of an upstream layer without the record's key
    (by hand) removes the record, so the next date builds everything again (build_dates compares the record
    with the key)."""
    warehouse, second = tmp_path / "wh" / "crowd.duckdb", TASK.sample_dates[1]

    def layers(report) -> set[str]:
        return {uid.split(".")[2].split("_")[0] for uid in report.statuses if uid.startswith("model.")}

    first = build_dates(dataset_dir=tiny_dataset, warehouse=warehouse, dbt_vars=_vars([PIT_DS]), quiet=True)
    assert layers(first) == {"ods", "dim", "dw", "ads", "samples"}
    assert recorded_upstream(warehouse) == upstream_key(tiny_dataset, _vars([second]))
    week = build_dates(dataset_dir=tiny_dataset, warehouse=warehouse, dbt_vars=_vars([second]), quiet=True)
    assert layers(week) == {"ads", "samples"}
    # the project as dbt parsed it for the first date's settings, not parsed again: same rows below; the unit
    # tests, which passed with that parse, not run again
    assert not first.reused_parse and week.reused_parse
    assert any(uid.startswith("unit_test.") for uid in first.statuses)
    assert not any(uid.startswith("unit_test.") for uid in week.statuses)
    tests = {uid.split(".")[2] for uid in week.statuses if uid.startswith("test.")}
    # the tests reading a date's model and an upstream one still run
    assert {"features_read_only_the_past", "labels_fall_in_their_window",
            "label_windows_are_covered_by_the_log"} <= tests
    assert not any(t.startswith(("not_null_ods", "not_null_dw", "ods_reconciles")) for t in tests)
    expected, got = _snapshot(built[0], second), _snapshot(warehouse, second)
    for table in expected:
        pd.testing.assert_frame_equal(got[table], expected[table], obj=table)

    run_dbt("run", dataset_dir=tiny_dataset, warehouse=warehouse, dbt_vars=_vars([second]), select=["dim_users"],
            quiet=True)
    assert recorded_upstream(warehouse) is None  # so the next build_dates builds every layer again
    # a date dbt's parse would refuse is left to it, kept parse or not
    with pytest.raises(WarehouseError, match="var 'ds': month 13 does not exist"):
        build_dates(dataset_dir=tiny_dataset, warehouse=warehouse, dbt_vars=_vars(ds=["2013-13-01"]), quiet=True)


def test_no_node_depends_on_the_run_dates_or_where_the_warehouse_lies(tmp_path):
    """What lets a parse of the project serve every date of the same settings, in any copy of the warehouse
    (parse_key): the project parsed for a training date, a validation date, the backtest, all of them (with
    the upstream key a date's build passes), the forward crowds' date (as `crowd score` builds it) or a published
    date's outcome (as `crowd outcomes` builds it), each with
    the DuckDB file in another folder, is the same manifest, every node's refs included."""
    from dbt.cli.main import dbtRunner

    from ml.warehouse.build import _environment

    def parsed(dates: list[dt.date] | None, **more: str) -> dict:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        args = ["parse", "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR), "--quiet",
                "--target-path", str(out / "target"), "--log-path", str(out / "logs"),
                "--vars", json.dumps({k: v for k, v in {**_vars(dates), **more}.items() if v is not None})]
        with _environment({"CROWD_WAREHOUSE": str(out / "crowd.duckdb"), "CROWD_DATASET_DIR": "/the/dataset"}):
            manifest = dbtRunner().invoke(args).result.writable_manifest().to_dict()
        tables = {table: manifest[table] for table in ("nodes", "sources", "macros", "unit_tests", "exposures")}
        for table in tables.values():
            for node in table.values():
                node.pop("created_at", None)  # when it was parsed
        return tables

    first = parsed([TASK.sample_dates[0]])
    assert "model.purchase_crowd.ads_user_features" in \
        first["nodes"]["model.purchase_crowd.samples_evaluation"]["depends_on"]["nodes"]
    forward = TASK.backtest + dt.timedelta(days=TASK.windows.label_days + 1)
    for dates, more in (([TASK.validation[0]], {}), ([TASK.backtest], {}), (None, {"upstream_key": "0123abcd"}),
                        ([forward], {"forward_date": forward.isoformat()}),
                        ([TASK.backtest], {"outcome_date": TASK.backtest.isoformat()})):
        again = parsed(dates, **more)
        assert again["nodes"].keys() == first["nodes"].keys(), dates
        assert [uid for uid in first["nodes"] if again["nodes"][uid] != first["nodes"][uid]] == [], dates
        assert again == first, dates


def test_a_parse_is_kept_for_the_settings_and_the_environment_but_not_the_dates(tmp_path):
    env = {"CROWD_DATASET_DIR": str(tmp_path / "a"), "CROWD_WAREHOUSE": str(tmp_path / "w.duckdb")}
    key = parse_key(DBT_PROJECT_DIR, _vars([PIT_DS]), env)
    assert parse_key(DBT_PROJECT_DIR, _vars([TASK.backtest]), env) == key
    assert parse_key(DBT_PROJECT_DIR, {**_vars([PIT_DS]), "upstream_key": "0123abcd"}, env) == key  # the end hook's
    # the forward crowds' date: samples_forward reads the same models with one and without
    assert parse_key(DBT_PROJECT_DIR, _vars([PIT_DS], forward_date="2013-10-01"), env) == key
    # and a published date's outcome (samples_outcomes, samples_outcome_targets the same way)
    assert parse_key(DBT_PROJECT_DIR, _vars([PIT_DS], outcome_date="2013-09-24"), env) == key
    assert parse_key(DBT_PROJECT_DIR, _vars([PIT_DS], negatives_per_target=3), env) != key
    assert parse_key(DBT_PROJECT_DIR, _vars([PIT_DS]), {**env, "CROWD_DATASET_DIR": str(tmp_path / "b")}) != key
    # a copy of the warehouse elsewhere keeps it; a file of another name (the database's) does not
    assert parse_key(DBT_PROJECT_DIR, _vars([PIT_DS]), {**env, "CROWD_WAREHOUSE": str(tmp_path / "c" / "w.duckdb")}) \
        == key
    assert parse_key(DBT_PROJECT_DIR, _vars([PIT_DS]), {**env, "CROWD_WAREHOUSE": str(tmp_path / "v.duckdb")}) != key
    project = tmp_path / "project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs", ".user.yml"))
    # the profile is read by the parse, but computes the same tables: the project's digest (the build id, the
    # upstream key, a champion's fingerprint) does not follow it
    profile = project / "profiles.yml"
    profile.write_text(profile.read_text().replace("spark.sql.shuffle.partitions",
                                                   "# edited\n        spark.sql.shuffle.partitions"))
    assert project_digest(project) == project_digest(DBT_PROJECT_DIR)
    assert parse_key(project, _vars([PIT_DS]), env) != key
    model = project / "models" / "dim" / "dim_users.sql"
    model.write_text("-- edited\n" + model.read_text())
    assert project_digest(project) != project_digest(DBT_PROJECT_DIR)


def test_the_upstream_key_follows_the_dataset_and_the_settings_but_not_the_dates(tiny_dataset, tmp_path):
    copy = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, copy)
    key = upstream_key(copy, _vars([PIT_DS]))
    assert upstream_key(copy, _vars([TASK.backtest])) == key
    assert upstream_key(copy, _vars([PIT_DS], negatives_per_target=3)) != key
    items = copy / "items.parquet"
    items.write_bytes(items.read_bytes())  # rewritten: another modification time
    assert upstream_key(copy, _vars([PIT_DS])) != key


def test_exports_one_directory_per_date_with_the_evaluation_set_beside_it(built, tmp_path):
    warehouse, _ = built
    exports = export_dates(warehouse, tmp_path / "exports", TASK.labelled_dates)  # other tests add forward dates
    assert [e.ds for e in exports] == TASK.labelled_dates
    # a labelled date scored as a forward date too (`crowd score --as-of`: the DAG test publishes crowds as of
    # the backtest into this warehouse when it runs in the same worker) has that population beside its samples
    forwarded = set(pd.to_datetime(_query(warehouse, "select distinct ds from samples.samples_forward")["ds"]).dt.date)
    for e in exports:
        names = sorted(p.name for p in e.path.iterdir())
        expected = ["category_series.parquet", "samples.parquet", "schema.json", "sequences.parquet"]
        if e.ds == TASK.backtest or e.ds in TASK.validation:
            expected = [*expected, "evaluation.parquet", "buyers.parquet"]
        if e.ds in forwarded:
            expected = [*expected, "forward.parquet"]
        assert names == sorted(expected)
        assert pq.read_metadata(e.path / "samples.parquet").num_rows == e.rows["samples"]
    schema = json.loads((exports[0].path / "schema.json").read_text())
    assert "ub_buy_90d" in schema["dense"] and "label_buy" in schema["labels"]
    assert not set(schema["dense"]) & {"user_id", "target_id", "label_buy"}
    again = export_dates(warehouse, tmp_path / "exports", [PIT_DS])  # a re-export replaces, leaves no debris
    assert again[0].rows == next(e for e in exports if e.ds == PIT_DS).rows
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == [f"ds={d}" for d in TASK.labelled_dates]


@pytest.mark.parametrize(("changes", "message"), [
    ({"ds": ["2013-13-01"]}, "var 'ds': month 13 does not exist"),
    ({"ds": "2013-07-xx"}, "var 'ds': expected a date as YYYY-MM-DD"),
    ({"target": "shop"}, "var 'target': expected 'brand', 'category', 'item' or 'tag'"),
    ({"feature_windows": [7, 120]}, "var 'feature_windows'"),
    ({"negatives_per_target": "1; drop table x"}, "var 'negatives_per_target': expected a whole number of 0 or more"),
    ({"negatives_per_target": -5}, "var 'negatives_per_target': expected a whole number of 0 or more"),
    ({"negatives_per_target": 2.7}, "var 'negatives_per_target': expected a whole number of 0 or more"),
])
def test_a_bad_var_fails_with_a_clear_message_before_any_work(tiny_dataset, tmp_path, changes, message):
    warehouse = tmp_path / "wh" / "crowd.duckdb"
    with pytest.raises(WarehouseError, match=message):
        run_dbt("build", dataset_dir=tiny_dataset, warehouse=warehouse, dbt_vars=_vars(**changes), quiet=True)
    assert not warehouse.exists()


@pytest.mark.parametrize("kind", ["singular data test", "unit test"])
def test_a_failing_dbt_test_fails_the_build(tiny_dataset, tmp_path, kind):
    project = tmp_path / "project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs", ".user.yml"))
    if kind == "singular data test":  # more of them than the error names, each failing
        failing = [f"always_fails_{i}" for i in range(SHOWN_FAILURES + 2)]
        for name in failing:
            (project / "tests" / f"{name}.sql").write_text("select target_id from {{ ref('dim_targets') }}\n")
        select = ["+dim_targets", *failing]
    else:
        yml = project / "models" / "ads" / "ads.yml"
        yml.write_text(yml.read_text().replace("ub_click_90d: 16", "ub_click_90d: 17"))
        select, failing = ["+ads_user_target_features"], ["ub_features_count_each_window"]
    with pytest.raises(WarehouseError, match=failing[0]) as raised:  # cautious: no test of a model not built
        run_dbt("build", dataset_dir=tiny_dataset, warehouse=tmp_path / "wh" / "crowd.duckdb",
                dbt_vars=_vars([PIT_DS]), select=select, project_dir=project, quiet=True,
                extra_args=["--indirect-selection", "cautious"])
    if kind == "singular data test":  # the first few are named, the rest counted, with where to read them
        said = str(raised.value)
        assert sum(name in said for name in failing) == SHOWN_FAILURES, said
        assert said.endswith(f"; and 2 more in {tmp_path / 'wh' / 'dbt' / 'logs' / 'dbt.log'}"), said


def test_category_target_ranks_categories(tiny_dataset, tmp_path):
    warehouse = tmp_path / "wh" / "crowd.duckdb"
    run_dbt("run", dataset_dir=tiny_dataset, warehouse=warehouse, dbt_vars=_vars([PIT_DS], target="category"),
            select=["+samples"], quiet=True)
    s = _query(warehouse, "select distinct target_id, target_category_id from samples.samples")
    categories = set(pq.read_table(tiny_dataset / "items.parquet")["category_id"].to_pylist())
    assert set(s.target_id) <= categories and (s.target_id == s.target_category_id).all()


def test_dbt_sends_no_usage_events_however_it_is_run():
    project = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    assert project["flags"]["send_anonymous_usage_stats"] is False


def test_dbt_var_defaults_mirror_the_default_task():
    project = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    expected = {**TASK.dbt_vars(), "ds": None}  # dbt's null ds is the task's labelled dates
    assert project["vars"] == expected


def test_settings_that_change_the_columns_fail_in_one_line_and_a_full_refresh_builds_them(built, tiny_dataset,
                                                                                         tmp_path, monkeypatch,
                                                                                         capsys):
    """Feature windows for one run (`--set warehouse.feature_windows=[1,7]`) change the per-date tables'
    columns, as a target does or another version of the models: dbt's "out of sync" failure was a page of column
    objects, and blamed the models' version. One line now names the tables and columns, and `--full-refresh`
    makes the per-date tables again with this build's dates alone."""
    from ml.cli import main

    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "raw" / TASK.dataset).symlink_to(tiny_dataset, target_is_directory=True)
    shutil.copytree(built[0].parent, data / "tasks" / TASK.name / TASK.dataset / "warehouse")
    monkeypatch.setenv("CROWD_DATA_DIR", str(data))
    windows = ["warehouse", "--ds", str(PIT_DS), "--set", "warehouse.feature_windows=[1,7]", "--no-export", "--quiet"]
    assert main(windows) == 2  # an error of input (a ValueError: a DAG's task fails at once, without retries)
    said = capsys.readouterr().err
    assert ("ads_category_features, ads_target_features, ads_user_category_features, ads_user_features, "
            "ads_user_target_features in the warehouse have other columns") in said
    assert "(114 gone: " in said and "DuckDBColumn" not in said and len(said.splitlines()) == 1
    assert "`crowd warehouse --full-refresh` makes the per-date tables (ADS, samples) again" in said
    assert main([*windows, "--full-refresh"]) == 0
    warehouse = data / "tasks" / TASK.name / TASK.dataset / "warehouse" / built[0].name
    columns = set(_query(warehouse, "describe ads.ads_user_features")["column_name"])
    assert {"u_click_1d", "u_click_7d"} <= columns and not {"u_click_3d", "u_click_30d"} & columns
    for table in PER_DS_TABLES:  # the other dates' rows have left (the evaluation tables hold none of a sample date)
        assert set(_query(warehouse, f"select distinct ds from {table}")["ds"].dt.date) <= {PIT_DS}, table
    assert set(_query(warehouse, "select distinct ds from samples.samples")["ds"].dt.date) == {PIT_DS}


def test_a_build_after_an_outcome_date_was_measured_leaves_its_rows_and_passes(built, tiny_dataset, tmp_path):
    """`crowd outcomes` at a date keeps its rows in samples_outcomes; a later build without an outcome date checks
    no outcome (outcomes_reconcile reads as of the backtest then, over no row): measuring the backtest date's
    crowds made every later build of the warehouse fail on the rows it had left."""
    warehouse = tmp_path / "wh" / built[0].name
    shutil.copytree(built[0].parent, warehouse.parent)
    select = ["samples_outcomes+"]
    measured = build_dates(dataset_dir=tiny_dataset, warehouse=warehouse, select=select, quiet=True,
                           dbt_vars=_vars([TASK.backtest], outcome_date=TASK.backtest.isoformat()))
    assert measured.statuses["test.purchase_crowd.outcomes_reconcile"] == "pass"
    count = f"select count(*) as n from samples.samples_outcomes where ds = cast('{TASK.backtest}' as date)"
    buyers = int(_query(warehouse, count)["n"].iloc[0])
    assert buyers > 0
    later = build_dates(dataset_dir=tiny_dataset, warehouse=warehouse, select=select, quiet=True,
                        dbt_vars=_vars([TASK.sample_dates[1]]))
    assert later.statuses["test.purchase_crowd.outcomes_reconcile"] == "pass"
    assert int(_query(warehouse, count)["n"].iloc[0]) == buyers


def test_a_failed_build_of_a_date_leaves_no_rows_of_it_and_no_stray_event_covers_a_window(tiny_dataset, tmp_path):
    """A date whose label window runs past the log fails its build, and its rows are purged from every
    per-date table (they used to stay, all labels zero, and poison every build after): the good date built
    before is untouched. One event planted in 2099 does not make the missing days covered."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    events = pq.read_table(data / "events").to_pandas()
    last_day = events.ts.max().date()
    late = last_day - dt.timedelta(days=2)
    planted = events.head(1).assign(ts=pd.Timestamp("2099-01-01 12:00"))
    pq.write_table(pa.Table.from_pandas(planted, preserve_index=False).cast(
        pq.read_schema(next((tiny_dataset / "events").glob("*.parquet")))), data / "events" / "part-planted.parquet")
    warehouse = tmp_path / "wh" / "crowd.duckdb"
    # as the DAG's weeks build: the second date's build leaves out the upstream layers the first recorded
    build_dates(dataset_dir=data, warehouse=warehouse, dbt_vars=_vars([PIT_DS]), quiet=True)
    before = {t: _query(warehouse, f"select count(*) as n from {t}")["n"][0] for t in PER_DS_TABLES}
    with pytest.raises(WarehouseError, match="label_windows_are_covered_by_the_log") as failed:
        build_dates(dataset_dir=data, warehouse=warehouse, dbt_vars=_vars([late]), quiet=True)
    # what the test asserts, from its description (tests/tests.yml), not only dbt's "Got 5 results"
    assert "(fail): Got " in str(failed.value) and "would count late buyers as non-buyers" in str(failed.value)
    for table in PER_DS_TABLES:
        assert _query(warehouse, f"select count(*) as n from {table} "
                                 f"where ds = cast('{late}' as date)")["n"][0] == 0, table
        assert _query(warehouse, f"select count(*) as n from {table}")["n"][0] == before[table], table
    assert before["samples.samples"] > 0


def test_exports_of_two_builds_are_refused_as_a_mix(built, tiny_dataset, tmp_path):
    """New data, then a kill between re-exports: some dates of the old data, some of the new. Reading them
    together (as training does) fails naming both builds; one build reads."""
    warehouse, _ = built
    d1, d2 = TASK.sample_dates[:2]
    old = tmp_path / "old_data"
    shutil.copytree(tiny_dataset, old)
    export_dates(warehouse, tmp_path / "exports", [d1, d2], dataset_dir=old)
    assert len(read_exports(tmp_path / "exports", [d1, d2]).samples) > 0
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "events": manifest["events"] + 1}))  # new data
    export_dates(warehouse, tmp_path / "exports", [d2], dataset_dir=old)  # ... and the kill before d1
    with pytest.raises(ValueError, match="mix builds of the warehouse"):
        read_exports(tmp_path / "exports", [d1, d2])
    export_dates(warehouse, tmp_path / "exports", [d1], dataset_dir=old)
    assert read_exports(tmp_path / "exports", [d1, d2]).build


def test_a_dataset_path_with_quotes_and_braces_is_read_as_that_path(tiny_dataset, tmp_path):
    """A path reaches dbt's SQL as a quoted literal: a folder named q'||' once made the build read the folder
    q beside it (and braces broke dbt-duckdb's formatting). Here q holds a decoy of one day's events."""
    raw = tmp_path / "it's {data}" / "raw"
    crafted, decoy = raw / "q'||'", raw / "q"
    shutil.copytree(tiny_dataset, crafted)
    shutil.copytree(tiny_dataset, decoy)
    events = pq.read_table(tiny_dataset / "events")
    for part in (decoy / "events").glob("*.parquet"):
        part.unlink()
    pq.write_table(events.slice(0, 10), decoy / "events" / "part-0.parquet")
    warehouse = tmp_path / "wh {x} it's" / "crowd.duckdb"
    run_dbt("run", dataset_dir=crafted, warehouse=warehouse, dbt_vars=_vars([PIT_DS]), select=["ods"], quiet=True)
    n = _query(warehouse, "select sum(n_raw) as n from ods.ods_events")["n"][0]
    rejected = _query(warehouse, "select count(*) as n from ods.ods_event_rejects")["n"][0]
    assert n + rejected == events.num_rows > 10


LEAKAGE = DBT_PROJECT_DIR / "models" / "ads" / "ads_leakage.yml"


def test_the_leakage_fixtures_expect_every_column_of_their_models(built):
    """The dbt leakage tests compare whole rows: a column left out of their expected rows could leak unseen."""
    warehouse, _ = built
    tests = yaml.safe_load(LEAKAGE.read_text())["unit_tests"]
    assert {t["model"] for t in tests} == {"ads_user_features", "ads_target_features", "ads_user_target_features"}
    for t in tests:
        settings = t["overrides"]["vars"]
        assert settings["feature_windows"] == TASK.dbt_vars()["feature_windows"]  # the same columns as built
        columns = set(_query(warehouse, f"select * from ads.{t['model']} limit 0").columns)
        for row in t["expect"]["rows"]:
            assert set(row) == columns, (t["name"], columns ^ set(row))
        assert any(r["day"] >= settings["ds"] for r in t["given"][0]["rows"])  # the future is in the fixture


def test_a_leak_planted_in_the_features_fails_the_dbt_build(tiny_dataset, tmp_path):
    """Features that also read the label week (the history window's end moved past ds): the dbt build fails
    on the leakage fixtures, as it would in Airflow, before any sample is written."""
    project = tmp_path / "project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs", ".user.yml"))
    macro = project / "macros" / "crowd_features.sql"
    text = macro.read_text()
    assert text.count("and h.day < d.ds") == 1
    macro.write_text(text.replace("and h.day < d.ds", "and h.day < cast({{ dbt.dateadd('day', 7, 'd.ds') }} as date)"))
    with pytest.raises(WarehouseError, match="ignore_every_event_on_or_after_ds"):
        run_dbt("build", dataset_dir=tiny_dataset, warehouse=tmp_path / "wh" / "crowd.duckdb",
                dbt_vars=_vars([PIT_DS]), select=["+ads_user_features"], project_dir=project, quiet=True)


@pytest.mark.parametrize(("column", "value", "failing"), [
    ("user_id", "null", "crowd_in_range_samples_user_id"),
    ("ds", "cast('2001-01-01' as date)", "crowd_date_in_the_log_samples_ds"),
])
def test_a_bad_key_or_date_in_the_samples_fails_their_tests(built, tiny_dataset, tmp_path, column, value, failing):
    """The samples' keys and dates are checked against the run's vars: a null user or a date outside the
    task's (from the inputs, not the SQL) fails `dbt test`."""
    warehouse, _ = built
    copy = tmp_path / "crowd.duckdb"
    shutil.copy(warehouse, copy)
    with duckdb.connect(str(copy)) as con:
        con.execute(f"update samples.samples set {column} = {value} "
                    "where rowid = (select min(rowid) from samples.samples)")
    with pytest.raises(WarehouseError, match=failing):
        run_dbt("test", dataset_dir=tiny_dataset, warehouse=copy, dbt_vars=_vars(), select=["samples"], quiet=True)


def test_every_model_is_described_and_the_docs_site_opens_on_the_projects_overview(tmp_path):
    from ml.warehouse.build import ensure_manifest

    manifest = json.loads(ensure_manifest(tmp_path).read_text())
    models = [n for n in manifest["nodes"].values() if n["resource_type"] == "model"]
    assert len(models) > 30
    assert [n["name"] for n in models if not n["description"].strip()] == []
    overview = manifest["docs"]["doc.purchase_crowd.__overview__"]["block_contents"]  # replaces dbt's welcome page
    assert "Purchase Crowd" in overview and "samples" in overview


def test_every_ads_and_samples_column_of_a_build_is_described(built):
    from ml.warehouse.build import DBT_PROJECT_DIR
    from ml.warehouse.docs import undescribed

    assert undescribed("duckdb", built[0], DBT_PROJECT_DIR) == []


def test_column_descriptions_are_read_from_the_feature_grammar_and_keep_what_was_written_by_hand(tmp_path):
    from ml.warehouse.build import DBT_PROJECT_DIR
    from ml.warehouse.docs import describe_column, document

    assert describe_column("ub_cart_30d") == "Count of add-to-carts by the user on the target in the 30 days before ds."
    assert describe_column("u_buy_1d") == "Count of buys by the user on the day before ds."
    assert "null when there is none" in describe_column("uc_recency_any")
    assert describe_column("b_buyers_7d").startswith("Distinct users who bought the target")
    assert describe_column("x_mystery") is None and describe_column("u_click_7") is None
    props = tmp_path / "samples.yml"
    props.write_text((DBT_PROJECT_DIR / "models" / "samples" / "samples.yml").read_text())
    before = yaml.safe_load(props.read_text())
    unknown = document(props, {"samples_candidates": ["ds", "inclusion_prob", "u_click_90d", "x_mystery"]})
    assert unknown == ["samples_candidates.x_mystery"]  # left for a person to write, never invented
    after = yaml.safe_load(props.read_text())
    model = next(m for m in after["models"] if m["name"] == "samples_candidates")
    columns = {c["name"]: c for c in model["columns"]}
    old = {c["name"]: c for c in next(m for m in before["models"] if m["name"] == "samples_candidates")["columns"]}
    assert columns["inclusion_prob"] == old["inclusion_prob"]  # its hand-written description and its test
    assert columns["u_click_90d"]["description"] == "Count of clicks by the user in the 90 days before ds."
    assert "description" not in columns["x_mystery"]
    assert [m["name"] for m in after["models"]] == [m["name"] for m in before["models"]]
    text = props.read_text()
    document(props, {"samples_candidates": ["ds", "inclusion_prob", "u_click_90d", "x_mystery"]})
    assert props.read_text() == text  # written once, the same the next time


def test_the_duckdb_memory_cap_is_the_profiles_and_a_bad_one_is_refused(monkeypatch):
    """dbt and every Python connection to the warehouse keep to one cap: CROWD_DUCKDB_MEMORY, else the default
    profiles.yml gives dbt; it reaches SQL only as a validated size."""
    from ml.warehouse.engine import duckdb_memory_limit

    monkeypatch.delenv("CROWD_DUCKDB_MEMORY", raising=False)
    profile = yaml.safe_load((DBT_PROJECT_DIR / "profiles.yml").read_text())
    setting = profile["purchase_crowd"]["outputs"]["duckdb"]["settings"]["memory_limit"]
    assert f"'{duckdb_memory_limit()}'" in setting
    monkeypatch.setenv("CROWD_DUCKDB_MEMORY", "512MiB")
    assert duckdb_memory_limit() == "512MiB"
    monkeypatch.setenv("CROWD_DUCKDB_MEMORY", "4GB'; drop table ods.ods_events; --")
    with pytest.raises(ValueError, match="CROWD_DUCKDB_MEMORY: expected a size"):
        duckdb_memory_limit()


def test_a_warehouse_another_process_holds_is_refused_saying_so(tiny_dataset, tmp_path):
    """DuckDB lets one process open a file: a second `crowd warehouse` or `crowd export` beside a running one
    failed with "IO Error: Could not set lock on file ...", which reads like a broken disk."""
    import re
    import subprocess
    import sys

    from ml.warehouse.engine import open_warehouse

    path = tmp_path / "crowd.duckdb"
    hold = ("import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); con.execute('create table t (x int)'); "
            "print('ready', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        said = re.escape(f"the warehouse {path} is in use by another process (PID {holder.pid}): DuckDB lets one")
        with pytest.raises(RuntimeError, match=said), open_warehouse("duckdb", path):
            pass
        with pytest.raises(WarehouseError, match=said):
            run_dbt("run", dataset_dir=tiny_dataset, warehouse=path, dbt_vars=_vars([PIT_DS]), select=["dim_items"],
                    quiet=True)
    finally:
        holder.kill()
        holder.wait()


def test_dbt_by_hand_after_crowd_paths_dbt_env_reads_the_tasks_own_warehouse(tiny_warehouse, task_paths, tmp_path):
    """The README's dbt by hand said "with CROWD_DATASET_DIR and CROWD_WAREHOUSE set as `crowd paths` prints
    them", and `crowd paths` printed neither name: `eval "$(crowd paths --dbt-env)"` sets them and the task's
    vars, and dbt then reads the task's own warehouse."""
    import os
    import subprocess
    import sys

    from ml.warehouse.build import DBT_PROJECT_DIR

    script = ('eval "$(crowd paths --dbt-env)" && cd "$PROJECT" && dbt show --profiles-dir . --vars "$CROWD_DBT_VARS" '
              '--inline "select count(*) as n from {{ ref(\'samples\') }}" --output json --quiet')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PROJECT": str(DBT_PROJECT_DIR), "DBT_TARGET_PATH": str(tmp_path / "target"),
           "DBT_LOG_PATH": str(tmp_path / "logs")}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    with duckdb.connect(str(task_paths.warehouse), read_only=True) as con:
        n = con.execute("select count(*) from samples.samples").fetchone()[0]
    assert n > 0 and json.loads(done.stdout[done.stdout.index("{"):])["show"] == [{"n": n}]
