"""MLflow: one experiment, a SQLite store under the data directory with an absolute artifact location, and
a registered model whose `champion` alias moves only when a new run beats the current champion."""

from __future__ import annotations

import logging
import math
import os

import mlflow
from mlflow.tracking import MlflowClient

from ml.config import Paths

log = logging.getLogger(__name__)
EXPERIMENT = "purchase-crowd"
REGISTERED_MODEL = "purchase-crowd"
CHAMPION = "champion"
CHAMPION_METRIC = "eval_auc"  # higher is better


def tracking_uri(paths: Paths) -> str:
    """$MLFLOW_TRACKING_URI when set (a tracking server, as in docker-compose.yaml), else the local SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.mlflow_db}"


def configure(paths: Paths) -> str:
    """Point MLflow at the project's store and return the experiment id (creating both when needed)."""
    uri = tracking_uri(paths)
    local = uri.startswith("sqlite:")
    if local:
        paths.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
        paths.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        # a local store needs an absolute artifact location; a server decides its own (--artifacts-destination)
        location = paths.mlflow_artifacts.resolve().as_uri() if local else None
        experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def champion_metric(client: MlflowClient) -> tuple[str | None, float]:
    """The current champion's version and its metric (none: -inf)."""
    try:
        version = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None, -math.inf
    run = client.get_run(version.run_id)
    return version.version, run.data.metrics.get(CHAMPION_METRIC, -math.inf)


def promote_if_better(version: str, value: float) -> bool:
    """Move the champion alias to this version only if it beats the current champion."""
    client = MlflowClient()
    current, best = champion_metric(client)
    if value > best:
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)
        log.info("champion: version %s (%s %.4f) replaces %s (%.4f)", version, CHAMPION_METRIC, value, current, best)
        return True
    log.info("champion stays version %s (%s %.4f >= %.4f)", current, CHAMPION_METRIC, best, value)
    return False
