"""What side_by_side's fork server (ml.local_airflow) builds once for all its children: Airflow, the FastAPI
app of the execution API that dag.test runs in-process in each child, and MLflow's map of installed packages.
Imported there, before any child forks, instead of in every child: about 8 s of each training task on 2 cores
(Airflow's import 1.4 s, building the app 2.2 s and its versioned routes 4.4 s).

Airflow reads its settings (AIRFLOW_HOME, AIRFLOW__*) when first imported, so the fork server holds those of the
environment it started in: side_by_side starts another one when they change. Only the app is built here; its
transport (an event loop on a thread, which a fork would not copy) starts in the child that first calls it."""

from __future__ import annotations

import contextlib
import importlib
import logging

from airflow.sdk.execution_time.supervisor import in_process_api_server

# the modules each child then finds imported: the DAG runner it calls and what it parses its DAG with
for _module in ("airflow.sdk.definitions.dag", "airflow.dag_processing.dagbag"):
    importlib.import_module(_module)

# a failure here is not the task's: the child builds the app itself, as without the preload, and says why then
with contextlib.suppress(Exception):
    app = in_process_api_server().app  # a cached property: built on first read
    # Cadwyn makes the API's versioned routes on the app's first request (4.4 s of a child's 6 on 2 cores):
    # made here instead, with the method its first request calls
    if getattr(app, "_cadwyn_initialized", True) is False:
        app._cadwyn_initialize()
# MLflow maps every installed distribution to its modules when a model is first logged, to check the model's pip
# requirements against the environment (0.5 s of each training task): mapped here, once
with contextlib.suppress(Exception):
    from mlflow.utils.requirements_utils import _init_packages_to_modules_map

    _init_packages_to_modules_map()
logging.getLogger(__name__).debug("Airflow, the in-process execution API and MLflow's package map preloaded")
