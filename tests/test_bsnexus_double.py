"""The BSNexus backend double answers as the real backend does (docs/bsnexus.md): these
in-process checks pin the behaviour the worker's tests rely on, against a real Redis."""

from __future__ import annotations

import re
import uuid
from typing import Any

import requests

from tests.bsnexus_backend import REGISTRATION_TOKEN, WORKERS, BackendDouble


def _register(backend: BackendDouble, **extra: Any) -> requests.Response:
    body = {"platform": "linux", "registration_token": REGISTRATION_TOKEN, **extra}
    return requests.post(f"{backend.url}{WORKERS}/register", json=body, timeout=5)


def _beat(backend: BackendDouble, worker_id: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(f"{backend.url}{WORKERS}/{worker_id}/heartbeat", headers=headers, timeout=5)


def test_register_answers_and_what_it_writes_to_redis(bsnexus_backend: BackendDouble) -> None:
    answer = _register(bsnexus_backend)
    assert answer.status_code == 200
    body = answer.json()
    assert str(uuid.UUID(body["worker_id"])) == body["worker_id"] and re.fullmatch("[0-9a-f]{64}", body["token"])
    assert body["heartbeat_interval"] == 30 and isinstance(body["heartbeat_interval"], int)
    assert body["streams"]["tasks_queue"] == "tasks:queue" and body["consumer_groups"]["reviewers"] == "reviewers"
    redis = bsnexus_backend.redis
    stored = redis.hgetall(f"worker:{body['worker_id']}")
    assert stored["status"] == "idle" and stored["token"] == body["token"] and stored["name"].startswith("worker-")
    assert 0 < redis.ttl(f"worker:{body['worker_id']}") <= 90
    assert 86000 < redis.ttl(f"worker:token:{body['token']}") <= 86400

    def details(response: requests.Response) -> list[tuple[str, ...]]:
        return [(item["type"], *map(str, item["loc"])) for item in response.json()["detail"]]

    url = f"{bsnexus_backend.url}{WORKERS}/register"
    assert details(requests.post(url, timeout=5)) == [("missing", "body")]
    assert details(requests.post(url, data=b"{", timeout=5)) == [("json_invalid", "body", "0")]
    assert details(requests.post(url, json={}, timeout=5)) == [
        ("missing", "body", "platform"),
        ("missing", "body", "registration_token"),
    ]
    assert details(_register(bsnexus_backend, capabilities=["native"])) == [("dict_type", "body", "capabilities")]
    wrong = requests.post(url, json={"platform": "linux", "registration_token": "glrt-nope"}, timeout=5)
    assert (wrong.status_code, wrong.json()) == (401, {"detail": "Invalid registration token"})
    assert _register(bsnexus_backend, worker_id="not-a-uuid").status_code == 500
    unknown = _register(bsnexus_backend, worker_id=str(uuid.uuid4()))
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Worker not found for re-registration"})


def test_heartbeat_checks_in_the_real_order(bsnexus_backend: BackendDouble) -> None:
    first, second = _register(bsnexus_backend).json(), _register(bsnexus_backend).json()
    worker_id, token = first["worker_id"], first["token"]

    def answer(response: requests.Response) -> tuple[int, Any]:
        return response.status_code, response.json()

    assert answer(_beat(bsnexus_backend, worker_id, None)) == (401, {"detail": "Missing or invalid token"})
    assert answer(_beat(bsnexus_backend, "not-a-uuid", "bogus")) == (401, {"detail": "Invalid token"})
    assert _beat(bsnexus_backend, "not-a-uuid", token).status_code == 422
    forbidden = _beat(bsnexus_backend, second["worker_id"], token)
    assert answer(forbidden) == (403, {"detail": "Token does not match worker"})
    assert answer(_beat(bsnexus_backend, worker_id, token)) == (200, {"status": "idle", "pending_tasks": 0})
    bsnexus_backend.forget(worker_id)
    assert answer(_beat(bsnexus_backend, worker_id, token)) == (404, {"detail": "Worker not found or expired"})

    # Re-registering after the hash expired leaves the old token valid (the real registry finds
    # the old token through the hash); the id stays the same.
    again = _register(bsnexus_backend, worker_id=worker_id).json()
    assert again["worker_id"] == worker_id and again["token"] != token
    assert _beat(bsnexus_backend, worker_id, token).status_code == 200
    bsnexus_backend.expire_token(worker_id)
    assert answer(_beat(bsnexus_backend, worker_id, again["token"])) == (401, {"detail": "Invalid token"})


def test_delete_needs_no_auth_and_always_answers_200(bsnexus_backend: BackendDouble) -> None:
    registered = _register(bsnexus_backend).json()
    worker_id = registered["worker_id"]
    for target in (worker_id, worker_id, str(uuid.uuid4())):
        deleted = requests.delete(f"{bsnexus_backend.url}{WORKERS}/{target}", timeout=5)
        assert (deleted.status_code, deleted.json()) == (200, {"detail": "Worker deregistered", "worker_id": target})
    assert requests.delete(f"{bsnexus_backend.url}{WORKERS}/not-a-uuid", timeout=5).status_code == 422
    assert _beat(bsnexus_backend, worker_id, registered["token"]).json() == {"detail": "Invalid token"}
    listed = requests.get(f"{bsnexus_backend.url}{WORKERS}", timeout=5).json()
    assert [(row["id"], row["status"]) for row in listed] == [(worker_id, "offline")]
    assert _register(bsnexus_backend, worker_id=worker_id).json()["worker_id"] == worker_id


def test_the_rate_limit_answers_429_with_retry_after(bsnexus_backend: BackendDouble) -> None:
    bsnexus_backend.rate_per_second = 1e-6  # the burst of 60, then nothing refills during the test
    with requests.Session() as session:
        answers = [session.get(f"{bsnexus_backend.url}{WORKERS}", timeout=5) for _ in range(70)]
    assert [answer.status_code for answer in answers] == [200] * 60 + [429] * 10
    limited = answers[-1]
    assert limited.json() == {"detail": "Too many requests. Please retry later."}
    assert int(limited.headers["Retry-After"]) >= 1
