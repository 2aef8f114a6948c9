"""The model comparison, from the MLflow store: the latest run of each model, its evaluation metrics and
the oracle's beside them. Printed for `make run`, and written into the README between markers so the
published table is always one the code produced."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ml.task import TaskPaths

START, END = "<!-- comparison:start -->", "<!-- comparison:end -->"
COLUMNS = ("auc", "gauc", "logloss", "recall_at_50", "recall_at_100", "coverage", "ndcg_at_100", "precision_at_100")
# the share of buyers the evaluated population holds: a property of the task, not of a model (never bold)
UNRANKED = ("coverage",)


def latest_runs(paths: TaskPaths) -> pd.DataFrame:
    """One row per model (its latest finished run of the task) plus an `oracle` row, with the COLUMNS metrics."""
    import mlflow

    from ml.tracking import configure

    configure(paths)
    runs = mlflow.search_runs(experiment_names=[paths.experiment], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    if runs.empty:
        raise ValueError(f"no finished runs of task {paths.task} on {paths.dataset} in the MLflow store: "
                         f"train models first (crowd train --task {paths.task})")
    runs = runs.drop_duplicates("tags.mlflow.runName")
    rows = []
    for _, r in runs.iterrows():
        row = {"model": r["tags.mlflow.runName"], "run_id": r["run_id"],
               "train_s": r.get("params.train_seconds")}
        row.update({c: r.get(f"metrics.eval_{c}", float("nan")) for c in COLUMNS})
        rows.append(row)
    oracle_cols = [f"metrics.oracle_{c}" for c in COLUMNS]
    if set(oracle_cols) <= set(runs.columns) and runs[oracle_cols[0]].notna().any():
        o = runs[runs[oracle_cols[0]].notna()].iloc[0]
        rows.append({"model": "oracle (ceiling)", "run_id": "",
                     **{c: o.get(f"metrics.oracle_{c}", float("nan")) for c in COLUMNS}})
    table = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(["lgbm_per_target", "lgbm_few_mixed", "lgbm_all_mixed", "dnn", "deepfm",
                                         "din", "moe", "ple", "lstm", "oracle (ceiling)"])}
    return table.sort_values("model", key=lambda s: s.map(order).fillna(50)).reset_index(drop=True)


def markdown(table: pd.DataFrame) -> str:
    header = "| model | " + " | ".join(COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    models = table[~table["model"].str.startswith("oracle")]
    best = ({c: (models[c].min() if c == "logloss" else models[c].max()) for c in COLUMNS if c not in UNRANKED}
            if len(models) > 1 else {})
    for _, r in table.iterrows():
        cells = []
        for c in COLUMNS:
            v = r[c]
            text = "–" if pd.isna(v) else f"{v:.4f}"
            if not r["model"].startswith("oracle") and c in best and v == best[c]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(readme: Path, table: pd.DataFrame, note: str) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} markers to write the comparison between")
    block = f"{START}\n{note}\n\n{markdown(table)}\n{END}"
    readme.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))
