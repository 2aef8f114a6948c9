# The project's image: the pinned environment of requirements.lock plus the package, the DAGs and the dbt
# project. One image serves every Airflow service and the MLflow server (docker-compose.yaml).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true SCARF_ANALYTICS=false \
    CROWD_DATA_DIR=/data AIRFLOW_HOME=/opt/airflow

RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 postgresql-client && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/purchase-crowd

# dependencies first, so that a code change does not reinstall them; torch is the CPU build
COPY requirements.lock ./
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock \
    && pip install "apache-airflow[celery,postgres]==3.3.2" "mlflow[auth]==3.17.2" psycopg2-binary   # the multi-process deployment only

COPY pyproject.toml README.md ./
COPY ml ./ml
COPY dags ./dags
COPY tasks ./tasks
COPY dbt_project ./dbt_project
RUN pip install --no-deps --no-build-isolation -e . \
    && useradd --create-home --uid 50000 crowd && mkdir -p /data /opt/airflow \
    && chown -R crowd /data /opt/airflow /opt/purchase-crowd
USER crowd
