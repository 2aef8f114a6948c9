"""MLflow: one SQLite store under the data directory (with an absolute artifact location), one experiment and
one registered model per task and dataset (ml.task.TaskPaths).

The champion is keyed to the task's comparison fingerprint (Task.comparison_fingerprint: the exports' settings
and warehouse build, the validation and backtest dates, the evaluated targets and metrics): new data or a
changed task has no champion until a model is trained on it. The alias `champion-KEY` moves only when a
new run of the same key beats it on the validation dates (`selection_*` metrics; the backtest's `eval_*`
metrics never choose), and `crowd score` serves the champion of the task's own key. Runs of other settings are
measured on other rows and never compete. The plain `champion` alias follows the latest promotion, for the
MLflow UI. Every training also points `champion-features-SKEY` (Task.serving_fingerprint: the same features
and the same way of choosing, on any data) at its comparison's champion: while the current data's comparison
has no champion, `crowd score` serves that one, saying which data it was trained on, so a log that grows keeps
getting its crowds.

A training's run is open while it trains and carries the process that runs it (`crowd.process`: host, pid and
the process's start time); a process killed mid-way leaves its run RUNNING, and the next training of the
experiment on the same host marks it FAILED (abandoned_runs_failed)."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import math
import os
import re
import socket
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from ml.config import Paths
from ml.outputs import file_lock
from ml.task import Task, TaskPaths

log = logging.getLogger(__name__)
CHAMPION = "champion"
COMPARISON_TAG = "comparison"  # runs and registered versions carry their Task.comparison_fingerprint()
PROCESS_TAG = "crowd.process"  # the process a run is open in: host:pid:start time (abandoned_runs_failed)
BUILD_TAG = "crowd.build"  # the warehouse build the run's exports come from


def filter_value(value: str) -> str:
    """A value for an MLflow search filter, quoted: MLflow's filters take no bound parameters, so only plain
    names (a model, a fingerprint) may reach one, never text from a file."""
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", value):
        raise ValueError(f"{value!r} is not a plain name: it cannot be searched for in MLflow")
    return f"'{value}'"


def comparison_key(task: Task, exports: Path, ds: dt.date | None = None) -> str:
    """The task's comparison fingerprint for the warehouse build of its exports of ds (the backtest's by
    default): the key of the runs and the champion that were measured on these exports."""
    from ml.warehouse.export import exports_build

    return task.comparison_fingerprint(exports_build(exports, ds or task.backtest))


def process_token(pid: int | None = None) -> str:
    """This process (or pid) as host:pid:start time; the start time tells a reused pid from the original."""
    import psutil

    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{int(psutil.Process(pid).create_time() * 1000)}"


def process_alive(token: str) -> bool:
    """Whether the process of a token may still run: a process of another host is taken as alive (this one
    cannot tell), one of this host only when its pid runs with the same start time."""
    import psutil

    try:
        host, pid, started = token.rsplit(":", 2)
        pid, started = int(pid), int(started)
    except ValueError:
        return True  # not a token of ours: leave it be
    if host != socket.gethostname():
        return True
    try:
        return int(psutil.Process(pid).create_time() * 1000) == started
    except psutil.Error:
        return False


def abandoned_runs_failed(experiment_id: str) -> list[str]:
    """Mark FAILED the experiment's runs left RUNNING by a process of this host that no longer runs (a kill
    mid-training or mid-logging); returns their ids. Runs of live processes and other hosts are untouched."""
    client = MlflowClient()
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    dead = [r for r in runs if PROCESS_TAG in r.data.tags and not process_alive(r.data.tags[PROCESS_TAG])]
    for r in dead:
        client.set_terminated(r.info.run_id, status="FAILED")
        client.set_tag(r.info.run_id, "crowd.failed_because", "its process ended without closing the run")
        log.warning("run %s (%s) was left RUNNING by a process that has ended: marked FAILED", r.info.run_id,
                    r.info.run_name)
    return [r.info.run_id for r in dead]


def champion_alias(key: str) -> str:
    """The alias of the champion among runs of one comparison fingerprint."""
    return f"{CHAMPION}-{key}"


def serving_alias(serving_key: str) -> str:
    """The alias of the latest champion among runs whose features mean the same (Task.serving_fingerprint)."""
    return f"{CHAMPION}-features-{serving_key}"


def selection_metric(name: str) -> str:
    """The MLflow metric a task's `evaluate.select_by` names (higher is better): measured on validation dates."""
    return f"selection_{name}"


def tracking_uri(paths: Paths) -> str:
    """$MLFLOW_TRACKING_URI when set (a tracking server, as in docker-compose.yaml), else the local SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.mlflow_db}"


# the experiment's kind for MLflow's API and the UIs that read it; MLflow 3.17's UI does not open on it (ui_url)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
LOCAL_UI = "http://127.0.0.1:5000"  # where `make mlflow` serves the local store
NOTE_TAG = "mlflow.note.content"  # the description the UI shows of an experiment or a run


def ui_url(experiment_id: str | None = None) -> str:
    """A link to the experiment (or to the list) in the MLflow UI, on its model-training side. MLflow 3.17's UI
    chooses between GenAI (traces, prompts) and model training (runs, metrics, models) by a switch of its own,
    GenAI in a new browser and then remembered per browser, whatever the experiment's kind tag says: a new user
    met an empty traces page. The link's `workflowType` parameter opens the model-training side. The UI is the
    tracking server's where one is set, else `make mlflow`'s."""
    server = os.environ.get("MLFLOW_TRACKING_URI", "")
    base = server.rstrip("/") if server.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments{f'/{experiment_id}' if experiment_id else ''}?workflowType=machine_learning"


def configure(paths: TaskPaths, description: str = "") -> str:
    """Point MLflow at the project's store and the task's experiment; return its id (creating both when needed).
    description: the experiment's, shown in the UI's list of experiments (blank there before 2026-11-29); set
    when the experiment has none."""
    shared = paths.shared
    # MLflow draws a progress bar for every artifact upload and download (dozens per model); a user may turn
    # them back on with the variable
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(shared)
    local = uri.startswith("sqlite:")
    if local:
        shared.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
        shared.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # the registry in the same store, also when another one was configured before
    # The first touch of a SQLite store creates and migrates its tables, and the experiment is made once: the
    # training DAG's models start together, and two processes migrating one new store at once left alembic's
    # temporary tables behind and failed every retry. One process at a time here (a file lock beside it).
    with file_lock(shared.mlflow_db.with_name("store.lock")) if local else contextlib.nullcontext():
        experiment = mlflow.get_experiment_by_name(paths.experiment)
        if experiment is None:
            # a local store needs an absolute artifact location; a server decides its own (--artifacts-destination)
            location = (shared.mlflow_artifacts / paths.task / paths.dataset).resolve().as_uri() if local else None
            tags = {"task": paths.task, "dataset": paths.dataset, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
                    **({NOTE_TAG: description} if description else {})}
            experiment_id = mlflow.create_experiment(paths.experiment, artifact_location=location, tags=tags)
        else:
            experiment_id = experiment.experiment_id
            if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made before the tag was set
                MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            if description and not experiment.tags.get(NOTE_TAG):  # made before descriptions, or by a report
                MlflowClient().set_experiment_tag(experiment_id, NOTE_TAG, description)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def version_by_alias(client: MlflowClient, registered_model: str, alias: str):  # noqa: ANN201 (a ModelVersion)
    """The registered version an alias names, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(registered_model, alias)
    except mlflow.exceptions.MlflowException:
        return None


def champion_metric(client: MlflowClient, registered_model: str, metric: str, key: str
                    ) -> tuple[str | None, float]:
    """The current champion of key: its version and its value of `metric` (none, or a run without it: -inf)."""
    version = version_by_alias(client, registered_model, champion_alias(key))
    if version is None:
        return None, -math.inf
    run = client.get_run(version.run_id)
    return version.version, run.data.metrics.get(metric, -math.inf)


def run_verdict(run_id: str, model: str) -> str | None:
    """The training's warning line (ml.evaluate.floors.verdict) of a logged run, from its backtest metrics: its
    AUC interval against 0.5 and against the best heuristic floor's AUC. The champion is chosen on validation
    among the trained models, so it can be one the training warned about: `crowd score` says so again where its
    crowds are used. None when the run clears both, or lacks the metrics (a run from before they were logged)."""
    from ml.evaluate.floors import verdict

    metrics = MlflowClient().get_run(run_id).data.metrics
    auc, low, high = (metrics.get(f"eval_auc{end}") for end in ("", "_ci_low", "_ci_high"))
    if auc is None or low is None or high is None:
        return None
    floors = {k.removeprefix("floor_").removesuffix("_auc"): v for k, v in metrics.items()
              if k.startswith("floor_") and k.endswith("_auc")}
    best = max(floors.items(), key=lambda kv: kv[1]) if floors else None
    return verdict(model, auc, low, high, best if best is not None and low <= best[1] else None)


@contextlib.contextmanager
def champion_lock(paths: TaskPaths) -> Iterator[None]:
    """One promotion at a time per registered model: the training DAG trains models in parallel, and two that
    both read the old champion's metric before either moved the alias could leave the worse one champion.
    A file lock in the data directory, which every local process and the compose services share."""
    with file_lock(paths.shared.root / "mlflow" / f"{paths.registered_model}.champion.lock"):
        yield


def register_version(name: str, info, tags: dict, description: str = "",  # noqa: ANN001
                     model_description: str = "") -> str:
    """A new version of the registered model `name` (created when absent, with `model_description`, which a
    model registered without one gets too) for a logged model (its ModelInfo), carrying `tags` and
    `description`; through the client, which prints nothing (the fluent API's registration prints two lines
    per model)."""
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.create_registered_model(name, description=model_description or None)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
        if model_description and not client.get_registered_model(name).description:
            client.update_registered_model(name, description=model_description)
    version = client.create_model_version(name, source=info.model_uri, run_id=info.run_id, model_id=info.model_id,
                                          tags={k: str(v) for k, v in tags.items()}, description=description or None)
    return str(version.version)


def promote_if_better(paths: TaskPaths, version: str, metric: str, value: float, key: str,
                      features_key: str | None = None) -> bool:
    """Move the champion alias of key to this version only if it beats the current champion of key on
    `metric` (read and moved under champion_lock); the plain alias follows. The alias of the serving
    fingerprint `features_key` names key's champion after every training, promoted or kept: the champion of the
    comparison trained last (a store whose champion was promoted before the alias existed gets it too)."""
    client = MlflowClient()
    name = paths.registered_model
    with champion_lock(paths):
        current, best = champion_metric(client, name, metric, key)
        if features_key:
            client.set_registered_model_alias(name, serving_alias(features_key), version if value > best else current)
        if value > best:
            client.set_registered_model_alias(name, champion_alias(key), version)
            client.set_registered_model_alias(name, CHAMPION, version)
            if current is None:
                log.info("%s champion of settings %s: version %s (%s %.4f), the first", name, key, version,
                         metric, value)
            else:
                new, old = apart(value, best)
                log.info("%s champion of settings %s: version %s (%s %s) replaces %s (%s)", name, key, version,
                         metric, new, current, old)
            return True
    kept, lost = apart(best, value)
    log.info("%s champion of settings %s stays version %s (%s %s >= %s)", name, key, current, metric, kept, lost)
    return False


def apart(a: float, b: float) -> tuple[str, str]:
    """Two metrics with the digits that tell them apart (4 to 8): "version 4 (0.9326) replaces 2 (0.9326)"
    read as a promotion without a gain."""
    for digits in range(4, 9):
        if f"{a:.{digits}f}" != f"{b:.{digits}f}":
            break
    return f"{a:.{digits}f}", f"{b:.{digits}f}"


@functools.cache
def source_tags() -> dict[str, str]:
    """The code a run ran: the checkout's git commit (MLflow's own tag, which its UI shows) and whether the
    checkout had uncommitted changes; none outside a git checkout (an installed package, the image)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "git_dirty": str(bool(dirty)).lower()}


def log_dataset_inputs(exports: Path, task: str, digest: str, rows: dict[str, int]) -> None:
    """The run's inputs in MLflow's dataset tracking: each split of the task's exports (rows at the prepared
    key `digest`) with what the run used it for."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow registers its local artifact source twice, then warns it is ambiguous
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(Path(exports).resolve().as_uri())
    for split, n in rows.items():
        dataset = MetaDataset(source, name=f"{task}.{split}", digest=digest)
        for attempt in range(3):
            try:
                mlflow.log_input(dataset, context=DATASET_CONTEXTS.get(split, split), tags={"rows": str(n)})
                break
            except mlflow.exceptions.MlflowException as e:
                # two runs logging a new dataset at once: the store's check-then-insert lets both insert, one
                # fails on the unique key; again, it finds the other's row and links to it
                if "unique constraint" not in str(e).lower() or attempt == 2:  # SQLite and Postgres say so
                    raise


# what a run uses each prepared split for (ml.train.prepared.SPLITS)
DATASET_CONTEXTS = {"train": "training", "valid": "validation", "valid_population": "calibration",
                    "evaluation": "backtest"}
