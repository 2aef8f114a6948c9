"""What the multi-service deployment (docker-compose.yaml) runs before its services start: the secrets
checked, and the UIs' logins written from .env.

Every service that opens a port runs `python -m ml.deploy check` first, so a deployment whose .env still holds
the CHANGE-ME placeholders of .env.example fails at startup, naming them, instead of running with passwords
anyone can read in the repository. The MLflow server runs MLflow's basic-auth app: the alias `champion` decides
the crowds, so nobody without a login moves it (or deletes runs); users other than the admin get
`default_permission` (READ). Airflow's simple auth manager takes its admin login from the same .env.

    python -m ml.deploy check
    python -m ml.deploy airflow-passwords /data/airflow/simple_auth_passwords.json
    python -m ml.deploy mlflow-auth-config /tmp/basic_auth.ini
"""

from __future__ import annotations

import argparse
import configparser
import io
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

PLACEHOLDER = "CHANGE-ME"
SECRETS = ("POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD",
           "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY")
LOGINS = ("AIRFLOW_ADMIN_USER", "MLFLOW_ADMIN_USER")
MIN_SECRET_LENGTH = 12
# the API's secret signs its tokens with HS512: a key under 64 bytes is below RFC 7518's minimum (PyJWT warns in
# every component's log)
MIN_LENGTH = {"AIRFLOW_API_SECRET_KEY": 64}


def check_secrets(env: Mapping[str, str]) -> None:
    """Fail, naming every offender, when a secret is unset, still the placeholder, or too short to be one."""
    bad = [f"{name} is {'unset' if not env.get(name) else 'still ' + PLACEHOLDER}" for name in SECRETS
           if not env.get(name) or PLACEHOLDER in env[name]]
    bad += [f"{name} is shorter than {MIN_LENGTH.get(name, MIN_SECRET_LENGTH)} characters" for name in SECRETS
            if env.get(name) and PLACEHOLDER not in env[name]
            and len(env[name]) < MIN_LENGTH.get(name, MIN_SECRET_LENGTH)]
    bad += [f"{name} is unset" for name in LOGINS if not env.get(name)]
    if bad:
        raise ValueError(f"refusing to start: {'; '.join(bad)} (set them in .env, see .env.example)")


def airflow_passwords(path: Path, env: Mapping[str, str]) -> Path:
    """The simple auth manager's password file: the admin of .env (written owner-only, replaced atomically)."""
    return _write_private(Path(path), json.dumps({env["AIRFLOW_ADMIN_USER"]: env["AIRFLOW_ADMIN_PASSWORD"]}))


def mlflow_auth_config(path: Path, env: Mapping[str, str], database_uri: str) -> Path:
    """MLflow's basic-auth configuration. The admin's password is not in it: the server reads it from
    MLFLOW_AUTH_ADMIN_PASSWORD when it first creates the admin user."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "READ",  # a user the admin adds may look, not move the champion
        "database_uri": database_uri,
        "admin_username": env["MLFLOW_ADMIN_USER"],
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    text = io.StringIO()
    config.write(text)
    return _write_private(Path(path), text.getvalue())


def _write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(partial, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.deploy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="fail when a secret of .env is unset or still CHANGE-ME")
    p = sub.add_parser("airflow-passwords", help="write the Airflow admin's password file")
    p.add_argument("path", type=Path)
    p = sub.add_parser("mlflow-auth-config", help="write MLflow's basic-auth configuration")
    p.add_argument("path", type=Path)
    p.add_argument("--database-uri", default="sqlite:////data/mlflow/basic_auth.db",
                   help="where MLflow keeps its users (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        check_secrets(os.environ)
        if args.command == "airflow-passwords":
            print(f"Airflow admin {os.environ['AIRFLOW_ADMIN_USER']}: {airflow_passwords(args.path, os.environ)}")
        elif args.command == "mlflow-auth-config":
            print(f"MLflow basic auth: {mlflow_auth_config(args.path, os.environ, args.database_uri)}")
    except (ValueError, OSError) as e:
        print(f"ml.deploy: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
