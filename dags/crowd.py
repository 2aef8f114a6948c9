"""Purchase Crowd Airflow DAGs: one pair per task file under tasks/ (Airflow's dynamic-DAG pattern), wiring only;
the logic lives in ml.orchestration (see its docstring)."""

from ml.orchestration import build_task_dags
from ml.task import available_tasks, load_task

for _name in available_tasks():
    for _dag in build_task_dags(load_task(_name)):
        globals()[_dag.dag_id] = _dag
