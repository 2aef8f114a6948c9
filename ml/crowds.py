"""Forward crowds, the product: for each target, the users most likely to buy in the coming period.

Features are built as of the forward date (by default the day after the log's last day, so every logged
event counts), with no label: the period they predict has not happened yet. The task's champion scores the
forward population (samples_forward: which pairs is the task's `crowds` setting), and the top users of each
target are written as parquet and as the warehouse table crowds.forward_crowds, with the model version that
made them and the window they predict; beside them, crowds_expected_buyers.parquet: per target, the buyers
to expect in the crowd and in the whole population (sums of the calibrated scores). A backtest on a labelled
date is a separate thing (crowd evaluate).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ml.outputs import check_table_replaceable
from ml.task import GBDT_MODELS, Task, TaskPaths
from ml.warehouse.export import FORWARD_EXPORTS, read_schema

log = logging.getLogger(__name__)
results_log = logging.getLogger("ml.results.crowds")  # `crowd score` says so in its own line (ml.cli.RESULTS_LOGGER)
# rows of the forward population scored at a time: what bounds scoring's memory (a million pairs of the
# default task's 117 features are 0.5 GB as float32)
SCORE_CHUNK_ROWS = 262_144
CROWD_COLUMNS = ("task", "target", "target_id", "rank", "user_id", "score", "model", "model_version", "run_id",
                 "feature_date", "window_start", "window_end", "data_build", "model_build")
# what crowds files had before: a `crowd score --out` of one of those is an earlier output, replaced as such
EARLIER_CROWD_COLUMNS = (CROWD_COLUMNS[:-1], CROWD_COLUMNS[:-2])


@dataclass(frozen=True)
class CrowdsResult:
    path: Path
    rows: int
    targets: int
    model: str
    feature_date: dt.date
    window_end: dt.date  # exclusive
    submission: Path | None = None  # the next-day item task: the top-K pairs, as the competition took them
    expected_in_crowds: float = 0.0  # buyers to expect in all the crowds, and in the whole scored population
    expected_in_population: float = 0.0
    model_version: str = "local"  # the registered version of the run, or "local": a training not registered
    run_id: str = ""
    data_build: str = ""  # the warehouse build the features come from (ml.warehouse.export.build_id)
    model_build: str = ""  # the build the model was trained on: the same, unless a local model was named
    verdict: str | None = None  # the served model's training warning, if any (ml.tracking.run_verdict)
    champion: bool = True  # served as the champion (no --model)


def query_dataset(sql: str, files: Path, what: str) -> list[tuple]:
    """A query over a dataset's own parquet files (sql reads them as its one parameter). A file cut short or not
    parquet is input to write again, said in one line with DuckDB's reason: it was an InvalidInputException with
    the query quoted and --debug offered, as a bug is."""
    try:
        with duckdb.connect() as con:
            return con.execute(sql, [str(files)]).fetchall()
    except duckdb.Error as e:
        said = str(e).split("\n")[0].removeprefix("Invalid Input Error: ")
        raise ValueError(f"{what} cannot be read ({said}): write the dataset again (crowd load or crowd "
                         "generate)") from e


def log_days(dataset_dir: Path) -> tuple[dt.date, dt.date]:
    """The first and last days with an event in the dataset (read from the parquet statistics, no full scan)."""
    events = Path(dataset_dir) / "events"
    if not any(events.glob("*.parquet")):
        # the datasets there are, for a task file whose dataset: has a typo
        there = sorted(p.parent.name for p in Path(dataset_dir).parent.glob("*/manifest.json")
                       if any((p.parent / "events").glob("*.parquet")))
        raise ValueError(f"{dataset_dir} holds no events: run `crowd generate` or `crowd load` first"
                         + (f" (datasets there: {', '.join(there)})" if there else ""))
    ((first, last),) = query_dataset("select min(ts), max(ts) from read_parquet(?)", events / "*.parquet",
                                     f"{events}: the log")
    if last is None:
        raise ValueError(f"{dataset_dir} holds no events")
    return first.date(), last.date()


def last_log_day(dataset_dir: Path) -> dt.date:
    """The last day with an event in the dataset."""
    return log_days(dataset_dir)[1]


def forward_date(task: Task, paths: TaskPaths, as_of: dt.date | None = None) -> dt.date:
    """The features' date: as_of, else the task's crowds.as_of, else the day after the log's last day. A date
    later than that is refused, as the periods DAG skips one: the days before it are not all in the log, and
    its features would show every user inactive over them (2014-06-01 on a log ending 2013-09-30 was built,
    then said "not built" of it). So is a date on or before the log's first day: no event before it to build
    features from (the error said to build it with `crowd warehouse`)."""
    first, last = log_days(paths.dataset_dir)
    latest = last + dt.timedelta(days=1)
    chosen = as_of or task.crowds.as_of or latest
    if chosen > latest:
        raise ValueError(f"as_of {chosen}: the log ends on {last}, so the days before {chosen} are not all in it; "
                         f"the latest feature date is {latest}")
    if chosen <= first:
        raise ValueError(f"as_of {chosen}: the log starts on {first}, so no event comes before it to build "
                         f"features from; the earliest feature date is {first + dt.timedelta(days=1)}")
    return chosen


def forward_key(task: Task, paths: TaskPaths, as_of: dt.date) -> str:
    """What the forward date's export is a function of: the inputs of the upstream layers (the dataset's files
    and the item subset file, every dbt var but the dates, the project's sources, dbt's and DuckDB's versions:
    ml.warehouse.build.upstream_key), the date, the engine, and the export's own code."""
    from ml.config import content_digest
    from ml.warehouse import export
    from ml.warehouse.build import upstream_key
    from ml.warehouse.subset import subset_source

    code = content_digest(Path(export.__file__).read_bytes(), 40)
    # the user's subset file, not the warehouse's checked copy of it, which a build writes
    key = upstream_key(paths.dataset_dir, task.dbt_vars(ds=[as_of], forward=as_of), subset_source(task, paths))
    return content_digest(f"{key} {as_of.isoformat()} {task.warehouse.engine} {code}".encode(), 16)


def held_forward(paths: TaskPaths, as_of: dt.date, key: str) -> dict[str, int] | None:
    """The rows of the forward export of as_of when it was made from the inputs `key` names, else None."""
    try:
        schema = read_schema(paths.exports, as_of)
    except (ValueError, OSError):
        return None
    rows = schema.get("rows", {})
    if schema.get("forward_key") != key or not rows.get("forward") or any(p not in rows for p in FORWARD_EXPORTS):
        return None
    return rows


def build_forward(task: Task, paths: TaskPaths, as_of: dt.date, quiet: bool = True,
                  key: str | None = None) -> dict[str, int]:
    """dbt for the forward date only (what its export reads: samples_forward, and the behaviour sequences and
    category series the deep models read with it, with their ancestors and tests; ODS, DIM and DW only when not
    already built from this dataset: ml.warehouse.build.build_dates), then its export. The sequences are no
    ancestor of samples_forward: built for it alone, the export held none, and the deep models scored the
    crowds as if no user had any behaviour. An export of the date made from the same inputs (forward_key) is
    kept as it is: scoring again (another model, another crowd size) needs no dbt run. `key`: forward_key, when
    the caller has it already."""
    from ml.warehouse.build import build_dates
    from ml.warehouse.export import EXPORTS, export_dates
    from ml.warehouse.subset import item_subset_path

    key = key or forward_key(task, paths, as_of)
    held = held_forward(paths, as_of, key)
    if held is not None:
        results_log.info("%s: the features as of %s are already built from this dataset and these settings",
                         task.name, as_of)
        return held
    engine = task.warehouse.engine
    select = [f"+{EXPORTS[name][0].split('.')[-1]}" for name in FORWARD_EXPORTS]
    build_dates(dataset_dir=paths.dataset_dir, warehouse=paths.warehouse_of(engine),
                dbt_vars=task.dbt_vars(ds=[as_of], forward=as_of), select=select, quiet=quiet,
                item_subset=item_subset_path(task, paths), engine=engine)
    export = export_dates(paths.warehouse_of(engine), paths.exports, [as_of], fingerprint=task.warehouse_fingerprint(),
                          dataset_dir=paths.dataset_dir, engine=engine, forward_key=key)[0]
    if "forward" not in export.rows:
        raise ValueError(f"no forward population at {as_of}: no user was active in the "
                         f"{task.crowds.active_days} days before it")
    return export.rows


def top_users(frame: pd.DataFrame, scores: np.ndarray, size: int) -> pd.DataFrame:
    """The top `size` users per target: target_id, rank (1 = most likely), user_id, score; ties by user id."""
    df = pd.DataFrame({"target_id": frame["target_id"].to_numpy(), "user_id": frame["user_id"].to_numpy(),
                       "score": np.asarray(scores, dtype=np.float64)})
    df = df.sort_values(["target_id", "score", "user_id"], ascending=[True, False, True], kind="stable")
    df["rank"] = df.groupby("target_id").cumcount() + 1
    return df[df["rank"] <= size][["target_id", "rank", "user_id", "score"]].reset_index(drop=True)


def top_pairs(frame: pd.DataFrame, scores: np.ndarray, k: int) -> pd.DataFrame:
    """The k (user, target) pairs with the highest scores over every target; ties by user id, then target id."""
    order = np.lexsort((frame["target_id"].to_numpy(), frame["user_id"].to_numpy(), -np.asarray(scores)))[:k]
    return pd.DataFrame({"user_id": frame["user_id"].to_numpy()[order],
                         "target_id": frame["target_id"].to_numpy()[order],
                         "score": np.asarray(scores, np.float64)[order]})


EXPECTED_COLUMNS = ("target_id", "expected_buyers_in_crowd", "crowd_size", "expected_buyers_population", "population")
SUBMISSION_COLUMNS = ("user_id", "item_id")


def expected_buyers(population: pd.DataFrame, crowd: pd.DataFrame) -> pd.DataFrame:
    """Per target, the buyers a merchant can expect: in its crowd, and in the whole scored population (sums of
    calibrated scores: ml.train.calibration), with the population's size. `population`: per target_id (the
    index), expected_buyers_population and population, summed over the scored chunks."""
    in_crowd = crowd.groupby("target_id")["score"].agg(expected_buyers_in_crowd="sum", crowd_size="size")
    return in_crowd.join(population).reset_index()[list(EXPECTED_COLUMNS)]


def latest_published(paths: TaskPaths) -> Path | None:
    """The newest forward crowds the task published (crowds/ds=DATE/crowds.parquet), or None."""
    published = sorted(paths.crowds.glob("ds=*/crowds.parquet"))
    return published[-1] if published else None


def expected_buyers_path(crowds: Path) -> Path:
    """Beside the crowds, named after them (a sibling of a user's --out never takes a name they did not give), in
    their format: a crowd written as CSV for a merchant's tools has its expected buyers as CSV too."""
    return crowds.with_name(f"{crowds.stem}_expected_buyers{'.csv' if crowds.suffix == '.csv' else '.parquet'}")


def submission_path(crowds: Path) -> Path:
    """The next-day item task's submission beside its crowds."""
    return crowds.with_name("submission.csv")


def score_forward(task: Task, paths: TaskPaths, as_of: dt.date, model: str | None = None,
                  size: int | None = None, out: Path | None = None) -> CrowdsResult:
    """Score the forward population of as_of with the champion (or a local model) and publish the crowds."""
    from ml.models.zoo import NEEDS_SERIES
    from ml.tracking import comparison_key
    from ml.train.bundle import load_bundle
    from ml.warehouse.export import serving_key

    if out is not None:  # the user's path: only an earlier output of this command is replaced, checked first
        check_table_replaceable(out, CROWD_COLUMNS, EARLIER_CROWD_COLUMNS)
        check_table_replaceable(expected_buyers_path(out), EXPECTED_COLUMNS)
        if task.target == "item":
            check_table_replaceable(submission_path(out), SUBMISSION_COLUMNS)
    # the champion of the forward export's build, else the latest of the same features on other data (a log
    # loaded again with more days); changed dbt models or settings have none until trained on
    bundle = load_bundle(model, paths, comparison_key(task, paths.exports, as_of),
                         serving_key(task, paths.exports, as_of))
    if bundle.config.get("task", task.name) != task.name:
        raise ValueError(f"model {bundle.name} was trained for task {bundle.config['task']}, not {task.name}")
    rows = read_schema(paths.exports, as_of).get("rows", {})
    reads = [] if bundle.name in GBDT_MODELS else ["sequences", *(["category_series"] if bundle.name in NEEDS_SERIES
                                                                 else [])]
    missing = [part for part in reads if rows.get("forward") and not rows.get(part)]
    if missing:  # (a forward export made before its build included them): scored, every user would look inactive
        raise ValueError(f"the forward export of {as_of} holds no {' and no '.join(missing)}, which {bundle.name} "
                         f"reads: build it again (`crowd score` without --no-build)")
    # the population in chunks: memory bounded by a chunk, the users and the crowds kept so far, whatever the
    # number of pairs; each chunk's best users per target merged into the running best (the top N of a union
    # is the top N of the parts' top Ns)
    limit, model_build = size or task.crowds.size, bundle.config.get("build", "")
    best, totals, users, pairs, build = None, [], [], None, None
    k = bundle.submission_k if task.target == "item" else 0
    chunks = bundle.iter_population(paths.exports, as_of, part="forward", rows=SCORE_CHUNK_ROWS)
    for raw in tqdm(chunks, desc="crowds", unit="chunk", leave=False, disable=None):
        if build is None:
            build = raw.build
            if model_build != build and model:
                log.warning("%s was trained on warehouse build %s, the features of %s are of build %s (other data "
                            "or dbt models): scoring with it because it was named", bundle.name,
                            model_build or "unknown", as_of, build or "unknown")
            elif model_build != build:  # in the training DAG's task log; `crowd score` prints it as its own line
                results_log.warning("%s", served_on_other_data(task.name, bundle.name, bundle.config.get("version"),
                                                               model_build, as_of, build))
        scores = bundle.score(raw)
        chunk = top_users(raw.samples, scores, limit)
        best = chunk if best is None else top_users(pd.concat([best, chunk]), np.r_[best["score"], chunk["score"]],
                                                    limit)
        totals.append(pd.DataFrame({"target_id": raw.samples["target_id"].to_numpy(), "score": scores})
                      .groupby("target_id")["score"].agg(expected_buyers_population="sum", population="size"))
        users.append(np.unique(raw.samples["user_id"].to_numpy()))
        if k:
            found = top_pairs(raw.samples, scores, k)
            pairs = found if pairs is None else top_pairs(pd.concat([pairs, found]),
                                                          np.r_[pairs["score"], found["score"]], k)
    build = build or ""
    if best is None:
        best = pd.DataFrame({"target_id": pd.Series(dtype="int64"), "rank": pd.Series(dtype="int64"),
                             "user_id": pd.Series(dtype="int64"), "score": pd.Series(dtype="float64")})
    population = (pd.concat(totals).groupby(level=0).sum() if totals else
                  pd.DataFrame(columns=["expected_buyers_population", "population"]))
    n_users = len(np.unique(np.concatenate(users))) if users else 0
    # an asked size is kept (the population caps it); the task's is also capped by its share of the scored users
    size = size or min(task.crowds.size, max(1, math.ceil(task.crowds.share * n_users)))
    crowd = best[best["rank"] <= size].reset_index(drop=True)
    end = as_of + dt.timedelta(days=task.windows.label_days)
    crowd.insert(0, "task", task.name)
    crowd.insert(1, "target", task.target)
    run_id = str(bundle.config.get("run_id", ""))
    version = str(bundle.config.get("version") or (model and run_id and _registered_version(paths, run_id)) or "local")
    crowd = crowd.assign(model=bundle.name, model_version=version, run_id=run_id, feature_date=as_of,
                         window_start=as_of, window_end=end, data_build=build,
                         model_build=model_build)[list(CROWD_COLUMNS)]
    target = out or paths.crowds / f"ds={as_of.isoformat()}" / "crowds.parquet"
    write_atomically(crowd, target)
    expected = expected_buyers(population, crowd)
    write_atomically(expected, expected_buyers_path(target))
    submission = _write_submission(pairs, bundle, target) if task.target == "item" else None
    if out is None:
        # a table made before the crowds said which build they come from, and which the model was trained on
        publish_rows(crowd, paths.warehouse, "forward_crowds", task.name, as_of, added=("data_build", "model_build"))
    log.debug("%s: crowds of %d %s targets (top %d) for %s..%s by %s v%s -> %s", task.name,
              crowd["target_id"].nunique(), task.target, size, as_of, end, bundle.name,
              crowd["model_version"].iloc[0] if len(crowd) else "-", target)
    # a named model is in the store when its training was registered (not with --no-track)
    verdict = _run_verdict(run_id, bundle.name) if version != "local" and run_id else None
    if verdict:  # in the training DAG's task log; `crowd score` prints it as its own line
        results_log.warning("%s%s", "" if model else "the champion ", verdict)
    return CrowdsResult(target, len(crowd), int(crowd["target_id"].nunique()), bundle.name, as_of, end, submission,
                        float(expected["expected_buyers_in_crowd"].sum()),
                        float(expected["expected_buyers_population"].sum()),
                        model_version=version, run_id=run_id, data_build=build, model_build=model_build,
                        verdict=verdict, champion=not model)


def served_on_other_data(task: str, model: str, version: str | None, model_build: str, as_of: dt.date,
                         build: str) -> str:
    """What a champion served on data it was not trained on says: which data, and how that ends."""
    return (f"the champion {model} (version {version or '?'}) was trained on warehouse build "
            f"{model_build or 'unknown'}, the features of {as_of} are of build {build or 'unknown'} (the same "
            "features and settings on other data): it serves until a model is trained on this data (`crowd train "
            f"--task {task}`), which then competes on it alone")


def _registered_version(paths: TaskPaths, run_id: str) -> str | None:
    """The task's registered version of a named model's run: the crowds said "local" of version 1 when it was
    named by --model rather than served as the champion. None when the store has none (trained with
    --no-track, or a store of another place)."""
    import mlflow

    from ml.tracking import configure, filter_value

    configure(paths)
    try:
        found = mlflow.tracking.MlflowClient().search_model_versions(
            f"name = {filter_value(paths.registered_model)} and run_id = {filter_value(run_id)}")
    except mlflow.exceptions.MlflowException:
        return None
    return str(max(int(v.version) for v in found)) if found else None


def _run_verdict(run_id: str, model: str) -> str | None:
    """The served model's training warning (below random, or not above the best floor), read from its run in
    the task's MLflow store; a run the store no longer answers for says nothing, and scores all the same."""
    import mlflow

    from ml.tracking import run_verdict

    try:
        return run_verdict(run_id, model)
    except mlflow.exceptions.MlflowException:
        return None


def _write_submission(pairs: pd.DataFrame | None, bundle, crowds: Path) -> Path | None:  # noqa: ANN001
    """submission.csv beside the crowds: the K pairs with the highest scores (user_id,item_id, the Tianchi
    format), K being the size the model's F1 was best at on the validation day (bundle config submission_k)."""
    if not bundle.submission_k:
        log.warning("%s has no submission size (trained before K was chosen on validation): no submission.csv",
                    bundle.name)
        return None
    if pairs is None:
        pairs = pd.DataFrame({"user_id": pd.Series(dtype="int64"), "target_id": pd.Series(dtype="int64")})
    path = submission_path(crowds)
    write_atomically(pairs.rename(columns={"target_id": "item_id"})[list(SUBMISSION_COLUMNS)], path)
    return path


def write_atomically(frame: pd.DataFrame, path: Path) -> None:
    """Parquet, or CSV for a .csv path, written beside and swapped in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    if path.suffix == ".csv":
        frame.to_csv(partial, index=False)
    else:
        frame.to_parquet(partial, index=False)
    os.replace(partial, path)


def publish_rows(frame: pd.DataFrame, warehouse: Path, table: str, task: str, day: dt.date,
                 added: tuple[str, ...] = ()) -> None:
    """The task's rows of a feature date in the warehouse table crowds.TABLE (forward_crowds, crowd_outcomes): a
    rerun of a date replaces that date's, in one transaction. `added`: text columns a table made by an earlier
    version lacks, added to it. `table` is one of the project's names, never a user's."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(warehouse)) as con:
        con.register("rows_frame", frame)
        con.execute("create schema if not exists crowds")
        con.execute(f"create table if not exists crowds.{table} as select * from rows_frame where false")
        for column in added:
            con.execute(f"alter table crowds.{table} add column if not exists {column} varchar")
        con.execute("begin transaction")
        con.execute(f"delete from crowds.{table} where task = ? and feature_date = ?", [task, day])
        con.execute(f"insert into crowds.{table} by name select * from rows_frame")
        con.execute("commit")
