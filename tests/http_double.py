"""The one base of the project's HTTP doubles: a ThreadingHTTPServer on a free 127.0.0.1
port that records every request and answers through :meth:`HttpDouble.answer`, with ONE way
to inject faults, per route (``"POST /sessions"``) or for every route (``"*"``):

- ``fail(route, status, body, times=..., headers=...)``: answer with that status instead;
- ``reset(route, times=...)``: drop the connection with a TCP reset;
- ``stall(route, seconds, times=...)``: wait, then answer normally.

``times=None`` keeps a fault for every request until :meth:`heal`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Fail:
    status: int
    body: bytes = b"{}"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Reset:
    pass


@dataclass(frozen=True)
class Stall:
    seconds: float


Fault = Fail | Reset | Stall


@dataclass
class _Script:
    queued: dict[str, list[Fault]] = field(default_factory=dict)
    always: dict[str, Fault] = field(default_factory=dict)

    def take(self, route: str) -> Fault | None:
        for key in (route, "*"):
            if self.queued.get(key):
                return self.queued[key].pop(0)
        return self.always.get(route) or self.always.get("*")


Answer = tuple[int, bytes] | tuple[int, bytes, dict[str, str]]


class HttpDouble:
    """Subclasses implement :meth:`answer`; it runs under :attr:`lock`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script = _Script()
        self.lock = threading.Lock()
        self.delay_seconds = 0.0  # added to every answer, as a backend across a WAN
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle(self) -> None:
                # The client may go away mid-request: a test killed it, or a scripted reset.
                with contextlib.suppress(ConnectionError):
                    super().handle()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()), body)
                with double.lock:
                    fault = double.script.take(f"{request.method} {request.path}")
                if isinstance(fault, Reset):
                    # RST instead of FIN: the client sees "connection reset by peer".
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(fault, Stall):
                    time.sleep(fault.seconds)
                if double.delay_seconds:
                    time.sleep(double.delay_seconds)
                with double.lock:
                    if isinstance(fault, Fail):
                        status, answer, headers = fault.status, fault.body, dict(fault.headers)
                    else:
                        status, answer, *rest = double.answer(request)
                        headers = rest[0] if rest else {}
                    request.status = status
                    double.requests.append(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

            do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, request: Request) -> Answer:
        raise NotImplementedError

    def fail(
        self,
        route: str,
        status: int,
        body: bytes = b"{}",
        *,
        times: int | None = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``route`` with ``status`` (``times`` times, or always with None)."""
        self._add(route, Fail(status, body, tuple((headers or {}).items())), times)

    def reset(self, route: str, *, times: int | None = 1) -> None:
        self._add(route, Reset(), times)

    def stall(self, route: str, seconds: float, *, times: int | None = 1) -> None:
        self._add(route, Stall(seconds), times)

    def _add(self, route: str, fault: Fault, times: int | None) -> None:
        with self.lock:
            if times is None:
                self.script.always[route] = fault
            else:
                self.script.queued.setdefault(route, []).extend([fault] * times)

    def heal(self) -> None:
        with self.lock:
            self.script = _Script()

    def made(self, method: str, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def json_answer(status: int, document: Any, headers: dict[str, str] | None = None) -> Answer:
    return status, json.dumps(document).encode(), headers or {}
