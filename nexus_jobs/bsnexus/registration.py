"""The BSNexus backend's worker API (register, heartbeat, deregister) and the identity that
``register`` saves to the ``.env`` file ``run`` reads.

The worker token is sent only in the ``Authorization`` header and written only to the
``.env`` file (mode 0600); it never reaches logs, messages or process arguments.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import http
from ..core.errors import AuthError, BackendUnavailable, ConfigError, TransientError
from ..core.secrets import register_secret
from .settings import Settings

if TYPE_CHECKING:
    import requests

log = logging.getLogger("nexus_jobs.bsnexus")

REGISTER_PATH = "/api/v1/workers/register"
CONNECT_TIMEOUT_SECONDS = 5.0
# The names register saves, in the order they appear in a fresh .env file.
IDENTITY_KEYS = ("BSNEXUS_WORKER_ID", "BSNEXUS_WORKER_TOKEN")
STREAM_KEYS = {
    "tasks_queue": "BSNEXUS_TASKS_QUEUE",
    "tasks_results": "BSNEXUS_TASKS_RESULTS",
    "tasks_qa": "BSNEXUS_TASKS_QA",
}
GROUP_KEYS = {"workers": "BSNEXUS_WORKERS_GROUP", "reviewers": "BSNEXUS_REVIEWERS_GROUP"}


@dataclass(frozen=True)
class Registration:
    """What the server answered to a registration."""

    worker_id: str
    token: str
    heartbeat_interval_seconds: float | None
    streams: dict[str, str]
    consumer_groups: dict[str, str]
    reused: bool


class CredentialsRefused(Exception):
    """The server no longer accepts this worker's id or token (HTTP 401 or 404)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {detail}" if detail else f"HTTP {status}")


def make_session(settings: Settings) -> requests.Session:
    # Register and heartbeat are safe to repeat: a 429/5xx answer means nothing was done,
    # and a repeated heartbeat is harmless.
    return http.make_session(
        retries=settings.http_retries,
        retry_post=True,
        retry_after_max_seconds=int(max(settings.reconnect_max_seconds, 1)),
        backoff_max_seconds=settings.reconnect_max_seconds,
    )


def default_name() -> str:
    return f"worker-{platform.system().lower()}-{socket.gethostname()}"


def register(session: requests.Session, settings: Settings) -> Registration:
    """``POST /api/v1/workers/register``, keeping the saved identity when there is one.

    A server that no longer knows the saved worker (404) gets a fresh registration.
    """
    if not settings.server_url:
        raise ConfigError("no BSNexus server URL: pass --url or set BSNEXUS_SERVER_URL")
    if not settings.registration_token:
        raise AuthError(
            "no registration token: pass --token or set BSNEXUS_REGISTRATION_TOKEN "
            "(copy it from the BSNexus admin UI, Workers > Registration Token)"
        )
    payload: dict[str, Any] = {
        "name": settings.worker_name or default_name(),
        "platform": platform.system().lower(),
        "capabilities": {"native": True, **({"docker": True} if Path("/.dockerenv").exists() else {})},
        "executor_type": settings.executor_type,
        "registration_token": settings.registration_token,
    }
    reused = bool(settings.worker_id and settings.worker_token)
    if reused:
        payload.update(worker_id=settings.worker_id, worker_token=settings.worker_token)
    response = _post(session, settings, settings.server_url + REGISTER_PATH, payload)
    if response.status_code == 404 and reused:
        log.warning(
            "the server does not know worker %s any more (%s); registering as a new worker",
            settings.worker_id,
            _detail(response),
        )
        del payload["worker_id"], payload["worker_token"]
        reused = False
        response = _post(session, settings, settings.server_url + REGISTER_PATH, payload)
    _raise_for_register_status(response, settings)
    return _parse_registration(response, reused=reused)


def _post(session: requests.Session, settings: Settings, url: str, payload: dict[str, Any]) -> requests.Response:
    import requests

    try:
        return session.post(url, json=payload, timeout=(CONNECT_TIMEOUT_SECONDS, settings.http_timeout_seconds))
    except requests.RequestException as error:
        raise BackendUnavailable(
            f"cannot reach the BSNexus server at {settings.server_url}: {http.describe_error(error)}"
        ) from None


def _raise_for_register_status(response: requests.Response, settings: Settings) -> None:
    status, detail = response.status_code, _detail(response)
    if status == 200 or status == 201:
        return
    if status in (401, 403):
        raise AuthError(
            f"the server refused the registration token (HTTP {status}: {detail or 'no detail'}): it is invalid, "
            "revoked or expired; get a new one from the BSNexus admin UI (Workers > Registration Token)"
        )
    if status == 404:
        raise ConfigError(
            f"{settings.server_url}{REGISTER_PATH} does not exist (HTTP 404): is --url the BSNexus backend's base URL?"
        )
    if status == 422:
        raise ConfigError(f"the server rejected the registration request (HTTP 422): {detail or 'no detail'}")
    if status == 429:
        wait = response.headers.get("Retry-After", "")
        raise TransientError(
            "the server is limiting registrations (HTTP 429) and kept refusing after retries"
            + (f"; try again in {wait} seconds" if wait else "; try again later")
        )
    if status >= 500:
        raise BackendUnavailable(f"the BSNexus server failed (HTTP {status}: {detail or 'no detail'})")
    raise BackendUnavailable(f"unexpected answer from the BSNexus server: HTTP {status}: {detail or 'no detail'}")


def _detail(response: requests.Response) -> str:
    """The ``detail`` of a FastAPI error body, on one short line."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # 422: [{"loc": [...], "msg": ...}, ...]
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                where = ".".join(str(part) for part in item.get("loc", []) if part != "body")
                parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        detail = "; ".join(parts)
    return str(detail or "")[:300]


def _parse_registration(response: requests.Response, *, reused: bool) -> Registration:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("worker_id"), (str, int)) or not body.get("token"):
        raise BackendUnavailable("the BSNexus server's registration answer has no worker_id and token")
    token = str(body["token"])
    register_secret(token)
    interval = body.get("heartbeat_interval")
    streams: dict[str, Any] = body["streams"] if isinstance(body.get("streams"), dict) else {}
    groups: dict[str, Any] = body["consumer_groups"] if isinstance(body.get("consumer_groups"), dict) else {}
    return Registration(
        worker_id=str(body["worker_id"]),
        token=token,
        heartbeat_interval_seconds=float(interval)
        if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval > 0
        else None,
        streams={key: str(value) for key, value in streams.items() if key in STREAM_KEYS and value},
        consumer_groups={key: str(value) for key, value in groups.items() if key in GROUP_KEYS and value},
        reused=reused,
    )


def save_identity(env_file: Path, settings: Settings, registration: Registration) -> None:
    """Write the identity and connection settings with python-dotenv's ``set_key`` (each key
    replaced in place, so re-registering never duplicates a line), in a 0600 file."""
    from dotenv import set_key

    values = {
        "BSNEXUS_SERVER_URL": settings.server_url,
        "BSNEXUS_REDIS_URL": settings.redis_url,
        "BSNEXUS_EXECUTOR_TYPE": settings.executor_type,
        "BSNEXUS_WORKER_NAME": settings.worker_name or default_name(),
        "BSNEXUS_WORKER_ID": registration.worker_id,
        "BSNEXUS_WORKER_TOKEN": registration.token,
    }
    if registration.heartbeat_interval_seconds:
        values["BSNEXUS_HEARTBEAT_INTERVAL"] = f"{registration.heartbeat_interval_seconds:g}"
    for key, name in STREAM_KEYS.items():
        if key in registration.streams:
            values[name] = registration.streams[key]
    for key, name in GROUP_KEYS.items():
        if key in registration.consumer_groups:
            values[name] = registration.consumer_groups[key]
    _create_private(env_file)
    for key, value in values.items():
        set_key(env_file, key, value, quote_mode="auto")
    os.chmod(env_file, 0o600)


def save_token(env_file: Path, token: str) -> None:
    from dotenv import set_key

    _create_private(env_file)
    set_key(env_file, "BSNEXUS_WORKER_TOKEN", token, quote_mode="auto")


def saved_token(env_file: Path, *, worker_id: str) -> str:
    """The worker token now in the ``.env`` file, if it belongs to ``worker_id``."""
    from dotenv import dotenv_values

    try:
        saved = dotenv_values(env_file) if env_file.exists() else {}
    except (OSError, UnicodeDecodeError):
        return ""
    if saved.get("BSNEXUS_WORKER_ID") != worker_id:
        return ""
    return saved.get("BSNEXUS_WORKER_TOKEN") or ""


def forget_identity(env_file: Path) -> None:
    """Remove the worker id and token from the ``.env`` file (the server URL etc. stay)."""
    from dotenv import dotenv_values, unset_key

    if not env_file.exists():
        return
    present = dotenv_values(env_file)
    for key in IDENTITY_KEYS:
        if key in present:
            unset_key(env_file, key)


def _create_private(env_file: Path) -> None:
    try:
        env_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(descriptor)
        os.chmod(env_file, 0o600)
    except OSError as error:
        raise ConfigError(f"{env_file}: cannot write the env file: {error.strerror}") from None


def heartbeat(session: requests.Session, settings: Settings, *, worker_id: str, token: str) -> None:
    """One heartbeat. Raises :class:`CredentialsRefused` on 401/403/404, ``BackendUnavailable``
    when the server cannot be reached or fails."""
    _authorized(session, settings, "POST", f"/api/v1/workers/{worker_id}/heartbeat", token=token)


def deregister(session: requests.Session, settings: Settings, *, worker_id: str, token: str) -> None:
    """``DELETE /api/v1/workers/{id}``; a worker the server does not know is already gone."""
    try:
        _authorized(session, settings, "DELETE", f"/api/v1/workers/{worker_id}", token=token)
    except CredentialsRefused as refused:
        if refused.status != 404:
            raise


def _authorized(session: requests.Session, settings: Settings, method: str, path: str, *, token: str) -> None:
    import requests

    try:
        response = session.request(
            method,
            settings.server_url + path,
            headers={"Authorization": f"Bearer {token}"},
            timeout=(CONNECT_TIMEOUT_SECONDS, settings.http_timeout_seconds),
        )
    except requests.RequestException as error:
        raise BackendUnavailable(
            f"cannot reach the BSNexus server at {settings.server_url}: {http.describe_error(error)}"
        ) from None
    if response.status_code in (401, 403, 404):
        raise CredentialsRefused(response.status_code, _detail(response))
    if response.status_code >= 400:
        raise BackendUnavailable(f"the BSNexus server answered HTTP {response.status_code}: {_detail(response)}")
