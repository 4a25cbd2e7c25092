"""Where transcripts go: the Nexus sessions API (``POST {endpoint}/sessions``) or, with no
endpoint or a ``file://`` one, the embedded directory store with the server's layout
(``inbox/<agentId>/<fileName>``) and the same 200/409 semantics.

Both stores answer :meth:`upload` with a :class:`StoreAnswer`; neither raises for a failed item.
What each answer means is ``docs/nexus.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..core import http, state
from ..core.errors import BackendUnavailable
from .settings import NexusSettings, answer_error, auth, server_message

# What the worker does with an answer (docs/nexus.md, "Answers").
STORED = "stored"  # 200: mark uploaded
ALREADY_STORED = "already-stored"  # 409 that proves the same content is there: mark uploaded
CONFLICT = "conflict"  # 409 for other content: report, do not mark uploaded
REJECTED = "rejected"  # 400/413 or refused locally: mark rejected, do not retry every run
FAILED = "failed"  # transient after retries: leave for the next run
REFUSED = "refused"  # 401/403: stop the run

_CONTROL_BYTES = re.compile(rb"[\x00-\x1f]")
_CONTROL_CHARACTERS = bytes(range(0x20))


@dataclass(frozen=True, slots=True, eq=False)
class Upload:
    """One transcript, read and checked, ready to send."""

    agent_id: str
    session_id: str
    file_name: str
    archive_reason: str | None
    content: bytes
    sha256: str
    # sha256 of what was sent before under this file name or session id: a 409 without
    # sha256 is proof of nothing when the content differs from one of them.
    sent_before: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class StoreAnswer:
    kind: str
    detail: str = ""
    http_status: int | None = None


class SessionStore(Protocol):
    location: str

    def upload(self, upload: Upload) -> StoreAnswer: ...

    def close(self) -> None: ...


def json_string(content: bytes) -> bytes:
    """``content`` (valid UTF-8) as a JSON string literal, escaped at the byte level so a
    large transcript is never turned into a Python ``str`` (up to 4 bytes per character)."""
    escaped = content.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\n", b"\\n")
    if _has_control(escaped):
        escaped = escaped.replace(b"\r", b"\\r").replace(b"\t", b"\\t")
        if _has_control(escaped):
            escaped = _CONTROL_BYTES.sub(lambda match: b"\\u%04x" % match.group()[0], escaped)
    return escaped


def _has_control(data: bytes) -> bool:
    # translate() scans at memory speed; a regex search is several times slower.
    return len(data.translate(None, _CONTROL_CHARACTERS)) != len(data)


def request_body(upload: Upload) -> bytes:
    """The JSON body of ``POST /sessions``: the three fields every server knows plus the
    optional ones a server may ignore."""
    head = {"agentId": upload.agent_id, "sessionId": upload.session_id}
    tail: dict[str, Any] = {"fileName": upload.file_name}
    if upload.archive_reason:
        tail["archiveReason"] = upload.archive_reason
    tail.update(sha256=upload.sha256, bytes=len(upload.content))
    return b"".join(
        (
            json.dumps(head)[:-1].encode(),
            b', "transcript": "',
            json_string(upload.content),
            b'", ',
            json.dumps(tail)[1:].encode(),
        )
    )


class HttpSessionStore:
    """The Nexus sessions API over one keep-alive ``requests.Session`` shared by the upload
    threads. Uploads are idempotent (the server dedups), so POST is retried."""

    def __init__(self, nexus: NexusSettings, *, pool_size: int) -> None:
        self.location = nexus.endpoint
        self.url = nexus.endpoint.rstrip("/") + "/sessions"
        self.timeout = (http.CONNECT_TIMEOUT_SECONDS, nexus.timeout_seconds)
        self.session = http.make_session(retries=nexus.retries, pool_size=pool_size, retry_post=True, base_url=self.url)
        auth_headers, self.params = auth(nexus.api_key, nexus.auth_mode)
        self.headers: dict[str, str | bytes] = {
            **self.session.headers,
            "Content-Type": "application/json",
            **auth_headers,
        }

    def probe(self, agent_id: str = "") -> str:
        """Check, changing nothing, that the sessions API answers: a HEAD of the route (never a
        POST); any answer but 401/403 or a 5xx will do. Raises the job error of a failure."""
        import requests

        try:
            response = self.session.head(self.url, params=self.params, headers=self.headers, timeout=self.timeout)
            response.close()
        except requests.RequestException as error:
            raise BackendUnavailable(f"Nexus at {self.location}: {http.describe_error(error)}") from None
        failure = answer_error(response.status_code, b"", url=self.url, what="checking the sessions API")
        if failure is not None:
            raise failure
        return f"Nexus sessions API at {self.location} answers (HTTP {response.status_code})"

    def upload(self, upload: Upload) -> StoreAnswer:
        import requests

        request = requests.PreparedRequest()
        try:
            # Prepared here and handed to Session.send(): Session.post() merges the session's
            # settings anew on every call, a third of the CPU time of a small upload.
            request.prepare(
                method="POST", url=self.url, headers=self.headers, params=self.params, data=request_body(upload)
            )
            response = self.session.send(request, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as error:
            return StoreAnswer(FAILED, f"{http.describe_error(error)} (will retry next run)")
        with response:
            return _interpret(response.status_code, response.content, upload)

    def close(self) -> None:
        self.session.close()


def _interpret(status: int, raw: bytes, upload: Upload) -> StoreAnswer:
    body = _json_object(raw)
    message = server_message(raw)
    if status in (200, 201):
        return StoreAnswer(STORED, "stored", status)
    if status == 409:
        theirs = body.get("sha256")
        if isinstance(theirs, str) and theirs:
            if theirs.lower() != upload.sha256:
                return StoreAnswer(CONFLICT, f"the server holds different content (sha256 {theirs[:12]}...)", status)
            return StoreAnswer(ALREADY_STORED, "already stored (same sha256)", status)
        if upload.sent_before - {upload.sha256}:
            return StoreAnswer(
                CONFLICT,
                "the server answered 409 without sha256, and other content of this file name or session "
                "was sent before (a server that keeps one transcript per session id?)",
                status,
            )
        return StoreAnswer(ALREADY_STORED, "already stored", status)
    if status == 413:
        return StoreAnswer(REJECTED, f"the server refused it as too large (413){message}", status)
    if status == 400:
        return StoreAnswer(REJECTED, f"the server refused it as invalid (400){message}", status)
    if status in (401, 403):
        return StoreAnswer(REFUSED, f"the server refused the API key ({status}){message}", status)
    if status == 429 or status >= 500:
        return StoreAnswer(FAILED, f"the server answered {status} after retries{message} (will retry next run)", status)
    return StoreAnswer(FAILED, f"unexpected answer {status}{message}", status)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


class FileSessionStore:
    """The embedded store: ``<root>/inbox/<agentId>/<fileName>``, written atomically; an
    existing file answers like the server's 409, with its sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.location = str(self.inbox)

    def upload(self, upload: Upload) -> StoreAnswer:
        for part in (upload.agent_id, upload.file_name):
            if not part or "/" in part or part in (".", "..") or "\0" in part:
                return StoreAnswer(REJECTED, f"unsafe name for the directory store: {part!r}", 400)
        directory = self.inbox / upload.agent_id
        target = directory / upload.file_name
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if target.exists():
                return _existing(target, upload)
            descriptor, temporary = state.open_temporary(directory, prefix=".upload-")
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(upload.content)
                    handle.flush()
                    os.fsync(handle.fileno())
                # link() refuses to replace an existing name: two writers cannot both "store" it.
                os.link(temporary, target)
            except FileExistsError:
                return _existing(target, upload)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
            state.fsync_directory(directory)
        except OSError as error:
            return StoreAnswer(FAILED, f"cannot write to {directory}: {error.strerror}")
        return StoreAnswer(STORED, "stored", 200)

    def close(self) -> None:
        pass


def _existing(target: Path, upload: Upload) -> StoreAnswer:
    import hashlib  # imported here, as in session_upload: a not-due run never needs it

    digest = hashlib.sha256()
    with target.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != upload.sha256:
        return StoreAnswer(CONFLICT, f"{target} holds different content", 409)
    return StoreAnswer(ALREADY_STORED, "already stored", 409)
