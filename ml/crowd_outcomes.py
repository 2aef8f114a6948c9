"""How published crowds did: once the log holds the days a crowd predicted, who of it bought.

A backtest measures a model on a labelled date before anything is published; this measures what was published, with
the model and the population it was scored on, against what then happened. For each crowds file of the task
(crowds/ds=DATE/crowds.parquet) whose window [window_start, window_end) the log now holds, the dbt model
samples_outcomes finds every buyer of the targets that may be ranked in the window by the label rule, and whether
the forward population of that date held the pair (samples_outcome_targets: per target, that population's size). Per
target: the crowd's buyers against the buyers its scores expected (crowds_expected_buyers.parquet, written with the
crowds), precision, recall among every buyer of the target, and lift: the crowd's precision over the scored
population's own rate, what a merchant gains over picking as many of the population at random. The pooled figures
are ratios of sums over the targets, each with a 95 % interval over targets resampled (as the backtest's per-target
metrics). Written beside the crowds (crowds_outcomes.parquet), to the warehouse table crowds.crowd_outcomes and, as
metrics stepped by the feature date, to the MLflow run of the model that scored them, so its runs show how its
crowds did over time.

The population is found again from the log's events before the date: a log that grew by later days (crowd load
--append) holds them as they were when the crowds were scored; where they changed, population_differs says so.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ml.crowds import expected_buyers_path, last_log_day, publish_rows, submission_path, write_atomically
from ml.evaluate.intervals import Interval, target_sum_intervals
from ml.task import Task, TaskPaths

log = logging.getLogger(__name__)

OUTCOME_COLUMNS = ("task", "target", "target_id", "feature_date", "window_start", "window_end", "model",
                   "model_version", "run_id", "crowd_size", "buyers_in_crowd", "expected_buyers_in_crowd",
                   "precision", "buyers", "recall", "population", "buyers_in_population", "base_rate", "lift",
                   "population_scored", "expected_buyers_population")
# what `crowd outcomes` reads of the warehouse (the dbt exposure crowd_outcomes names them)
OUTCOME_TABLES = ("samples.samples_outcomes", "samples.samples_outcome_targets")
SUMMED = ("crowd_size", "buyers_in_crowd", "expected_buyers_in_crowd", "buyers", "population", "buyers_in_population",
          "population_scored", "expected_buyers_population")


def _ratio(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.divide(a, b)


# the pooled figures: ratios of the sums over targets (`s`: each summed column, one value per resample or one)
POOLED: dict[str, Callable[[dict], np.ndarray | float]] = {
    "precision": lambda s: _ratio(s["buyers_in_crowd"], s["crowd_size"]),
    "recall": lambda s: _ratio(s["buyers_in_crowd"], s["buyers"]),
    "lift": lambda s: _ratio(_ratio(s["buyers_in_crowd"], s["crowd_size"]),
                             _ratio(s["buyers_in_population"], s["population"])),
    "buyers_over_expected": lambda s: _ratio(s["buyers_in_crowd"], s["expected_buyers_in_crowd"]),
}


@dataclass(frozen=True)
class CrowdOutcome:
    """One published date's outcome: the sums over its targets, the pooled figures and their intervals."""

    feature_date: dt.date
    window_end: dt.date  # exclusive
    path: Path  # crowds_outcomes.parquet, one row per target
    table: pd.DataFrame  # what it holds
    model: str
    model_version: str
    run_id: str
    targets: int
    sums: dict[str, float]
    pooled: dict[str, float]
    intervals: dict[str, Interval] = field(default_factory=dict)
    logged: bool = False  # to the model's MLflow run
    population_differs: str | None = None  # the population found again is not the one the crowds were scored on
    submission: dict[str, float] | None = None  # the item task's top-K pairs against every buyer pair (F1)

    def finite_figures(self) -> dict[str, float]:
        """The pooled figures and the submission's, those with a value (JSON has no NaN: an Airflow XCom)."""
        every = {**self.pooled, **{f"submission_{k}": v for k, v in (self.submission or {}).items()}}
        return {k: v for k, v in every.items() if np.isfinite(v)}


@dataclass(frozen=True)
class Pending:
    """A published date whose window the log does not hold yet."""

    feature_date: dt.date
    window_end: dt.date  # exclusive
    log_end: dt.date  # the log's last day


def outcomes_path(crowds: Path) -> Path:
    return crowds.with_name(f"{crowds.stem}_outcomes.parquet")


def published_dates(paths: TaskPaths) -> list[dt.date]:
    """The feature dates of the crowds the task published, oldest first."""
    return sorted(dt.date.fromisoformat(p.parent.name.removeprefix("ds="))
                  for p in paths.crowds.glob("ds=*/crowds.parquet"))


def measure_published(task: Task, paths: TaskPaths, dates: list[dt.date] | None = None, quiet: bool = True,
                      track: bool = True, only_new: bool = False) -> tuple[list[CrowdOutcome], list[Pending]]:
    """The outcome of every published date (or `dates`) whose window the log holds; the others as pending.
    `only_new`: leave out a date measured since its crowds were written, and one of another target or window,
    warning of it (the periods DAG, at every run: a task file changed since would otherwise fail every run)."""
    known = published_dates(paths)
    missing = [d for d in dates or [] if d not in known]
    if missing:
        raise ValueError(f"no crowds published for {', '.join(map(str, missing))} under {paths.crowds}"
                         + (f" (published: {', '.join(map(str, known))})" if known else
                            ": publish them first (crowd score)"))
    last = last_log_day(paths.dataset_dir) if known else None
    done, pending = [], []
    for day in tqdm(dates or known, desc="outcomes", unit="date", leave=False, disable=None):
        crowds = paths.crowds / f"ds={day.isoformat()}" / "crowds.parquet"
        measured = outcomes_path(crowds)
        if only_new and measured.exists() and measured.stat().st_mtime_ns >= crowds.stat().st_mtime_ns:
            continue
        crowd = pd.read_parquet(crowds)
        if crowd.empty:
            log.warning("%s: the crowds of %s hold no user: nothing to measure", task.name, day)
            continue
        end = pd.Timestamp(crowd["window_end"].iloc[0]).date()
        try:
            _check_same_question(task, crowd, day, end)
        except ValueError as e:
            if not only_new:
                raise
            log.warning("%s: %s; left out", task.name, e)
            continue
        if end - dt.timedelta(days=1) > last:
            pending.append(Pending(day, end, last))
            continue
        buyers, targets = window_buyers(task, paths, day, quiet=quiet)
        done.append(record(task, paths, crowds, crowd, buyers, targets, track=track))
    return done, pending


def _check_same_question(task: Task, crowd: pd.DataFrame, day: dt.date, end: dt.date) -> None:
    """The buyers are found by the task's label rule: crowds of another target or window answer another question
    (a task file changed since they were published), and measuring them so would count the wrong buys."""
    target, days = str(crowd["target"].iloc[0]), (end - day).days
    if target != task.target or days != task.windows.label_days:
        raise ValueError(f"the crowds of {day} predict buyers of a {target} over {days} days; task {task.name} asks "
                         f"of a {task.target} over {task.windows.label_days}: measure them with the settings they "
                         f"were scored with (--set target={target} --set label_days={days})")


def window_buyers(task: Task, paths: TaskPaths, day: dt.date,
                  quiet: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """samples_outcomes and samples_outcome_targets of `day`, built (ODS, DIM and DW only when not built from this
    dataset already) and read: every buyer of a target that may be ranked in the window (target_id, user_id,
    in_population), and per target of the population its size, its buyers and those in the population."""
    from ml.warehouse.build import build_dates
    from ml.warehouse.engine import open_warehouse
    from ml.warehouse.subset import item_subset_path

    engine = task.warehouse.engine
    warehouse = paths.warehouse_of(engine)
    build_dates(dataset_dir=paths.dataset_dir, warehouse=warehouse, dbt_vars=task.dbt_vars(ds=[day], outcome=day),
                select=[f"+{OUTCOME_TABLES[1].split('.')[1]}"], quiet=quiet, item_subset=item_subset_path(task, paths),
                engine=engine)
    with open_warehouse(engine, warehouse) as con:
        buyers = con.execute(f"select target_id, user_id, in_population from {OUTCOME_TABLES[0]} "
                             "where ds = $ds", {"ds": day}).df()
        targets = con.execute("select target_id, population, buyers, buyers_in_population "
                              f"from {OUTCOME_TABLES[1]} where ds = $ds", {"ds": day}).df()
    return buyers, targets


def per_target(crowd: pd.DataFrame, expected: pd.DataFrame | None, buyers: pd.DataFrame,
               targets: pd.DataFrame) -> pd.DataFrame:
    """One row per target of the crowds: its crowd's users, buyers and expected buyers; every buyer of the target
    in the window; the population found again, its buyers, and what the scores expected of it when the crowds
    were scored (population_scored: its size then); the ratios."""
    index = pd.Index(np.unique(crowd["target_id"].to_numpy()), name="target_id")
    hits = crowd[["target_id", "user_id"]].merge(buyers[["target_id", "user_id"]], on=["target_id", "user_id"])
    table = pd.DataFrame(index=index)
    table["crowd_size"] = crowd.groupby("target_id").size()
    table["buyers_in_crowd"] = hits.groupby("target_id").size()
    table["expected_buyers_in_crowd"] = crowd.groupby("target_id")["score"].sum()
    table = table.join(targets.set_index("target_id")[["buyers", "population", "buyers_in_population"]])
    scored = (expected.set_index("target_id")[["population", "expected_buyers_population"]]
              .rename(columns={"population": "population_scored"}) if expected is not None else
              # crowds written without the file (another tool's): what was expected of the population is unknown
              pd.DataFrame({"population_scored": [], "expected_buyers_population": []},
                           index=pd.Index([], name="target_id")))
    table = table.join(scored)
    counts = ["crowd_size", "buyers_in_crowd", "buyers", "population", "buyers_in_population"]
    table[counts] = table[counts].fillna(0).astype("int64")
    table["precision"] = _ratio(table["buyers_in_crowd"], table["crowd_size"])
    table["recall"] = _ratio(table["buyers_in_crowd"], table["buyers"])
    table["base_rate"] = _ratio(table["buyers_in_population"], table["population"])
    table["lift"] = _ratio(table["precision"], table["base_rate"])
    return table.reset_index()


def pooled(table: pd.DataFrame) -> tuple[dict[str, float], dict[str, float], dict[str, Interval]]:
    """The sums over targets, the pooled figures, and their 95 % intervals over targets resampled."""
    sums = {c: float(table[c].sum(min_count=1)) for c in SUMMED}
    figures = {name: float(f(sums)) for name, f in POOLED.items()}
    finite = {name: f for name, f in POOLED.items() if np.isfinite(figures[name])}  # no buyer: no lift
    intervals = target_sum_intervals(table, finite, list(SUMMED)) if len(table) > 1 else {}
    return sums, figures, intervals


def record(task: Task, paths: TaskPaths, crowds: Path, crowd: pd.DataFrame, buyers: pd.DataFrame,
           targets: pd.DataFrame, track: bool = True) -> CrowdOutcome:
    """Measure one published date and write what it found: beside the crowds, the warehouse table, the run."""
    expected_file = expected_buyers_path(crowds)
    expected = pd.read_parquet(expected_file) if expected_file.exists() else None
    table = per_target(crowd, expected, buyers, targets)
    first = crowd.iloc[0]
    day = pd.Timestamp(first["feature_date"]).date()
    meta = {"task": task.name, "target": task.target, "feature_date": day,
            "window_start": pd.Timestamp(first["window_start"]).date(),
            "window_end": pd.Timestamp(first["window_end"]).date(),
            "model": str(first["model"]), "model_version": str(first["model_version"]), "run_id": str(first["run_id"])}
    table = table.assign(**meta)[list(OUTCOME_COLUMNS)]
    path = outcomes_path(crowds)
    write_atomically(table, path)
    publish_rows(table, paths.warehouse, "crowd_outcomes", task.name, day)
    sums, figures, intervals = pooled(table)
    differs = population_differs(table)
    pairs = submission_path(crowds)
    submitted = submission_outcome(pd.read_csv(pairs), buyers) if task.target == "item" and pairs.exists() else None
    measured = {**{f"outcome_{k}": v for k, v in figures.items()},
                **{f"outcome_{k}": sums[k] for k in ("crowd_size", "buyers_in_crowd", "expected_buyers_in_crowd",
                                                      "buyers")},
                **{f"outcome_submission_{k}": v for k, v in (submitted or {}).items()}}
    logged = track and bool(meta["run_id"]) and meta["model_version"] != "local" and \
        _log_to_run(paths, meta["run_id"], day, measured)
    return CrowdOutcome(day, meta["window_end"], path, table, meta["model"], meta["model_version"], meta["run_id"],
                        len(table), sums, figures, intervals, logged, differs, submitted)


def submission_outcome(pairs: pd.DataFrame, buyers: pd.DataFrame) -> dict[str, float]:
    """The item task's submission (user_id, item_id: the top K pairs, crowd score's submission.csv) against every
    buyer pair of the item subset in the window: the competition's precision, recall and F1."""
    submitted = pairs.rename(columns={"item_id": "target_id"})[["user_id", "target_id"]].drop_duplicates()
    hits = len(submitted.merge(buyers[["user_id", "target_id"]], on=["user_id", "target_id"]))
    precision, recall = _ratio(hits, len(submitted)), _ratio(hits, len(buyers))
    f1 = _ratio(2 * precision * recall, precision + recall) if hits else 0.0
    return {"pairs": float(len(submitted)), "bought": float(hits), "buyer_pairs": float(len(buyers)),
            "precision": float(precision), "recall": float(recall), "f1": float(f1)}


def population_differs(table: pd.DataFrame) -> str | None:
    """What differs between the population found again and the one the crowds were scored on (their expected
    buyers' file), or None. The log's days before the date changed since (a log loaded again with other events,
    a generation of other days), or the task's population settings did: the crowds are then measured against
    another population than theirs, and the lift says less."""
    known = table[table["population_scored"].notna()]
    changed = known[known["population"] != known["population_scored"]]
    if changed.empty:
        return None
    return (f"the population found again differs from the one the crowds were scored on for {len(changed):,} of "
            f"{len(known):,} targets ({int(known['population'].sum()):,} pairs against "
            f"{int(known['population_scored'].sum()):,}): the log's days before the date, or the task's crowds "
            "settings, changed since; the lift is measured against today's population")


def metric_step(day: dt.date) -> int:
    """The MLflow step of a feature date, read as the date itself (20131001)."""
    return int(day.strftime("%Y%m%d"))


def _log_to_run(paths: TaskPaths, run_id: str, day: dt.date, values: dict[str, float]) -> bool:
    """The pooled figures and counts as metrics of the run that scored the crowds, stepped by the feature date
    (a date measured again logs the same step again). False when the store does not know the run."""
    import mlflow
    from mlflow.entities import Metric

    from ml.tracking import configure

    configure(paths)
    at = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)
    metrics = [Metric(k, float(v), at, metric_step(day)) for k, v in values.items() if np.isfinite(v)]
    try:
        mlflow.tracking.MlflowClient().log_batch(run_id, metrics=metrics)
    except mlflow.exceptions.MlflowException as e:
        log.warning("the run %s that scored the crowds of %s is not in the task's MLflow store (%s): its outcome "
                    "is not logged to it", run_id, day, str(e).splitlines()[0])
        return False
    return True
