"""User tags end to end on the tiny world: rules over purchases in category groups as labels (an interest in
the coming week, a state over 30 days), user-level samples, the LSTM among the models, the erasure check, and
the crowds of each tag."""

from __future__ import annotations

import pandas as pd
import pytest

from ml.cli import main
from ml.task import TaskError, TaskPaths, load_task

TAGS_TASK = "tmall-2013-tags"
# leaf categories of the tiny world (seed 11): two parent categories' worth
TINY_TAGS = [{"name": "a-interest", "categories": [63, 33, 115], "min_buys": 1},
             {"name": "b-regular", "categories": [95, 96, 76], "min_buys": 2, "horizon_days": 30}]
# the session's tiny world, where the default task's dataset lives
OVERRIDE = ["--set", f"tags={TINY_TAGS}", "--set", "dataset=synthetic"]


@pytest.fixture(scope="module")
def tag_task():
    return load_task(TAGS_TASK, {"tags": TINY_TAGS, "dataset": "synthetic"})


@pytest.fixture(scope="module")
def tags_built(tiny_dataset, tag_task) -> TaskPaths:
    assert main(["warehouse", "--task", TAGS_TASK, *OVERRIDE]) == 0
    return TaskPaths.of(tag_task)


def test_tag_labels_follow_each_rule_and_every_active_user_is_a_sample(tags_built, tag_task, tiny_dataset):
    ds = tag_task.samples.last
    s = pd.read_parquet(tags_built.exports / f"ds={ds}" / "samples.parquet")
    assert set(s.target_id) == {1, 2}
    per_user = s.groupby("user_id").target_id.nunique()
    assert (per_user == 2).all()  # user-level: every active user once per tag, no sampling
    items = pd.read_parquet(tiny_dataset / "items.parquet")
    ev = pd.read_parquet(tiny_dataset / "events").drop_duplicates().merge(items, on="item_id")
    buys = ev[ev.action == "buy"]
    start = pd.Timestamp(ds)
    for tag_id, tag in enumerate(TINY_TAGS, start=1):
        horizon = tag.get("horizon_days", 7)
        window = buys[(buys.ts >= start + pd.Timedelta(days=7 - horizon)) & (buys.ts < start + pd.Timedelta(days=7))
                      & buys.category_id.isin(tag["categories"])]
        counts = window.groupby("user_id").size()
        mine = s[s.target_id == tag_id].set_index("user_id")
        want = (counts.reindex(mine.index, fill_value=0) >= tag["min_buys"]).astype(int)
        assert (mine.label_buy == want).all(), tag["name"]
        assert 0 < mine.label_buy.sum() < len(mine)
        if "horizon_days" in tag:  # the state counts past buys: some positives buy less than min_buys ahead
            ahead = window[window.ts >= start].groupby("user_id").size().reindex(mine.index, fill_value=0)
            assert ((mine.label_buy == 1) & (ahead < tag["min_buys"])).any()


@pytest.mark.slow
def test_tag_models_train_and_the_erasure_check_shows_what_they_learned_beyond_the_rule(tags_built, tag_task,
                                                                                        tiny_dataset, capsys):
    assert main(["train", "--task", TAGS_TASK, *OVERRIDE, "--model", "lgbm_all_mixed", "lstm", "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["erase", "--task", TAGS_TASK, *OVERRIDE]) == 0
    out = capsys.readouterr().out
    assert "no_rule_categories" in out
    table = pd.read_csv(tags_built.reports / "erasure.csv")
    assert set(table.input) == {"full", "no_buys", "no_rule_categories"}
    assert len(table) == 2 * 2 * 3  # models x tags x inputs
    auc = table.pivot_table(index=["tag", "model"], columns="input", values="auc")
    assert (auc["full"] > 0.6).all()
    # the state tag's label is half made of past buys in its own categories: erasing them must cost AUC
    state = auc.loc["b-regular"]
    assert (state["full"] > state["no_rule_categories"] + 0.05).all(), auc
    # each erased input's drop with its paired interval (users resampled), which holds it and, for the state
    # tag without its categories, excludes 0
    erased = table[table.input != "full"]
    assert (erased.auc_drop_low <= erased.auc_drop + 1e-12).all()
    assert (erased.auc_drop <= erased.auc_drop_high + 1e-12).all()
    assert (erased[(erased.tag == "b-regular") & (erased.input == "no_rule_categories")].auc_drop_low > 0).all()
    assert table[table.input == "full"].auc_drop_low.isna().all() and "the AUC's drop from the full inputs" in out
    # labels never come from the erased log: the evaluation's positives are the real ones
    for name in ("no_buys", f"no_rule_categories-{TINY_TAGS[0]['name']}"):
        erased = tags_built.base / "erasure" / name / "raw" / "events" / "part-00000.parquet"
        kept = pd.read_parquet(erased)
        assert (kept.ts >= pd.Timestamp(tag_task.backtest)).any()
    assert main(["score", "--task", TAGS_TASK, *OVERRIDE]) == 0
    crowd = pd.read_parquet(next(tags_built.crowds.glob("ds=*/crowds.parquet")))
    assert set(crowd.target) == {"tag"} and set(crowd.target_id) == {1, 2}
    # crowds of a past date whose window the log holds, measured by each tag's rule (a state counts past buys)
    day = pd.Timestamp(tag_task.backtest) + pd.Timedelta(days=1)
    assert main(["score", "--task", TAGS_TASK, *OVERRIDE, "--as-of", f"{day:%Y-%m-%d}"]) == 0
    assert main(["outcomes", "--task", TAGS_TASK, *OVERRIDE, "--ds", f"{day:%Y-%m-%d}", "--no-track"]) == 0
    measured = pd.read_parquet(tags_built.crowds / f"ds={day:%Y-%m-%d}" / "crowds_outcomes.parquet")
    items = pd.read_parquet(tiny_dataset / "items.parquet")
    events = pd.read_parquet(tiny_dataset / "events").drop_duplicates().merge(items, on="item_id")
    buys = events[events.action == "buy"]
    for tag_id, tag in enumerate(TINY_TAGS, start=1):
        horizon = tag.get("horizon_days", 7)
        window = buys[(buys.ts >= day + pd.Timedelta(days=7 - horizon)) & (buys.ts < day + pd.Timedelta(days=7))
                      & buys.category_id.isin(tag["categories"])]
        takers = (window.groupby("user_id").size() >= tag["min_buys"]).sum()
        assert measured.set_index("target_id").loc[tag_id, "buyers"] == takers > 0, tag["name"]


def test_a_tag_task_is_checked_at_the_edge():
    with pytest.raises(TaskError, match="belongs to one tag"):
        load_task(TAGS_TASK, {"tags": [{"name": "x", "categories": [1, 2]}, {"name": "y", "categories": [2]}]})
    with pytest.raises(TaskError, match="only such a task"):
        load_task("tmall-2013", {"tags": TINY_TAGS})
    with pytest.raises(TaskError, match="needs at least one tag"):
        load_task(TAGS_TASK, {"tags": []})
    with pytest.raises(TaskError, match="shorter than the label"):
        load_task(TAGS_TASK, {"tags": [{"name": "x", "categories": [1], "horizon_days": 3}]})


def test_a_tag_of_no_category_in_the_log_is_refused_before_any_build(tiny_dataset, capsys):
    """The task's own tags (categories of the default world) on the tiny world's log: its dates built empty and
    the export blamed a sparse log (`make run TASK=tmall-2013-tags PRESET=tiny`). Refused at the edge now, in
    one line naming each tag none of whose categories the log has, and why this log has others."""
    on_tiny = ["--task", TAGS_TASK, "--set", "dataset=synthetic"]
    warehouse = TaskPaths.of(load_task(TAGS_TASK, {"dataset": "synthetic"})).warehouse
    before = warehouse.stat().st_mtime_ns if warehouse.exists() else None  # the module's build, when it ran first
    for command in ("warehouse", "run-dags"):
        assert main([command, *on_tiny]) == 2
        err = capsys.readouterr().err
        assert "no category of these tags is in the log's item table" in err, command
        assert "parent-72-interest: 634, 214, 300, 672, 138; parent-41-regular: 255" in err
        assert "generate it at the preset's (crowd generate --task tmall-2013-tags)" in err
        assert (warehouse.stat().st_mtime_ns if warehouse.exists() else None) == before
    # one tag of the log's categories, one of none: the line names that one alone
    one = [TINY_TAGS[0], {"name": "elsewhere", "categories": [634, 214]}]
    assert main(["warehouse", *on_tiny, "--set", f"tags={one}"]) == 2
    err = capsys.readouterr().err
    assert "no category of the tag is in" in err and "elsewhere: 634, 214;" in err and "a-interest" not in err


def test_the_generator_knows_the_truth_of_interest_tags(tmp_path):
    """With a task's interest tags, the oracle also writes P(a buy in the tag's categories in the label
    window) per user: calibrated against the realised buys, and far better than chance at ranking them."""
    import datetime as dt

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from ml.synth.generate import generate
    from ml.synth.params import PRESETS
    from ml.train.pipeline import oracle_scores, tag_truth

    days = (dt.date(2013, 9, 16), dt.date(2013, 9, 23))
    tags = tuple((i + 1, tuple(t["categories"])) for i, t in enumerate(TINY_TAGS))
    out = tmp_path / "tagged"
    generate(PRESETS["tiny"].config(seed=11, workers=1, oracle_dates=days, oracle_label_days=7, oracle_tags=tags),
             out, progress=False)
    items = pd.read_parquet(out / "items.parquet")
    ev = pd.read_parquet(out / "events").merge(items, on="item_id")
    users = pd.DataFrame({"user_id": ev.user_id.unique()})
    interest = load_task(TAGS_TASK, {"tags": [{**t, "min_buys": 1, "horizon_days": None} for t in TINY_TAGS]})
    for ds in days:
        start = pd.Timestamp(ds)
        for tag_id, categories in tags:
            bought = ev[(ev.action == "buy") & (ev.ts >= start) & (ev.ts < start + pd.Timedelta(days=7))
                        & ev.category_id.isin(categories)].user_id.unique()
            frame = users.assign(target_id=tag_id)
            p = oracle_scores(out, frame, ds, interest)
            y = frame.user_id.isin(bought).to_numpy()
            assert abs(p.sum() - y.sum()) < 4 * np.sqrt(y.sum()) + 3
            assert roc_auc_score(y, p) > 0.75
    # a task whose tags differ from those the generator was given gets no oracle, rather than a wrong one
    other = load_task(TAGS_TASK, {"tags": [{"name": "x", "categories": [63], "min_buys": 1}]})
    assert oracle_scores(out, users.assign(target_id=1), days[0], other) is None
    # a state tag's truth is not known: the ceiling of a task with one needs its interest tags' rows only
    with_state = load_task(TAGS_TASK, {"tags": TINY_TAGS})
    both = pd.concat([users.assign(target_id=1), users.assign(target_id=2)], ignore_index=True)
    assert oracle_scores(out, both, days[0], with_state) is None
    truth = tag_truth(out, both, days[0], with_state)
    assert np.isnan(truth[both.target_id == 2]).all() and not np.isnan(truth[both.target_id == 1]).any()
