"""A local double of the BSNexus backend's worker API that behaves as the real one does
(blas1n/BSNexus at the direct-Redis commit; see docs/bsnexus.md): register, heartbeat,
deregister and the worker list, on the shared base :mod:`tests.http_double` (faults per route:
``fail``/``reset``/``stall``).

Liveness lives where the real backend keeps it, in the test's Redis: the hash ``worker:{id}``
(TTL ``worker_ttl_seconds``, 90 s for real, renewed by heartbeats) and ``worker:token:{token}``
(TTL ``token_ttl_seconds``, 24 h for real, never renewed). The PostgreSQL ``workers`` table is
a dict (:attr:`BackendDouble.rows`); :meth:`BackendDouble.lose_database` empties it as a
database reset does. The exact ``detail`` strings, the check order (401 before 422 before 403
before 404), DELETE without auth answering 200, and the 429 of the per-client rate limit are
the real ones. Fixture: ``bsnexus_backend`` (needs ``redis_server``).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.http_double import Answer, HttpDouble, Request, json_answer

REGISTRATION_TOKEN = "glrt-" + "r3g1str4t10n" + uuid.uuid4().hex[:12]
REGISTER = "POST /api/v1/workers/register"
WORKERS = "/api/v1/workers"
RATE_PER_SECOND = 30.0
RATE_BURST = 60.0


def heartbeat_route(worker_id: str) -> str:
    return f"POST {WORKERS}/{worker_id}/heartbeat"


def deregister_route(worker_id: str) -> str:
    return f"DELETE {WORKERS}/{worker_id}"


@dataclass
class TokenRow:
    """A row of ``registration_tokens``."""

    revoked: bool = False
    expired: bool = False


def _missing(field: str, body: Any) -> dict[str, Any]:
    return {"type": "missing", "loc": ["body", field], "msg": "Field required", "input": body}


def _uuid_error(value: str) -> dict[str, Any]:
    return {
        "type": "uuid_parsing",
        "loc": ["path", "worker_id"],
        "msg": "Input should be a valid UUID, invalid character: expected an optional prefix of `urn:uuid:` "
        "followed by [0-9a-fA-F-], found `n` at 1",
        "input": value,
    }


def _canonical(worker_id: str) -> str | None:
    try:
        return str(uuid.UUID(worker_id))
    except ValueError:
        return None


class BackendDouble(HttpDouble):
    def __init__(self, redis_client: Any) -> None:
        super().__init__()
        self.redis = redis_client
        self.registration_tokens: dict[str, TokenRow] = {REGISTRATION_TOKEN: TokenRow()}
        self.rows: dict[str, dict[str, Any]] = {}  # the PostgreSQL workers table
        self.worker_ttl_seconds = 90.0
        self.token_ttl_seconds = 86400.0
        self.rate_limited = True
        self.rate_per_second = RATE_PER_SECOND  # per client IP, as the real one; tests may slow it
        self.bucket = RATE_BURST
        self.bucket_at = time.monotonic()

    # --- what tests look at and change ---------------------------------------------------

    def token_of(self, worker_id: str) -> str:
        return str(self.redis.hget(f"worker:{worker_id}", "token") or "")

    def alive(self, worker_id: str) -> bool:
        return bool(self.redis.exists(f"worker:{worker_id}"))

    def heartbeats(self, worker_id: str) -> int:
        """Heartbeats of ``worker_id`` the backend accepted."""
        with self.lock:
            return sum(1 for r in self.requests if r.path == f"{WORKERS}/{worker_id}/heartbeat" and r.status == 200)

    def requests_to(self, route: str) -> list[Request]:
        """Requests whose ``METHOD path`` starts with ``route`` (``"DELETE /api/v1/workers/"``)."""
        with self.lock:
            return [r for r in self.requests if f"{r.method} {r.path}".startswith(route)]

    def forget(self, worker_id: str) -> None:
        """As 90 s without a heartbeat do: the hash expires, the token key stays."""
        self.redis.delete(f"worker:{worker_id}")

    def expire_token(self, worker_id: str) -> None:
        """As 24 h do: the token key expires, the hash stays."""
        self.redis.delete(f"worker:token:{self.token_of(worker_id)}")

    def lose_database(self) -> None:
        """A PostgreSQL reset: re-registering a saved id now answers 404."""
        with self.lock:
            self.rows.clear()

    # --- the routes -----------------------------------------------------------------------

    def answer(self, request: Request) -> Answer:
        if self.rate_limited and not self._take_token():
            return json_answer(429, {"detail": "Too many requests. Please retry later."}, {"Retry-After": "1"})
        parts = request.path.split("/")
        if request.method == "POST" and request.path == f"{WORKERS}/register":
            return self._register(request.body)
        if request.method == "GET" and request.path == WORKERS:
            return self._list()
        under_workers = request.path.startswith(WORKERS + "/")
        if under_workers and len(parts) == 6 and request.method == "POST" and parts[5] == "heartbeat":
            return self._heartbeat(parts[4], request.headers)
        if under_workers and len(parts) == 5 and request.method == "DELETE":
            return self._deregister(parts[4])
        return json_answer(404, {"detail": "Not Found"})

    def _take_token(self) -> bool:
        now = time.monotonic()
        self.bucket = min(RATE_BURST, self.bucket + (now - self.bucket_at) * self.rate_per_second)
        self.bucket_at = now
        if self.bucket < 1:
            return False
        self.bucket -= 1
        return True

    def _register(self, raw: bytes) -> Answer:
        if not raw:
            return json_answer(
                422, {"detail": [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]}
            )
        try:
            body = json.loads(raw)
        except ValueError:
            error = {"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error", "input": {}}
            return json_answer(422, {"detail": [error]})
        problems = self._invalid(body)
        if problems:
            return json_answer(422, {"detail": problems})
        row = self.registration_tokens.get(body["registration_token"])
        if row is None:
            return json_answer(401, {"detail": "Invalid registration token"})
        if row.revoked:
            return json_answer(401, {"detail": "Registration token has been revoked"})
        if row.expired:
            return json_answer(401, {"detail": "Registration token has expired"})
        worker_id = body.get("worker_id")
        if worker_id:
            if _canonical(worker_id) is None:  # uuid.UUID() raises and nothing handles it
                return 500, b"Internal Server Error", {"Content-Type": "text/plain"}
            if worker_id not in self.rows:
                return json_answer(404, {"detail": "Worker not found for re-registration"})
            self._deregister_keys(worker_id)
        else:
            worker_id = str(uuid.uuid4())
        name = body.get("name") or f"worker-{worker_id[:8]}"
        token = uuid.uuid4().hex + uuid.uuid4().hex
        capabilities = list(body["capabilities"]) if body.get("capabilities") else []
        mapping = {
            "id": worker_id,
            "name": name,
            "platform": body["platform"],
            "capabilities": json.dumps(capabilities),
            "executor_type": body.get("executor_type", "claude-code"),
            "status": "idle",
            "current_task_id": "",
            "token": token,
        }
        self.redis.hset(f"worker:{worker_id}", mapping=mapping)
        self.redis.pexpire(f"worker:{worker_id}", self._ms(self.worker_ttl_seconds))
        self.redis.set(f"worker:token:{token}", worker_id, px=self._ms(self.token_ttl_seconds))
        self.rows[worker_id] = {"id": worker_id, "name": name, "platform": body["platform"], "heartbeats": 0}
        return json_answer(
            200,
            {
                "worker_id": worker_id,
                "token": token,
                "heartbeat_interval": 30,
                "streams": {"tasks_queue": "tasks:queue", "tasks_results": "tasks:results", "tasks_qa": "tasks:qa"},
                "consumer_groups": {"workers": "workers", "reviewers": "reviewers"},
            },
        )

    @staticmethod
    def _invalid(body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, dict):
            return [
                {
                    "type": "model_attributes_type",
                    "loc": ["body"],
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                    "input": body,
                }
            ]
        problems = [_missing(field, body) for field in ("platform", "registration_token") if field not in body]
        for field in ("name", "platform", "executor_type", "registration_token", "worker_id", "worker_token"):
            value = body.get(field)
            if (
                field in body
                and not isinstance(value, str)
                and not (value is None and field in ("name", "worker_id", "worker_token"))
            ):
                problems.append(
                    {
                        "type": "string_type",
                        "loc": ["body", field],
                        "msg": "Input should be a valid string",
                        "input": value,
                    }
                )
        capabilities = body.get("capabilities")
        if capabilities is not None and not isinstance(capabilities, dict):
            problems.append(
                {
                    "type": "dict_type",
                    "loc": ["body", "capabilities"],
                    "msg": "Input should be a valid dictionary",
                    "input": capabilities,
                }
            )
        return problems

    def _heartbeat(self, path_id: str, headers: dict[str, str]) -> Answer:
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return json_answer(401, {"detail": "Missing or invalid token"})
        owner = self.redis.get(f"worker:token:{auth.split(' ', 1)[1]}")
        if not owner:
            return json_answer(401, {"detail": "Invalid token"})
        worker_id = _canonical(path_id)
        if worker_id is None:
            return json_answer(422, {"detail": [_uuid_error(path_id)]})
        if worker_id != owner:
            return json_answer(403, {"detail": "Token does not match worker"})
        key = f"worker:{worker_id}"
        if not self.redis.exists(key):
            return json_answer(404, {"detail": "Worker not found or expired"})
        self.redis.pexpire(key, self._ms(self.worker_ttl_seconds))
        if self.redis.set(f"worker:db_heartbeat:{worker_id}", "1", nx=True, ex=60) and worker_id in self.rows:
            self.rows[worker_id]["heartbeats"] += 1
        return json_answer(200, {"status": self.redis.hget(key, "status") or "idle", "pending_tasks": 0})

    def _deregister(self, path_id: str) -> Answer:
        worker_id = _canonical(path_id)
        if worker_id is None:
            return json_answer(422, {"detail": [_uuid_error(path_id)]})
        self._deregister_keys(worker_id)
        return json_answer(200, {"detail": "Worker deregistered", "worker_id": worker_id})

    def _deregister_keys(self, worker_id: str) -> None:
        # As the real registry: the old token is found through the hash; once the hash has
        # expired, the old token stays valid until its own TTL.
        token = self.redis.hget(f"worker:{worker_id}", "token")
        self.redis.delete(f"worker:{worker_id}")
        if token:
            self.redis.delete(f"worker:token:{token}")

    def _list(self) -> Answer:
        listed = []
        for worker_id, row in self.rows.items():
            status = self.redis.hget(f"worker:{worker_id}", "status")
            listed.append({"id": worker_id, "name": row["name"], "status": status or "offline"})
        return json_answer(200, listed)

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, math.ceil(seconds * 1000))


@pytest.fixture
def bsnexus_backend(redis_server: Any) -> Iterator[BackendDouble]:
    backend = BackendDouble(redis_server.client())
    try:
        yield backend
    finally:
        backend.stop()


# --- Driving bsnexus-worker as an operator does -------------------------------------------

FAKE_CLAUDE = """#!{python}
# A stand-in for the Claude Code CLI: logs how it was called, then acts on markers in the prompt.
import json, os, pathlib, signal, sys, time

prompt = sys.stdin.read()
entry = {{"argv": sys.argv, "cwd": os.getcwd(), "prompt": prompt, "env": dict(os.environ), "pid": os.getpid()}}
with open(os.environ["FAKE_CLAUDE_LOG"], "a") as handle:
    handle.write(json.dumps(entry) + "\\n")
if "@spawn" in prompt:
    import subprocess
    grandchild = subprocess.Popen(["sleep", "60"])
    pathlib.Path(os.environ["FAKE_CLAUDE_LOG"] + ".grandchild").write_text(str(grandchild.pid))
if "@ignore-term" in prompt:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "@sleep-first" in prompt:
    marker = pathlib.Path(os.environ["FAKE_CLAUDE_LOG"] + ".slept")
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(60)
for word in prompt.split():
    if word.startswith("@sleep="):
        time.sleep(float(word.split("=", 1)[1]))
if "@fail" in prompt:
    print("something broke", file=sys.stderr)
    sys.exit(3)
if "Start with PASS or FAIL" in prompt:
    print("FAIL\\nthe tests do not pass" if "@reject" in prompt else "**PASS**\\nlooks right")
    sys.exit(0)
pathlib.Path("work-%d.txt" % os.getpid()).write_text(prompt)
print("implemented it")
"""

# Short intervals so faults play out in about a second.
FAST_SETTINGS = {
    "BSNEXUS_HEARTBEAT_INTERVAL": "0.2",
    "BSNEXUS_VISIBILITY_TIMEOUT_SECONDS": "1",
    "BSNEXUS_POLL_SECONDS": "0.1",
    "BSNEXUS_HTTP_RETRIES": "0",
    "BSNEXUS_HTTP_TIMEOUT_SECONDS": "5",
    "BSNEXUS_RECONNECT_MAX_SECONDS": "0.5",
    "BSNEXUS_GRACE_SECONDS": "10",
}


@dataclass
class WorkerSetup:
    env: dict[str, str]
    env_file: Any  # Path
    state_dir: Any  # Path
    claude_log: Any  # Path

    def cli(self, *args: str, timeout_seconds: float = 60.0, **extra_env: str) -> Any:
        from tests.conftest import run_cli

        return run_cli(
            "bsnexus-worker",
            args[0],
            "--env-file",
            str(self.env_file),
            *args[1:],
            env={**self.env, **extra_env},
            timeout_seconds=timeout_seconds,
        )

    def register(self, url: str, redis_url: str, *extra: str, **extra_env: Any) -> Any:
        result = self.cli(
            "register", "--url", url, "--token", REGISTRATION_TOKEN, "--redis-url", redis_url, *extra, **extra_env
        )
        assert result.returncode == 0, result.stderr
        return result

    def start(self, *args: str, **extra_env: str) -> Any:
        """``run`` as a background process (stderr to a file, read with ``stderr_of``)."""
        import subprocess

        from tests.conftest import script

        log_path = self.state_dir.parent / f"worker-{len(list(self.state_dir.parent.glob('worker-*.log')))}.log"
        handle = open(log_path, "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [script("bsnexus-worker"), "run", "--env-file", str(self.env_file), *args],
            env={**self.env, **extra_env},
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
        )
        process.log_path = log_path  # type: ignore[attr-defined]
        process.log_handle = handle  # type: ignore[attr-defined]
        return process

    def claude_calls(self) -> list[dict[str, Any]]:
        if not self.claude_log.exists():
            return []
        return [json.loads(line) for line in self.claude_log.read_text().splitlines() if line.strip()]

    def saved(self) -> dict[str, str]:
        from dotenv import dotenv_values

        return {key: value or "" for key, value in dotenv_values(self.env_file).items()}


def finish(process: Any, timeout_seconds: float = 30.0) -> tuple[int, str, str]:
    stdout, _ = process.communicate(timeout=timeout_seconds)
    process.log_handle.close()
    return process.returncode, stdout, process.log_path.read_text()


def stderr_of(process: Any) -> str:
    return str(process.log_path.read_text())


@pytest.fixture
def worker_setup(tmp_path: Any, clean_env: dict[str, str]) -> WorkerSetup:
    import os
    import sys

    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    claude = bin_dir / "claude"
    claude.write_text(FAKE_CLAUDE.format(python=sys.executable))
    claude.chmod(0o755)
    claude_log = tmp_path / "claude-calls.jsonl"
    state_dir = tmp_path / "state"
    env = {
        **clean_env,
        **FAST_SETTINGS,
        "PATH": f"{bin_dir}{os.pathsep}{clean_env.get('PATH', '')}",
        "NEXUS_STATE_DIR": str(state_dir),
        "FAKE_CLAUDE_LOG": str(claude_log),
    }
    return WorkerSetup(env=env, env_file=tmp_path / "worker.env", state_dir=state_dir, claude_log=claude_log)


def add_task(client: Any, *, stream: str = "tasks:queue", **fields: str) -> str:
    return str(client.xadd(stream, fields))


def prompt_json(text: str) -> str:
    return json.dumps({"prompt": text})


def results(client: Any, stream: str = "tasks:results") -> list[dict[str, str]]:
    return [fields for _id, fields in client.xrange(stream)]
