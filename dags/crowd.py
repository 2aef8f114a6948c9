"""Purchase Crowd Airflow DAGs: one pair per task file under tasks/ (Airflow's dynamic-DAG pattern), wiring only;
the logic lives in ml.orchestration (see its docstring)."""

from ml.orchestration import build_dags_to_parse

for _dag in build_dags_to_parse():
    globals()[_dag.dag_id] = _dag
