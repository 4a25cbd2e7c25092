"""A local HTTP double of the Nexus sessions API (``POST /sessions``), with the real
server's answers (200, 409 with or without sha256, 400, 413, 401) and the faults of
:mod:`tests.http_double` (5xx with Retry-After, connection resets, slow answers).

By default it keeps transcripts by ``fileName`` (what ``docs/nexus.md`` asks of a server that
keeps segments); ``keeps_one_per_session`` makes it the original server, which keeps one
transcript per session id and answers 409 to the next. Fixture: ``nexus``."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.http_double import Answer, HttpDouble, Request, json_answer

LIMIT_BYTES = 10_485_760
ROUTE = "POST /sessions"


@dataclass
class Received:
    """A POST as the tests read it: its body parsed."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: dict[str, Any] | None
    status: int


class NexusDouble(HttpDouble):
    def __init__(self) -> None:
        self.api_key = "k3y-" + uuid.uuid4().hex
        self.send_sha256_in_409 = True
        self.keeps_one_per_session = False
        self.stored: dict[tuple[str, str], bytes] = {}
        super().__init__()

    def posts(self) -> list[Received]:
        with self.lock:
            return [
                Received(request.path, request.query, request.headers, _parsed(request.body), request.status)
                for request in self.requests
                if request.path.startswith("/sessions")
            ]

    def answer(self, request: Request) -> Answer:
        key = request.headers.get("x-functions-key") or (request.query.get("code") or [""])[0]
        if key != self.api_key:
            return json_answer(401, {"error": "Unauthorized"})
        if request.path != "/sessions":
            return json_answer(404, {"error": "Not found"})
        if request.method == "HEAD":
            return json_answer(405, {"error": "Method not allowed"})
        try:
            body = json.loads(request.body)
            agent_id, session_id, transcript = body["agentId"], body["sessionId"], body["transcript"]
            uuid.UUID(session_id)
            if not isinstance(transcript, str) or not isinstance(agent_id, str):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return json_answer(400, {"error": "Invalid request: agentId, sessionId (UUID) and transcript are required"})
        content = transcript.encode("utf-8")
        if len(content) > LIMIT_BYTES:
            return json_answer(413, {"error": "Transcript too large"})
        digest = hashlib.sha256(content).hexdigest()
        name = session_id if self.keeps_one_per_session else body.get("fileName") or f"{session_id}.jsonl"
        existing = self.stored.get((agent_id, name))
        if existing is not None:
            answer = {"error": "Session already exists", "sessionId": session_id}
            if self.send_sha256_in_409:
                answer["sha256"] = hashlib.sha256(existing).hexdigest()
            return json_answer(409, answer)
        self.stored[(agent_id, name)] = content
        path = f"sessions/{agent_id}/{name}"
        return json_answer(
            200, {"status": "ok", "sessionId": session_id, "path": path, "bytes": len(content), "stored": digest}
        )


def _parsed(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


@pytest.fixture
def nexus() -> Iterator[NexusDouble]:
    double = NexusDouble()
    try:
        yield double
    finally:
        double.stop()
