"""A local HTTP double of the Nexus sessions API (``POST /sessions``), with the real
server's answers (200, 409 with sha256, 400, 413, 401) and scriptable faults (5xx with
Retry-After, connection resets, slow answers). Fixture: ``nexus``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

LIMIT_BYTES = 10_485_760


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    status: int


@dataclass
class NexusDouble:
    api_key: str = "k3y-" + uuid.uuid4().hex
    send_sha256_in_409: bool = True
    # Consumed one per request: an HTTP status, ("status", retry_after), "reset", or ("sleep", seconds).
    faults: list[Any] = field(default_factory=list)
    delay_seconds: float = 0.0
    stored: dict[tuple[str, str], bytes] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def next_fault(self) -> Any:
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def posts(self) -> list[Received]:
        return [request for request in self.received if request.path.startswith("/sessions")]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        # The client may go away mid-request: a test killed it, or a scripted reset.
        with contextlib.suppress(ConnectionError):
            super().handle()

    def do_POST(self) -> None:
        double = self.server.double
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        fault = double.next_fault()
        if fault == "reset":
            # RST instead of FIN: the client sees "connection reset by peer".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if isinstance(fault, tuple) and fault[0] == "sleep":
            time.sleep(fault[1])
            fault = None
        if double.delay_seconds:
            time.sleep(double.delay_seconds)
        status, answer, headers = self._answer(raw, fault)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with double.lock:
            double.received.append(Received(self.path, dict(self.headers), body, status))
        encoded = json.dumps(answer).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)

    def _answer(self, raw: bytes, fault: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        double = self.server.double
        if isinstance(fault, int):
            return fault, {"error": f"scripted {fault}"}, {}
        if isinstance(fault, tuple) and fault[0] == "status":
            return fault[1], {"error": "scripted"}, {"Retry-After": str(fault[2])}
        query = parse_qs(urlsplit(self.path).query)
        key = self.headers.get("x-functions-key") or (query.get("code") or [""])[0]
        if key != double.api_key:
            return 401, {"error": "Unauthorized"}, {}
        if urlsplit(self.path).path != "/sessions":
            return 404, {"error": "Not found"}, {}
        try:
            body = json.loads(raw)
            agent_id, session_id, transcript = body["agentId"], body["sessionId"], body["transcript"]
            uuid.UUID(session_id)
            if not isinstance(transcript, str) or not isinstance(agent_id, str):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "Invalid request: agentId, sessionId (UUID) and transcript are required"}, {}
        content = transcript.encode("utf-8")
        if len(content) > LIMIT_BYTES:
            return 413, {"error": "Transcript too large"}, {}
        digest = hashlib.sha256(content).hexdigest()
        name = body.get("fileName") or f"{session_id}.jsonl"
        with double.lock:
            existing = double.stored.get((agent_id, name))
            if existing is None:
                double.stored[(agent_id, name)] = content
        if existing is not None:
            answer = {"error": "Session already exists", "sessionId": session_id}
            if double.send_sha256_in_409:
                answer["sha256"] = hashlib.sha256(existing).hexdigest()
            return 409, answer, {}
        path = f"sessions/{agent_id}/{name}"
        return 200, {"status": "ok", "sessionId": session_id, "path": path, "bytes": len(content), "stored": digest}, {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    double: NexusDouble


def start(double: NexusDouble) -> _Server:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.double = double
    double.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def nexus() -> Iterator[NexusDouble]:
    double = NexusDouble()
    server = start(double)
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()
