"""The multi-service deployment is private by default: ports on 127.0.0.1, no start with a CHANGE-ME secret,
an MLflow server that asks for a login before anyone moves the champion. The compose file is checked by what
can be checked without a Docker engine; the MLflow auth app runs for real."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from ml.deploy import LOGINS, SECRETS, check_secrets, main, mlflow_auth_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
INFRA = {"postgres", "redis"}  # no published port, reached only on the compose network


def _env_example() -> dict[str, str]:
    pairs = re.findall(r"^([A-Z_]+)=(\S*)", (ROOT / ".env.example").read_text(), flags=re.M)
    return dict(pairs)


def _filled(env: dict[str, str]) -> dict[str, str]:
    return {k: (v.replace("CHANGE-ME", f"a-long-random-{k.lower()}".ljust(64, "x")) if "CHANGE-ME" in v else v)
            for k, v in env.items()}


def test_published_ports_bind_localhost_unless_told_otherwise():
    published = {name: s["ports"] for name, s in COMPOSE["services"].items() if s.get("ports")}
    assert set(published) == {"airflow-apiserver", "mlflow"}
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("${CROWD_BIND_ADDRESS:-127.0.0.1}:"), (name, port)
    assert _env_example()["CROWD_BIND_ADDRESS"] == "127.0.0.1"


def test_startup_fails_while_a_secret_is_still_change_me(capsys, monkeypatch):
    example = _env_example()
    with pytest.raises(ValueError, match="refusing to start") as e:
        check_secrets(example)
    for name in SECRETS:
        assert f"{name} is still CHANGE-ME" in str(e.value)
    check_secrets(_filled(example))  # every placeholder replaced: starts
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD is shorter than"):
        check_secrets({**_filled(example), "POSTGRES_PASSWORD": "1234"})
    # the API's secret signs HS512 tokens: under 64 characters it is refused, where 12 suffice elsewhere
    with pytest.raises(ValueError, match="AIRFLOW_API_SECRET_KEY is shorter than 64"):
        check_secrets({**_filled(example), "AIRFLOW_API_SECRET_KEY": "a" * 40})
    monkeypatch.setattr(os, "environ", example)
    assert main(["check"]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback


def test_every_service_that_opens_a_port_checks_the_secrets_first():
    services = COMPOSE["services"]
    for name in ("airflow-init", "mlflow"):
        script = services[name]["command"][-1].strip().splitlines()
        assert script[:2] == ["set -e", "python -m ml.deploy check"], name
    for name, service in services.items():
        if name in INFRA | {"airflow-init"}:
            continue
        assert service["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}, name


def test_every_variable_of_the_env_example_is_used():
    text = (ROOT / "docker-compose.yaml").read_text()
    # in the compose file, or read from the env file by ml.deploy in the services that run it
    used = set(re.findall(r"\$\{([A-Z_]+)", text)) | set(SECRETS) | set(LOGINS)
    assert set(_env_example()) <= used, set(_env_example()) - used
    assert set(SECRETS) | set(LOGINS) <= set(_env_example())
    # the secrets from .env; the Airflow services also read the shared settings (airflow.env) before it
    assert all(".env" in (s["env_file"] if isinstance(s["env_file"], list) else [s["env_file"]])
               for name, s in COMPOSE["services"].items() if name not in INFRA)
    airflow = COMPOSE["x-airflow"]["environment"]
    assert airflow["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "${AIRFLOW_ADMIN_USER}:admin"
    assert airflow["MLFLOW_TRACKING_PASSWORD"] == "${MLFLOW_ADMIN_PASSWORD}"


def test_the_airflow_admin_password_file_is_the_env_files_and_owner_only(tmp_path):
    from ml.deploy import airflow_passwords

    env = _filled(_env_example())
    path = airflow_passwords(tmp_path / "airflow" / "passwords.json", env)
    assert json.loads(path.read_text()) == {env["AIRFLOW_ADMIN_USER"]: env["AIRFLOW_ADMIN_PASSWORD"]}
    assert path.stat().st_mode & 0o077 == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body: dict, login: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


SHM = Path("/dev/shm")  # (where there is none, nothing is made there either)


def _makefile_server_warnings() -> str:
    return re.search(r"^MLFLOW_SERVER_WARNINGS := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def test_the_mlflow_server_says_no_third_party_deprecation_and_compose_filters_the_same(mlflow_server):
    """`make mlflow` printed Starlette's deprecation of the WSGI bridge MLflow's server imports, once per
    worker (4 lines before the first request): the Makefile's filter leaves it out, and compose's server runs
    with the same one."""
    *_, log = mlflow_server
    assert "DeprecationWarning" not in log.read_text() and "Warning:" not in log.read_text(), log.read_text()[-2000:]
    assert COMPOSE["services"]["mlflow"]["environment"]["PYTHONWARNINGS"] == _makefile_server_warnings()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """MLflow's basic-auth app as compose runs it: the configuration ml.deploy writes, bound to 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    env = _filled(_env_example())
    config = mlflow_auth_config(tmp / "basic_auth.ini", env, f"sqlite:///{tmp / 'basic_auth.db'}")
    assert env["MLFLOW_ADMIN_PASSWORD"] not in config.read_text()  # the password is read from the environment
    port = _free_port()
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # as the Makefile sets it
                  "PYTHONWARNINGS": _makefile_server_warnings(),  # as `make mlflow` and compose's mlflow set it
                  "MLFLOW_AUTH_CONFIG_PATH": str(config),
                  "MLFLOW_AUTH_ADMIN_PASSWORD": env["MLFLOW_ADMIN_PASSWORD"],
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": env["MLFLOW_SECRET_KEY"]}
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    shm_before = set(SHM.glob("tmp*"))
    with open(tmp / "server.log", "w") as server_log:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen([str(mlflow_bin), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1",
                                 "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                                 "--artifacts-destination", str(tmp / "artifacts")],
                                env=server_env, stdout=subprocess.DEVNULL, stderr=server_log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"the MLflow server exited: {(tmp / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("the MLflow server did not answer in 60 s")
        yield url, (env["MLFLOW_ADMIN_USER"], env["MLFLOW_ADMIN_PASSWORD"]), shm_before, tmp / "server.log"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_nobody_without_a_login_moves_the_champion_or_deletes_runs(mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    url, admin, *_ = mlflow_server
    api = f"{url}/api/2.0/mlflow"
    # the pipeline's login (the Airflow workers' MLFLOW_TRACKING_USERNAME/PASSWORD) registers and promotes
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    run = client.create_run(client.create_experiment("crowd"))
    client.create_registered_model("crowd")
    version = client.create_model_version("crowd", f"{run.info.artifact_uri}/model", run.info.run_id).version
    client.set_registered_model_alias("crowd", "champion", version)
    alias = {"name": "crowd", "alias": "champion", "version": str(version)}
    # anyone who reaches the port: nothing
    assert _call(f"{api}/registered-models/alias", alias) == 401
    assert _call(f"{api}/runs/delete", {"run_id": run.info.run_id}) == 401
    assert _call(f"{api}/registered-models/alias", alias, (admin[0], "a-guessed-password")) == 401
    # a user the admin adds reads (default_permission READ) but does not move the champion or delete runs
    assert _call(f"{api}/users/create", {"username": "marketer", "password": "m-password-123456"}, admin) == 200
    viewer = ("marketer", "m-password-123456")
    assert _call(f"{api}/registered-models/alias", alias, viewer) == 403
    assert _call(f"{api}/runs/delete", {"run_id": run.info.run_id}, viewer) == 403
    assert client.get_model_version_by_alias("crowd", "champion").version == version
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "active"


def test_the_mlflow_server_leaves_no_folder_in_dev_shm(mlflow_server):
    """With job execution on (MLflow's default), the server makes a folder for its job stores in /dev/shm at
    every start and never removes it: one more for each `make test` and `make mlflow`."""
    *_, shm_before, _ = mlflow_server
    assert [d for d in set(SHM.glob("tmp*")) - shm_before if d.is_dir()] == []


@pytest.mark.parametrize(("setting", "reports"), [(None, False), ("false", True)])
def test_the_package_turns_off_mlflows_usage_reports_unless_the_user_turns_them_on(tmp_path, setting, reports):
    """`crowd train` from a shell (no Makefile exporting MLFLOW_DISABLE_TELEMETRY) imported MLflow with its
    telemetry on: an installation id written under ~/.config/mlflow, usage events sent where the network
    reaches. Importing ml first turns it off; a user's own setting wins."""
    # as from a user's shell: MLflow also stays quiet under pytest and on CI machines (mlflow.telemetry.utils)
    quiet_anyway = {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD",
                    "CIRCLECI", "TRAVIS", "TEAMCITY_VERSION", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN"}
    env = {k: v for k, v in os.environ.items()
           if k not in {"MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", *quiet_anyway}}
    env["HOME"] = str(tmp_path)
    if setting is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = setting
    subprocess.run([sys.executable, "-c", "import ml.tracking, mlflow"], env=env, check=True, timeout=120)
    assert (tmp_path / ".config" / "mlflow" / "telemetry.json").exists() == reports
