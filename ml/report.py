"""The model comparison, from the MLflow store: the latest run of each model with the task's settings (its
comparison fingerprint), its evaluation metrics and the oracle's beside them, with the ceiling's Monte Carlo
error. Printed for `make run`, and written into the README between markers so the
published table is always one the code produced."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pandas as pd

from ml.evaluate.floors import FLOORS
from ml.outputs import write_text_atomically
from ml.task import Task, TaskPaths

log = logging.getLogger(__name__)


def markers(task: str) -> tuple[str, str]:
    """Where a task's table goes in the README: between <!-- comparison:TASK:start --> and ...:end -->."""
    return f"<!-- comparison:{task}:start -->", f"<!-- comparison:{task}:end -->"


# a crowd task's columns with the default cut-offs (10, 50, 100, 500): report_columns gives any task's
COLUMNS = ("auc", "auc_touched", "auc_per_target", "gauc", "logloss", "recall_at_50", "recall_at_100", "coverage",
           "ndcg_at_100", "precision_at_100", "expected_over_actual", "ece")
# the share of buyers the evaluated population holds is a property of the task, and K a choice made on the
# validation day: neither is a model's score; calibration is good near 1 and 0, not at a maximum (never bold)
UNRANKED = ("coverage", "k", "expected_over_actual", "ece")
# columns that are means over the ranked groups: two models are compared on the same resampled groups
# (paired), from the per-group table each run logs; the column of that table, its weight, and the groups it
# needs (per-target AUC from a table of targets, GAUC from a table of users; None: either); the ranking metrics
# at any cut-off are their own column of either table (paired_source)
PAIRED = {"auc_per_target": ("auc", "positives", "target_id"), "gauc": ("auc", "n", "user_id")}
RANKING_PREFIXES = ("recall_at_", "ndcg_at_", "precision_at_")
LEGEND = ("Figures with their 95 % bootstrap interval (targets resampled, or users for the next-day item task; "
          "users for the pooled AUC, logloss and F1). Bold: the "
          "best model, and every model the data cannot tell from it (the paired interval of the difference over "
          "the same targets includes zero; for AUC, logloss and F1, overlapping intervals; a column with no interval "
          "has none in bold). valid_* is on the validation dates, where the champion is chosen (marked: the "
          "model the crowds are scored with); the rest on the backtest (auc_touched: on the pairs with history "
          "together only, the hard part of the population). Floors: heuristics with no model (recency-"
          "decayed interaction count; carted or collected, then recency; for the item task also carted the day "
          "before and not bought); a model whose AUC interval does not clear the best floor is marked. F1, "
          "precision and recall at k: the top k pairs as a next-day submission, k chosen on the validation "
          "day for each row. expected_over_actual: the sum of scores over the buyers (1: calibrated on the "
          "population), ece: the expected calibration error. "
          "The oracle's figures carry their Monte Carlo error (±: how far each moves between half "
          "of its rollouts and all of them).")


def paired_source(c: str) -> tuple[str, str | None, str | None] | None:
    """Column c's source in the per-group table (its column, weight and groups), or None: compared unpaired."""
    if c in PAIRED:
        return PAIRED[c]
    if c.startswith(RANKING_PREFIXES) and c.rsplit("_", 1)[-1].isdigit():
        return c, None, None
    return None


def ranking_cutoffs(task: Task) -> tuple[int, ...]:
    """The cut-offs a crowd task's table shows recall at: the task's second and third smallest (the smallest is
    a crowd's first few users; more columns would crowd the table; MLflow holds every cut-off); the next-day
    item task's smallest. A table with fixed columns showed recall@50 and @100 whatever the task's
    `evaluate.n`: blank for n [1, 5, 10]."""
    n = task.evaluate.n
    if task.target == "item":
        return n[:1]  # a user has few candidate items: the smallest cut-off is the one that ranks
    return n[1:3] if len(n) > 1 else n


def report_columns(task: Task) -> tuple[str, ...]:
    """The brand and category crowds' columns (recall at ranking_cutoffs, NDCG and precision at the larger), or
    the next-day pair task's: its F1 first, with K."""
    if task.target != "item":
        cut = ranking_cutoffs(task)
        return ("auc", "auc_touched", "auc_per_target", "gauc", "logloss", *(f"recall_at_{n}" for n in cut),
                "coverage", f"ndcg_at_{cut[-1]}", f"precision_at_{cut[-1]}", "expected_over_actual", "ece")
    (n,) = ranking_cutoffs(task)
    return ("f1_at_k", "k", "precision_at_k", "recall_at_k", "auc", "gauc", "auc_per_target", "logloss",
            f"recall_at_{n}", "coverage", "expected_over_actual", "ece")


def latest_runs(paths: TaskPaths, task: Task) -> pd.DataFrame:
    """One row per model (its latest finished run of the task on its dataset with its comparison fingerprint:
    runs measured on other rows are left out) plus floor and `oracle` rows: first the metric the champion is
    chosen on, measured on the validation dates (`valid_<select_by>`), then report_columns(task) of the
    backtest with their intervals (`C_low`, `C_high`), whether each is among the best (`C_top`), and the
    oracle's Monte Carlo error (`C_err`). The table keeps its columns and settings in table.attrs."""
    import mlflow

    from ml.tracking import COMPARISON_TAG, comparison_key, configure, filter_value

    select_by, columns, key = task.evaluate.select_by, report_columns(task), comparison_key(task, paths.exports)
    configure(paths)
    runs = mlflow.search_runs(experiment_names=[paths.experiment],
                              filter_string=(f"attributes.status = 'FINISHED' and "
                                             f"tags.{COMPARISON_TAG} = {filter_value(key)}"),
                              order_by=["attributes.start_time DESC"])
    if runs.empty:
        raise ValueError(f"no finished runs of task {paths.task} on {paths.dataset} with these settings "
                         f"(comparison fingerprint {key}) in the MLflow store: train models first "
                         f"(crowd train --task {paths.task})")
    runs = runs.drop_duplicates("tags.model")
    rows = []
    for _, r in runs.iterrows():
        row = {"model": r["tags.model"], "run_id": r["run_id"],
               "train_s": r.get("metrics.seconds_train"),
               f"valid_{select_by}": r.get(f"metrics.selection_{select_by}", float("nan"))}
        for c in columns:
            row[c] = r.get(f"metrics.eval_{c}", float("nan"))
            row[f"{c}_low"] = r.get(f"metrics.eval_{c}_ci_low", float("nan"))
            row[f"{c}_high"] = r.get(f"metrics.eval_{c}_ci_high", float("nan"))
        rows.append(row)
    for floor in FLOORS:
        first = f"metrics.floor_{floor}_auc"
        if first in runs.columns and runs[first].notna().any():
            f = runs[runs[first].notna()].iloc[0]
            rows.append({"model": f"floor: {floor}", "run_id": "",
                         **{c: f.get(f"metrics.floor_{floor}_{c}", float("nan")) for c in columns},
                         "logloss": float("nan")})  # a floor's scores are an order, not probabilities
    first = "metrics.oracle_auc"
    if first in runs.columns and runs[first].notna().any():
        o = runs[runs[first].notna()].iloc[0]
        rows.append({"model": "oracle (ceiling)", "run_id": "",
                     **{c: o.get(f"metrics.oracle_{c}", float("nan")) for c in columns},
                     **{f"{c}_err": o.get(f"metrics.oracle_{c}_mc_error", float("nan")) for c in columns}})
    table = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(["lgbm_per_target", "lgbm_few_mixed", "lgbm_all_mixed", "dnn", "deepfm",
                                         "din", "moe", "ple", "lstm", *(f"floor: {f}" for f in FLOORS),
                                         "oracle (ceiling)"])}
    table = table.sort_values("model", key=lambda s: s.map(order).fillna(50)).reset_index(drop=True)
    table = flag_below_floor(mark_best(table, _per_target_tables(table), columns))
    table = mark_champion(table, champion_of(paths, key, select_by))
    table.attrs["columns"] = tuple(columns)
    table.attrs["settings"] = settings_line(task, runs, key)
    return table


def champion_of(paths: TaskPaths, key: str, select_by: str) -> dict | None:
    """The registered version that scores the crowds of comparison fingerprint `key` (its champion alias, moved
    only by a better validation metric): its model, version, run, validation `select_by` and backtest AUC; None
    before any was registered."""
    from mlflow import MlflowClient

    from ml.tracking import champion_alias, selection_metric, version_by_alias

    client = MlflowClient()
    version = version_by_alias(client, paths.registered_model, champion_alias(key))
    if version is None:
        return None
    metrics = client.get_run(version.run_id).data.metrics
    return {"model": version.tags.get("model", "?"), "version": str(version.version), "run_id": version.run_id,
            "valid": metrics.get(selection_metric(select_by), math.nan), "auc": metrics.get("eval_auc", math.nan)}


def mark_champion(table: pd.DataFrame, champion: dict | None) -> pd.DataFrame:
    """`champion`: the row whose run the crowds are scored with. The table showed the best model on the backtest
    in bold and said nothing of which one was chosen on validation and served (make run's: lgbm_few_mixed, not
    bold on the backtest's per-target AUC). A champion from an earlier run than its model's latest (a retraining
    that did not beat it: LightGBM trained again gives the same figure, and a tie keeps the earlier version) is
    not a row: table.attrs["champion_note"] says which it is and what it scored."""
    table = table.copy()
    table["champion"] = (table["run_id"] == champion["run_id"]) if champion else False
    table.attrs["champion"] = champion
    if champion and not table["champion"].any():
        select = next((c for c in table.columns if c.startswith("valid_")), None)
        later = table.loc[table["model"] == champion["model"], select] if select else pd.Series(dtype=float)
        against = f" ({later.iloc[0]:.4f} against {champion['valid']:.4f})" if len(later) else ""
        table.attrs["champion_note"] = (
            f"The champion, which the crowds are scored with, is {champion['model']} version {champion['version']} "
            f"(run {champion['run_id']}; {select or 'validation'} {champion['valid']:.4f}, backtest AUC "
            f"{champion['auc']:.4f}): an earlier run than the table's {champion['model']}, which did not beat it on "
            f"validation{against}; a tie keeps the earlier version.")
    return table


def settings_line(task: Task, runs: pd.DataFrame, key: str) -> str:
    """What the table's runs share, and how each model was trained (from the runs' own parameters: training
    settings are not part of the comparison fingerprint, so runs of one table may differ in them)."""
    from ml.tracking import BUILD_TAG

    latest = runs.drop_duplicates("tags.model").set_index("tags.model")

    def per_model(column: str) -> str:
        values = latest.get(column, pd.Series(dtype=str)).dropna()
        if values.nunique() == 1:
            return str(values.iloc[0])
        return ", ".join(f"{m} {v}" for m, v in values.items())

    build = runs.get(f"tags.{BUILD_TAG}", pd.Series(["-"])).iloc[0]
    return (f"Runs of task {task.name} on dataset {task.dataset} with comparison fingerprint "
            f"{key} (warehouse {task.warehouse_fingerprint()}, build {build}; validation "
            f"{', '.join(map(str, task.validation))}, backtest {task.backtest}); as trained: sample dates "
            f"{per_model('params.task.samples.first') or '-'} .. {per_model('params.task.samples.last') or '-'} every "
            f"{per_model('params.task.windows.step_days') or '-'} days, negatives kept "
            f"{per_model('params.task.training.negative_rate') or '-'}, "
            f"deep models' epochs {per_model('params.train_epochs') or '-'}.")


def is_reference(model: pd.Series) -> pd.Series:
    """The rows that are no learned model: the heuristic floors and the oracle."""
    return model.str.startswith(("oracle", "floor: "))


def flag_below_floor(table: pd.DataFrame) -> pd.DataFrame:
    """`below_floor`: a learned model whose AUC interval does not clear the best heuristic floor's AUC."""
    table = table.copy()
    floors = table[table["model"].str.startswith("floor: ")]
    best = floors["auc"].max() if len(floors) else float("nan")
    models = ~is_reference(table["model"])
    table["below_floor"] = models & pd.notna(best) & (table["auc_low"].fillna(table["auc"]) <= best)
    return table


def _per_target_tables(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    import mlflow

    out = {}
    for _, r in table[table["run_id"].fillna("") != ""].iterrows():
        try:
            frame = mlflow.load_table("per_target_metrics.json", run_ids=[r["run_id"]])
        except Exception as e:  # noqa: BLE001  (a run logged before the table existed: compared unpaired)
            log.debug("run %s: no per-target table (%s)", r["run_id"], e)
            continue
        key = "target_id" if "target_id" in frame.columns else "user_id"  # per target, or per user (item task)
        out[r["model"]] = frame.drop(columns=[c for c in ("run_id",) if c in frame.columns]).set_index(key)
    return out


def mark_best(table: pd.DataFrame, per_target: dict[str, pd.DataFrame],
              columns: tuple[str, ...] = COLUMNS) -> pd.DataFrame:
    """`C_top` per column: the best model, and every model the data cannot tell from it."""
    from ml.evaluate.intervals import paired_target_interval
    from ml.evaluate.metrics import averaged_over

    table = table.copy()
    is_model = ~is_reference(table["model"])
    for c in columns:
        table[f"{c}_top"] = False
        models = table[is_model & table[c].notna()]
        paired = any(_pairable(c, per_target, m, m) for m in models["model"])
        has_interval = paired or (f"{c}_low" in models and models[f"{c}_low"].notna().any())
        if c in UNRANKED or len(models) < 2 or not has_interval:
            continue  # with no interval no model is set apart: a difference is claimed only when it is measured
        best_i = models[c].idxmin() if c == "logloss" else models[c].idxmax()
        best = table.loc[best_i]
        for i, r in models.iterrows():
            if i == best_i:
                table.loc[i, f"{c}_top"] = True
            elif _pairable(c, per_target, best["model"], r["model"]):
                column, weight, _ = paired_source(c)
                a, b = per_target[best["model"]], per_target[r["model"]]
                a, b = a[averaged_over(a, column)], b[averaged_over(b, column)]
                table.loc[i, f"{c}_top"] = not paired_target_interval(a, b, column, weight=weight).excludes_zero()
            else:
                overlap = r[f"{c}_low"] <= best[f"{c}_high"] and best[f"{c}_low"] <= r[f"{c}_high"]
                table.loc[i, f"{c}_top"] = bool(overlap)
    return table


def _pairable(c: str, per_target: dict[str, pd.DataFrame], a: str, b: str) -> bool:
    """Whether column c of models a and b can be compared paired: both logged the per-group table it needs."""
    source = paired_source(c)
    if source is None or a not in per_target or b not in per_target:
        return False
    if not all(source[0] in per_target[m].columns for m in (a, b)):  # a cut-off one of the tables lacks
        return False
    groups = source[2]
    return groups is None or per_target[a].index.name == per_target[b].index.name == groups


def _cell(r: pd.Series, c: str) -> tuple[str, bool]:
    """A metric's text (with its interval or Monte Carlo error) and whether it is among the best."""
    v = r[c]
    if pd.isna(v):
        return "–", False
    text = f"{v:.0f}" if c == "k" else f"{v:.4f}"
    err = r.get(f"{c}_err")
    if err is not None and pd.notna(err):
        text += f" ± {err:.4f}"
    low, high = r.get(f"{c}_low"), r.get(f"{c}_high")
    if c not in ("coverage", "k") and low is not None and high is not None and pd.notna(low) and pd.notna(high):
        digits = 4 if c == "ece" else 3  # errors of a few 1e-4
        text += f" ({low:.{digits}f}–{high:.{digits}f})"
    return text, r.get(f"{c}_top") is True


def rows(table: pd.DataFrame) -> tuple[list[str], list[tuple[pd.Series, str, list[tuple[str, bool]]]]]:
    """The table as it is shown (README, terminal, HTML report): its columns, then per row the row, the model's
    name as shown and each cell's text with whether it is bold."""
    selection = [c for c in table.columns if c.startswith("valid_")]
    metrics = tuple(table.attrs.get("columns", COLUMNS))
    columns = selection + list(metrics)
    shown = []
    for _, r in table.iterrows():
        cells = [_cell(r, c) if c in metrics else ("–" if pd.isna(r[c]) else f"{r[c]:.4f}", False) for c in columns]
        marks = [m for m, on in (("champion", r.get("champion") is True),
                                 ("not above the floor", r.get("below_floor") is True)) if on]
        shown.append((r, r["model"] + (f" ({', '.join(marks)})" if marks else ""), cells))
    return columns, shown


def markdown(table: pd.DataFrame) -> str:
    columns, shown = rows(table)
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for _, name, cells in shown:
        lines.append(f"| {name} | " + " | ".join(f"**{t}**" if bold else t for t, bold in cells) + " |")
    note = table.attrs.get("champion_note")
    return "\n".join(lines) + "\n\n" + (f"{note}\n\n" if note else "") + LEGEND


def verdicts(table: pd.DataFrame) -> list[str]:
    """The training's warning line (ml.evaluate.floors.verdict) for each learned model of the table that has
    one: no better than random, or not above the best floor."""
    from ml.evaluate.floors import verdict

    floors = table[table["model"].str.startswith("floor: ")]
    best = floors.loc[floors["auc"].idxmax()] if floors["auc"].notna().any() else None
    out = []
    for _, r in table[~is_reference(table["model"])].dropna(subset=["auc", "auc_low", "auc_high"]).iterrows():
        floor = ((best["model"].removeprefix("floor: "), best["auc"])
                 if best is not None and r.get("below_floor") is True else None)
        line = verdict(r["model"], r["auc"], r["auc_low"], r["auc_high"], floor)
        if line:
            out.append(line)
    return out


def write_readme(readme: Path, table: pd.DataFrame, note: str, task: str) -> None:
    start, end = markers(task)
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} markers to write the comparison between")
    settings = table.attrs.get("settings", "")
    block = f"{start}\n{note}{' ' + settings if settings else ''}\n\n{markdown(table)}\n{end}"
    # swapped in whole: a kill mid-write left a README cut short (the markers are what make it ours to edit)
    write_text_atomically(readme, re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text,
                                         flags=re.S), signature=start)
