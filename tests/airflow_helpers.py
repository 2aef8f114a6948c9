"""Helpers of the tests that start a real Airflow (test_airflow_standalone, test_airflow_on_postgres)."""

from __future__ import annotations

import socket
import time
import urllib.error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, every: float = 1.0):
    """condition()'s first truthy value; a service not answering yet (or answering without the key) is a wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, KeyError, OSError):
            pass
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
