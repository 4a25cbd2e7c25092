"""A local HTTP double of the BSNexus backend's worker API: register, heartbeat and
deregister, with the real answers (200; 401 for a bad registration token or worker token;
404 for an unknown worker; 422; 429 with Retry-After) and scriptable faults.
Fixture: ``bsnexus_backend``. ``restart()``-style use: build one with a fixed ``port``.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

REGISTRATION_TOKEN = "glrt-" + "r3g1str4t10n" + uuid.uuid4().hex[:12]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int


@dataclass
class Worker:
    worker_id: str
    token: str
    name: str
    heartbeats: int = 0


@dataclass
class BackendState:
    registration_tokens: set[str] = field(default_factory=lambda: {REGISTRATION_TOKEN})
    workers: dict[str, Worker] = field(default_factory=dict)
    # Scripted answers per route ("register", "heartbeat", "deregister"), consumed one per
    # request: (status, body) or (status, body, headers).
    faults: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    received: list[Request] = field(default_factory=list)
    heartbeat_interval: float = 30.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, route: str, *answers: tuple[Any, ...]) -> None:
        with self.lock:
            self.faults.setdefault(route, []).extend(answers)

    def requests_to(self, route: str) -> list[Request]:
        with self.lock:
            return [request for request in self.received if _route(request.method, request.path)[0] == route]

    def heartbeats(self, worker_id: str) -> int:
        with self.lock:
            worker = self.workers.get(worker_id)
            return worker.heartbeats if worker else 0


def _route(method: str, path: str) -> tuple[str, str]:
    parts = path.rstrip("/").split("/")
    if method == "POST" and path == "/api/v1/workers/register":
        return "register", ""
    if method == "POST" and len(parts) == 6 and parts[:4] == ["", "api", "v1", "workers"] and parts[5] == "heartbeat":
        return "heartbeat", parts[4]
    if method == "DELETE" and len(parts) == 5 and parts[:4] == ["", "api", "v1", "workers"]:
        return "deregister", parts[4]
    return "unknown", ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BackendServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        backend = self.server.backend
        route, worker_id = _route(self.command, self.path)
        with backend.lock:
            scripted = backend.faults.get(route, [])
            answer = scripted.pop(0) if scripted else None
            if answer is None:
                answer = self._answer(route, worker_id, body)
            backend.received.append(Request(self.command, self.path, dict(self.headers), body, answer[0]))
        status, payload = answer[0], answer[1]
        headers = answer[2] if len(answer) > 2 else {}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, route: str, worker_id: str, body: Any) -> tuple[Any, ...]:
        backend = self.server.backend
        if route == "register":
            return self._register(body)
        if route == "unknown":
            return 404, {"detail": "Not Found"}
        worker = backend.workers.get(worker_id)
        if worker is None:
            return 404, {"detail": "Worker not found"}
        if self.headers.get("Authorization") != f"Bearer {worker.token}":
            return 401, {"detail": "Invalid worker token"}
        if route == "heartbeat":
            worker.heartbeats += 1
            return 200, {"status": "ok"}
        del backend.workers[worker_id]
        return 200, {"status": "deleted"}

    def _register(self, body: Any) -> tuple[Any, ...]:
        backend = self.server.backend
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or "executor_type" not in body:
            return 422, {"detail": [{"loc": ["body", "name"], "msg": "field required", "type": "missing"}]}
        if body.get("registration_token") not in backend.registration_tokens:
            return 401, {"detail": "Invalid or expired registration token"}
        known = body.get("worker_id")
        if known:
            worker = backend.workers.get(known)
            if worker is None:
                return 404, {"detail": "Worker not found"}
            worker.token = "wtok-" + uuid.uuid4().hex
        else:
            worker = Worker("w-" + uuid.uuid4().hex[:12], "wtok-" + uuid.uuid4().hex, body["name"])
            backend.workers[worker.worker_id] = worker
        return 200, {
            "worker_id": worker.worker_id,
            "token": worker.token,
            "heartbeat_interval": backend.heartbeat_interval,
            "streams": {"tasks_queue": "tasks:queue", "tasks_results": "tasks:results", "tasks_qa": "tasks:qa"},
            "consumer_groups": {"workers": "workers", "reviewers": "reviewers"},
        }


class BackendServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, backend: BackendState, port: int = 0) -> None:
        self.allow_reuse_address = True
        super().__init__(("127.0.0.1", port), _Handler)
        self.backend = backend
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> BackendServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@dataclass
class Backend:
    """The fixture's handle: the state, its server, and its URL."""

    state: BackendState
    server: BackendServer

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def bsnexus_backend() -> Iterator[Backend]:
    backend_state = BackendState()
    server = BackendServer(backend_state).start()
    try:
        yield Backend(backend_state, server)
    finally:
        server.stop()


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
