"""Delivery of one webhook item by one mode: ``inbox`` (a file in the agent's workspace),
``hook`` (the OpenClaw Gateway's ``/hooks/agent``) or ``command`` (an argv with the item on
stdin, run through the project's one child-process runner). The contract is
``docs/webhooks.md``; each function raises :class:`DeliveryFailed` for a failure worth
retrying next run, :class:`AuthError` when the Gateway refuses the token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core import http, processes, state
from ..core.errors import AuthError
from ..nexus.webhooks import safe_name

HOOK_TIMEOUT_SECONDS = 30.0


class DeliveryFailed(Exception):
    """One delivery mode failed for one item; retried next run."""


def inbox_path(item: dict[str, Any], *, workspace: Path, inbox_dir: str) -> Path:
    source = item.get("source") if isinstance(item.get("source"), str) and item.get("source") else "unknown"
    return workspace / inbox_dir / f"{safe_name(str(source))}_{safe_name(item['id'])}.json"


def write_inbox_file(path: Path, item: dict[str, Any]) -> None:
    """Pretty JSON, written atomically: an agent never sees a half-written item."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        state.write_bytes_atomic(path, item_bytes(item, indent=2) + b"\n")
    except OSError as error:
        raise DeliveryFailed(f"inbox {path.parent}: {error.strerror or error}") from None


def post_hook(
    session: Any, item: dict[str, Any], *, agent_id: str, options: dict[str, Any], inbox_file: Path | None
) -> None:
    """``POST /hooks/agent`` of the OpenClaw Gateway; 200/202 is success, 503 or a network
    error is transient (retried next run), 401/403 stops the run."""
    import requests

    source, received = item.get("source", "unknown"), item.get("receivedAt", "unknown time")
    if inbox_file is not None:
        message = f"New webhook item from {source} (id {item['id']}, received {received}), saved to {inbox_file}."
    else:
        message = f"New webhook item from {source} (id {item['id']}, received {received}):\n" + json.dumps(
            item, indent=2, ensure_ascii=False
        )
    try:
        response = session.post(
            options["gatewayUrl"].rstrip("/") + "/hooks/agent",
            json={"message": message, "name": "Nexus", "agentId": agent_id, "deliver": False},
            headers={
                "Authorization": f"Bearer {options['hooksToken']}",
                "Idempotency-Key": idempotency_key(item["id"]),
            },
            timeout=(http.CONNECT_TIMEOUT_SECONDS, HOOK_TIMEOUT_SECONDS),
            allow_redirects=False,
        )
    except requests.RequestException as error:
        raise DeliveryFailed(f"Gateway hook: {http.describe_error(error)}") from None
    response.close()
    if response.status_code in (401, 403):
        raise AuthError(
            f"the OpenClaw Gateway refused the hooks token ({response.status_code}); check OPENCLAW_HOOKS_TOKEN"
        )
    if response.status_code not in (200, 202):
        raise DeliveryFailed(f"Gateway hook answered {response.status_code}")


def idempotency_key(item_id: str) -> str:
    """The item id as the ``Idempotency-Key`` header: as it is when it is printable ASCII,
    else its UTF-8 percent-encoded (a header carries Latin-1 at most, and never a line
    break); the same id always gives the same key (docs/webhooks.md)."""
    if item_id.isascii() and item_id.isprintable():
        return item_id
    return quote(item_id.encode("utf-8", "surrogatepass"), safe="")


def item_bytes(item: Any, *, indent: int | None = None) -> bytes:
    """The item as UTF-8 JSON; escaped where it holds text UTF-8 cannot carry (a lone
    surrogate from a ``\\ud800`` escape)."""
    try:
        return json.dumps(item, indent=indent, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(item, indent=indent).encode("ascii")


def run_command(
    item: dict[str, Any],
    *,
    agent_id: str,
    options: dict[str, Any],
    inbox_file: Path,
    workspace: Path,
    children: processes.GroupRecord | None = None,
) -> None:
    """The configured argv with the item JSON on stdin, through the project's one runner: no
    secret in its environment, its whole process group killed on timeout, its error output
    redacted before it reaches the ledger. Exit 0 is success."""
    fields = {
        "{agentId}": agent_id,
        "{id}": item["id"],
        "{source}": str(item.get("source", "unknown")),
        "{file}": str(inbox_file),
    }
    argv = []
    for argument in options["command"]:
        for placeholder, value in fields.items():
            argument = argument.replace(placeholder, value)
        argv.append(argument)
    try:
        finished = processes.run(
            argv,
            env={"NEXUS_WEBHOOK_ID": item["id"], "NEXUS_WEBHOOK_AGENT_ID": agent_id},
            cwd=workspace if workspace.is_dir() else None,
            stdin=item_bytes(item),
            timeout_seconds=options["commandTimeoutSeconds"],
            record=children,
        )
    except processes.CannotStart as error:
        raise DeliveryFailed(f"command: {error}") from None
    if finished.ended_by == processes.TIMEOUT:
        raise DeliveryFailed(f"command timed out after {options['commandTimeoutSeconds']:g}s")
    if not finished.ok:
        last = finished.last_error_lines(width=200)
        raise DeliveryFailed(f"command exited with {finished.exit_code}" + (f": {last}" if last else ""))
