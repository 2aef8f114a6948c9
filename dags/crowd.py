"""Purchase Crowd Airflow DAGs: wiring only, the logic lives in ml.orchestration (see its docstring)."""

from ml.orchestration import build_training_dag, build_weekly_dag

weekly = build_weekly_dag()
training = build_training_dag()
