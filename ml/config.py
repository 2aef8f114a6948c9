"""What every part of the project shares below the task: the data directory, its shared paths, the actions.

A run's settings (dataset, target, windows, dates, models) are a task (ml/task.py), read once at the edge.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "CROWD_DATA_DIR"
ACTIONS: tuple[str, ...] = ("click", "collect", "cart", "buy")
# the dbt vars that name a build's dates only: no part of what the settings, the upstream layers or the
# exports are a function of (the run's dates, the forward crowds' date, a published date's outcome)
DBT_DATE_VARS: tuple[str, ...] = ("ds", "forward_date", "outcome_date")


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


def content_digest(data: bytes, chars: int) -> str:
    """The first `chars` hex digits of data's SHA-1: the project's cache keys and fingerprints (a prepared
    folder, a parse, a build, an export's key), which name content and guard against nothing, so the weak hash
    is fine and its digits stay those of every key stored before."""
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()[:chars]


def json_digest(obj: object, chars: int) -> str:
    """content_digest of JSON-able parts, keys sorted (dates and paths as their strings): the settings keys."""
    return content_digest(json.dumps(obj, sort_keys=True, default=str).encode(), chars)


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
class Paths:
    """The shared state under the data directory: datasets, the MLflow store, the Airflow home. What a task
    writes is under its own namespace (ml.task.TaskPaths)."""

    root: Path

    @classmethod
    def default(cls) -> Paths:
        return cls(data_dir())

    def dataset(self, name: str) -> Path:
        """Canonical tables of one dataset: events/ (parquet parts), items.parquet, rejects, manifest. The name
        is one plain folder name (a name such as `..` would have put the whole data directory in its place)."""
        from ml.outputs import checked_name

        return self.root / "raw" / checked_name(name, "dataset name")

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlflow" / "artifacts"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"
