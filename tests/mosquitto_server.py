"""A real ``mosquitto`` broker for tests and benchmarks.

Each broker gets a generated config file in its own directory, a free loopback port and
persistence on (``mosquitto.db`` in that directory), so a test can stop and restart it and
find the queued messages and sessions again. Usable without pytest (``bench/`` imports
:class:`MosquittoServer`); the ``mosquitto`` fixture below starts one per test.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

STARTUP_DEADLINE_SECONDS = 10.0
STOP_DEADLINE_SECONDS = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MosquittoServer:
    """One broker process on ``127.0.0.1:<port>``; ``restart()`` keeps its persistence."""

    def __init__(self, directory: Path, *, users: Mapping[str, str] | None = None) -> None:
        executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(executable).exists():
            raise RuntimeError("mosquitto is not installed (bin/bootstrap --test installs it)")
        self.executable = executable
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.host = "127.0.0.1"
        self.log_path = directory / "mosquitto.log"
        self.config_path = directory / "mosquitto.conf"
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config(users or {})

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _write_config(self, users: Mapping[str, str]) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {self.directory}/",
            "persistence_file mosquitto.db",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            # Queued pointers of an offline worker must never be dropped in the tests.
            "max_queued_messages 0",
            # Started as root (CI containers), mosquitto would switch to the "mosquitto" user
            # and could not write its log and persistence file in our directory.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        ]
        if users:
            password_file = self.directory / "passwords"
            password_file.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(password_file), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self) -> MosquittoServer:
        assert self.process is None, "broker already running"
        self.process = subprocess.Popen(
            [self.executable, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto not listening after {STARTUP_DEADLINE_SECONDS}s: {self.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop gracefully: mosquitto writes its persistence file on SIGTERM."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> MosquittoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A fresh broker with persistence on, anonymous access, on a free loopback port."""
    with MosquittoServer(tmp_path / "mosquitto") as server:
        yield server


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[object]:
    """Start brokers with options (``users={name: password}`` turns anonymous access off)."""
    servers: list[MosquittoServer] = []

    def start(*, users: Mapping[str, str] | None = None) -> MosquittoServer:
        server = MosquittoServer(tmp_path / f"mosquitto-{len(servers)}", users=users)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
