"""`crowd ablate`: what a trained model actually learned, by erasing one group of its inputs at scoring time
and measuring what the backtest loses.

Groups (defined by the feature names the warehouse gives, never by position):
- one per action (click, collect, cart, buy): every dense feature counting, dating or rating that action set
  to "never happened" (counts and rates 0, recencies empty), and those actions taken out of the behaviour
  sequences;
- `sequence`: the behaviour sequence and the category series emptied (a LightGBM model reads neither: 0);
- `target_history`: the pair's own history, what the user did with this very target: the pair features
  (`ub_*`, its last-interaction context included) and the sequence entries on the target.
Labels and the population stay those of the backtest; only the model's view changes. It is an erasure of
inputs, not a counterfactual log (features mixing actions, such as the recency of any action, keep their
value): `crowd erase` rebuilds the warehouse from an erased log where that matters.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ml.config import ACTIONS
from ml.task import Task, TaskPaths

if TYPE_CHECKING:  # the CLI reads GROUPS for its help: the scoring stack is imported when it runs
    from ml.evaluate.intervals import Interval
    from ml.features.dataset import RawExports

log = logging.getLogger(__name__)

GROUPS = (*ACTIONS, "sequence", "target_history")
PAIR_PREFIX = "ub_"


def erased_columns(columns: list[str], group: str) -> list[str]:
    """The dense and context columns a group erases: an action's by the action's name among the column's
    words (u_buy_rate_7d, ub_recency_buy, b_buy_per_cart_30d), the target's own history by the pair prefix."""
    if group == "target_history":
        return [c for c in columns if c.startswith(PAIR_PREFIX)]
    if group in ACTIONS:
        return [c for c in columns if group in c.split("_")[1:]]
    return []


def erase(raw: RawExports, group: str) -> RawExports:
    """A copy of raw as the model would see it without the group (see the module's docstring)."""
    if group not in GROUPS:
        raise ValueError(f"unknown input group {group!r}: expected one of {', '.join(GROUPS)}")
    samples = raw.samples.copy()
    for c in erased_columns(list(samples.columns), group):
        never = "recency" in c or c.startswith(f"{PAIR_PREFIX}last_") or c.endswith("hours_since_last")
        samples[c] = np.nan if never else 0
    sequences, offsets, series = raw.sequences, raw.offsets, raw.series
    if group == "sequence":
        sequences = {k: v[:0] for k, v in raw.sequences.items()}
        offsets = np.zeros_like(raw.offsets)
        series = {k: np.zeros_like(v) for k, v in raw.series.items()}
    elif group in ACTIONS:
        keep = raw.sequences["hist_action"] != ACTIONS.index(group) + 1
        sequences = {k: v[keep] for k, v in raw.sequences.items()}
        kept = np.concatenate([[0], np.cumsum(keep)])
        offsets = kept[raw.offsets]  # each user's slice, counted in kept entries
    return replace(raw, samples=samples, sequences=sequences, offsets=offsets, series=series)


def ablate(task: Task, paths: TaskPaths, model: str | None, groups: tuple[str, ...] = GROUPS,
           device: str = "auto") -> tuple[pd.DataFrame, str | None]:
    """The backtest's AUC, per-target AUC and recall@N with every input and with each group erased, and the
    drop; returns the table and the MLflow run it belongs to (the champion's or the named model's latest)."""
    from ml.evaluate.intervals import paired_auc_interval
    from ml.evaluate.metrics import evaluate_scores
    from ml.features.dataset import read_buyers
    from ml.tracking import comparison_key
    from ml.train.bundle import load_bundle

    bundle = load_bundle(model, paths, comparison_key(task, paths.exports))
    raw = bundle.read_population(paths.exports, task.backtest)
    ev = raw.samples
    y, target, user = ev["label_buy"].to_numpy(), ev["target_id"].to_numpy(), ev["user_id"].to_numpy()
    buyers = read_buyers(paths.exports, task.backtest)
    keys = ("auc", "auc_per_target", *(f"recall_at_{n}" for n in task.evaluate.n))

    def measured(inputs: str, scores: np.ndarray) -> tuple[dict, pd.DataFrame]:
        summary, per_group = evaluate_scores(y, scores, target, user, task.evaluate.n, buyers=buyers,
                                             by=task.ranked_by)
        return {"model": bundle.name, "inputs": inputs, **{k: summary[k] for k in keys}}, per_group

    scores = bundle.score(raw, device=device)
    first, full = measured("all", scores)
    rows = [first]
    for group in groups:
        log.info("%s: scoring the backtest without %s", bundle.name, group)
        without = bundle.score(erase(raw, group), device=device, hide_own_target=group == "target_history")
        row, erased = measured(f"no {group}", without)
        iv = paired_auc_interval(y, scores, without, user)
        row["auc_drop_low"], row["auc_drop_high"] = iv.low, iv.high
        for k in keys:
            if iv := drop_interval(full, erased, k, task.ranked_by):
                row[f"{k}_drop_low"], row[f"{k}_drop_high"] = iv.low, iv.high
        rows.append(row)
    table = pd.DataFrame(rows)
    for k in keys:
        table[f"{k}_drop"] = table[k].iloc[0] - table[k]
    drops = [c for k in keys for c in (f"{k}_drop", f"{k}_drop_low", f"{k}_drop_high") if c in table]
    table = table[["model", "inputs", *keys, *drops]]
    return table, bundle.config.get("run_id") or _latest_run(paths, task, bundle.name)


def drop_interval(full: pd.DataFrame, erased: pd.DataFrame, key: str, by: str) -> Interval | None:
    """The 95 % interval of a per-group metric's drop, paired: the same resampled groups scored with every
    input and without the erased ones (as the report compares two models). The drops were shown bare, and a
    drop of 0.005 on 16 targets read as a finding. None for the pooled AUC (paired_auc_interval, users
    resampled), and for the per-target AUC of a task ranked per user (its table holds users)."""
    from ml.evaluate.intervals import paired_target_interval
    from ml.evaluate.metrics import averaged_over

    if key == "auc_per_target" and by == "target":
        column, weight = "auc", "positives"
    elif key.startswith("recall_at_"):
        column, weight = key, None
    else:
        return None
    a, b = full[averaged_over(full, column)], erased[averaged_over(erased, column)]
    return paired_target_interval(a, b, column, weight=weight)


def _latest_run(paths: TaskPaths, task: Task, model: str) -> str | None:
    """The latest finished run of a local model with the task's settings (a bundle not from the registry)."""
    import mlflow

    from ml.tracking import COMPARISON_TAG, comparison_key, configure, filter_value

    configure(paths)
    runs = mlflow.search_runs(experiment_names=[paths.experiment], order_by=["attributes.start_time DESC"],
                              filter_string=f"attributes.status = 'FINISHED' and tags.model = {filter_value(model)} "
                                            f"and tags.{COMPARISON_TAG} = "
                                            f"{filter_value(comparison_key(task, paths.exports))}")
    return None if runs.empty else str(runs["run_id"].iloc[0])


def log_ablation(table: pd.DataFrame, run_id: str, paths: TaskPaths) -> None:
    """Into the model's own run: `ablation_<group>_<metric>_drop` metrics and the table."""
    import mlflow

    from ml.tracking import configure

    configure(paths)
    client = mlflow.tracking.MlflowClient()
    for _, r in table.iloc[1:].iterrows():
        group = r["inputs"].removeprefix("no ")
        for c in table.columns:
            # the drop, and its interval named as the training's own (eval_auc_ci_low)
            name = c.replace("_drop_low", "_drop_ci_low").replace("_drop_high", "_drop_ci_high")
            if c.endswith(("_drop", "_drop_low", "_drop_high")) and np.isfinite(r[c]):
                client.log_metric(run_id, f"ablation_{group}_{name}", float(r[c]))
    client.log_table(run_id, table, artifact_file="ablation.json")


