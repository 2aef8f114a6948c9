"""Heuristic floors: the order they put pairs in, and their place in the report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.evaluate.floors import cart_then_recency, decayed_count


def _pairs(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {f"ub_{a}_{w}d": np.zeros(n) for a in ("click", "collect", "cart", "buy") for w in (1, 7, 30)}
    base["ub_recency_any"] = pd.array([pd.NA] * n, dtype="Int64")
    base.update(columns)
    return pd.DataFrame(base)


def test_decayed_count_ranks_recent_interactions_above_as_many_old_ones():
    frame = _pairs(ub_click_1d=np.array([2.0, 0, 0]), ub_click_7d=np.array([2.0, 0, 2]),
                   ub_click_30d=np.array([2.0, 2, 2]))
    recent, old, week = decayed_count(frame)
    assert recent > week > old > 0
    assert decayed_count(_pairs(ub_click_30d=np.array([0.0])))[0] == 0  # untouched pair: zero


def test_cart_then_recency_puts_intent_first_then_recency_then_the_untouched():
    frame = _pairs(ub_cart_30d=np.array([1.0, 0, 0, 0]), ub_click_30d=np.array([0.0, 3, 3, 0]),
                   ub_recency_any=pd.array([20, 1, 10, pd.NA], dtype="Int64"))
    carted_long_ago, clicked_yesterday, clicked_earlier, untouched = cart_then_recency(frame)
    assert carted_long_ago > clicked_yesterday > clicked_earlier > untouched == 0


def test_the_report_marks_a_model_that_does_not_clear_the_best_floor():
    from ml.report import COLUMNS, flag_below_floor

    rows = [
        {"model": "good", "auc": 0.95, "auc_low": 0.94},
        {"model": "weak", "auc": 0.80, "auc_low": 0.77},
        {"model": "floor: decayed_count", "auc": 0.78},
        {"model": "floor: cart_then_recency", "auc": 0.70},
        {"model": "oracle (ceiling)", "auc": 0.99},
    ]
    table = pd.DataFrame([{**dict.fromkeys(COLUMNS, np.nan), **r} for r in rows])
    flagged = flag_below_floor(table).set_index("model")["below_floor"].to_dict()
    assert flagged == {"good": False, "weak": True, "floor: decayed_count": False,
                       "floor: cart_then_recency": False, "oracle (ceiling)": False}


def test_a_model_no_better_than_random_or_than_the_best_floor_gets_a_one_line_verdict(tmp_path):
    from ml.evaluate.intervals import Interval
    from ml.train.pipeline import Outcome

    def outcome(auc: float, low: float, high: float, floor: float) -> Outcome:
        return Outcome("ple", {"auc": auc}, pd.DataFrame(), tmp_path, intervals={"auc": Interval(low, high)},
                       floors={"decayed_count": {"auc": floor}})

    assert "no better than random" in outcome(0.51, 0.47, 0.55, 0.45).verdict()
    assert "no better than random" in outcome(0.30, 0.25, 0.35, 0.45).verdict()
    assert "does not beat the heuristic floor decayed_count" in outcome(0.80, 0.76, 0.84, 0.81).verdict()
    assert outcome(0.85, 0.82, 0.88, 0.81).verdict() is None
    assert "\n" not in outcome(0.51, 0.47, 0.55, 0.45).verdict()


def test_crowd_score_warns_with_the_verdict_its_model_was_trained_with(tmp_path):
    """`crowd score` reads the served model's run (its backtest AUC interval and the floors' AUCs, as logged)
    and says the training's warning line again: the champion is the best on validation among what was trained,
    which can still be a model below the floor."""
    import mlflow

    from ml.evaluate.intervals import Interval
    from ml.tracking import run_verdict
    from ml.train.pipeline import Outcome

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("verdicts")  # (not one a training of this process named)
        for auc, low, high, floor in ((0.51, 0.47, 0.55, 0.45), (0.80, 0.76, 0.84, 0.81), (0.85, 0.82, 0.88, 0.81)):
            trained = Outcome("ple", {"auc": auc}, pd.DataFrame(), tmp_path, intervals={"auc": Interval(low, high)},
                              floors={"decayed_count": {"auc": floor}, "cart_then_recency": {"auc": floor - 0.01}})
            # the metrics as the training logs them (ml.train.pipeline)
            with mlflow.start_run(experiment_id=experiment) as run:
                mlflow.log_metrics({"eval_auc": auc, "eval_auc_ci_low": low, "eval_auc_ci_high": high,
                                    "floor_decayed_count_auc": floor, "floor_cart_then_recency_auc": floor - 0.01,
                                    "floor_decayed_count_auc_touched": 0.99})
            assert run_verdict(run.info.run_id, "ple") == trained.verdict()
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_metric("eval_auc", 0.9)
        assert run_verdict(run.info.run_id, "ple") is None  # a run without its interval says nothing
    finally:
        mlflow.set_tracking_uri(previous)
