"""A task file for a log of one's own, its dates fitted to the log: `crowd tasks --new NAME --dataset D --like T`.

Writing the dates by hand is where a new task goes wrong: the backtest's label window must end inside the log,
validation must come after the last sample date's label window and before the backtest's, and a sample date
whose history window starts before the log sees fewer days than the rest. The template task (`--like`) gives
the target, the cadence, the windows, the models and every other setting; only the dates and the dataset are
the log's. The file is validated as every task file is before it is written, and it is never written over one
that exists.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from ml.orchestration import item_table_facts
from ml.task import TASKS_DIR, Task, TaskError, load_task, task_file, validate_task

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class FittedDates:
    first: dt.date
    last: dt.date
    validation: dt.date
    backtest: dt.date
    full_history_from: dt.date  # the first date whose history window lies inside the log


def fit_dates(like: Task, first_day: dt.date, last_day: dt.date) -> FittedDates:
    """The latest dates the log labels, on the template's cadence: the backtest's label window ends on the log's
    last day, validation one period (or as many as its label window spans) before it, the sample dates before
    that, as many as the template has, each with its whole history window inside the log when the log is long
    enough, and otherwise from the log's second day on (the warehouse warns of their shorter history)."""
    w = like.windows
    step = dt.timedelta(days=w.step_days)
    gap = step * -(-w.label_days // w.step_days)  # the next role starts on the cadence after a label window
    backtest = last_day - (w.label_days - 1) * DAY
    validation = backtest - gap
    last = validation - gap
    full = first_day + w.history_days * DAY
    earliest = full if full <= last else first_day + DAY
    if last < earliest:
        need = (last_day - first_day).days + 1 + (earliest - last).days
        raise TaskError(f"the log's {(last_day - first_day).days + 1} days ({first_day} .. {last_day}) are too few "
                        f"for the windows of task {like.name} (label {w.label_days} day(s), every {w.step_days}): "
                        f"a sample date, a validation date and a backtest need at least {need} days; choose a "
                        "template with shorter windows (--like) or a longer log")
    periods = min((last - earliest) // step, len(like.sample_dates) - 1)
    return FittedDates(last - periods * step, last, validation, backtest, full)


def moved_dates(task: Task, last_day: dt.date) -> tuple[int, dict[str, str | list[str]]]:
    """An existing task's dates moved to the latest its log (ending on last_day) labels: by the same whole number
    of periods of its cadence for every date, so the roles keep their spacing and a weekly DAG its weekday. The
    periods (0: they are the latest already) and the overrides that move them (Task.override, the DAGs' Param)."""
    step = task.windows.step_days
    periods = ((last_day - task.backtest).days - (task.windows.label_days - 1)) // step  # the label window fits
    shift = dt.timedelta(days=periods * step)
    return periods, {"samples.first": str(task.samples.first + shift), "samples.last": str(task.samples.last + shift),
                     "validation": [str(d + shift) for d in task.validation], "backtest": str(task.backtest + shift)}


def new_task_text(like_name: str, name: str, dataset: str, dataset_dir: Path, first_day: dt.date,
                  last_day: dt.date, description: str | None = None) -> tuple[str, Task, list[str]]:
    """The new task file's text, the task it validates to, and what was changed from the template besides the
    dates (each a line the command prints)."""
    like_path = task_file(like_name)
    like = load_task(like_path)
    if like.target == "tag":
        raise TaskError(f"{like.name} is a tag task: its tags name the categories of its own log; copy "
                        f"{like_path} and write the tags of yours")
    if like.target == "brand" and not item_table_facts(dataset_dir)[0]:
        raise TaskError(f"the dataset {dataset} has no brand on any item, and {like.name} ranks brands: take a "
                        "template whose target is the category (--like taobao-2017-category) or the item")
    has_item_subset = (dataset_dir / "item_subset.parquet").exists()
    dates = fit_dates(like, first_day, last_day)
    raw = yaml.safe_load(like_path.read_text())
    notes = []
    for key in ("name", "generate"):
        raw.pop(key, None)
    if (raw.get("crowds") or {}).pop("as_of", None) is not None:
        notes.append("crowds.as_of left out: the crowds are scored as of the day after the log's last day")
    if (raw.get("evaluate") or {}).pop("targets", None):
        notes.append("evaluate.targets left out: the template's target ids are its own log's; the "
                     "evaluation ranks the targets with the most buyers")
    if (raw.get("warehouse") or {}).get("item_subset") == "dataset" and not has_item_subset:
        raw["warehouse"].pop("item_subset")
        notes.append(f"warehouse.item_subset left out: the dataset {dataset} carries no item subset, so every "
                     "item is ranked")
    text_desc = description or (f"Which {like.targets_word} each user buys in the next {like.windows.label_days} "
                                f"day(s), from the log {dataset} (made from the task {like.name})")
    data = {"description": text_desc, "dataset": dataset, "target": raw.pop("target"),
            "windows": raw.pop("windows"),
            "samples": {"first": dates.first, "last": dates.last},
            "validation": [dates.validation], "backtest": dates.backtest}
    for key in ("samples", "validation", "backtest", "description", "dataset"):
        raw.pop(key, None)
    data.update(raw)
    task = validate_task({"name": name, **data}, f"the task {name} made from {like_path}")
    if dates.first < dates.full_history_from:
        notes.append(f"the log is too short for every sample date to see its whole history window "
                     f"({like.windows.history_days} days): the dates before {dates.full_history_from} see fewer "
                     "days (the warehouse warns of them too)")
    shown = f"tasks/{like_path.name}" if like_path.parent == TASKS_DIR else str(like_path)
    header = (f"# Made by `crowd tasks --new {name} --dataset {dataset} --like {like.name}` on {dt.date.today()}:\n"
              f"# the settings of {shown} (annotated there), the dates fitted to the log {dataset} "
              f"({first_day} .. {last_day}):\n# the backtest's label window ends on the log's last day, the "
              f"validation date and the {len(task.sample_dates)} sample dates come before it on the cadence.\n")
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True, width=110)
    return header + body, task, notes


def write_new(path: Path, text: str) -> None:
    """Written whole beside its place and linked in: never over a file that exists, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise TaskError(f"{path} exists: choose another name (nothing was written)") from None
    finally:
        os.unlink(tmp)
