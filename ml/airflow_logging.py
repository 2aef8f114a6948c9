"""Airflow's logging configuration with one known third-party line dropped: every Airflow process imports
Cosmos's plugin at start, before any DAG file, and Cosmos then warns that the OpenLineage provider is missing
(this project emits no lineage): one warning in each component's log and each task's. `airflow.env` names this
dict as `[logging] logging_config_class`, so every deployment (crowd airflow, crowd run-dags, docker-compose)
gets it. (`[logging] namespace_levels` sets the levels of Airflow's structlog loggers only, and a level would
hide the logger's other lines; a filter set by the DAG file came after the plugin's import.)"""

from __future__ import annotations

import copy
import logging

from airflow.config_templates.airflow_local_settings import DEFAULT_LOGGING_CONFIG

COSMOS_LOGGER = "cosmos.operators.local"
OPENLINEAGE_MISSING = "To enable emitting Openlineage events"


class DropMessage(logging.Filter):
    """Drops the records whose message starts with `start`, keeping the rest of the logger's."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


LOGGING_CONFIG: dict = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
LOGGING_CONFIG["filters"]["drop_openlineage_missing"] = {"()": f"{__name__}.DropMessage", "start": OPENLINEAGE_MISSING}
LOGGING_CONFIG["loggers"][COSMOS_LOGGER] = {"filters": ["drop_openlineage_missing"]}
