"""Where webhook items come from: the Nexus webhook API or, with no endpoint or a ``file://``
one, the embedded directory store.

- ``GET {endpoint}/webhook/pending?agentId=<id>[&limit=N]`` answers items grouped by agent:
  ``{"<agentId>": [{"id", "source", "receivedAt", "payload"}, ...]}``.
- ``DELETE {endpoint}/webhook/items`` with ``{"ids": [...]}`` acknowledges (removes) items.

The embedded store keeps one JSON file per pending item in
``<root>/webhook/pending/<agentId>/<name>.json``; acknowledging removes the file. So the job
can be tried without a server: drop a file there and run ``nexus-webhook-pull``.

Both stores have the same interface. Neither judges the items: a malformed item is passed on
as it is, for the job to dead-letter. An answer that cannot be read at all (not JSON, nested
too deeply) is the backend failing. The contract is ``docs/webhooks.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ..core import http
from ..core.errors import BackendUnavailable
from .settings import NexusSettings, answer_error, auth, server_message

PENDING_PATH = "/webhook/pending"
ITEMS_PATH = "/webhook/items"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME_CHARS = 150


def safe_name(text: str) -> str:
    """``text`` as a file-name part: ``:`` (in every time-stamped id) becomes ``-``, any other
    unsafe character ``_``, plus a short hash when such a character was replaced, so two
    different ids never share a name."""
    readable = _UNSAFE.sub("_", text.replace(":", "-")).lstrip(".") or "_"
    if _UNSAFE.search(text.replace(":", "")) or len(readable) > MAX_NAME_CHARS or text.startswith("."):
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        readable = f"{readable[:MAX_NAME_CHARS]}-{digest}"
    return readable


class WebhookStore(Protocol):
    location: str

    def fetch_pending(self, agent_id: str, *, limit: int) -> dict[str, Any]:
        """One page of pending items for ``agent_id``, grouped by agent. Raises
        :class:`BackendUnavailable` (also for a malformed answer) or :class:`AuthError`."""

    def acknowledge(self, ids: Sequence[str]) -> None:
        """Remove ``ids`` from the pending items. Raises like :meth:`fetch_pending`."""

    def probe(self, agent_id: str) -> str:
        """Check, without changing anything, that the store answers; return a description."""

    def close(self) -> None: ...


class HttpWebhookStore:
    """The Nexus webhook API, with the sessions API's auth (``x-functions-key`` header, or
    ``?code=`` when ``authMode`` is ``query``) and the shared retry rules. The key never
    reaches a message: errors describe the failure, not the URL."""

    def __init__(self, nexus: NexusSettings) -> None:
        self.location = nexus.endpoint
        self.base = nexus.endpoint.rstrip("/")
        self.headers, self.params = auth(nexus.api_key, nexus.auth_mode)
        self.timeout = (http.CONNECT_TIMEOUT_SECONDS, nexus.timeout_seconds)
        # DELETE of ids is idempotent, so the shared Retry may repeat it.
        self.session = http.make_session(retries=nexus.retries)

    def fetch_pending(self, agent_id: str, *, limit: int) -> dict[str, Any]:
        params = {**self.params, "agentId": agent_id}
        if limit:
            params["limit"] = str(limit)
        body = self._request("GET", PENDING_PATH, params=params, what=f"fetching pending items of agent {agent_id!r}")
        if not isinstance(body, dict):
            raise BackendUnavailable(
                f"Nexus answered the pending items of agent {agent_id!r} with {_kind(body)}, "
                "not an object keyed by agent id"
            )
        return body

    def acknowledge(self, ids: Sequence[str]) -> None:
        if ids:
            self._request("DELETE", ITEMS_PATH, params=self.params, json_body={"ids": list(ids)}, what="acknowledging")

    def probe(self, agent_id: str) -> str:
        self.fetch_pending(agent_id, limit=1)
        return f"Nexus webhook API at {self.location} answers"

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, path: str, *, params: dict[str, str], what: str, json_body: Any = None) -> Any:
        import requests

        try:
            response = self.session.request(
                method,
                self.base + path,
                params=params,
                json=json_body,
                headers=self.headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as error:
            raise BackendUnavailable(f"Nexus {what}: {http.describe_error(error)}") from None
        with response:
            status, raw = response.status_code, response.content
        failure = answer_error(status, raw, url=self.base + path, what=what)
        if failure is not None:
            raise failure
        if not 200 <= status < 300:
            raise BackendUnavailable(f"Nexus answered {status} while {what}{server_message(raw)}")
        if method != "GET":
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise BackendUnavailable(f"Nexus answered {what} with a body that is not JSON") from None
        except RecursionError:
            raise BackendUnavailable(f"Nexus answered {what} with JSON nested too deeply to read") from None


class LocalWebhookStore:
    """Pending items as files: ``<root>/webhook/pending/<agentId>/*.json``, oldest name first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        self.pending_root = root / "webhook" / "pending"
        self._files_by_id: dict[str, Path] = {}

    def fetch_pending(self, agent_id: str, *, limit: int) -> dict[str, Any]:
        folder = self.pending_root / safe_name(agent_id)  # an agent id never escapes the store
        try:
            names = sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(".json"))
        except FileNotFoundError:
            return {agent_id: []}
        except OSError as error:
            raise BackendUnavailable(f"embedded store {folder}: cannot list it: {error.strerror}") from None
        items: list[Any] = []
        for name in names[:limit] if limit else names:
            path = folder / name
            try:
                item: Any = json.loads(path.read_bytes())
            except FileNotFoundError:
                continue  # acknowledged by a concurrent run
            except (OSError, ValueError) as error:
                item = f"unreadable file {name}: {str(error)[:80]}"
            except RecursionError:
                item = f"unreadable file {name}: JSON nested too deeply"
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                self._files_by_id[item["id"]] = path
            items.append(item)
        return {agent_id: items}

    def acknowledge(self, ids: Sequence[str]) -> None:
        for item_id in ids:
            path = self._files_by_id.pop(item_id, None)
            candidates = [path] if path else list(self.pending_root.glob(f"*/{safe_name(item_id)}.json"))
            for candidate in candidates:
                with contextlib.suppress(FileNotFoundError):
                    candidate.unlink()

    def probe(self, agent_id: str) -> str:
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not os.access(existing, os.W_OK | os.X_OK):
            raise BackendUnavailable(f"embedded store {self.root}: {existing} is not writable by this user")
        return f"embedded store at {self.root} (pending items in {self.pending_root}/<agentId>/)"

    def close(self) -> None:
        pass


def open_store(nexus: NexusSettings, *, local_root: Path | None) -> WebhookStore:
    """The HTTP store for an http(s) endpoint, else the embedded store at ``local_root``."""
    if local_root is not None:
        return LocalWebhookStore(local_root)
    return HttpWebhookStore(nexus)


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)
