"""MLflow: one SQLite store under the data directory (with an absolute artifact location), one experiment and
one registered model per task and dataset (ml.task.TaskPaths), whose `champion` alias moves only when a new
run beats the current champion."""

from __future__ import annotations

import logging
import math
import os

import mlflow
from mlflow.tracking import MlflowClient

from ml.config import Paths
from ml.task import TaskPaths

log = logging.getLogger(__name__)
CHAMPION = "champion"
CHAMPION_METRIC = "eval_auc"  # higher is better


def tracking_uri(paths: Paths) -> str:
    """$MLFLOW_TRACKING_URI when set (a tracking server, as in docker-compose.yaml), else the local SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.mlflow_db}"


def configure(paths: TaskPaths) -> str:
    """Point MLflow at the project's store and the task's experiment; return its id (creating both when needed)."""
    shared = paths.shared
    uri = tracking_uri(shared)
    local = uri.startswith("sqlite:")
    if local:
        shared.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
        shared.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(paths.experiment)
    if experiment is None:
        # a local store needs an absolute artifact location; a server decides its own (--artifacts-destination)
        location = (shared.mlflow_artifacts / paths.task / paths.dataset).resolve().as_uri() if local else None
        experiment_id = mlflow.create_experiment(paths.experiment, artifact_location=location,
                                                 tags={"task": paths.task, "dataset": paths.dataset})
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def champion_metric(client: MlflowClient, registered_model: str) -> tuple[str | None, float]:
    """The current champion's version and its metric (none: -inf)."""
    try:
        version = client.get_model_version_by_alias(registered_model, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None, -math.inf
    run = client.get_run(version.run_id)
    return version.version, run.data.metrics.get(CHAMPION_METRIC, -math.inf)


def promote_if_better(paths: TaskPaths, version: str, value: float) -> bool:
    """Move the task's champion alias to this version only if it beats the current champion."""
    client = MlflowClient()
    name = paths.registered_model
    current, best = champion_metric(client, name)
    if value > best:
        client.set_registered_model_alias(name, CHAMPION, version)
        log.info("%s champion: version %s (%s %.4f) replaces %s (%.4f)", name, version, CHAMPION_METRIC, value,
                 current, best)
        return True
    log.info("%s champion stays version %s (%s %.4f >= %.4f)", name, current, CHAMPION_METRIC, best, value)
    return False
