"""A real ``mosquitto`` broker for tests and benchmarks.

Each broker gets a generated config file in its own directory, a free loopback port and
persistence on (``mosquitto.db`` in that directory), so a test can stop and restart it and
find the queued messages and sessions again. Usable without pytest (``bench/`` imports
:class:`MosquittoServer`); the ``mosquitto`` fixture below starts one per test.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import free_port, wait_until

STARTUP_DEADLINE_SECONDS = 10.0
STOP_DEADLINE_SECONDS = 10.0


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


# A throw-away CA and a certificate for 127.0.0.1 signed by it (EC P-256, valid from 2000 to 2125),
# embedded so the tests need no openssl command. Test material only: it protects nothing.
TEST_CA_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBgTCCASagAwIBAgIUL3ZK08rFG2H302v2DKhu0x2RctAwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSbmV4dXMtam9icyB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoY
DzIxMjUwMTAxMDAwMDAwWjAdMRswGQYDVQQDDBJuZXh1cy1qb2JzIHRlc3QgQ0Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARHM4ey+pYhoy90YcDkMZ8c/5tfwTuh
SwSkPg61KvRG2BGRgC0uIUCIn2GQBDp/PlMcqM60rY8YVKsHbcAiE8sqo0IwQDAP
BgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUppW49PDN
Ey1Q2GrdDXrkKdBHU2owCgYIKoZIzj0EAwIDSQAwRgIhAKBtfpXec1xWwgo7HIGC
ksnTY9PzkCDY2q20/3hdEOcbAiEA4CzJD7gIMWUwCOHQoqhTkrlCLMX5SaCrJIGv
lpv7rUI=
-----END CERTIFICATE-----
"""
TEST_SERVER_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBvDCCAWOgAwIBAgIUS8c0Trxze64G4HIYPph8Iki1cwQwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSbmV4dXMtam9icyB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoY
DzIxMjUwMTAxMDAwMDAwWjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjO
PQIBBggqhkjOPQMBBwNCAASEr+k1TVASqiO+Tinwd+u0xWm2p0kePhbPUi1nYsaI
bjnV4zI6+rZ8/ERrupdvcxsXtmbhBp/+s6Ov7y404SS/o4GHMIGEMA8GA1UdEQQI
MAaHBH8AAAEwDAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMCB4AwEwYDVR0lBAww
CgYIKwYBBQUHAwEwHQYDVR0OBBYEFPJrTTAXJ1W6dHoeMYfINS66F+RbMB8GA1Ud
IwQYMBaAFKaVuPTwzRMtUNhq3Q165CnQR1NqMAoGCCqGSM49BAMCA0cAMEQCIHBA
1jgMv/bDxKgqRsOi+ZUBs8fIey9Wc+AEPhuHAknjAiAOLHBRC4Mq3/DL/xjXzn1s
fMwvaWN1aUDh7pahenPlkg==
-----END CERTIFICATE-----
"""
TEST_SERVER_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKM2KKgZn7R5NBvh8
NhhzCQSBOelDUE1ZxL8B3x7VVmChRANCAASEr+k1TVASqiO+Tinwd+u0xWm2p0ke
PhbPUi1nYsaIbjnV4zI6+rZ8/ERrupdvcxsXtmbhBp/+s6Ov7y404SS/
-----END PRIVATE KEY-----
"""


def make_tls_files(directory: Path) -> TlsFiles:
    """Write the test CA, server certificate and key for a TLS listener on 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_file=directory / "ca.crt", cert_file=directory / "server.crt", key_file=directory / "server.key"
    )
    files.ca_file.write_text(TEST_CA_CERT, encoding="ascii")
    files.cert_file.write_text(TEST_SERVER_CERT, encoding="ascii")
    files.key_file.touch(mode=0o600)
    files.key_file.write_text(TEST_SERVER_KEY, encoding="ascii")
    return files


class MosquittoServer:
    """One broker process on ``127.0.0.1:<port>``; ``restart()`` keeps its persistence."""

    def __init__(
        self, directory: Path, *, users: Mapping[str, str] | None = None, tls_files: TlsFiles | None = None
    ) -> None:
        executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(executable).exists():
            raise RuntimeError("mosquitto is not installed (bin/bootstrap --test installs it)")
        self.executable = executable
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.log_path = directory / "mosquitto.log"
        self.config_path = directory / "mosquitto.conf"
        self.process: subprocess.Popen[bytes] | None = None
        self.tls_files = tls_files
        self._write_config(users or {})

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls_files else 'mqtt'}://{self.host}:{self.port}"

    def _write_config(self, users: Mapping[str, str]) -> None:
        lines = [f"listener {self.port} {self.host}"]
        if self.tls_files:
            tls = self.tls_files
            lines += [f"cafile {tls.ca_file}", f"certfile {tls.cert_file}", f"keyfile {tls.key_file}"]
        lines += [
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
    """Start brokers with options: ``users={name: password}`` turns anonymous access off;
    ``tls_files`` (see :func:`make_tls_files`) makes the listener TLS only."""
    servers: list[MosquittoServer] = []

    def start(*, users: Mapping[str, str] | None = None, tls_files: TlsFiles | None = None) -> MosquittoServer:
        server = MosquittoServer(tmp_path / f"mosquitto-{len(servers)}", users=users, tls_files=tls_files)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


class ResultListener:
    """A controller subscribed to every result topic, collecting results by job id."""

    def __init__(
        self, server: MosquittoServer, *, topic: str = "jobs/results/#", result_topic: str = "jobs/results/{id}"
    ) -> None:
        self.result_topic = result_topic
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(server.host, server.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "result listener not subscribed"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        document = json.loads(message.payload)
        assert message.topic == self.result_topic.replace("{id}", document["id"])
        with self.lock:
            self.results.setdefault(document["id"], []).append(document)

    def wait_for(self, job_id: str, *, count: int = 1, deadline_seconds: float = 10.0) -> dict[str, Any]:
        wait_until(
            lambda: len(self.results.get(job_id, [])) >= count,
            deadline_seconds=deadline_seconds,
            what=f"{count} result(s) of {job_id}",
        )
        return self.results[job_id][-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
