"""The real OpenClaw, driven offline for the conformance tests: the pinned npm package (installed
by ``bin/install-openclaw`` into a cache outside the checkout), its Gateway on loopback, and a
fake OpenAI-compatible model server the tests own. ``docs/openclaw.md`` says how to bump the pin.

A turn goes through the Gateway's ``/v1/chat/completions``; ``/reset``, ``/new`` and deletion
through its WebSocket RPC (``sessions.reset``, ``sessions.delete``), which do what the chat
commands and ``openclaw sessions delete`` do, thirty times faster. A user text with ``LONG`` in
it gets a reply of about 3 KiB without ``\\u`` escapes, so OpenClaw stores it zstd-compressed.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
LONG_REPLY_BYTES = 3000
START_TIMEOUT_SECONDS = 120.0


def install() -> dict[str, str]:
    """Install (or find in the cache) the pinned OpenClaw and node 24: their paths."""
    done = subprocess.run(
        [str(REPO / "bin" / "install-openclaw")], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bin/install-openclaw failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


class FakeModel:
    """An OpenAI-compatible chat-completions server answering every request (streamed or not)."""

    model_id = "fake-model"

    def __init__(self) -> None:
        self.replies = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._json({"object": "list", "data": [{"id": fake.model_id, "object": "model", "owned_by": "fake"}]})

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                text = fake.reply_for(request)
                usage = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
                if not request.get("stream"):
                    message = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    self._json({"id": "c1", "object": "chat.completion", "model": fake.model_id,
                                "usage": usage, "choices": [message]})  # fmt: skip
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                base = {"id": "c1", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": fake.model_id}  # fmt: skip
                deltas = [{"role": "assistant", "content": ""}] + [
                    {"content": text[start : start + 512]} for start in range(0, len(text), 512)
                ]
                for delta in deltas:
                    self._event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                self._event({**base, "choices": [], "usage": usage})
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

            def _event(self, value: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps(value).encode() + b"\n\n")

            def _json(self, value: dict[str, Any]) -> None:
                body = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def reply_for(self, request: dict[str, Any]) -> str:
        self.replies += 1
        user = ""
        for message in reversed(request.get("messages") or []):
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            # OpenClaw appends an internal-context message after the user's own.
            if message.get("role") == "user" and not str(content).lstrip().startswith("<<<BEGIN_OPENCLAW"):
                user = str(content).split("\n\nRuntime: ", 1)[0]
                break
        if "LONG" not in user:
            return f"fake reply #{self.replies}"
        paragraph = "This is a long reply with plain ASCII text only. "
        return "".join(f"[{number:03d}] {paragraph}" for number in range(LONG_REPLY_BYTES // len(paragraph) + 1))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class WebSocket:
    """Just enough of RFC 6455 for the Gateway's JSON text frames. No Origin header: a
    browser origin would lose the local backend's operator scopes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            buffer += chunk
        head, self.buffer = buffer.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake failed: {head[:200]!r}")

    def send(self, value: dict[str, Any]) -> None:
        data = json.dumps(value).encode()
        header = bytearray([0x81])
        if len(data) < 126:
            header.append(0x80 | len(data))
        else:
            header.append(0x80 | 126)
            header += struct.pack(">H", len(data))
        mask = os.urandom(4)
        self.sock.sendall(bytes(header) + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(data)))

    def _read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def receive(self) -> dict[str, Any]:
        message = b""
        while True:
            first, second = self._read(2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(size)
            if opcode == 0x8:
                raise ConnectionError(f"websocket closed by the Gateway: {payload[2:]!r}")
            if opcode == 0x9:
                self.sock.sendall(bytes([0x8A, 0x80]) + b"\0\0\0\0")
                continue
            message += payload
            if first & 0x80:
                value: dict[str, Any] = json.loads(message)
                return value

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(bytes([0x88, 0x80]) + b"\0\0\0\0")
            self.sock.close()


class OpenClaw:
    """A private OpenClaw state directory, its Gateway and a fake model. ``agents`` get their
    own workspaces; heartbeats are off so OpenClaw takes no turns of its own."""

    def __init__(self, root: Path, paths: dict[str, str], agents: tuple[str, ...] = ("main", "ops")) -> None:
        self.root = root
        self.node, self.entry = paths["OPENCLAW_NODE"], paths["OPENCLAW_ENTRY"]
        self.version = paths.get("OPENCLAW_VERSION", "")
        self.state_dir = root / "state"
        self.config_path = root / "openclaw.json"
        for directory in (self.state_dir, root / "home", root / "tmp"):
            directory.mkdir(parents=True, exist_ok=True)
        self.fake = FakeModel()
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.hook_token = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None
        self.ws: WebSocket | None = None
        self.request_id = 0
        model = {"id": FakeModel.model_id, "name": "Fake", "reasoning": False, "input": ["text"],
                 "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                 "contextWindow": 128000, "maxTokens": 4096}  # fmt: skip
        config = {
            "gateway": {"mode": "local", "port": self.port, "bind": "loopback",
                        "auth": {"mode": "token", "token": self.token},
                        "http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
            "models": {"mode": "merge", "providers": {"fake": {
                "baseUrl": self.fake.base_url, "apiKey": "fake-key", "api": "openai-completions", "models": [model]}}},
            "logging": {"file": str(root / "openclaw.log")},
            "hooks": {"enabled": True, "token": self.hook_token, "path": "/hooks"},
            "agents": {"defaults": {"model": {"primary": f"fake/{FakeModel.model_id}"}, "heartbeat": {"every": "0m"}},
                       "list": [{"id": agent, "default": number == 0, "workspace": str(root / f"ws-{agent}")}
                                for number, agent in enumerate(agents)]},
        }  # fmt: skip
        self.config_path.write_text(json.dumps(config, indent=2))

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENCLAW_", "NEXUS_"))}
        env.update(
            OPENCLAW_STATE_DIR=str(self.state_dir),
            OPENCLAW_CONFIG_PATH=str(self.config_path),
            OPENCLAW_NO_RESPAWN="1",
            HOME=str(self.root / "home"),
            TMPDIR=str(self.root / "tmp"),
            PATH=f"{Path(self.node).parent}:{env.get('PATH', '/usr/bin:/bin')}",
            NO_COLOR="1",
        )
        return env

    def start(self) -> None:
        log = (self.root / "gateway.log").open("ab")
        self.process = subprocess.Popen(
            [self.node, self.entry, "gateway", "run", "--port", str(self.port)],
            env=self.env(),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Gateway exited {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.http("GET", "/health", timeout=2)[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Gateway is not healthy after {START_TIMEOUT_SECONDS}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the Gateway (its process group: it starts helpers of its own)."""
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.stop()
        self.fake.stop()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "gateway.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def http(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             timeout: float = 120) -> tuple[int, bytes]:  # fmt: skip
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            sent = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json", **(headers or {})}
            connection.request(method, path, body=None if body is None else json.dumps(body), headers=sent)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def turn(self, agent: str, key: str, text: str) -> str:
        """One user turn. The first one can race OpenClaw's first-start database maintenance
        (it answers non-200 then): tried a few times."""
        body = {"model": f"openclaw/{agent}", "messages": [{"role": "user", "content": text}], "stream": False}
        headers = {"x-openclaw-session-key": key, "x-openclaw-agent-id": agent}
        answer: tuple[int, bytes] = (0, b"")
        for attempt in range(5):
            with contextlib.suppress(OSError, http.client.HTTPException):
                answer = self.http("POST", "/v1/chat/completions", body, headers)
                if answer[0] == 200:
                    return str(json.loads(answer[1])["choices"][0]["message"]["content"])
            time.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"turn failed: {answer[0]} {answer[1][:500]!r}\n{self.log_tail()}")

    def rpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if self.ws is None:
            self.ws = WebSocket(self.port)
            self.ws.receive()  # the connect.challenge event
            client = {"id": "gateway-client", "version": "tests", "platform": "linux", "mode": "backend"}
            scopes = ["operator.admin", "operator.read", "operator.write"]
            self._call("connect", {"minProtocol": 4, "maxProtocol": 4, "client": client, "role": "operator",
                                   "scopes": scopes, "auth": {"token": self.token}})  # fmt: skip
        return self._call(method, params)

    def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.ws is not None
        self.request_id += 1
        request_id = str(self.request_id)
        self.ws.send({"type": "req", "id": request_id, "method": method, "params": params})
        while True:
            message = self.ws.receive()
            if message.get("type") == "res" and message.get("id") == request_id:
                if not message.get("ok"):
                    raise RuntimeError(f"{method} failed: {message}")
                payload: dict[str, Any] = message.get("payload") or {}
                return payload

    def reset(self, agent: str, key: str, reason: str = "reset") -> None:
        """What ``/reset`` (reason ``reset``) or ``/new`` (reason ``new``) does."""
        self.rpc("sessions.reset", {"key": key, "agentId": agent, "reason": reason})

    def delete(self, agent: str, key: str) -> None:
        """What ``openclaw sessions delete <key> --agent <agent> --yes`` does."""
        self.rpc("sessions.delete", {"key": key, "agentId": agent})

    def hook(self, agent: str, message: str) -> None:
        """A webhook run (``POST /hooks/agent``): OpenClaw runs it in a key of its own,
        ``agent:<agent>:cron:<fresh uuid>``, which it never continues."""
        body = {"message": message, "agentId": agent, "waitForCompletion": True}
        status, answer = self.http("POST", "/hooks/agent", body, {"Authorization": f"Bearer {self.hook_token}"})
        if status != 200:
            raise RuntimeError(f"hook run failed: {status} {answer[:300]!r}")

    def database(self, agent: str) -> Path:
        return self.state_dir / "agents" / agent / "agent" / "openclaw-agent.sqlite"

    def new_key(self, agent: str) -> str:
        return f"agent:{agent}:chat-{uuid.uuid4().hex[:8]}"
