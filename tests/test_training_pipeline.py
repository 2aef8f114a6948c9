"""Train, evaluate, record and score on the tiny exports, with a real MLflow store (SQLite) in the session's
data directory."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ml.cli import main
from ml.config import Paths, Schedule
from ml.tracking import CHAMPION, REGISTERED_MODEL, configure
from ml.train.pipeline import train_and_evaluate
from ml.train.trainer import TrainConfig

FAST = TrainConfig(epochs=2, batch_size=512, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def outcomes(tiny_exports, tiny_dataset):
    return {m: train_and_evaluate(m, train_cfg=FAST, dataset_dir=tiny_dataset)
            for m in ("lgbm_all_mixed", "lgbm_per_target", "din", "ple")}


def test_every_run_is_recorded_with_metrics_plots_table_and_model(outcomes):
    configure(Paths.default())
    client = MlflowClient()
    for name, o in outcomes.items():
        run = client.get_run(o.run_id)
        assert run.info.run_name == name
        metrics = run.data.metrics
        assert 0.5 < metrics["eval_gauc"] <= 1 and "eval_auc" in metrics, name and "eval_recall_at_100" in metrics
        assert metrics["oracle_auc"] > 0.5  # the ceiling sits beside every run
        artifacts = {a.path for a in client.list_artifacts(o.run_id)}
        assert {"plots", "bundle", "per_target_metrics.json"} <= artifacts
        plots = {a.path.split("/")[-1] for a in client.list_artifacts(o.run_id, "plots")}
        assert {"roc.png", "recall_at_n.png", "calibration.png"} <= plots
    din_history = client.get_metric_history(outcomes["din"].run_id, "valid_auc")
    assert [m.step for m in din_history] == [0, 1]
    assert "se_field_importance.png" in {a.path.split("/")[-1] for a in client.list_artifacts(outcomes["ple"].run_id, "plots")}
    assert "feature_importance.png" in {
        a.path.split("/")[-1] for a in client.list_artifacts(outcomes["lgbm_all_mixed"].run_id, "plots")}


def test_the_champion_alias_points_at_the_best_registered_run(outcomes):
    configure(Paths.default())
    client = MlflowClient()
    versions = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    registered = {v.run_id: client.get_run(v.run_id).data.metrics["eval_auc"] for v in versions}
    assert outcomes["lgbm_per_target"].run_id not in registered  # many boosters: logged as a bundle only
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    assert registered[champion.run_id] == max(registered.values())
    loaded = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}@{CHAMPION}")
    assert loaded is not None


def test_the_metrics_table_covers_every_evaluated_target(outcomes, tiny_exports):
    ev = pd.read_parquet(tiny_exports / f"ds={Schedule().evaluation}" / "evaluation.parquet")
    for o in outcomes.values():
        assert set(o.per_target.index) == set(ev["target_id"].unique())
        assert o.per_target["positives"].sum() == ev["label_buy"].sum()


def test_score_writes_the_top_n_users_of_each_brand(outcomes, tmp_path, capsys):
    out = tmp_path / "crowd.parquet"
    assert main(["score", "--model", "din", "--top", "25", "--out", str(out)]) == 0
    crowd = pd.read_parquet(out)
    assert list(crowd.columns) == ["brand_id", "rank", "user_id", "score"]
    sizes = crowd.groupby("brand_id").size()
    assert (sizes == 25).all() and len(sizes) > 10
    first = crowd[crowd["rank"] == 1].set_index("brand_id")["score"]
    last = crowd[crowd["rank"] == 25].set_index("brand_id")["score"]
    assert (first >= last).all()
    assert main(["score", "--top", "5", "--out", str(out)]) == 0  # the registry's champion
    assert main(["score", "--model", "din", "--brand", "123", "--out", str(out)]) == 2
    assert "not among the evaluated targets" in capsys.readouterr().err


def test_evaluate_recomputes_the_recorded_metrics_from_the_bundle(outcomes, capsys, tiny_dataset):
    assert main(["evaluate", "--model", "lgbm_all_mixed", "--dataset-dir", str(tiny_dataset)]) == 0
    printed = capsys.readouterr().out
    auc_line = next(line for line in printed.splitlines() if line.strip().startswith("auc "))
    assert float(auc_line.split()[1]) == pytest.approx(outcomes["lgbm_all_mixed"].summary["auc"], abs=1e-4)
    assert "oracle" in auc_line


def test_an_unknown_model_fails_with_a_clear_message(tiny_exports):
    with pytest.raises(ValueError, match="unknown model 'xgb'"):
        train_and_evaluate("xgb")


def test_deep_models_train_on_the_device_they_are_given(outcomes):
    bundle = outcomes["din"].bundle
    assert (bundle / "weights.pt").exists() and (bundle / "feature_map.json").exists()
    assert np.isfinite(outcomes["din"].summary["logloss"])


def test_lgbm_baselines_train_one_model_per_evaluated_target_or_group(outcomes, tiny_exports):
    from ml.train.bundle import Bundle

    ev = pd.read_parquet(tiny_exports / f"ds={Schedule().evaluation}" / "evaluation.parquet")
    bundle = Bundle.load(outcomes["lgbm_per_target"].bundle)
    boosters = list((bundle.path / "lgbm").glob("*.txt"))
    assert 0 < len(boosters) <= ev["target_id"].nunique()
