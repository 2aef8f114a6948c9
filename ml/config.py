"""One typed place for every setting the pipeline shares.

Windows, dates and paths are read by the generator, the loaders, the warehouse
and the trainers alike; keeping them here means a change of window is one edit,
and a bad value fails once, early, with a message that names it.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR_ENV = "CROWD_DATA_DIR"
ACTIONS: tuple[str, ...] = ("click", "collect", "cart", "buy")
TARGET_ENTITIES: tuple[str, ...] = ("brand", "category")


def parse_date(value: str | dt.date, name: str = "date") -> dt.date:
    """Parse an ISO date, failing with the setting's name rather than a bare ValueError."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"{name}: expected a date as YYYY-MM-DD, got {value!r}") from None


def weekly_dates(first: dt.date, last: dt.date, step_days: int = 7) -> list[dt.date]:
    """Dates from first to last inclusive, every step_days."""
    if last < first:
        raise ValueError(f"date range is empty: {first} is after {last}")
    n = (last - first).days // step_days
    return [first + dt.timedelta(days=step_days * i) for i in range(n + 1)]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Where all state lives: $CROWD_DATA_DIR, else data/ in the checkout (or the working directory)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root()
    if (root / "pyproject.toml").exists():
        return root / "data"
    return Path.cwd().resolve() / "data"


@dataclass(frozen=True)
class Windows:
    """The time windows of the original project (days)."""

    history_days: int = 90
    sequence_days: int = 30
    label_days: int = 7
    step_days: int = 7

    def __post_init__(self) -> None:
        for name in ("history_days", "sequence_days", "label_days", "step_days"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive whole number of days, got {value!r}")
        if self.sequence_days > self.history_days:
            raise ValueError(
                f"sequence_days ({self.sequence_days}) cannot exceed history_days ({self.history_days})"
            )


@dataclass(frozen=True)
class Schedule:
    """Sample dates (weekly) and the evaluation date: the original project's by default."""

    first_sample: dt.date = dt.date(2013, 7, 1)
    last_sample: dt.date = dt.date(2013, 9, 16)
    evaluation: dt.date = dt.date(2013, 9, 23)
    target: str = "brand"
    windows: Windows = field(default_factory=Windows)

    def __post_init__(self) -> None:
        if self.target not in TARGET_ENTITIES:
            raise ValueError(f"target: expected one of {TARGET_ENTITIES}, got {self.target!r}")
        if self.last_sample < self.first_sample:
            raise ValueError(f"last_sample {self.last_sample} is before first_sample {self.first_sample}")
        if self.evaluation <= self.last_sample:
            raise ValueError(f"evaluation {self.evaluation} must come after last_sample {self.last_sample}")

    @property
    def sample_dates(self) -> list[dt.date]:
        return weekly_dates(self.first_sample, self.last_sample, self.windows.step_days)

    @property
    def all_dates(self) -> list[dt.date]:
        """Sample dates then the evaluation date: the dates the generator writes its oracle for."""
        return [*self.sample_dates, self.evaluation]


@dataclass(frozen=True)
class WarehouseSettings:
    """What the dbt project builds, beyond the schedule: mirrored by the vars in dbt_project.yml."""

    feature_windows: tuple[int, ...] = (1, 3, 7, 30, 90)
    sequence_length: int = 50
    negatives_per_target: int = 100
    n_evaluated_targets: int = 50
    evaluated_targets: tuple[int, ...] = ()
    lstm_top_categories: int = 20

    def __post_init__(self) -> None:
        for name in ("sequence_length", "n_evaluated_targets", "lstm_top_categories"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive whole number, got {value!r}")
        if not isinstance(self.negatives_per_target, int) or self.negatives_per_target < 0:
            raise ValueError(f"negatives_per_target: expected a whole number >= 0, got {self.negatives_per_target!r}")
        if not self.feature_windows or any(not isinstance(w, int) or w <= 0 for w in self.feature_windows):
            raise ValueError(f"feature_windows: expected positive whole numbers of days, got {self.feature_windows!r}")


def dbt_vars(schedule: Schedule, settings: WarehouseSettings, ds: list[dt.date] | None = None) -> dict:
    """The dbt vars for a run: the Python settings are the source of truth, dbt's defaults mirror them."""
    w = schedule.windows
    if max(settings.feature_windows) > w.history_days:
        raise ValueError(
            f"feature_windows: {max(settings.feature_windows)} days is longer than history_days ({w.history_days})"
        )
    return {
        "ds": [d.isoformat() for d in ds] if ds else None,
        "first_sample_date": schedule.first_sample.isoformat(),
        "last_sample_date": schedule.last_sample.isoformat(),
        "sample_step_days": w.step_days,
        "evaluation_date": schedule.evaluation.isoformat(),
        "history_days": w.history_days,
        "sequence_days": w.sequence_days,
        "label_days": w.label_days,
        "feature_windows": list(settings.feature_windows),
        "sequence_length": settings.sequence_length,
        "target": schedule.target,
        "negatives_per_target": settings.negatives_per_target,
        "n_evaluated_targets": settings.n_evaluated_targets,
        "evaluated_targets": list(settings.evaluated_targets),
        "lstm_top_categories": settings.lstm_top_categories,
    }


@dataclass(frozen=True)
class Paths:
    """Every path the project writes, under one root."""

    root: Path

    @classmethod
    def default(cls) -> "Paths":
        return cls(data_dir())

    def dataset(self, name: str) -> Path:
        """Canonical tables of one dataset: events/ (parquet parts), items.parquet, rejects, manifest."""
        return self.root / "raw" / name

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse" / "crowd.duckdb"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def crowds(self) -> Path:
        return self.root / "crowds"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlflow" / "artifacts"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"
