"""Shared test helpers: isolated environments, free loopback ports, readiness polls with a
deadline, and running the console scripts the way a user does (as processes).

Real services (Nexus double, Redis, Mosquitto) come from the fixture modules imported below.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# Fixture modules of the real services and backend doubles; each adds its module here.
pytest_plugins: list[str] = ["tests.nexus_double", "tests.nexus_webhooks_double"]
pytest_plugins += ["tests.redis_server", "tests.bsnexus_backend"]
pytest_plugins += ["tests.mosquitto_server"]

BIN_DIR = Path(sys.executable).parent
# Variables a developer's shell may carry that would leak into a test run.
# PYTHONDONTWRITEBYTECODE would make every command the tests start recompile the package.
_FOREIGN_PREFIXES = (
    "NEXUS_",
    "BSNEXUS_",
    "MQTT_",
    "OPENCLAW_",
    "WORKER_ID",
    "JOBS_ROOT",
    "STATE_DIRECTORY",
    "XDG_",
    "PYTHONDONTWRITEBYTECODE",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: process-level tests that run commands and services")
    config.addinivalue_line("markers", "inprocess: fast tests in the pytest process (bin/test --fast runs these)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], object], *, deadline_seconds: float = 10.0, what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_seconds}s waiting for {what}")
        time.sleep(0.02)


def script(name: str) -> str:
    """Path of an installed console script of this package."""
    path = BIN_DIR / name
    assert path.exists(), f"console script {name} is not installed in {BIN_DIR}"
    return str(path)


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    """An environment with a fresh HOME and none of the operator's nexus-jobs variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_FOREIGN_PREFIXES)}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def run_cli(
    name: str,
    *args: str,
    env: dict[str, str],
    cwd: Path | str | None = None,
    input_text: str | None = None,
    timeout_seconds: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run a console script as a user would and capture what it prints."""
    return subprocess.run(
        [script(name), *args],
        env=env,
        cwd=cwd or env.get("HOME"),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
        check=False,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], exit_code: int) -> None:
    """A failure is one or a few clear lines on stderr and the documented exit code."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip(), "a failure must say what went wrong"
