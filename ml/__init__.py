"""Purchase Crowd: which users will buy a brand, a category, an item or a tag in the coming days.

Importing the package turns off MLflow's usage reports, however it is started (make, the `crowd` command, an
Airflow task, a notebook): MLflow 3 writes an installation id under ~/.config/mlflow and sends usage events from
its import on, and only the Makefile and airflow.env turned them off, so `crowd train` run from a shell
reported to MLflow. (dbt's are off in dbt_project.yml, Airflow's and Cosmos's in airflow.env, which every local
Airflow of the project reads.) A value already set is left as it is: MLFLOW_DISABLE_TELEMETRY=false turns the
reports back on.
"""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
