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
    def mlflow_db(self) -> Path:
        return self.root / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlflow" / "artifacts"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"
