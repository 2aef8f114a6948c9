"""The deployment's configuration, checked by what can be checked without a Docker engine: docker-compose.yaml
is valid against the compose specification's JSON schema (after interpolation, as `docker compose config`
would see it), and the local Airflow and compose read one file of shared Airflow settings."""

from __future__ import annotations

import copy
import json
import re
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from ml.config import Paths
from ml.local_airflow import SHARED_SETTINGS, airflow_environment, shared_settings

ROOT = Path(__file__).resolve().parents[1]
_VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?-([^}]*))?\}")


def _compose_schema() -> dict:
    """compose/config/compose_spec.json of the docker-compose wheel `make setup` downloads (not installed)."""
    wheels = sorted((Path(sys.prefix) / "wheels").glob("docker_compose-*.whl"))
    assert wheels, "the compose specification's schema is missing: run `make setup` (it downloads the wheel)"
    with zipfile.ZipFile(wheels[-1]) as z:
        return json.loads(z.read("compose/config/compose_spec.json"))


def _env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.match(r"^([A-Z_]+)=(\S*)", line)
        if m:
            values[m.group(1)] = m.group(2)
    return values


def _interpolated(text: str, env: dict[str, str]) -> dict:
    """${VAR}, ${VAR:-default} and ${VAR-default} replaced as compose does, then parsed (anchors merged)."""
    def value(m: re.Match) -> str:
        return env.get(m.group(1)) or (m.group(2) if m.group(2) is not None else "")

    return yaml.safe_load(_VARIABLE.sub(value, text))


def _compose() -> dict:
    compose = _interpolated((ROOT / "docker-compose.yaml").read_text(), _env_example())
    # compose converts a number given as text (an interpolated variable) where the schema wants an integer
    for service in compose["services"].values():
        deploy = service.get("deploy") or {}
        if isinstance(deploy.get("replicas"), str):
            deploy["replicas"] = int(deploy["replicas"])
    return compose


def test_the_compose_file_is_valid_against_the_compose_specification_schema() -> None:
    schema = _compose_schema()
    validator = jsonschema.Draft201909Validator(schema)
    compose = _compose()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    # the schema is strict enough to catch what a typo makes: a misspelt key, a wrong depends_on condition
    misspelt = copy.deepcopy(compose)
    misspelt["services"]["airflow-scheduler"]["enviroment"] = {"A": "b"}
    assert not validator.is_valid(misspelt)
    condition = copy.deepcopy(compose)
    condition["services"]["airflow-scheduler"]["depends_on"]["postgres"]["condition"] = "service_ready"
    assert not validator.is_valid(condition)


def test_local_airflow_and_compose_share_one_file_of_airflow_settings(tmp_path: Path) -> None:
    shared = shared_settings()
    assert shared["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False" and "AIRFLOW__CORE__AUTH_MANAGER" in shared
    local = airflow_environment(Paths(tmp_path))
    assert {k: local[k] for k in shared} == shared
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    airflow_services = [s for name, s in compose["services"].items() if name.startswith("airflow-")]
    assert airflow_services and all(s["env_file"] == [SHARED_SETTINGS.name, ".env"] for s in airflow_services)
    # no service sets a shared setting again (an override there is the drift this file exists to prevent)
    for name, service in compose["services"].items():
        assert not set(service.get("environment") or {}) & set(shared), name
    # nor does the local runner's code
    code = (ROOT / "ml" / "local_airflow.py").read_text()
    assert not [k for k in shared if f'"{k}"' in code]


def test_a_malformed_shared_settings_file_is_refused_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "airflow.env"
    bad.write_text("# ok\nAIRFLOW__CORE__LOAD_EXAMPLES=False\nnot a setting\n")
    with pytest.raises(ValueError, match=r"airflow.env:3: expected KEY=VALUE"):
        shared_settings(bad)
