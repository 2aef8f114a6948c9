"""The next-day item task (Tianchi mobile, 2014) end to end on its tiny look-alike: the generator's items with
memory and item-level oracle, the item samples' point-in-time features recomputed from the raw events, the
pair metrics in MLflow and the report, the forward crowds; and the real 1,999-row sample from load to crowds."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ml.cli import main
from ml.synth.generate import generate
from ml.synth.params import PRESETS
from ml.task import TaskError, TaskPaths, load_task

TIANCHI = "tianchi-mobile-2014"
REAL = Path(__file__).parent / "fixtures" / "real"  # the real public samples, copied into the repository


@pytest.fixture(scope="module")
def tianchi_task():
    return load_task(TIANCHI)


@pytest.fixture(scope="module")
def tianchi_dataset(tianchi_task) -> Path:
    """The tiny look-alike where the task looks for its dataset, with the oracle of its labelled dates."""
    out = TaskPaths.of(tianchi_task).dataset_dir
    cfg = PRESETS["tianchi-tiny"].config(seed=3, workers=1, oracle_label_days=1,
                                          oracle_dates=(*tianchi_task.validation, tianchi_task.backtest))
    generate(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def tianchi_built(tianchi_dataset, tianchi_task) -> TaskPaths:
    assert main(["warehouse", "--task", TIANCHI]) == 0
    return TaskPaths.of(tianchi_task)


def _events(dataset: Path) -> pd.DataFrame:
    """The log as the features count it: identical rows (the same action in the same hour) once."""
    items = pd.read_parquet(dataset / "items.parquet", columns=["item_id", "category_id"])
    return pd.read_parquet(dataset / "events").drop_duplicates().merge(items, on="item_id")


def test_the_look_alike_has_hourly_times_a_subset_and_items_users_come_back_to(tianchi_dataset):
    ev = _events(tianchi_dataset)
    assert (ev.ts.dt.minute == 0).all() and (ev.ts.dt.second == 0).all()
    assert ev.ts.min() == pd.Timestamp("2014-11-18") and ev.ts.max() < pd.Timestamp("2014-12-19")
    subset = pd.read_parquet(tianchi_dataset / "item_subset.parquet")
    n_items = len(pd.read_parquet(tianchi_dataset / "items.parquet"))
    assert 0.2 < len(subset) / n_items < 0.4
    # items with memory: a buy is mostly of an item the user carted, collected or clicked before
    ev["day"] = ev.ts.dt.floor("D")
    buys = ev[ev.action == "buy"].drop_duplicates(["user_id", "item_id", "day"])
    first_seen = ev.groupby(["user_id", "item_id"]).ts.min().rename("first").reset_index()
    seen_before = buys.merge(first_seen, on=["user_id", "item_id"])
    assert (seen_before["first"] < seen_before["day"]).mean() > 0.4


def test_the_item_oracle_ranks_the_next_days_buyers(tianchi_dataset, tianchi_task):
    oracle = pd.read_parquet(tianchi_dataset / "oracle")
    assert "item_id" in oracle.columns and oracle.p_buy.between(0, 1).all()
    ev = _events(tianchi_dataset)
    day = pd.Timestamp(tianchi_task.backtest)
    bought = ev[(ev.action == "buy") & (ev.ts.dt.floor("D") == day)][["user_id", "item_id"]].drop_duplicates()
    o = (oracle[pd.to_datetime(oracle.ds) == day].merge(bought.assign(y=1), on=["user_id", "item_id"], how="left")
         .fillna({"y": 0}))
    assert roc_auc_score(o.y, o.p_buy) > 0.75
    # its expected buys match the realised ones within Monte Carlo and sampling noise
    assert abs(o.p_buy.sum() - len(bought)) < 4 * np.sqrt(len(bought)) + 5


def test_every_ads_and_samples_column_of_the_item_task_is_described(tianchi_built):
    """The item task's own columns (the user's last week day by day, the leaf category's, the last
    interaction's context) are described too."""
    from ml.warehouse.build import DBT_PROJECT_DIR
    from ml.warehouse.docs import undescribed

    assert undescribed("duckdb", tianchi_built.warehouse, DBT_PROJECT_DIR) == []


def test_item_samples_read_only_events_before_ds(tianchi_built, tianchi_dataset, tianchi_task):
    """Every pair feature recomputed from the raw events with ts < ds: a buy at ds or later (the label) never
    reaches a count, a recency, the last-interaction context or a sequence."""
    exports = tianchi_built.exports
    samples = pd.concat([pd.read_parquet(exports / f"ds={d}" / "samples.parquet") for d in tianchi_task.labelled_dates])
    assert samples.label_buy.sum() > 0 and set(samples.is_candidate) == {True, False}
    ev = _events(tianchi_dataset)
    rows = samples[["ds", "user_id", "target_id", "target_category_id"]].copy()
    rows["ds"] = pd.to_datetime(rows["ds"])
    pairs = rows.merge(ev.rename(columns={"item_id": "target_id"}), on=["user_id", "target_id"])
    before = pairs[(pairs.ts < pairs.ds) & (pairs.ts >= pairs.ds - pd.Timedelta(days=14))]
    key = ["ds", "user_id", "target_id"]
    got = samples.assign(ds=pd.to_datetime(samples.ds)).set_index(key)
    for action in ("buy", "cart", "click"):
        for w in tianchi_task.warehouse.feature_windows:
            inside = before[(before.action == action) & (before.ts >= before.ds - pd.Timedelta(days=w))]
            want = inside.groupby(key).size().reindex(got.index, fill_value=0)
            assert (got[f"ub_{action}_{w}d"] == want).all(), (action, w)
    last = before.sort_values("ts").groupby(key).ts.max().reindex(got.index)
    hours = ((got.index.get_level_values("ds") - last) / pd.Timedelta(hours=1)).to_numpy()
    has = ~np.isnan(hours)
    assert (got["ub_hours_since_last"].to_numpy()[has] == np.ceil(hours[has])).all()
    assert (got["ub_last_hour"].to_numpy()[has] == last.dt.hour.to_numpy()[has]).all()
    assert got["ub_hours_since_last"][~has].isna().all()
    # the user's day-by-day counts: day 1 is the day before ds
    user_ev = rows.drop_duplicates(["ds", "user_id"]).merge(ev, on="user_id")
    day1 = user_ev[(user_ev.action == "buy") & (user_ev.ts.dt.floor("D") == user_ev.ds - pd.Timedelta(days=1))]
    want = day1.groupby(["ds", "user_id"]).size()
    got_day1 = got.groupby(level=["ds", "user_id"])["u_buy_day1"].first()
    assert (got_day1 == want.reindex(got_day1.index, fill_value=0)).all()
    seq = pd.concat([pd.read_parquet(exports / f"ds={d}" / "sequences.parquet") for d in tianchi_task.labelled_dates])
    ages = np.concatenate(seq.hist_age_hours.to_numpy())
    assert ages.min() >= 1 and ages.max() <= 24 * tianchi_task.windows.sequence_days
    assert (seq.hist_len <= tianchi_task.warehouse.sequence_length).all()


def test_candidates_are_recent_pairs_of_the_subset_and_negatives_carry_their_inclusion_probability(
        tianchi_built, tianchi_dataset, tianchi_task):
    subset = set(pd.read_parquet(tianchi_dataset / "item_subset.parquet").item_id)
    ds = tianchi_task.samples.last
    s = pd.read_parquet(tianchi_built.exports / f"ds={ds}" / "samples.parquet")
    assert set(s.target_id) <= subset
    cand = s[s.is_candidate]
    assert (cand.ub_recency_any <= tianchi_task.warehouse.candidate_days).all()
    assert (cand.inclusion_prob == 1).all()
    negatives = s[~s.is_candidate]
    assert len(negatives) and negatives.inclusion_prob.between(0, 1, inclusive="right").all()
    assert (negatives.inclusion_prob < 0.5).all()  # a few users drawn out of many
    # the backtest: every candidate pair of the subset; buyers outside it count as missed
    ev = pd.read_parquet(tianchi_built.exports / f"ds={tianchi_task.backtest}" / "evaluation.parquet")
    buyers = pd.read_parquet(tianchi_built.exports / f"ds={tianchi_task.backtest}" / "buyers.parquet")
    assert ev.is_candidate.all() and set(ev.target_id) <= subset
    assert set(buyers.target_id) <= subset
    scored = buyers.merge(ev[ev.label_buy == 1][["user_id", "target_id"]], on=["user_id", "target_id"])
    assert len(scored) == buyers.in_population.sum() == ev.label_buy.sum()
    # the validation day has its buyers too (the F1's denominator when K is chosen)
    assert (tianchi_built.exports / f"ds={tianchi_task.validation[0]}" / "buyers.parquet").exists()


@pytest.mark.slow
def test_the_tianchi_task_trains_reports_f1_at_k_and_publishes_tomorrows_crowds(tianchi_built, tianchi_task, capsys):
    assert main(["train", "--task", TIANCHI, "--model", "lgbm_all_mixed", "din", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "f1_at_k" in out and "chosen on validation" in out
    import mlflow

    from ml.tracking import configure

    configure(tianchi_built)
    runs = mlflow.search_runs(experiment_names=[tianchi_built.experiment]).set_index("tags.model")
    for m in ("lgbm_all_mixed", "din"):
        r = runs.loc[m]
        k, f1 = r["metrics.eval_k"], r["metrics.eval_f1_at_k"]
        assert k >= 1 and 0 <= f1 <= 1
        assert r["metrics.eval_f1_at_k_ci_low"] <= f1 <= r["metrics.eval_f1_at_k_ci_high"]
        assert r["metrics.eval_auc"] > 0.6
        assert r["metrics.oracle_auc"] > 0.6 and r["metrics.oracle_f1_at_k"] >= 0
        assert "metrics.floor_cart_last_day_f1_at_k" in r.index
    # `crowd evaluate` backtests the bundle again: the task's own metric at the K the model chose, as recorded
    assert main(["evaluate", "--task", TIANCHI, "--model", "din"]) == 0
    printed = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]
               if line.startswith("  ") and not line.strip().startswith("(")}
    assert int(printed["k"][0]) == runs.loc["din", "metrics.eval_k"]
    assert float(printed["f1_at_k"][0]) == pytest.approx(runs.loc["din", "metrics.eval_f1_at_k"], abs=1e-4)
    low, high = map(float, printed["f1_at_k"][1].strip("()").split("\u2013"))  # the recorded interval
    assert low == pytest.approx(runs.loc["din", "metrics.eval_f1_at_k_ci_low"], abs=5e-4)
    assert high == pytest.approx(runs.loc["din", "metrics.eval_f1_at_k_ci_high"], abs=5e-4)
    assert printed["f1_at_k"][2] == "oracle"
    assert main(["report", "--task", TIANCHI]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "f1_at_k" in header and "| k |" in header
    assert "floor: cart_last_day" in table and "oracle (ceiling)" in table
    assert main(["score", "--task", TIANCHI]) == 0
    crowd = pd.read_parquet(tianchi_built.crowds / "ds=2014-12-19" / "crowds.parquet")
    assert set(crowd.target) == {"item"} and (crowd.feature_date == dt.date(2014, 12, 19)).all()
    subset = set(pd.read_parquet(tianchi_built.dataset_dir / "item_subset.parquet").item_id)
    assert set(crowd.target_id) <= subset
    # the submission: the champion's top pairs, as many as its F1 was best at on the validation day
    submission = pd.read_csv(tianchi_built.crowds / "ds=2014-12-19" / "submission.csv")
    champion = crowd.model.iloc[0]
    k = json.loads((tianchi_built.models / champion / "config.json").read_text())["submission_k"]
    forward = pd.read_parquet(tianchi_built.exports / "ds=2014-12-19" / "forward.parquet")
    assert list(submission.columns) == ["user_id", "item_id"] and len(submission) == min(k, len(forward))
    submitted = set(zip(submission.user_id, submission.item_id, strict=True))
    assert submitted <= set(zip(forward.user_id, forward.target_id, strict=True))
    # crowds and a submission published as of the last day, which the log holds: measured as the competition
    # measured one, against every buyer pair of the subset that day (here from the raw events)
    day = dt.date(2014, 12, 18)
    assert main(["score", "--task", TIANCHI, "--as-of", str(day)]) == 0
    capsys.readouterr()
    assert main(["outcomes", "--task", TIANCHI, "--ds", str(day), "--no-track"]) == 0
    said = capsys.readouterr().out
    events = _events(tianchi_built.dataset_dir)
    bought = events[(events.action == "buy") & (events.ts.dt.date == day) & events.item_id.isin(subset)]
    buyer_pairs = set(zip(bought.user_id, bought.item_id, strict=True))
    submission = pd.read_csv(tianchi_built.crowds / f"ds={day}" / "submission.csv")
    hits = len(set(zip(submission.user_id, submission.item_id, strict=True)) & buyer_pairs)
    precision, recall = hits / len(submission), hits / len(buyer_pairs)
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    assert len(buyer_pairs) > 5 and (f"submission: {hits:,} of its {len(submission):,} pairs bought, of the "
                                     f"{len(buyer_pairs):,} buyer pairs of the item subset: F1 {f1:.4f}") in said
    crowd = pd.read_parquet(tianchi_built.crowds / f"ds={day}" / "crowds.parquet")
    in_crowds = len(set(zip(crowd.user_id, crowd.target_id, strict=True)) & buyer_pairs)
    assert f"{in_crowds:,} of the crowds' {len(crowd):,} users bought" in said
    # the HTML report of the pair task: its F1 column and every chart, the users ranking their items
    assert main(["report", "--task", TIANCHI, "--html"]) == 0
    page = (tianchi_built.reports / "report.html").read_text()
    assert "<th>f1_<wbr>at_<wbr>k</th>" in page and page.count('<img id="chart-') == 5 and "items with a crowd" in page


@pytest.mark.slow
def test_the_real_tianchi_sample_goes_from_load_to_crowds(tianchi_built, tianchi_task, tmp_path, monkeypatch,
                                                          capsys):
    """The real 1,999-row sample (34 users, 35 buys in a month) is far too sparse to learn from, so it is
    loaded, built and scored with the task's model trained on the look-alike: the path a real log takes. Where
    it is too sparse, the commands say so and why (they said "build it first" of a date just built, and
    stopped training after the first model with "no buyer of an evaluated target" where three were)."""
    if not (tianchi_built.models / "lgbm_all_mixed").exists():  # run alone: train it here
        assert main(["train", "--task", TIANCHI, "--model", "lgbm_all_mixed", "--no-track"]) == 0
    monkeypatch.setenv("CROWD_DATA_DIR", str(tmp_path / "real-data"))
    log_file, items = REAL / "tianchi_mobile_user_sample.csv", REAL / "tianchi_mobile_item_sample.csv"
    assert main(["load", "--format", "tianchi-mobile", str(log_file), "--items", str(items)]) == 0
    # of its events only two are of an item of the sample's subset: no date has a pair to rank
    capsys.readouterr()
    assert main(["warehouse", "--task", TIANCHI]) == 2
    said = capsys.readouterr().err.strip()
    assert "\n" not in said
    assert said.startswith("crowd warehouse: error: the warehouse has no samples for ds 2014-12-11, ")
    assert "2014-12-11 was built (" in said and "1 of the log's" in said and "the last on 2014-11-22" in said
    # so rank every item instead
    every_item = ["--set", "warehouse.item_subset=null"]
    assert main(["warehouse", "--task", TIANCHI, *every_item, "--quiet"]) == 0
    said = capsys.readouterr().out  # --quiet: the command's own lines, none of dbt's console
    assert said.startswith("dbt build on duckdb: ") and "exported " in said and "Running with dbt" not in said
    real = TaskPaths.of(load_task(TIANCHI, {"warehouse.item_subset": None}))
    assert main(["export", "--task", TIANCHI, *every_item, "--ds", "2014-12-01"]) == 2  # a date never built
    assert ("2014-12-01 was not built, or no user was active in its history window (the log's events run from "
            "2014-11-18 to 2014-12-18)") in capsys.readouterr().err
    # its validation dates' 235 candidate pairs hold none of their 3 buyers: refused before any model trains
    capsys.readouterr()
    assert main(["train", "--task", TIANCHI, *every_item, "--no-track"]) == 2
    said = capsys.readouterr().err
    assert "the validation dates hold no buyer among the 235 pairs ranked: 3 buyers" in said
    assert not list(real.models.glob("runs/*")) and not list(real.models.glob("lgbm*"))
    shutil.copytree(tianchi_built.models / "lgbm_all_mixed", real.models / "lgbm_all_mixed")
    assert main(["score", "--task", TIANCHI, *every_item, "--model", "lgbm_all_mixed"]) == 0
    crowd = pd.read_parquet(real.crowds / "ds=2014-12-19" / "crowds.parquet")
    raw = pd.read_csv(log_file)
    assert len(crowd) and set(crowd.user_id) <= set(raw.user_id) and set(crowd.target_id) <= set(raw.item_id)
    with duckdb.connect(str(real.warehouse)) as con:
        assert con.execute("select count(*) from crowds.forward_crowds").fetchone()[0] == len(crowd)


def test_an_item_subset_or_an_every_user_population_is_refused_where_it_cannot_work(tianchi_task):
    with pytest.raises(TaskError, match="only a task with target item"):
        load_task("tmall-2013", {"warehouse.item_subset": "dataset"})
    with pytest.raises(TaskError, match="population"):
        load_task(TIANCHI, {"crowds.population": "evaluated"})
    with pytest.raises(TaskError, match="candidate_days"):
        load_task(TIANCHI, {"warehouse.candidate_days": 30})


def test_the_checked_subset_is_rewritten_only_when_its_items_change(tianchi_task, tmp_path):
    """Its modification time is part of the upstream key: rewritten with the same items at every build, it made
    every date of an item task build ODS, DIM and DW again."""
    from ml.warehouse.build import upstream_key
    from ml.warehouse.subset import prepare_item_subset

    listed = tmp_path / "subset.csv"
    listed.write_text("item_id\n12\n7\n")
    task = tianchi_task.override({"warehouse.item_subset": str(listed)})
    paths = TaskPaths(tmp_path / "data", task.name, task.dataset)
    paths.dataset_dir.mkdir(parents=True)
    copy = prepare_item_subset(task, paths).path
    made, key = copy.stat().st_mtime_ns, upstream_key(paths.dataset_dir, task.dbt_vars(), copy)
    listed.write_text("item_id\n7\n12\n7\n")  # the same items, written otherwise
    assert prepare_item_subset(task, paths).path.stat().st_mtime_ns == made
    assert upstream_key(paths.dataset_dir, task.dbt_vars(), copy) == key
    listed.write_text("item_id\n7\n13\n")
    prepare_item_subset(task, paths)
    assert pd.read_parquet(copy).item_id.tolist() == [7, 13]
    assert upstream_key(paths.dataset_dir, task.dbt_vars(), copy) != key


def test_an_item_subset_file_is_checked_and_its_bad_rows_kept(tianchi_task, tmp_path):
    from ml.warehouse.subset import prepare_item_subset

    listed = tmp_path / "subset.csv"
    listed.write_text("item_id\n12\n7\n7\nabc\n-3\n 40 \n")
    task = tianchi_task.override({"warehouse.item_subset": str(listed)})
    paths = TaskPaths(tmp_path / "data", task.name, task.dataset)
    report = prepare_item_subset(task, paths)
    assert (report.read, report.items, report.duplicates, report.rejected) == (6, 3, 1, 2)
    assert report.read == report.items + report.duplicates + report.rejected
    assert pd.read_parquet(report.path).item_id.tolist() == [7, 12, 40]
    rejects = pd.read_parquet(report.path.with_name("item_subset_rejects.parquet"))
    assert sorted(rejects.reason) == ["negative item id", "not an integer item id"]
    with pytest.raises(ValueError, match="no such file"):
        prepare_item_subset(task.override({"warehouse.item_subset": str(tmp_path / "none.csv")}), paths)
