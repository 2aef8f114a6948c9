"""A task: which log, which target, which windows and dates, which models, and where its outputs live.

A task is one YAML file under tasks/ (or any path), validated once into a frozen `Task` at the edge (the CLI's
`--task`, a DAG's Params) and handed down: nothing below the edge builds settings of its own, and every
default a task leaves out is defined here and nowhere else. A bad file fails at once with one line naming the
file and the field. `Task.override` applies a run's single-field changes (a DAG Param, a CLI `--set`) and
validates the result the same way.

Everything a task writes lives under its own namespace (`TaskPaths`): warehouse, exports, models, crowds,
MLflow experiment and registered model (with its champion alias), keyed by task and dataset, so two tasks,
or one task on two datasets, never overwrite each other.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ml.config import DBT_DATE_VARS, Paths, data_dir, json_digest, repo_root

TASKS_DIR = repo_root() / "tasks"
DEFAULT_TASK = "tmall-2013"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # safe as a directory, an MLflow name and a DAG id part
GBDT_MODELS: tuple[str, ...] = ("lgbm_per_target", "lgbm_few_mixed", "lgbm_all_mixed")
DEEP_MODELS: tuple[str, ...] = ("dnn", "deepfm", "din", "moe", "ple", "lstm")
ALL_MODELS: tuple[str, ...] = (*GBDT_MODELS, *DEEP_MODELS)
TARGETS: tuple[str, ...] = ("brand", "category", "item", "tag")
Engine = Literal["duckdb", "spark"]  # what runs the dbt project (ml/warehouse/engine.py)
ENGINES: tuple[str, ...] = ("duckdb", "spark")


class TaskError(ValueError):
    """A task file or an override that cannot be used: the message names the file and the field."""


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class Windows(_Settings):
    """Days: features use [ds - history, ds), sequences the last `sequence_days`, the label [ds, ds + label)."""

    history_days: int = Field(ge=1, le=3650)
    sequence_days: int = Field(ge=1, le=3650)
    label_days: int = Field(ge=1, le=366)
    step_days: int = Field(ge=1, le=366, description="the cadence: days between sample dates and between runs")

    @model_validator(mode="after")
    def _sequence_within_history(self) -> Windows:
        if self.sequence_days > self.history_days:
            raise ValueError(f"sequence_days ({self.sequence_days}) cannot exceed history_days ({self.history_days})")
        return self


class SampleRange(_Settings):
    first: dt.date
    last: dt.date

    @model_validator(mode="after")
    def _ordered(self) -> SampleRange:
        if self.last < self.first:
            raise ValueError(f"last ({self.last}) is before first ({self.first})")
        return self


class Evaluate(_Settings):
    """The backtest: the top `top_targets` targets by recent buyers (or the explicit `targets`), recall@n."""

    top_targets: int = Field(default=50, ge=1)
    targets: tuple[int, ...] = ()
    n: tuple[int, ...] = (10, 50, 100, 500)
    # the metric the champion is chosen on, measured on the validation dates (never on the backtest):
    # auc_per_target (each target's AUC, weighted by its buyers), gauc (each user's AUC, weighted by the
    # user's rows), auc (pooled), or recall_at_N for one of the n values
    select_by: str = "auc_per_target"

    @field_validator("n")
    @classmethod
    def _positive_ns(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(x < 1 for x in v):
            raise ValueError("expected one or more positive cut-offs")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _known_selection_metric(self) -> Evaluate:
        allowed = ["auc_per_target", "gauc", "auc", *(f"recall_at_{n}" for n in self.n)]
        if self.select_by not in allowed:
            raise ValueError(f"select_by: expected one of {', '.join(allowed)}, got {self.select_by!r}")
        return self


class Warehouse(_Settings):
    """What the dbt project builds beyond the windows (mirrored by the vars in dbt_project.yml).

    candidate_days: the candidates are the pairs active together in the last N days (default: the whole
    history window). item_subset (target item): the items that may be ranked, `dataset` for the subset the
    dataset carries or a file of item ids (ml/warehouse/subset.py); default: every item. engine: what runs the
    dbt project, duckdb (one file) or spark (dbt-spark; ml/warehouse/engine.py). Both build the same rows (a
    test says so), so the engine is not part of the fingerprints: exports do not care which one made them.
    airflow_tasks: how the periods DAG shows a date's build, `build` (one task running one dbt build: within
    seconds of dbt alone) or `per_model` (Cosmos's watcher mode: the same one build, then a task per model and
    per model's tests reading its outcome; about half a minute more per run under dag.test on 2 cores).
    Neither changes a row."""

    engine: Engine = "duckdb"
    airflow_tasks: Literal["build", "per_model"] = "build"

    feature_windows: tuple[int, ...] = (1, 3, 7, 30, 90)
    sequence_length: int = Field(default=50, ge=1)
    negatives_per_target: int = Field(default=100, ge=0)
    lstm_top_categories: int = Field(default=20, ge=1)
    candidate_days: int | None = Field(default=None, ge=1)
    item_subset: str | None = None

    @field_validator("feature_windows")
    @classmethod
    def _positive_windows(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(w < 1 for w in v):
            raise ValueError("expected one or more positive day counts")
        return tuple(sorted(set(v)))


class Training(_Settings):
    """Shared by every model of the task; a deep model's own entry under `models` overrides epochs, batch, lr."""

    epochs: int = Field(default=4, ge=1)
    batch_size: int = Field(default=1024, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    seed: int = 42
    negative_rate: float = Field(default=0.2, gt=0, le=1, description="share of training negatives kept")
    processes: int = Field(default=1, ge=1, description="deep models train as this many DDP processes (torchrun)")


class ModelBudget(_Settings):
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0)


class Crowds(_Settings):
    """The product: for each target, the users most likely to buy in the coming period.

    population `touched`: the (user, target) pairs active together in the history window, for users active
    in the last `active_days`; `evaluated`: those users x the evaluated targets (the backtest's population).
    A crowd holds at most `size` users and at most a `share` of the scored users: a list of everyone is no
    target list (1000 users of a log with 796 active ones put every user in every crowd).
    """

    size: int = Field(default=1000, ge=1, description="users per target at most, capped by the population")
    share: float = Field(default=0.1, gt=0, le=1, description="at most this share of the scored users per target")
    population: Literal["touched", "evaluated"] = "evaluated"
    active_days: int = Field(default=30, ge=1)
    as_of: dt.date | None = Field(default=None, description="feature date; default: the day after the log's last")


class Tag(_Settings):
    """A user-level tag defined by a rule over purchases in a group of leaf categories (an interest, or a life
    stage): the user has it when they make at least `min_buys` buys in those categories in the label window
    (an interest about to show), or, with `horizon_days`, in the horizon_days ending with the label window
    (a state: recent past buys count too)."""

    name: str = Field(pattern=NAME_PATTERN)
    categories: tuple[int, ...] = Field(min_length=1)
    min_buys: int = Field(default=1, ge=1)
    horizon_days: int | None = Field(default=None, ge=1)


class Generate(_Settings):
    """How `make run` makes the dataset when it is absent and synthetic (a generator preset)."""

    preset: str
    seed: int = Field(default=7, ge=0)


class Task(_Settings):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    dataset: str = Field(pattern=NAME_PATTERN)
    generate: Generate | None = None
    target: Literal["brand", "category", "item", "tag"]
    tags: tuple[Tag, ...] = ()
    windows: Windows
    samples: SampleRange
    validation: tuple[dt.date, ...] = Field(min_length=1)
    backtest: dt.date
    evaluate: Evaluate = Evaluate()
    warehouse: Warehouse = Warehouse()
    training: Training = Training()
    models: dict[str, ModelBudget] = Field(min_length=1)
    crowds: Crowds = Crowds()

    @field_validator("models", mode="before")
    @classmethod
    def _known_models(cls, v: Any) -> Any:
        v = _model_names(v)
        if isinstance(v, (list, tuple)):  # a plain list of names: no budgets of their own
            v = {m: {} for m in v}
        if isinstance(v, Mapping):
            unknown = [m for m in v if m not in ALL_MODELS]
            if unknown:
                raise ValueError(f"unknown model(s) {unknown}; expected some of {', '.join(ALL_MODELS)}")
            v = {m: (b if b is not None else {}) for m, b in v.items()}
            # a LightGBM entry's epochs, batch_size or lr was read by nothing: refused, not ignored
            budgeted = [m for m, b in v.items() if m in GBDT_MODELS and isinstance(b, Mapping)
                        and any(x is not None for x in b.values())]
            if budgeted:
                raise ValueError(f"{', '.join(budgeted)}: epochs, batch_size and lr are the deep models' settings; "
                                 "LightGBM boosts until its validation AUC stops improving: leave its entry empty ({})")
        return v

    @model_validator(mode="after")
    def _dates_in_order(self) -> Task:
        w = self.windows
        if max(self.warehouse.feature_windows) > w.history_days:
            raise ValueError(f"warehouse.feature_windows: {max(self.warehouse.feature_windows)} days is longer "
                             f"than windows.history_days ({w.history_days})")
        if (self.warehouse.candidate_days or 0) > w.history_days:
            raise ValueError(f"warehouse.candidate_days ({self.warehouse.candidate_days}) cannot exceed "
                             f"windows.history_days ({w.history_days})")
        if self.warehouse.item_subset is not None and self.target != "item":
            raise ValueError(f"warehouse.item_subset: only a task with target item has an item subset "
                             f"(this one's target is {self.target})")
        if self.target == "item" and self.crowds.population != "touched":
            raise ValueError("crowds.population: a task with target item publishes the pairs active together "
                             "(touched); every active user x every item would not fit")
        self._check_tags()
        label = dt.timedelta(days=w.label_days)
        # a date's label window must end before the next role's features start: no label leaks forward
        _after_label_window("validation", min(self.validation), "the last sample date", self.samples.last, label)
        _after_label_window("backtest", self.backtest, "validation date", max(self.validation), label)
        return self

    def _check_tags(self) -> None:
        if (self.target == "tag") != bool(self.tags):
            raise ValueError("tags: a task with target tag defines its tags, and only such a task does"
                             if self.tags else "tags: target tag needs at least one tag (name, categories, rule)")
        names = [t.name for t in self.tags]
        if len(set(names)) < len(names):
            raise ValueError(f"tags: names must be unique, got {names}")
        seen: dict[int, str] = {}
        for t in self.tags:
            for c in t.categories:
                if c in seen and seen[c] != t.name:
                    raise ValueError(f"tags: category {c} is in both {seen[c]} and {t.name}; a category "
                                     f"belongs to one tag (its events are counted once)")
                seen[c] = t.name
            if t.horizon_days is not None and t.horizon_days < self.windows.label_days:
                raise ValueError(f"tags: {t.name}: horizon_days ({t.horizon_days}) is shorter than the label "
                                 f"window ({self.windows.label_days} days)")
        if self.target == "tag" and self.crowds.population != "evaluated":
            raise ValueError("crowds.population: a tag's crowd ranks every active user (evaluated)")

    # ---- derived views --------------------------------------------------------------------------------------
    @property
    def sample_dates(self) -> list[dt.date]:
        step = self.windows.step_days
        n = (self.samples.last - self.samples.first).days // step
        return [self.samples.first + dt.timedelta(days=step * i) for i in range(n + 1)]

    @property
    def labelled_dates(self) -> list[dt.date]:
        """Every date the warehouse builds with labels: samples, validation, backtest."""
        return sorted({*self.sample_dates, *self.validation, self.backtest})

    @property
    def targets_word(self) -> str:
        """The target in the plural, for what the user reads ("categories", never "categorys")."""
        return "categories" if self.target == "category" else f"{self.target}s"

    @property
    def ranked_by(self) -> str:
        """Whose ranking the per-group metrics measure: each target's users (a merchant's crowd), or for the
        next-day item task each user's items (per-user GAUC and recall@N, as the pair task is judged)."""
        return "user" if self.target == "item" else "target"

    def model_names(self) -> list[str]:
        return [m for m in ALL_MODELS if m in self.models]  # the registry's order, whatever the file's

    def budget(self, model: str) -> dict:
        """epochs, batch_size, lr for one model: its own entry over the task's training block."""
        own = self.models.get(model, ModelBudget())
        t = self.training
        return {"epochs": own.epochs or t.epochs, "batch_size": own.batch_size or t.batch_size, "lr": own.lr or t.lr}

    def series_shape(self) -> dict[str, tuple[int, int]]:
        """The LSTM series: (steps, category slots) per timescale; periods of min(30, history) days."""
        period = min(30, self.windows.history_days)
        slots = self.warehouse.lstm_top_categories + 1
        return {"month": (self.windows.history_days // period, slots), "day": (self.windows.sequence_days, slots)}

    def about(self) -> str:
        """The description as a sentence, ending in its full stop (empty when the task has none): the first words
        of the HTML report and of the MLflow descriptions."""
        text = self.description.strip()
        return text + ("." if text and not text.endswith((".", "!", "?")) else "")

    def dbt_vars(self, ds: list[dt.date] | None = None, forward: dt.date | None = None,
                 outcome: dt.date | None = None) -> dict:
        """The dbt vars of a build: the task is the source of truth; dbt_project.yml's defaults mirror the
        default task. `ds` defaults to every labelled date; `forward` adds an unlabelled scoring date, `outcome`
        a published crowds' date whose label window the log now holds (ml.crowd_outcomes)."""
        dates = list(ds) if ds else self.labelled_dates
        for extra in (forward, outcome):
            if extra is not None and extra not in dates:
                dates.append(extra)
        w, h = self.windows, self.warehouse
        return {
            "ds": [d.isoformat() for d in sorted(dates)],
            "forward_date": forward.isoformat() if forward else None,
            "outcome_date": outcome.isoformat() if outcome else None,
            "first_sample_date": self.samples.first.isoformat(),
            "last_sample_date": self.samples.last.isoformat(),
            "sample_step_days": w.step_days,
            "validation_dates": [d.isoformat() for d in self.validation],
            "evaluation_date": self.backtest.isoformat(),
            "history_days": w.history_days,
            "sequence_days": w.sequence_days,
            "label_days": w.label_days,
            "feature_windows": list(h.feature_windows),
            "sequence_length": h.sequence_length,
            "target": self.target,
            "tags": [{"tag_id": i + 1, "name": t.name, "categories": list(t.categories), "min_buys": t.min_buys,
                      "horizon_days": t.horizon_days} for i, t in enumerate(self.tags)],
            "candidate_days": h.candidate_days,
            "negatives_per_target": h.negatives_per_target,
            "n_evaluated_targets": self.evaluate.top_targets,
            "evaluated_targets": list(self.evaluate.targets),
            "lstm_top_categories": h.lstm_top_categories,
            "crowd_population": self.crowds.population,
            "crowd_active_days": self.crowds.active_days,
        }

    def warehouse_fingerprint(self) -> str:
        """What the exports depend on: a training run refuses exports built with other settings. The forward
        population's settings and the item subset choose which pairs are scored, not what a feature means: a
        model may score another population (the same task on another subset) without a rebuild."""
        v = self.dbt_vars()
        keep = {k: v[k] for k in v if k not in (*DBT_DATE_VARS, "crowd_population", "crowd_active_days")}
        return _digest({"dataset": self.dataset, **keep})

    def comparison_fingerprint(self, build: str) -> str:
        """What makes two runs' metrics comparable: the same exports (warehouse_fingerprint) of the same
        warehouse build (`build`: the data and the dbt models, ml.warehouse.export.build_id), the same
        validation and backtest dates, the same evaluated targets and metrics. The champion alias and the
        report are keyed to it: a run measured on other rows never competes with, or sits beside, these, and
        new data or a changed task has no champion until a model is trained on it."""
        return _digest({"warehouse": self.warehouse_fingerprint(), "build": build, "target": self.target,
                        "validation": [str(d) for d in self.validation], "backtest": str(self.backtest),
                        "evaluate": self.evaluate.model_dump(mode="json"),
                        # how the selection metric is measured: on the validation dates' whole population
                        # (runs of earlier versions measured it on the sampled rows: another scale)
                        "selection_rows": "validation population"})

    def serving_fingerprint(self, dbt_project: str) -> str:
        """Which champion may serve crowds when the comparison of the current data has none yet: one whose
        features mean the same (these exports' settings, dates included, built by the same dbt models,
        `dbt_project`) and which was chosen the same way (target, evaluation), trained on any build of the
        dataset's data. A log that grows (a new load with more days) keeps getting crowds from the latest such
        champion until a model is trained on it, which then competes on the new data alone. Moved dates are
        other settings (the top categories of the LSTM's series are counted before the first sample date)."""
        return _digest({"warehouse": self.warehouse_fingerprint(), "dbt_project": dbt_project,
                        "target": self.target, "evaluate": self.evaluate.model_dump(mode="json")})

    def flat(self) -> dict[str, Any]:
        """Every setting as dotted keys (MLflow params, the run's record)."""
        return _flatten(self.model_dump(mode="json"))

    # ---- overrides ------------------------------------------------------------------------------------------
    def override(self, changes: Mapping[str, Any] | None, source: str = "override") -> Task:
        """A copy with single fields changed (dotted paths or the short names of OVERRIDES), validated again."""
        if not changes:
            return self
        data = self.model_dump(mode="json")
        for key, value in changes.items():
            path = OVERRIDES.get(key, key)
            if path == "models":
                value = _model_names(value)
            if path == "models" and isinstance(value, (list, tuple)):
                own = data["models"]
                value = {m: own.get(m, {}) for m in value}
            node = data
            *parents, leaf = path.split(".")
            for p in parents:
                if not isinstance(node.get(p), dict):
                    raise TaskError(f"{source}: {key}: no such setting")
                node = node[p]
            if leaf not in node and not (parents and parents[0] == "models"):
                raise TaskError(f"{source}: {key}: no such setting")
            node[leaf] = value
        return validate_task(data, source)


# The short names a DAG Param or a CLI `--set` may use for one run, and the field each changes.
OVERRIDES: dict[str, str] = {
    "dataset": "dataset",
    "target": "target",
    "history_days": "windows.history_days",
    "sequence_days": "windows.sequence_days",
    "label_days": "windows.label_days",
    "negatives_per_target": "warehouse.negatives_per_target",
    "engine": "warehouse.engine",
    "top_targets": "evaluate.top_targets",
    "models": "models",
    "epochs": "training.epochs",
    "negative_rate": "training.negative_rate",
    "nproc": "training.processes",
    "crowd_size": "crowds.size",
    "crowd_share": "crowds.share",
    "crowd_population": "crowds.population",
    "as_of": "crowds.as_of",
}


def _model_names(value: Any) -> Any:
    """`--set models=lgbm_all_mixed,dnn` (or one name) as the list it means; YAML reads it as one string, which
    was refused as "Input should be a valid dictionary"."""
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    return [] if value is None else value  # `--set models=` names none: refused as too few, not as a wrong type


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and k != "models":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, (list, tuple, Mapping)) else v
    return out


def _digest(obj: object) -> str:
    return json_digest(obj, 12)


def _after_label_window(field: str, date: dt.date, role: str, before: dt.date, label: dt.timedelta) -> None:
    """`date` (of `field`) comes once `before`'s label window has ended; said as it is: inside that window, or
    before `before` itself (a backtest before the validation dates is not "inside" their window)."""
    if before + label <= date:
        return
    where = (f"is inside the label window of {role} {before} ({label.days} days)" if date >= before else
             f"comes before {role} {before}")
    raise ValueError(f"{field}: {date} {where}; move it to {before + label} or later")


SHOWN_ERRORS = 3  # a task file's errors named in its one line; the rest counted


def _describe(error: ValidationError, source: str) -> str:
    """Every error of the file in one line (the first few): a misspelt key is two, the key it should have been
    (required) and the one written (unknown), and the second says what to fix."""
    said = []
    for e in error.errors()[:SHOWN_ERRORS]:
        where = ".".join(str(p) for p in e["loc"])  # empty for the cross-field checks, whose text names it
        said.append(f"{where + ': ' if where else ''}{e['msg'].removeprefix('Value error, ')}")
    more = f" (and {error.error_count() - SHOWN_ERRORS} more)" if error.error_count() > SHOWN_ERRORS else ""
    return f"{source}: {'; '.join(said)}{more}"


def validate_task(data: Mapping[str, Any], source: str) -> Task:
    """A task's settings validated, or a TaskError naming `source` and the fields in one line."""
    try:
        return Task.model_validate(data)
    except ValidationError as e:
        raise TaskError(_describe(e, source)) from None


def task_file(name_or_path: str | Path) -> Path:
    """tasks/<name>.yaml for a bare name; a path as given otherwise."""
    text = str(name_or_path)
    if re.match(NAME_PATTERN, text) and not text.endswith((".yaml", ".yml")):
        path = TASKS_DIR / f"{text}.yaml"
        if not path.exists():
            known = ", ".join(available_tasks()) or "none"
            raise TaskError(f"no task named {text!r} (tasks/{text}.yaml); known tasks: {known}")
        return path
    path = Path(text).expanduser()
    if not path.is_file():
        raise TaskError(f"{path}: no such task file")
    return path


def available_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_task(name_or_path: str | Path = DEFAULT_TASK, overrides: Mapping[str, Any] | None = None) -> Task:
    """Read and validate a task file (its name is the file's stem), then apply one run's overrides."""
    path = task_file(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise TaskError(f"{path}:{where} not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise TaskError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    if "name" in data and data["name"] != path.stem:
        raise TaskError(f"{path}: name: {data['name']!r} differs from the file's name {path.stem!r}")
    task = validate_task({"name": path.stem, **data}, str(path))
    return task.override(overrides, source=f"{path} (overrides)")


def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    """CLI `--set key=value` pairs; values are read as YAML (numbers, dates, lists)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TaskError(f"--set {item!r}: expected KEY=VALUE, for example --set label_days=2")
        out[key.strip()] = yaml.safe_load(value)
    return out


@dataclass(frozen=True)
class TaskPaths:
    """Where one task on one dataset keeps its outputs; shared state (datasets, MLflow store, Airflow home)
    stays at the data directory's root."""

    root: Path
    task: str
    dataset: str

    @classmethod
    def of(cls, task: Task, root: Path | None = None) -> TaskPaths:
        return cls(Path(root) if root else data_dir(), task.name, task.dataset)

    @property
    def shared(self) -> Paths:
        return Paths(self.root)

    @property
    def base(self) -> Path:
        return self.root / "tasks" / self.task / self.dataset

    @property
    def dataset_dir(self) -> Path:
        return self.shared.dataset(self.dataset)

    @property
    def warehouse(self) -> Path:
        """The DuckDB warehouse file (also where the published crowds' table lives, whichever engine built
        the features)."""
        return self.warehouse_of("duckdb")

    def warehouse_of(self, engine: str) -> Path:
        """Where `engine` keeps this task's warehouse: the DuckDB file or the Spark warehouse directory."""
        from ml.warehouse.engine import warehouse_location

        return warehouse_location(self.base / "warehouse", engine)

    @property
    def exports(self) -> Path:
        return self.base / "exports"

    @property
    def models(self) -> Path:
        return self.base / "models"

    @property
    def crowds(self) -> Path:
        return self.base / "crowds"

    @property
    def reports(self) -> Path:
        return self.base / "reports"

    @property
    def experiment(self) -> str:
        return f"purchase-crowd/{self.task}/{self.dataset}"

    @property
    def registered_model(self) -> str:
        return f"purchase-crowd.{self.task}.{self.dataset}"

    def describe(self) -> dict[str, str]:
        from ml.tracking import tracking_uri

        s = self.shared
        return {"task": self.task, "dataset": str(self.dataset_dir), "warehouse": str(self.warehouse),
                "exports": str(self.exports), "models": str(self.models), "crowds": str(self.crowds),
                "mlflow": tracking_uri(s), "mlflow_experiment": self.experiment,
                "registered_model": self.registered_model, "airflow": str(s.airflow_home)}
