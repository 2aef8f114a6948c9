"""Airflow DAG import errors for the task files under tasks/ that do not validate: each is named with its error
here, as this file's import error, while dags/crowd.py makes the DAGs of every other task file. Defines no DAG."""

from ml.orchestration import check_task_files

check_task_files()
