"""Train, evaluate, record and score on the tiny exports, with a real MLflow store (SQLite) in the session's
data directory."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ml.cli import main
from ml.crowds import CROWD_COLUMNS, last_log_day
from ml.report import champion_of, latest_runs
from ml.task import TaskPaths, load_task
from ml.tracking import (
    BUILD_TAG,
    CHAMPION,
    COMPARISON_TAG,
    champion_alias,
    comparison_key,
    configure,
    promote_if_better,
    selection_metric,
    serving_alias,
)
from ml.train.pipeline import train_and_evaluate
from ml.train.trainer import TrainConfig
from ml.warehouse.export import serving_key

FAST = TrainConfig(epochs=2, batch_size=512, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def outcomes(tiny_exports, tiny_dataset, task, task_paths):
    return {m: train_and_evaluate(m, task, task_paths, train_cfg=FAST)
            for m in ("lgbm_all_mixed", "lgbm_per_target", "din", "ple")}


def test_every_run_is_recorded_with_metrics_plots_table_and_model(outcomes, task, task_paths):
    configure(task_paths)
    client = MlflowClient()
    registered = client.get_registered_model(task_paths.registered_model)  # what its versions are, which serves
    assert registered.description.startswith("Which users buy each brand") and "champion-<comparison>" in \
        registered.description and "champion-features-<key>" in registered.description
    # the champion of the comparison trained last also serves new data of the same features
    champion = client.get_model_version_by_alias(registered.name,
                                                 champion_alias(comparison_key(task, task_paths.exports)))
    features = serving_alias(serving_key(task, task_paths.exports))
    assert client.get_model_version_by_alias(registered.name, features).version == champion.version
    experiment = client.get_experiment_by_name(task_paths.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # the list of experiments says what each is (its description was blank)
    assert experiment.tags["mlflow.note.content"].startswith("Which users buy each brand") and \
        "Task tmall-2013 on dataset" in experiment.tags["mlflow.note.content"]
    for name, o in outcomes.items():
        run = client.get_run(o.run_id)
        # the name says model, task and backtest (reruns apart by their time); the tag selects the model
        assert run.data.tags["model"] == name and run.info.run_name.startswith(f"{name} tmall-2013 2013-")
        assert run.data.params["task.name"] == "tmall-2013" and run.data.params["task.windows.label_days"] == "7"
        # the run and its registered version say in one line what they were chosen on and what they scored
        described = run.data.tags["mlflow.note.content"]
        assert described.startswith(f"{name}: validation auc_per_target {o.selection['auc_per_target']:.4f}; "
                                    f"backtest AUC {o.summary['auc']:.4f} ("), described
        version = client.get_model_version(task_paths.registered_model, run.data.tags["registered_version"])
        assert version.description == described
        metrics = run.data.metrics
        assert 0.5 < metrics["eval_auc_per_target"] <= 1 and 0.5 < metrics["eval_gauc"] <= 1, name
        assert {"eval_auc", "eval_recall_at_100", "eval_gauc_ci_low", "eval_auc_per_target_ci_high"} <= set(metrics)
        assert metrics["oracle_auc"] > 0.5  # the ceiling sits beside every run, with its Monte Carlo error
        assert 0 <= metrics["oracle_auc_mc_error"] < 0.005
        # probabilities of the population: expected buyers near the actual ones, Platt-scaled on validation
        assert 0.6 < metrics["eval_expected_over_actual"] < 1.5 and metrics["eval_ece"] < 0.01, name
        platt = json.loads((o.bundle / "config.json").read_text())["platt"]
        assert set(platt) <= {"touched", "untouched"} and "touched" in platt and len(platt["touched"]) == 2
        # and the floors: heuristics on the same rows, which beat chance but not the oracle
        assert 0.5 < metrics["floor_decayed_count_auc"] < metrics["oracle_auc"], name
        assert 0.5 < metrics["floor_cart_then_recency_auc"] < metrics["oracle_auc"], name
        assert run.data.tags["above_floor"] in ("true", "false")
        # the pairs with history only: harder than the whole population, with its own interval
        assert 0.5 < metrics["eval_auc_touched"] < metrics["eval_auc"], name
        assert metrics["eval_auc_touched_ci_low"] < metrics["eval_auc_touched"] < metrics["eval_auc_touched_ci_high"]
        assert "floor_decayed_count_auc_touched" in metrics and "oracle_auc_touched" in metrics
        artifacts = {a.path for a in client.list_artifacts(o.run_id)}
        assert {"plots", "bundle", "per_target_metrics.json"} <= artifacts
        plots = {a.path.split("/")[-1] for a in client.list_artifacts(o.run_id, "plots")}
        assert {"roc.png", "recall_at_n.png", "gain.png", "lift.png", "calibration.png"} <= plots
        # the numbers behind them: this model's curves beside the floors' and the ceiling's, for the report
        curves = mlflow.load_table("curves.json", run_ids=[o.run_id])
        assert {name, "oracle", "floor: decayed_count", "floor: cart_then_recency"} <= set(curves["series"])
        gain = curves[(curves["series"] == name) & (curves["curve"] == "gain")]
        assert np.all(np.diff(gain["y"]) >= -1e-12) and gain["y"].iloc[-1] == pytest.approx(1.0)
        floor_curves = set(curves.loc[curves["series"] == "floor: decayed_count", "curve"])
        assert "reliability" not in floor_curves and "roc" in floor_curves  # a floor's score is no probability
    din_history = client.get_metric_history(outcomes["din"].run_id, "valid_auc")
    assert [m.step for m in din_history] == [0, 1]
    ple_plots = client.list_artifacts(outcomes["ple"].run_id, "plots")
    assert "se_field_importance.png" in {a.path.split("/")[-1] for a in ple_plots}
    assert "feature_importance.png" in {
        a.path.split("/")[-1] for a in client.list_artifacts(outcomes["lgbm_all_mixed"].run_id, "plots")}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # a copy of the tree without its history: runs then carry no commit


def test_runs_compare_at_a_glance_own_settings_timings_inputs_code_and_a_described_model(outcomes, task_paths):
    configure(task_paths)
    client = MlflowClient()
    own = {"din": ({"model_attention_hidden", "model_hidden", "train_lr"},
                   {"model_n_experts", "model_lstm_hidden", "model_ple_layers", "train_aux_weight", "train_device"}),
           "ple": ({"model_ple_layers", "train_aux_weight"},
                   {"model_hidden", "model_lstm_hidden", "train_focal_gamma"}),
           "lgbm_all_mixed": ({"gbdt_num_leaves", "gbdt_learning_rate"}, {"gbdt_group_size", "gbdt_threads"})}
    for name, o in outcomes.items():
        run = client.get_run(o.run_id)
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        if name in own:  # the model's own hyper-parameters only: none of another architecture's
            present, absent = own[name]
            assert present <= set(params) and not absent & set(params), name
        # timings and sizes are metrics (sortable, plottable), not params
        assert metrics["seconds_train"] > 0 and metrics["seconds_score"] > 0 and metrics["seconds_evaluate"] > 0
        assert metrics["rows_train"] > 0 and metrics["rows_evaluation"] > 0 and "train_seconds" not in params
        assert metrics["parameters"] > 0 if name in ("din", "ple") else metrics["boosting_rounds"] >= 1
        assert tags.get("mlflow.source.git.commit") == _git_commit()
        contexts = {next(t.value for t in d.tags if t.key == "mlflow.data.context") for d in run.inputs.dataset_inputs}
        assert contexts == {"training", "validation", "calibration", "backtest"}
        version = client.get_model_version(task_paths.registered_model, tags["registered_version"])
        assert {"task", "target", "model", "model_kind", BUILD_TAG, COMPARISON_TAG} <= set(version.tags)
        assert version.tags["target"] == "brand" and version.tags[BUILD_TAG] == tags[BUILD_TAG]
        info = mlflow.models.get_model_info(version.source)
        assert info.signature is not None and info.saved_input_example_info is not None, name


def test_every_registered_family_serves_from_the_registry_what_its_crowds_score(outcomes, task, task_paths,
                                                                               tiny_exports):
    """The deep models were logged in MLflow's PyTorch flavour, whose pyfunc refused their input ("does not
    support List or Dict input types"), and lgbm_all_mixed in LightGBM's, whose output is the booster's at the
    training's negative rate: the served champion's scores changed meaning with its family. Each now serves
    P(buy) as Bundle.score computes it for crowd score, on its own logged example, loaded in Python and over
    REST: `mlflow models serve`'s app (in this process) answers the logged request with the same scores."""
    from mlflow.models.utils import load_serving_example
    from mlflow.pyfunc import scoring_server
    from starlette.testclient import TestClient

    from ml.features.dataset import read_exports
    from ml.train.bundle import Bundle

    configure(task_paths)
    client = MlflowClient()
    for name, o in outcomes.items():
        version = client.get_model_version(task_paths.registered_model,
                                           client.get_run(o.run_id).data.tags["registered_version"])
        served = mlflow.pyfunc.load_model(f"models:/{task_paths.registered_model}/{version.version}")
        example = served.input_example
        bundle = Bundle.load(o.bundle)
        rows = len(example["ids"]) if isinstance(example, dict) else len(example)
        raw = read_exports(tiny_exports, [task.backtest], "evaluation", series_shape=bundle._series_shape(),
                           keep=lambda table, n=rows: np.arange(len(table)) < n)
        expected = bundle.score(raw, device="cpu")
        np.testing.assert_allclose(np.asarray(served.predict(example)), expected, rtol=1e-5, atol=1e-7, err_msg=name)
        with TestClient(scoring_server.init(served)) as rest:
            answer = rest.post("/invocations", content=load_serving_example(version.source),
                               headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, (name, answer.text)
        np.testing.assert_allclose(answer.json()["predictions"], expected, rtol=1e-5, atol=1e-7, err_msg=name)


def test_the_champion_alias_points_at_the_best_registered_run_on_the_validation_dates(outcomes, task, task_paths):
    configure(task_paths)
    client = MlflowClient()
    name = task_paths.registered_model
    key = comparison_key(task, task_paths.exports)
    # the versions of the task's settings (other tests of the session register runs of other settings)
    versions = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("comparison") == key]
    metric = selection_metric(task.evaluate.select_by)
    registered = {v.run_id: client.get_run(v.run_id).data.metrics[metric] for v in versions}
    assert all(client.get_run(v.run_id).data.tags["selected_by"] == metric for v in versions)
    # every family is registered, LightGBM modes included, each version saying what it is
    assert {o.run_id for o in outcomes.values()} <= set(registered)
    assert {v.tags["model"] for v in versions} >= set(outcomes)
    champion = client.get_model_version_by_alias(name, champion_alias(key))
    assert registered[champion.run_id] == max(registered.values())
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@{champion_alias(key)}")
    assert loaded is not None


def test_the_metrics_table_covers_every_evaluated_target(outcomes, tiny_exports, task):
    ev = pd.read_parquet(tiny_exports / f"ds={task.backtest}" / "evaluation.parquet")
    for o in outcomes.values():
        assert set(o.per_target.index) == set(ev["target_id"].unique())
        assert o.per_target["positives"].sum() == ev["label_buy"].sum()


def test_the_forward_export_holds_the_behaviour_the_deep_models_read_with_it(outcomes, task, task_paths,
                                                                              tiny_dataset, tmp_path, capsys):
    """The forward date's build makes the sequences and category series too, not only samples_forward (of
    which they are no ancestor): without them the deep models scored the crowds as if nobody had any behaviour.
    The sequences equal the pandas reference's at the forward date."""
    from ml.crowds import build_forward
    from ml.warehouse.export import export_dir
    from ml.warehouse.reference import assert_frames_match, load_events, reference_features

    as_of = last_log_day(task_paths.dataset_dir) + dt.timedelta(days=1)
    rows = build_forward(task, task_paths, as_of)
    assert rows["forward"] > 0 and rows["sequences"] > 0 and rows["category_series"] > 0
    folder = export_dir(task_paths.exports, as_of)
    got = pd.read_parquet(folder / "sequences.parquet").drop(columns="ds")
    assert len(got) == rows["sequences"]
    ref = reference_features(load_events(tiny_dataset), as_of, sequence_days=task.windows.sequence_days,
                             sequence_length=task.warehouse.sequence_length)["sequences"]
    assert_frames_match(got, ref, ["user_id"])
    # a forward export made without them (before the fix, and kept by --no-build) is refused for a deep model
    schema_path = folder / "schema.json"
    original = schema_path.read_text()
    schema = json.loads(original)
    try:
        schema_path.write_text(json.dumps({**schema, "rows": {**schema["rows"], "sequences": 0,
                                                              "category_series": 0}}))
        assert main(["score", "--no-build", "--model", "din", "--out", str(tmp_path / "c.parquet")]) == 2
        assert "holds no sequences, which din reads" in capsys.readouterr().err
        assert main(["score", "--no-build", "--model", "lgbm_all_mixed", "--out", str(tmp_path / "c.parquet")]) == 0
    finally:
        schema_path.write_text(original)


def test_a_forward_export_of_the_same_inputs_is_reused_and_one_of_other_settings_built_again(
        outcomes, task, task_paths, tmp_path, capsys):
    """Scoring again (another model, another crowd size) runs no dbt: the forward export records the inputs it
    was made from (ml.crowds.forward_key); other settings of the forward population build it again."""
    from ml.crowds import build_forward
    from ml.warehouse.export import export_dir

    as_of = last_log_day(task_paths.dataset_dir) + dt.timedelta(days=1)
    rows = build_forward(task, task_paths, as_of)
    schema = export_dir(task_paths.exports, as_of) / "schema.json"
    made = schema.stat().st_mtime_ns
    assert build_forward(task, task_paths, as_of) == rows and schema.stat().st_mtime_ns == made
    out = str(tmp_path / "c.parquet")
    assert main(["score", "--model", "lgbm_all_mixed", "--out", out]) == 0
    assert f"features as of {as_of} already built from this dataset and these settings" in capsys.readouterr().out
    assert schema.stat().st_mtime_ns == made
    fewer = task.crowds.active_days // 2
    assert main(["score", "--model", "lgbm_all_mixed", "--set", f"crowds.active_days={fewer}", "--out", out]) == 0
    said = capsys.readouterr().out
    assert f"features as of {as_of} built for" in said and schema.stat().st_mtime_ns != made
    assert json.loads(schema.read_text())["rows"]["forward"] < rows["forward"]  # fewer active users, fewer pairs


def test_score_publishes_forward_crowds_after_the_end_of_the_log(outcomes, task, task_paths, tmp_path, capsys):
    out = tmp_path / "crowd.parquet"
    out.write_bytes(b"a file of the user's")  # never replaced by --out, nor anything beside it written
    assert main(["score", "--model", "din", "--no-build", "--out", str(out)]) == 2
    assert out.read_bytes() == b"a file of the user's" and "refusing to replace" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crowd.parquet"]
    out.unlink()
    assert main(["score", "--model", "din", "--size", "25", "--out", str(out)]) == 0
    crowd = pd.read_parquet(out)
    assert list(crowd.columns) == list(CROWD_COLUMNS)
    last_day = last_log_day(task_paths.dataset_dir)
    assert (crowd["feature_date"] == last_day + dt.timedelta(days=1)).all()  # no label exists yet
    assert (crowd["window_end"] == crowd["window_start"] + dt.timedelta(days=task.windows.label_days)).all()
    assert set(crowd["target"]) == {"brand"} and set(crowd["model"]) == {"din"}
    # a model named by --model carries its run's registered version, as the champion does (it said "local")
    configure(task_paths)
    (registered,) = MlflowClient().search_model_versions(
        f"name = '{task_paths.registered_model}' and run_id = '{outcomes['din'].run_id}'")
    assert set(crowd["model_version"]) == {str(registered.version)}
    assert set(crowd["run_id"]) == {outcomes["din"].run_id}
    assert set(crowd["model_build"]) == set(crowd["data_build"])  # trained on the data it scored
    # a crowds file of the columns an earlier version wrote is an earlier output, replaced as such
    crowd.drop(columns=["model_build"]).to_parquet(out)
    assert main(["score", "--model", "din", "--no-build", "--size", "25", "--out", str(out)]) == 0
    assert list(pd.read_parquet(out).columns) == list(CROWD_COLUMNS)
    # and its training's warning, if it had one, as its own (not "the champion ...")
    from ml.tracking import run_verdict

    said, verdict = capsys.readouterr().out, run_verdict(outcomes["din"].run_id, "din")
    assert (f"\nwarning: {verdict}\n" in said) if verdict else "warning" not in said
    sizes = crowd.groupby("target_id").size()
    assert (sizes == 25).all() and len(sizes) > 10
    first = crowd[crowd["rank"] == 1].set_index("target_id")["score"]
    last = crowd[crowd["rank"] == 25].set_index("target_id")["score"]
    assert (first >= last).all()
    # the buyers to expect per target: the crowd's share of the population's, from the same scores
    expected = pd.read_parquet(tmp_path / "crowd_expected_buyers.parquet").set_index("target_id")
    in_crowd = crowd.groupby("target_id")["score"].sum()
    assert expected["expected_buyers_in_crowd"].to_dict() == pytest.approx(in_crowd.to_dict())
    assert (expected["expected_buyers_in_crowd"] <= expected["expected_buyers_population"] + 1e-9).all()
    assert (expected["crowd_size"] == 25).all() and (expected["population"] >= 25).all()
    # the champion, from the registry, into the task's crowds and warehouse table
    assert main(["score", "--no-build", "--set", "crowd_size=5"]) == 0
    published = pd.read_parquet(task_paths.crowds / f"ds={last_day + dt.timedelta(days=1)}" / "crowds.parquet")
    assert (published.groupby("target_id").size() == 5).all() and published["model_version"].iloc[0] != "local"
    import duckdb

    # (the date's rows: a DAG test on the same worker publishes crowds of other dates into this warehouse)
    with duckdb.connect(str(task_paths.warehouse)) as con:
        n = con.execute("select count(*) from crowds.forward_crowds where task = 'tmall-2013' and feature_date = ?",
                        [last_day + dt.timedelta(days=1)]).fetchone()[0]
    assert n == len(published)
    assert main(["score", "--no-build", "--set", "crowd_size=0"]) == 2
    assert "crowds.size" in capsys.readouterr().err
    # by default a crowd is at most a tenth of the scored users (crowds.share), not all of them
    assert main(["score", "--no-build"]) == 0
    folder = task_paths.crowds / f"ds={last_day + dt.timedelta(days=1)}"
    sizes = pd.read_parquet(folder / "crowds.parquet").groupby("target_id").size()
    users = pd.read_parquet(folder / "crowds_expected_buyers.parquet").set_index("target_id")["population"]
    assert (sizes == np.ceil(0.1 * users.max())).all() and sizes.max() < task.crowds.size
    # --size asks for that many, past the share (it was capped by the share as the task's size is)
    asked = int(sizes.max()) * 2
    assert main(["score", "--no-build", "--size", str(asked)]) == 0
    sizes = pd.read_parquet(folder / "crowds.parquet").groupby("target_id").size()
    assert sizes.max() == asked and (sizes <= asked).all()


def test_published_crowds_are_measured_once_the_log_holds_their_window(outcomes, task, task_paths, tmp_path, capsys,
                                                                      caplog):
    """`crowd outcomes`: crowds published as of a date whose window the log holds (a past date, --as-of) are
    measured against what the log then shows, here recomputed from the raw events: each brand's buyers in the
    window, those in the crowd and those in the scored population (every user active in the crowds.active_days
    before the date), the ratios; written beside the crowds, to the warehouse table and to the model's run."""
    import duckdb

    from ml.crowd_outcomes import OUTCOME_COLUMNS, measure_published, metric_step

    day = task.backtest + dt.timedelta(days=1)  # no labelled date: its own population, scored only for this
    end = day + dt.timedelta(days=task.windows.label_days)
    last = last_log_day(task_paths.dataset_dir)
    assert end - dt.timedelta(days=1) <= last and task.crowds.population == "evaluated"
    assert main(["score", "--as-of", str(day)]) == 0
    folder = task_paths.crowds / f"ds={day}"
    crowd = pd.read_parquet(folder / "crowds.parquet")
    capsys.readouterr()
    assert main(["outcomes", "--ds", str(day)]) == 0
    said = capsys.readouterr().out
    table = pd.read_parquet(folder / "crowds_outcomes.parquet")
    assert list(table.columns) == list(OUTCOME_COLUMNS) and set(table["target_id"]) == set(crowd["target_id"])
    events, items = str(task_paths.dataset_dir / "events" / "*.parquet"), str(task_paths.dataset_dir / "items.parquet")
    with duckdb.connect() as con:
        buyers = con.execute("select distinct e.user_id, i.brand_id as target_id from read_parquet(?) as e "
                             "join read_parquet(?) as i using (item_id) where e.action = 'buy' and e.ts >= ? "
                             "and e.ts < ?", [events, items, day, end]).df()
        active = con.execute("select distinct user_id from read_parquet(?) where ts >= ? and ts < ?",
                             [events, day - dt.timedelta(days=task.crowds.active_days), day]).df()["user_id"]
    buyers = buyers[buyers["target_id"].isin(crowd["target_id"])]
    hits = crowd.merge(buyers, on=["target_id", "user_id"])
    per = table.set_index("target_id")

    def by_target(frame: pd.DataFrame) -> dict:
        return frame.groupby("target_id").size().reindex(per.index, fill_value=0).to_dict()

    assert per["buyers"].to_dict() == by_target(buyers) and buyers["user_id"].nunique() > 10
    assert per["buyers_in_crowd"].to_dict() == by_target(hits) and len(hits) > 5
    assert per["buyers_in_population"].to_dict() == by_target(buyers[buyers["user_id"].isin(active)])
    assert (per["population"] == len(set(active))).all()  # every active user, for each top brand
    # the population found again is the one scored (the log's days before the date are the same)
    expected = pd.read_parquet(folder / "crowds_expected_buyers.parquet").set_index("target_id")
    assert (per["population_scored"] == expected["population"]).all()
    assert (per["population"] == expected["population"]).all()
    assert np.allclose(per["expected_buyers_in_crowd"], crowd.groupby("target_id")["score"].sum())
    precision = len(hits) / len(crowd)
    lift = precision / (per["buyers_in_population"].sum() / per["population"].sum())
    assert f"{len(hits)} of the crowds' {len(crowd):,} users bought" in said and f"precision {precision:.4f} (" in said
    assert f"lift {lift:.2f}x (" in said and lift > 1 and "warning" not in said
    # the pooled figures as metrics of the run that scored the crowds, stepped by the date
    configure(task_paths)
    history = MlflowClient().get_metric_history(crowd["run_id"].iloc[0], "outcome_lift")
    assert [(m.step, round(m.value, 9)) for m in history] == [(metric_step(day), round(lift, 9))]
    # the warehouse table: measuring again replaces the date's rows; --out writes the per-target table where
    # asked, but never over a file that is not one
    (tmp_path / "notes.csv").write_text("my,notes\n")
    assert main(["outcomes", "--ds", str(day), "--no-track", "--out", str(tmp_path / "notes.csv")]) == 2
    assert (tmp_path / "notes.csv").read_text() == "my,notes\n" and "refusing to replace" in capsys.readouterr().err
    assert main(["outcomes", "--ds", str(day), "--no-track", "--out", str(tmp_path / "outcomes.csv")]) == 0
    assert pd.read_csv(tmp_path / "outcomes.csv").set_index("target_id")["buyers_in_crowd"].to_dict() == \
        per["buyers_in_crowd"].to_dict()
    with duckdb.connect(str(task_paths.warehouse)) as con:
        n = con.execute("select count(*) from crowds.crowd_outcomes where feature_date = ?", [day]).fetchone()[0]
    assert n == len(per)
    assert measure_published(task, task_paths, [day], only_new=True) == ([], [])  # measured since published
    # a population that is not the one scored (the log's days before the date changed, or the settings) is said
    expected.assign(population=expected["population"] + 1).reset_index().to_parquet(
        folder / "crowds_expected_buyers.parquet")
    capsys.readouterr()
    assert main(["outcomes", "--ds", str(day), "--no-track"]) == 0
    warned = (f"warning: tmall-2013 {day}: the population found again differs from the one the crowds were scored "
              f"on for {len(per)} of {len(per)} targets")
    assert warned in capsys.readouterr().out
    # crowds whose window the log does not hold yet wait; a date never published is named as such
    assert main(["score", "--size", "5"]) == 0  # the forward export an earlier test built, or built now
    capsys.readouterr()
    assert main(["outcomes", "--no-track"]) == 0
    assert f"tmall-2013 {last + dt.timedelta(days=1)} .. " in (said := capsys.readouterr().out) and \
        f"pending, the log ends on {last}" in said
    assert main(["outcomes", "--ds", "2013-06-01"]) == 2
    assert "no crowds published for 2013-06-01" in capsys.readouterr().err
    # crowds of another window answer another question than the task's label rule: refused, saying which
    assert main(["outcomes", "--ds", str(day), "--set", "label_days=3"]) == 2
    assert "predict buyers of a brand over 7 days; task tmall-2013 asks of a brand over 3" in capsys.readouterr().err
    # ... and left out with a warning by the periods DAG's runs, which would otherwise fail each time
    other = load_task(task.name, {"windows.label_days": 3})
    with caplog.at_level(logging.WARNING, logger="ml.crowd_outcomes"):
        assert measure_published(other, TaskPaths.of(other), only_new=True) == ([], [])
    assert f"the crowds of {last + dt.timedelta(days=1)} predict buyers of a brand over 7 days" in caplog.text
    # the HTML report has a row for the measured date
    from ml.report_html import write_report

    page = write_report(task, task_paths, tmp_path / "report.html").read_text()
    row = page[page.index('<table id="outcomes">'):]
    assert f"<td>{day} .. {end - dt.timedelta(days=1)}</td>" in row and f"<td>{lift:.2f}x<br><small>" in row


def test_the_forward_population_scored_in_small_chunks_gives_the_same_crowds(outcomes, tmp_path, monkeypatch):
    """Scoring streams the population chunk by chunk (bounded memory); the crowds, their order and the buyers
    to expect do not depend on where the chunks fall."""
    from ml import crowds

    whole, chunked = tmp_path / "whole.parquet", tmp_path / "chunked.parquet"
    assert main(["score", "--model", "lgbm_all_mixed", "--size", "12", "--out", str(whole)]) == 0
    monkeypatch.setattr(crowds, "SCORE_CHUNK_ROWS", 997)  # a prime: chunks end inside targets and users
    assert main(["score", "--model", "lgbm_all_mixed", "--size", "12", "--out", str(chunked), "--no-build"]) == 0
    a, b = pd.read_parquet(whole), pd.read_parquet(chunked)
    assert len(a) > 100
    pd.testing.assert_frame_equal(a.drop(columns="score"), b.drop(columns="score"))
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-12)
    ea = pd.read_parquet(tmp_path / "whole_expected_buyers.parquet")
    eb = pd.read_parquet(tmp_path / "chunked_expected_buyers.parquet")
    pd.testing.assert_frame_equal(ea, eb, rtol=1e-9)
    assert ea["population"].sum() > 10 * 997  # many chunks, each target's users spread over them


def test_evaluate_recomputes_the_recorded_metrics_from_the_bundle(outcomes, capsys, tiny_dataset, tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text("my notes\n")  # a file of the user's at the --per-target path is never replaced
    assert main(["evaluate", "--model", "lgbm_all_mixed", "--per-target", str(notes)]) == 2
    assert notes.read_text() == "my notes\n" and "refusing to replace" in capsys.readouterr().err
    per_target = tmp_path / "per_target.csv"  # written, then an earlier one of its own kind replaced
    for _ in range(2):
        assert main(["evaluate", "--model", "lgbm_all_mixed", "--per-target", str(per_target)]) == 0
    assert pd.read_csv(per_target).columns[0] == "target_id"
    assert main(["evaluate", "--model", "lgbm_all_mixed"]) == 0
    printed = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in printed.splitlines()[1:] if line.startswith("  ")}
    outcome = outcomes["lgbm_all_mixed"]
    for name in ("auc", "auc_per_target", "recall_at_100"):
        assert float(lines[name][0]) == pytest.approx(outcome.summary[name], abs=1e-4)
        # with the interval the training recorded: the same resamples of the same rows
        low, high = map(float, lines[name][1].strip("()").split("\u2013"))
        assert (low, high) == pytest.approx((outcome.intervals[name].low, outcome.intervals[name].high), abs=5e-4)
    assert "oracle" in lines["auc"]


def test_an_unknown_model_fails_with_a_clear_message(tiny_exports, task, task_paths):
    with pytest.raises(ValueError, match="unknown model 'xgb'"):
        train_and_evaluate("xgb", task, task_paths)


def test_deep_models_train_on_the_device_they_are_given(outcomes):
    bundle = outcomes["din"].bundle
    assert (bundle / "weights.pt").exists() and (bundle / "feature_map.json").exists()
    assert np.isfinite(outcomes["din"].summary["logloss"])


def test_lgbm_baselines_train_one_model_per_evaluated_target_or_group(outcomes, tiny_exports, task):
    from ml.train.bundle import Bundle

    ev = pd.read_parquet(tiny_exports / f"ds={task.backtest}" / "evaluation.parquet")
    bundle = Bundle.load(outcomes["lgbm_per_target"].bundle)
    boosters = list((bundle.path / "lgbm").glob("*.txt"))
    assert 0 < len(boosters) <= ev["target_id"].nunique()


def test_the_per_target_boosters_serve_from_the_registry_as_their_bundle_scores(outcomes, tiny_exports, task,
                                                                                 task_paths):
    from ml.train.bundle import Bundle

    configure(task_paths)
    client = MlflowClient()
    run_id = outcomes["lgbm_per_target"].run_id
    version = next(v for v in client.search_model_versions(f"name='{task_paths.registered_model}'")
                   if v.run_id == run_id)
    served = mlflow.pyfunc.load_model(f"models:/{task_paths.registered_model}/{version.version}")
    ev = pd.read_parquet(tiny_exports / f"ds={task.backtest}" / "evaluation.parquet").head(2000)
    expected = Bundle.load(outcomes["lgbm_per_target"].bundle).score_frame(ev)
    np.testing.assert_allclose(np.asarray(served.predict(ev)), expected)
    assert len(np.unique(expected)) > 10  # boosters, not only the prior


def test_scoring_from_one_float32_matrix_gives_the_boosters_own_predictions(outcomes, tiny_exports, task):
    """predict_gbdt hands LightGBM one float32 matrix, not the frame it was trained on: the same scores."""
    from ml.train.bundle import Bundle
    from ml.train.gbdt import booster_inputs, booster_matrix, predict_gbdt

    ev = pd.read_parquet(tiny_exports / f"ds={task.backtest}" / "evaluation.parquet").head(3000)
    bundle = Bundle.load(outcomes["lgbm_all_mixed"].bundle)
    gbdt, dense = bundle.gbdt(), bundle.config["dense"]
    frame = booster_inputs(ev, dense, gbdt.vocabularies)
    matrix = booster_matrix(ev, dense, gbdt.vocabularies)
    assert matrix.dtype == np.float32 and matrix.flags.c_contiguous and matrix.shape == frame.shape
    ((_, booster),) = gbdt.boosters.items()
    np.testing.assert_allclose(predict_gbdt(gbdt, ev, dense),
                               booster.predict(frame, num_iteration=booster.best_iteration), rtol=1e-6)


def test_a_bundle_scores_a_large_population_with_its_trees_compiled_as_lightgbm_does(outcomes, tiny_exports, task,
                                                                                     tmp_path, monkeypatch):
    """Past COMPILE_AFTER_ROWS a bundle scores with its boosters compiled (ml.train.compiled_trees): LightGBM's
    scores to 1e-12, in blocks on several threads at once, the object code cached beside the boosters, and a
    bundle read again takes it from there instead of compiling."""
    import ml.train.bundle as bundle_module
    import ml.train.gbdt as gbdt_module
    from ml.train.bundle import Bundle
    from ml.train.compiled_trees import CACHE_DIR

    ev = pd.read_parquet(tiny_exports / f"ds={task.backtest}" / "evaluation.parquet")
    folder = tmp_path / "lgbm_all_mixed"  # a copy: the module's bundle stays as trained
    shutil.copytree(outcomes["lgbm_all_mixed"].bundle, folder)
    monkeypatch.setattr(bundle_module, "COMPILE_AFTER_ROWS", len(ev) + 1)
    monkeypatch.setattr(gbdt_module, "COMPILED_BLOCK_ROWS", len(ev) // 5 + 1)  # five blocks: three waves of two
    bundle = Bundle.load(folder)
    by_lightgbm = bundle.score_frame(ev)
    assert not bundle.gbdt().compiled and not (folder / "lgbm" / CACHE_DIR).exists()
    gbdt = bundle.gbdt()
    by_compiled = bundle.score_frame(ev)  # the rows scored pass COMPILE_AFTER_ROWS
    assert set(gbdt.compiled) == set(gbdt.boosters) == {"all"}
    np.testing.assert_allclose(by_compiled, by_lightgbm, rtol=1e-12, atol=0)
    gbdt.compiled["all"].threads = 2  # the test worker's one thread, as if the process had two
    np.testing.assert_allclose(bundle.score_frame(ev), by_lightgbm, rtol=1e-12, atol=0)
    assert len(list((folder / "lgbm" / CACHE_DIR).glob("all.*.o"))) == 1
    again = Bundle.load(folder)
    assert set(again.gbdt().compiled) == {"all"}  # read from the cache, before a row is scored
    np.testing.assert_allclose(again.score_frame(ev.head(100)), by_lightgbm[:100], rtol=1e-12, atol=0)


def test_a_booster_the_compiler_refuses_is_scored_by_lightgbm_and_not_compiled_again(outcomes, tiny_exports, task,
                                                                                      monkeypatch):
    """A compile that gives nothing (lleaves refused the booster, or is missing) leaves LightGBM's predict, the
    same scores, and is tried once per bundle, not at every chunk of the population."""
    import ml.train.bundle as bundle_module
    from ml.train.bundle import Bundle

    tried = []
    def refused(model_file, threads, cached_only=False):  # a look for a cache finds none
        return None if cached_only else tried.append(model_file)

    monkeypatch.setattr(bundle_module, "compile_booster", refused)
    monkeypatch.setattr(bundle_module, "COMPILE_AFTER_ROWS", 1)
    ev = pd.read_parquet(tiny_exports / f"ds={task.backtest}" / "evaluation.parquet").head(2000)
    bundle = Bundle.load(outcomes["lgbm_all_mixed"].bundle)
    first, second = bundle.score_frame(ev), bundle.score_frame(ev)
    assert not bundle.gbdt().compiled and len(tried) == 1
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, Bundle.load(outcomes["lgbm_all_mixed"].bundle).score_frame(ev), rtol=1e-12)


@pytest.fixture
def other_store(task, task_paths, tmp_path, request):
    """A task namespace of its own in its own MLflow store; the session's store is configured again afterwards."""
    paths = TaskPaths(tmp_path, task.name, request.node.name[5:40].replace("_", "-"))
    configure(paths)
    yield paths
    configure(task_paths)


def test_a_promotion_says_the_two_metrics_with_the_digits_that_tell_them_apart():
    import math

    from ml.tracking import apart

    assert apart(0.93264, 0.93258) == ("0.93264", "0.93258")
    assert apart(0.9326, 0.91) == ("0.9326", "0.9100")
    assert apart(0.5, 0.5) == ("0.50000000", "0.50000000")  # equal: as many as it took to see so
    assert apart(0.81, -math.inf) == ("0.8100", "-inf")  # no champion before


def test_the_champion_is_chosen_on_validation_even_when_the_backtest_would_choose_otherwise(other_store, caplog):
    """Two registered runs: the first better on the backtest, the second on the validation dates. The
    second is the champion, and a later run worse on validation does not take over. Each promotion says
    which version it replaced (the first said "replaces None (-inf)")."""
    caplog.set_level(logging.INFO, logger="ml.tracking")
    paths = other_store
    client = MlflowClient()
    client.create_registered_model(paths.registered_model)
    metric = selection_metric("gauc")

    def register(selection: float, backtest: float) -> str:
        with mlflow.start_run() as run:
            mlflow.log_metrics({metric: selection, "eval_gauc": backtest})
        return client.create_model_version(paths.registered_model, run.info.artifact_uri, run.info.run_id).version

    first = register(selection=0.70, backtest=0.95)
    assert promote_if_better(paths, first, metric, 0.70, "k1")
    second = register(selection=0.80, backtest=0.60)
    assert promote_if_better(paths, second, metric, 0.80, "k1")
    third = register(selection=0.75, backtest=0.99)
    assert not promote_if_better(paths, third, metric, 0.75, "k1")
    said = [r.getMessage() for r in caplog.records if r.name == "ml.tracking"]
    of_k1 = f"{paths.registered_model} champion of settings k1"
    assert said == [f"{of_k1}: version {first} ({metric} 0.7000), the first",
                    f"{of_k1}: version {second} ({metric} 0.8000) replaces {first} (0.7000)",
                    f"{of_k1} stays version {second} ({metric} 0.8000 >= 0.7500)"]
    assert client.get_model_version_by_alias(paths.registered_model, champion_alias("k1")).version == second
    assert client.get_model_version_by_alias(paths.registered_model, CHAMPION).version == second


def test_runs_of_other_settings_never_compete_for_the_champion(other_store):
    """A run measured on other validation rows (another comparison fingerprint) gets its own champion, even
    with a lower figure; the first settings' champion is untouched and still serves them."""
    paths = other_store
    client = MlflowClient()
    client.create_registered_model(paths.registered_model)
    metric = selection_metric("gauc")
    versions = []
    for value in (0.90, 0.60):
        with mlflow.start_run() as run:
            mlflow.log_metric(metric, value)
        versions.append(client.create_model_version(paths.registered_model, run.info.artifact_uri,
                                                    run.info.run_id).version)
    assert promote_if_better(paths, versions[0], metric, 0.90, "settings-a")
    assert promote_if_better(paths, versions[1], metric, 0.60, "settings-b")
    alias = client.get_model_version_by_alias
    assert alias(paths.registered_model, champion_alias("settings-a")).version == versions[0]
    assert alias(paths.registered_model, champion_alias("settings-b")).version == versions[1]


def test_the_features_alias_names_the_champion_of_the_comparison_trained_last(other_store):
    """Two builds of one log (comparisons old and new) with the same features: each training points the
    features alias at its own comparison's champion, promoted or kept, so new data is served by the champion
    of the data trained on last, and a kept champion (or one promoted before the alias existed) is named too."""
    paths = other_store
    client = MlflowClient()
    client.create_registered_model(paths.registered_model)
    metric = selection_metric("gauc")

    def register(value: float) -> str:
        with mlflow.start_run() as run:
            mlflow.log_metric(metric, value)
        return client.create_model_version(paths.registered_model, run.info.artifact_uri, run.info.run_id).version

    def features() -> str:
        return client.get_model_version_by_alias(paths.registered_model, serving_alias("f")).version

    old = register(0.90)
    assert promote_if_better(paths, old, metric, 0.90, "old")  # before the alias: none
    kept = register(0.80)
    assert not promote_if_better(paths, kept, metric, 0.80, "old", "f")
    assert features() == old  # the kept champion, not the version just trained
    new = register(0.60)
    assert promote_if_better(paths, new, metric, 0.60, "new", "f")
    assert features() == new  # the new data's first champion, however low: it competes on the new data alone
    assert client.get_model_version_by_alias(paths.registered_model, champion_alias("old")).version == old


def test_every_run_records_the_metrics_it_was_chosen_on(outcomes, task):
    for name, o in outcomes.items():
        assert 0.5 < o.selection["auc_per_target"] <= 1
        assert o.selection.keys() >= {"auc", "auc_per_target", "gauc", "recall_at_100"}, name


def test_a_promotion_waits_for_the_one_in_progress(other_store):
    """Parallel trainings promote one at a time: read the champion's metric and move the alias under a lock."""
    import threading
    import time

    from ml.tracking import champion_lock

    paths = other_store
    client = MlflowClient()
    client.create_registered_model(paths.registered_model)
    with mlflow.start_run() as run:
        mlflow.log_metric(selection_metric("gauc"), 0.9)
    version = client.create_model_version(paths.registered_model, run.info.artifact_uri, run.info.run_id).version
    done = []
    with champion_lock(paths):
        worker = threading.Thread(target=lambda: done.append(
            promote_if_better(paths, version, selection_metric("gauc"), 0.9, "k")))
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive() and not done  # blocked while another promotion holds the lock
    worker.join(timeout=30)
    assert done == [True]


def test_a_checkpoint_of_other_data_is_not_resumed(tiny_exports, task, task_paths, caplog):
    """A retry resumes from the model's last epoch only with the same exports, settings and code: after a
    re-export (here: a file rewritten) training starts afresh and says so."""
    import logging
    import os

    cfg = TrainConfig(epochs=1, batch_size=512, progress=False, tensorboard=False, seed=7)
    train_and_evaluate("dnn", task, task_paths, train_cfg=cfg, track=False)
    checkpoints = task_paths.models / "checkpoints"
    before = {d.name for d in checkpoints.glob("dnn-*")}
    sample = tiny_exports / f"ds={task.sample_dates[0]}" / "samples.parquet"
    stat = sample.stat()
    os.utime(sample, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with caplog.at_level(logging.INFO, logger="ml.train.pipeline"):
        train_and_evaluate("dnn", task, task_paths, train_cfg=cfg, track=False)
    after = {d.name for d in checkpoints.glob("dnn-*")}
    assert len(after - before) == 1  # a new checkpoint directory: nothing was resumed from the old one
    assert "are of other data, settings or code: not resumed" in caplog.text


def test_report_writes_the_comparison_with_intervals_and_the_selection_metric(outcomes, task, task_paths, tmp_path,
                                                                            capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n<!-- comparison:{task.name}:start -->\nSTALE-TABLE\n"
                      f"<!-- comparison:{task.name}:end -->\nafter\n")
    assert main(["report", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "STALE-TABLE" not in text
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert header.split(" | ")[1] == f"valid_{task.evaluate.select_by}"
    din = next(line for line in text.splitlines() if line.startswith("| din "))  # (maybe marked below the floor)
    auc = outcomes["din"].summary["auc"]
    iv = outcomes["din"].intervals["auc"]
    assert f"{auc:.4f} ({iv.low:.3f}–{iv.high:.3f})" in din
    assert "paired interval" in text
    # the model the crowds are scored with is marked, and is the one the note says was chosen: the registry's
    # champion (chosen on validation), not the backtest's best in bold
    champion = champion_of(task_paths, comparison_key(task, task_paths.exports), task.evaluate.select_by)
    marked = [line for line in text.splitlines() if "(champion" in line]
    assert len(marked) == 1 and marked[0].startswith(f"| {champion['model']} (champion")
    assert f"Chosen: {champion['model']}, backtest AUC" in text
    assert "| floor: decayed_count |" in text and "| floor: cart_then_recency |" in text
    assert comparison_key(task, task_paths.exports) in text  # the settings the runs share are printed with them
    oracle = next(line for line in text.splitlines() if line.startswith("| oracle (ceiling) |"))
    assert f"{outcomes['din'].oracle['auc']:.4f} ± {outcomes['din'].oracle_error['auc']:.4f}" in oracle
    assert outcomes["din"].oracle_error["auc"] < 0.005  # 1,024 rollouts on the backtest date


def test_the_html_report_renders_in_chromium_with_every_model_curve_and_the_crowds(outcomes, task, task_paths,
                                                                                tmp_path, capsys):
    from browser import rendered
    from matplotlib.image import imread

    assert main(["score", "--set", "crowd_size=7"]) == 0
    out = tmp_path / "report.html"
    assert main(["report", "--html", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    text = out.read_text()
    # self-contained: nothing fetched from anywhere when it is opened
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text and "<script" not in text
    page = rendered(out, tmp_path / "chromium")
    charts = {i["id"]: i for i in page["images"]}
    assert set(charts) == {"chart-roc", "chart-recall_at_n", "chart-gain", "chart-lift", "chart-calibration"}
    for chart in charts.values():  # every SVG decoded and laid out at a readable size
        assert chart["complete"] and chart["width"] > 300 and chart["shown"][0] > 300, chart
    comparison, table = page["tables"][0], latest_runs(task_paths, task)
    # a header, then each model's latest run (these, and any a test before trained on these rows), floors, ceiling
    assert set(outcomes) <= set(table["model"]) and {"floor: decayed_count", "oracle (ceiling)"} <= set(table["model"])
    assert comparison["rows"] == 1 + len(table) and comparison["shown"][1] > 100
    assert {"Curves", "Crowds"} <= set(page["headings"])
    # the crowds just published: their size and the model that made them
    assert "7 to 7 (median 7)" in text and "buyers to expect" in text
    # the champion's row is marked, and the crowds are its own (no warning that another model scored them)
    assert text.count('champion"><td>') == 1 and "not by the current champion" not in text
    # each figure over its interval (the table was twice the page's width with both on one line)
    assert '<br><span class="ci">(' in text and '<br><span class="ci">±0.' in text
    pixels = imread(page["screenshot"])[..., :3]
    # text, table and axes (about 6 % of the pixels dark) and the models' coloured lines: not a blank page
    assert (pixels.mean(axis=2) < 0.9).mean() > 0.02 and (pixels.std(axis=2) > 0.05).mean() > 0.002
    # a rerun replaces its own report; a file it did not write is never replaced
    assert main(["report", "--html", str(out)]) == 0
    other = tmp_path / "notes.html"
    other.write_text("<p>mine</p>")
    assert main(["report", "--html", str(other)]) == 2
    assert other.read_text() == "<p>mine</p>" and "refusing to replace" in capsys.readouterr().err


def test_the_mlflow_link_the_project_prints_opens_the_runs_not_the_genai_pages(outcomes, task_paths, tmp_path):
    """MLflow 3.17's UI opens a new browser on its GenAI side whatever the experiment's kind tag says: `make
    mlflow`'s user met an empty traces page ("No data available"). The link ui_url makes opens the runs."""
    import sys
    import urllib.request

    from airflow_helpers import free_port, wait_for
    from browser import dom

    from ml.tracking import LOCAL_UI, ui_url

    port, store = free_port(), f"sqlite:///{task_paths.shared.mlflow_db}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--host", "127.0.0.1", "--port",
                               str(port), "--workers", "1", "--backend-store-uri", store, "--registry-store-uri",
                               store], env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{base}/health", timeout=2).close() or True, 60, "mlflow ui")
        experiment = configure(task_paths)
        link = ui_url(experiment).replace(LOCAL_UI, base)
        assert link.startswith(f"{base}/#/experiments/{experiment}?")
        run_name = MlflowClient().get_run(outcomes["din"].run_id).info.run_name

        def rendered(url: str, until: str, name: str) -> str:  # the page's data comes from the busy server: tries
            for attempt in range(3):
                page = dom(url, tmp_path / f"{name}-{attempt}")
                if until in page:
                    break
            return page

        assert run_name in rendered(link, run_name, "linked")
        plain = rendered(f"{base}/#/experiments/{experiment}", "No data available", "plain")  # the tag alone
        assert run_name not in plain and "No data available" in plain
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_report_marks_the_champion_or_says_it_is_an_earlier_run_than_the_tables():
    """make run's table bolded the backtest's best and never said which model the crowds came from (the one
    chosen on validation, lgbm_few_mixed, was not bold on the backtest's per-target AUC)."""
    from ml.report import mark_champion, markdown

    table = pd.DataFrame([{"model": "dnn", "run_id": "r1", "auc": 0.9, "below_floor": True},
                          {"model": "din", "run_id": "r2", "auc": 0.8, "below_floor": False},
                          {"model": "oracle (ceiling)", "run_id": "", "auc": 0.99, "below_floor": False}])
    table.attrs["columns"] = ("auc",)
    table["valid_auc_per_target"] = [0.93, 0.95, float("nan")]
    marked = mark_champion(table, {"model": "dnn", "version": "3", "run_id": "r1", "valid": 0.93, "auc": 0.9})
    assert marked["champion"].tolist() == [True, False, False]
    assert "| dnn (champion, not above the floor) |" in markdown(marked) and "earlier run" not in markdown(marked)
    # a retrained din that did not beat its earlier run (LightGBM trained again ties): the champion is no row of
    # the table, and the table says which it is and what it scored
    elsewhere = mark_champion(table, {"model": "din", "version": "2", "run_id": "r0", "valid": 0.95, "auc": 0.81})
    assert not elsewhere["champion"].any()
    assert ("is din version 2 (run r0; valid_auc_per_target 0.9500, backtest AUC 0.8100): an earlier run than the "
            "table's din, which did not beat it on validation (0.9500 against 0.9500)") in markdown(elsewhere)
    assert not mark_champion(table, None)["champion"].any()  # nothing registered yet: no mark, no note


def test_the_html_report_says_when_the_crowds_were_scored_by_another_model_than_the_champion(task):
    """Crowds published before a retraining promoted another model are not the champion's: the report said only
    which model made them, beside a table whose champion is another."""
    from ml.report_html import _crowds_html

    crowds = pd.DataFrame({"target_id": [1, 1, 2], "user_id": [5, 6, 5], "model": "din", "model_version": "2",
                           "run_id": "r2", "feature_date": pd.Timestamp("2013-10-01"),
                           "window_start": pd.Timestamp("2013-10-01"), "window_end": pd.Timestamp("2013-10-08")})
    stale = _crowds_html((crowds, pd.DataFrame()), task, {"model": "dnn", "version": "3", "run_id": "r3"})
    assert "scored by din, not by the current champion dnn (version 3)" in stale
    assert "not by the current champion" not in _crowds_html((crowds, pd.DataFrame()), task,
                                                             {"model": "din", "version": "2", "run_id": "r2"})
    # crowds of new data scored by the champion of earlier data say so, with both builds (the crowds carry them)
    grown = crowds.assign(data_build="newdata00000", model_build="olddata00000")
    said = _crowds_html((grown, pd.DataFrame()), task, {"model": "din", "version": "2", "run_id": "r2"})
    assert "trained on warehouse build olddata00000, on features of build newdata00000" in said
    assert "trained on build olddata00000" in said and "(warehouse build newdata00000)" in said
    assert "other data" not in _crowds_html((grown.assign(model_build="newdata00000"), pd.DataFrame()), task, None)


@pytest.mark.parametrize("column", ["recall_at_100", "recall_at_5"])  # any cut-off of the task's, paired
def test_the_report_bolds_only_the_models_the_data_cannot_tell_from_the_best(column):
    from ml.report import mark_best

    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 60)

    def per_target(shift: float, noise: float) -> pd.DataFrame:
        recall = np.clip(base + shift + rng.normal(0, noise, 60), 0, 1)
        return pd.DataFrame({column: recall, "buyers": 5.0}, index=pd.Index(range(60), name="target_id"))

    tables = {"a": per_target(0.02, 0.003), "b": per_target(0.0, 0.003), "c": per_target(0.019, 0.05)}
    rows = [{"model": m, "run_id": m, column: float(t[column].mean())} for m, t in tables.items()]
    marked = mark_best(pd.DataFrame(rows), tables, columns=(column,)).set_index("model")[f"{column}_top"]
    # a is best; b is consistently 0.02 lower (told apart); c is as good on average but noisy (not told apart)
    assert marked.to_dict() == {"a": True, "b": False, "c": True}


def test_a_per_target_table_without_the_cut_off_is_compared_unpaired_not_a_key_error():
    """A run logged before a task's cut-off was one of its columns has no such column in its table."""
    from ml.report import mark_best

    index = pd.Index(range(20), name="target_id")
    tables = {"a": pd.DataFrame({"recall_at_5": np.linspace(0.2, 0.6, 20)}, index=index),
              "b": pd.DataFrame({"recall_at_10": np.linspace(0.2, 0.6, 20)}, index=index)}
    rows = [{"model": "a", "run_id": "a", "recall_at_5": 0.40, "recall_at_5_low": 0.35, "recall_at_5_high": 0.45},
            {"model": "b", "run_id": "b", "recall_at_5": 0.30, "recall_at_5_low": 0.25, "recall_at_5_high": 0.33}]
    marked = mark_best(pd.DataFrame(rows), tables, columns=("recall_at_5",)).set_index("model")["recall_at_5_top"]
    assert marked.to_dict() == {"a": True, "b": False}  # by the intervals, which do not overlap


@pytest.mark.parametrize(("name", "changes", "ranking"), [
    ("tmall-2013", {}, ["recall_at_50", "recall_at_100", "ndcg_at_100", "precision_at_100"]),
    ("tmall-2013", {"target": "category", "evaluate.n": [1, 5, 10]},
     ["recall_at_5", "recall_at_10", "ndcg_at_10", "precision_at_10"]),
    ("tmall-2013-tags", {"evaluate.n": [100]}, ["recall_at_100", "ndcg_at_100", "precision_at_100"]),
    ("tianchi-mobile-2014", {}, ["precision_at_k", "recall_at_k", "recall_at_1"]),
])
def test_the_reports_ranking_columns_are_at_the_tasks_own_cut_offs(name, changes, ranking):
    """A task with `evaluate.n: [1, 5, 10]` had blank recall@50/@100 columns and none of its own."""
    from ml.report import COLUMNS, report_columns

    columns = report_columns(load_task(name, changes))
    assert [c for c in columns if c.startswith(("recall_at", "ndcg_at", "precision_at"))] == ranking
    if name == "tmall-2013" and not changes:
        assert columns == COLUMNS


@pytest.mark.parametrize("model", ["dnn", "lgbm_all_mixed"])
def test_the_same_seed_gives_the_same_metrics_to_1e_6(tiny_exports, tiny_dataset, task, task_paths, model):
    summaries = []
    for _ in range(2):
        for stale in (task_paths.models / "checkpoints").glob(f"{model}-*"):
            shutil.rmtree(stale)  # trained afresh both times, not resumed from the first run's checkpoint
        summaries.append(train_and_evaluate(model, task, task_paths, train_cfg=FAST, track=False).summary)
    first, second = summaries
    assert first.keys() == second.keys()
    assert all(abs(first[k] - second[k]) <= 1e-6 for k in first), {k: (first[k], second[k]) for k in first}


def test_ablation_erases_each_input_group_and_logs_the_drops_to_the_models_run(outcomes, task, task_paths, capsys):
    """DIN without the pair's own history loses AUC (it ranks mostly on it); LightGBM reads no sequence, so
    emptying it changes nothing; the drops land in the model's own MLflow run."""
    assert main(["ablate", "--model", "din"]) == 0
    din = pd.read_csv(task_paths.reports / "ablation-din.csv").set_index("inputs")
    assert set(din.index) == {"all", "no click", "no collect", "no cart", "no buy", "no sequence",
                              "no target_history"}
    assert din.loc["all", "auc"] == pytest.approx(outcomes["din"].summary["auc"], abs=1e-6)
    assert din.loc["no target_history", "auc_drop"] > 0.02
    # each drop carries its paired interval, which holds it (users resampled for the pooled AUC)
    erased = din.drop(index="all")
    for k in ("auc", "auc_per_target", *(f"recall_at_{n}" for n in task.evaluate.n)):
        assert (erased[f"{k}_drop_low"] <= erased[f"{k}_drop"] + 1e-12).all(), k
        assert (erased[f"{k}_drop"] <= erased[f"{k}_drop_high"] + 1e-12).all(), k
    assert din.loc["no target_history", ["auc_drop_low", "auc_per_target_drop_low"]].min() > 0  # told from none
    metrics = MlflowClient().get_run(outcomes["din"].run_id).data.metrics
    assert metrics["ablation_target_history_auc_drop"] == pytest.approx(din.loc["no target_history", "auc_drop"])
    assert metrics["ablation_target_history_auc_drop_ci_low"] == pytest.approx(
        din.loc["no target_history", "auc_drop_low"])
    assert main(["ablate", "--model", "lgbm_all_mixed", "--groups", "sequence", "buy", "--no-track"]) == 0
    lgbm = pd.read_csv(task_paths.reports / "ablation-lgbm_all_mixed.csv").set_index("inputs")
    assert lgbm.loc["no sequence", "auc_drop"] == 0 and lgbm.loc["no buy", "auc_drop"] != 0
    assert lgbm.loc["no sequence", ["auc_per_target_drop_low", "auc_per_target_drop_high"]].tolist() == [0, 0]
    said = capsys.readouterr().out
    assert "drops with their 95 % interval, paired" in said and " (0.000–0.000)" in said


def test_erasing_an_action_takes_it_out_of_features_and_sequences(tiny_exports, task):
    from ml.evaluate.ablation import erase
    from ml.features.dataset import read_exports

    raw = read_exports(tiny_exports, [task.backtest], part="evaluation")
    gone = erase(raw, "buy")
    assert (gone.samples["u_buy_30d"] == 0).all() and gone.samples["ub_recency_buy"].isna().all()
    assert (gone.samples["u_click_30d"] == raw.samples["u_click_30d"]).all()
    assert (gone.sequences["hist_action"] != 4).all() and (raw.sequences["hist_action"] == 4).any()
    # every user keeps the rest of their sequence, in order
    kept = raw.sequences["hist_action"] != 4
    for k in range(0, len(raw.keys), max(1, len(raw.keys) // 50)):
        before = raw.sequences["hist_target_id"][raw.offsets[k]:raw.offsets[k + 1]]
        after = gone.sequences["hist_target_id"][gone.offsets[k]:gone.offsets[k + 1]]
        assert after.tolist() == before[kept[raw.offsets[k]:raw.offsets[k + 1]]].tolist()
