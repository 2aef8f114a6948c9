"""What a tag model learned beyond its rule: the backtest scored again with inputs erased.

A tag is defined by a rule over purchases in a group of categories, so a model can score well by reading
the rule's own inputs back. The seed project checked what else it had learned by erasing inputs before
scoring; `crowd erase` does the same on the backtest date:

- `full`: the inputs as they are (the backtest's own export);
- `no_buys`: every buy before the backtest date erased from the log;
- `no_rule_categories`: for each tag, every event in that tag's own categories before the backtest date
  erased (that tag's rows are scored).

The erased log is a copy under the task's own namespace (`DATA/tasks/T/D/erasure/`); the warehouse is a copy
of the task's, rebuilt from the erased log for the backtest date only, keeping the dimensions training saw
(the LSTM's category slots and the evaluated targets). Labels and buyers always come from the real log:
only the model's inputs change. A user whose every input was erased has no row left and scores lowest.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ml.evaluate.intervals import paired_auc_interval
from ml.evaluate.metrics import evaluate_scores
from ml.features.dataset import read_buyers, read_exports
from ml.outputs import replacing
from ml.task import Task, TaskPaths
from ml.train.pipeline import tag_truth
from ml.warehouse.export import sql_path

log = logging.getLogger(__name__)

# the dimensions training saw: not rebuilt from the erased log
KEEP = ("dim_top_categories", "dim_evaluated_targets")


def erase_log(source: Path, out: Path, before: dt.date, condition: str) -> int:
    """Copy a dataset with the events matching `condition` (SQL over the events and items' columns) and
    dated before `before` left out. Returns the number of events erased. `out` is replaced once complete."""
    with replacing(out, inputs=[source]) as tmp:
        return _erase_into(source, tmp, before, condition)


def _erase_into(source: Path, out: Path, before: dt.date, condition: str) -> int:
    (out / "events").mkdir(parents=True)
    for name in ("items.parquet", "item_subset.parquet"):
        if (source / name).exists():
            shutil.copy2(source / name, out / name)
    target = out / "events" / "part-00000.parquet"
    with duckdb.connect() as con:
        con.register("items", con.read_parquet(str(source / "items.parquet")))
        con.register("events", con.read_parquet(str(source / "events" / "*.parquet")))
        query = (f"select e.user_id, e.item_id, e.action, e.ts from events as e "
                 f"left join items as i on e.item_id = i.item_id "
                 f"where not (e.ts < cast($before as timestamp) and ({condition}))")
        total = con.execute("select count(*) from events").fetchone()[0]
        con.execute(f"copy ({query}) to {sql_path(target)} (format parquet)",
                    {"before": dt.datetime.combine(before, dt.time())})
        kept = con.execute("select count(*) from read_parquet($p)", {"p": str(target)}).fetchone()[0]
    return int(total - kept)


def _erased_population(task: Task, paths: TaskPaths, name: str, condition: str) -> tuple[Path, int]:
    """The backtest's evaluation export built from the log with `condition` erased: its exports root."""
    from ml.warehouse.build import run_dbt
    from ml.warehouse.export import export_dates
    from ml.warehouse.subset import item_subset_path

    base = paths.base / "erasure" / name
    n = erase_log(paths.dataset_dir, base / "raw", task.backtest, condition)
    warehouse = base / "warehouse" / "crowd.duckdb"
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(paths.warehouse)) as con:  # (default config: dbt may hold it open in this process)
        con.execute("checkpoint")  # everything in the file itself, none of it left in the write-ahead log
    shutil.copy2(paths.warehouse, warehouse)  # the task's own dimensions, replaced below except KEEP
    run_dbt("run", dataset_dir=base / "raw", warehouse=warehouse, dbt_vars=task.dbt_vars(ds=[task.backtest]),
            select=["+samples_evaluation", "+ads_user_sequences", "+ads_user_category_series"],
            extra_args=["--exclude", *KEEP], quiet=True,
            item_subset=item_subset_path(task, paths))
    export_dates(warehouse, base / "exports", [task.backtest], fingerprint=task.warehouse_fingerprint(),
                 dataset_dir=base / "raw")
    log.info("erasure %s: %d events erased before %s", name, n, task.backtest)
    return base / "exports", n


def _scores_on(bundle, exports: Path, task: Task, keys: pd.DataFrame) -> np.ndarray:  # noqa: ANN001
    """The bundle's scores of an evaluation export, aligned to `keys` (user_id, target_id); a pair missing
    from the export (every input erased) scores below every other."""
    raw = bundle.read_population(exports, task.backtest)
    frame = raw.samples[["user_id", "target_id"]].assign(score=bundle.score(raw))
    merged = keys.merge(frame, on=["user_id", "target_id"], how="left")
    return merged["score"].fillna(-1.0).to_numpy()


def erasure_report(task: Task, paths: TaskPaths, models: list[str]) -> pd.DataFrame:
    """One row per model, input and tag: AUC (the tag's users ranked), recall@N, on the real labels."""
    from ml.tracking import comparison_key
    from ml.train.bundle import load_bundle

    if task.target != "tag":
        raise ValueError(f"task {task.name} ranks {task.targets_word}: the erasure check is for tags (target tag)")
    original = read_exports(paths.exports, [task.backtest], part="evaluation",
                            fingerprint=task.warehouse_fingerprint()).samples
    keys = original[["user_id", "target_id"]]
    buyers = read_buyers(paths.exports, task.backtest)
    y = original["label_buy"].to_numpy()
    tag_ids = {i + 1: t for i, t in enumerate(task.tags)}
    no_buys, _ = _erased_population(task, paths, "no_buys", "e.action = 'buy'")
    by_tag = {}
    for tag_id, tag in tag_ids.items():
        categories = ", ".join(str(int(c)) for c in tag.categories)
        by_tag[tag_id], _ = _erased_population(task, paths, f"no_rule_categories-{tag.name}",
                                               f"i.category_id in ({categories})")
    target_ids, users = original["target_id"].to_numpy(), original["user_id"].to_numpy()

    def row(model: str, tag_id: int, name: str, scores: np.ndarray, full: np.ndarray | None = None) -> dict:
        """One tag's AUC (its users ranked) and recall@N under one input; with the full inputs' scores, the
        AUC's drop from them with its paired interval (the same users resampled for both)."""
        mine = target_ids == tag_id
        summary, _ = evaluate_scores(y[mine], scores[mine], target_ids[mine], users[mine], task.evaluate.n,
                                     buyers=buyers[buyers["target_id"] == tag_id])
        out = {"model": model, "tag": tag_ids[tag_id].name, "input": name, "auc": summary["auc_per_target"],
               **{f"recall_at_{n}": summary[f"recall_at_{n}"] for n in task.evaluate.n}}
        if full is not None:
            iv = paired_auc_interval(y[mine], full[mine], scores[mine], users[mine])
            out |= {"auc_drop_low": iv.low, "auc_drop_high": iv.high}
        return out

    truth = tag_truth(paths.dataset_dir, original, task.backtest, task)
    # the ceiling, where the generator knows the tag's truth
    rows = [row("oracle (ceiling)", tag_id, "full", truth) for tag_id in tag_ids
            if truth is not None and (target_ids == tag_id).any() and not np.isnan(truth[target_ids == tag_id]).any()]
    for model in models:
        bundle = load_bundle(model, paths, comparison_key(task, paths.exports))
        full, erased_buys = (_scores_on(bundle, root, task, keys) for root in (paths.exports, no_buys))
        for tag_id in tag_ids:
            rows += [row(model, tag_id, "full", full), row(model, tag_id, "no_buys", erased_buys, full),
                     row(model, tag_id, "no_rule_categories", _scores_on(bundle, by_tag[tag_id], task, keys), full)]
    table = pd.DataFrame(rows)
    full_auc = table[table["input"] == "full"].set_index(["model", "tag"])["auc"]
    table["auc_drop"] = full_auc.reindex(pd.MultiIndex.from_frame(table[["model", "tag"]])).to_numpy() - table["auc"]
    return table
