"""Local HTTP doubles: the Nexus webhook API (``GET /webhook/pending``, ``DELETE
/webhook/items``) and the OpenClaw Gateway hooks endpoint (``POST /hooks/agent``), plus a
healthchecks-style ping receiver. Each runs a ThreadingHTTPServer on a free 127.0.0.1 port,
records every request, and can be scripted to fail.

Fixtures: ``nexus_webhooks`` (the Nexus double), ``gateway`` (the Gateway double),
``ping_server`` (records pings).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

API_KEY = "nexus-test-key-0123456789"
HOOKS_TOKEN = "hooks-test-token-9876543210"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Script:
    """Scripted answers: a queue of (status, body) per route key, used before normal answers."""

    queued: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    always: dict[str, tuple[int, bytes]] = field(default_factory=dict)

    def take(self, route: str) -> tuple[int, bytes] | None:
        if self.queued.get(route):
            return self.queued[route].pop(0)
        return self.always.get(route)


class _Double:
    """Shared plumbing: the server thread, the request log, scripted failures."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script = Script()
        self.lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()), body)
                with double.lock:
                    double.requests.append(request)
                    status, answer = double.answer(request)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, request: Request) -> tuple[int, bytes]:
        raise NotImplementedError

    def fail(self, route: str, status: int, body: bytes = b"{}", *, times: int | None = None) -> None:
        """Answer ``route`` (e.g. ``"GET /webhook/pending"``) with ``status``, ``times`` times or always."""
        if times is None:
            self.script.always[route] = (status, body)
        else:
            self.script.queued.setdefault(route, []).extend([(status, body)] * times)

    def heal(self) -> None:
        self.script = Script()

    def made(self, method: str, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class NexusWebhooksDouble(_Double):
    """Pending items per agent, served oldest first, removed by DELETE /webhook/items. Checks
    the API key (header ``x-functions-key`` or ``?code=``)."""

    def __init__(self, *, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.pending: dict[str, list[Any]] = {}
        self.acknowledged: list[str] = []
        super().__init__()

    def add(self, agent_id: str, *items: Any) -> None:
        with self.lock:
            self.pending.setdefault(agent_id, []).extend(items)

    def answer(self, request: Request) -> tuple[int, bytes]:
        scripted = self.script.take(f"{request.method} {request.path}")
        if scripted is not None:
            return scripted
        key = request.headers.get("x-functions-key") or (request.query.get("code") or [""])[0]
        if key != self.api_key:
            return 401, b'{"error": "Unauthorized"}'
        if request.method == "GET" and request.path == "/webhook/pending":
            agent_id = (request.query.get("agentId") or [""])[0]
            limit = int((request.query.get("limit") or ["0"])[0]) or None
            items = self.pending.get(agent_id, [])[:limit]
            return 200, json.dumps({agent_id: items} if items else {}).encode()
        if request.method == "DELETE" and request.path == "/webhook/items":
            ids = set(json.loads(request.body)["ids"])
            self.acknowledged.extend(sorted(ids))
            for agent_id, items in self.pending.items():
                self.pending[agent_id] = [i for i in items if not (isinstance(i, dict) and i.get("id") in ids)]
            return 200, json.dumps({"deleted": len(ids)}).encode()
        return 404, b'{"error": "Not found"}'


class GatewayDouble(_Double):
    """``POST /hooks/agent``: 202 for a good bearer token, 401 otherwise."""

    def __init__(self, *, token: str = HOOKS_TOKEN) -> None:
        self.token = token
        super().__init__()

    def answer(self, request: Request) -> tuple[int, bytes]:
        scripted = self.script.take(f"{request.method} {request.path}")
        if scripted is not None:
            return scripted
        if request.path != "/hooks/agent":
            return 404, b'{"error": "Not found"}'
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, b'{"error": "Unauthorized"}'
        return 202, b'{"ok": true}'

    def hooks(self) -> list[Request]:
        return [r for r in self.made("POST", "/hooks/agent") if r.headers.get("Authorization")]


class PingDouble(_Double):
    """Healthchecks-style: any request is a ping; the path says start / success / fail."""

    def answer(self, request: Request) -> tuple[int, bytes]:
        scripted = self.script.take(f"{request.method} {request.path}")
        return scripted if scripted is not None else (200, b"OK")


@pytest.fixture
def nexus_webhooks() -> Iterator[NexusWebhooksDouble]:
    double = NexusWebhooksDouble()
    yield double
    double.stop()


@pytest.fixture
def gateway() -> Iterator[GatewayDouble]:
    double = GatewayDouble()
    yield double
    double.stop()


@pytest.fixture
def ping_server() -> Iterator[PingDouble]:
    double = PingDouble()
    yield double
    double.stop()
