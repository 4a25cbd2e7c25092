"""Local HTTP doubles: the Nexus webhook API (``GET /webhook/pending``, ``DELETE
/webhook/items``) and the OpenClaw Gateway hooks endpoint (``POST /hooks/agent``), plus a
healthchecks-style ping receiver, on the one base of :mod:`tests.http_double`.

Fixtures: ``nexus_webhooks`` (the Nexus double), ``gateway`` (the Gateway double),
``ping_server`` (records pings).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.http_double import Answer, HttpDouble, Request

API_KEY = "nexus-test-key-0123456789"
HOOKS_TOKEN = "hooks-test-token-9876543210"


class NexusWebhooksDouble(HttpDouble):
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

    def answer(self, request: Request) -> Answer:
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


class GatewayDouble(HttpDouble):
    """``POST /hooks/agent``: 202 for a good bearer token, 401 otherwise."""

    def __init__(self, *, token: str = HOOKS_TOKEN) -> None:
        self.token = token
        super().__init__()

    def answer(self, request: Request) -> Answer:
        if request.path != "/hooks/agent":
            return 404, b'{"error": "Not found"}'
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, b'{"error": "Unauthorized"}'
        return 202, b'{"ok": true}'

    def hooks(self) -> list[Request]:
        return [r for r in self.made("POST", "/hooks/agent") if r.headers.get("Authorization")]


class PingDouble(HttpDouble):
    """Healthchecks-style: any request is a ping; the path says start / success / fail."""

    def answer(self, request: Request) -> Answer:
        return 200, b"OK"


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
