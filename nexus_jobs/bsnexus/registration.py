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
from .settings import Settings, safe_url

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
    streams: dict[str, str]
    consumer_groups: dict[str, str]
    reused: bool


class CredentialsRefused(Exception):
    """The server does not accept this worker's id or token (HTTP 401, 403, 404 or 422)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {detail}" if detail else f"HTTP {status}")


def make_session(settings: Settings, *, retries: int | None = None) -> requests.Session:
    """Register and heartbeat are safe to repeat: a 429/5xx answer means nothing was done,
    and a repeated heartbeat is harmless. Heartbeats use ``retries=0``: the next beat is the
    retry, and an outage is then reported once, not as urllib3 warnings per beat."""
    return http.make_session(
        retries=settings.http_retries if retries is None else retries,
        retry_post=True,
        retry_after_max_seconds=int(max(settings.reconnect_max_seconds, 1)),
        backoff_max_seconds=settings.reconnect_max_seconds,
    )


def default_name() -> str:
    return f"worker-{platform.system().lower()}-{socket.gethostname()}"


def register(session: requests.Session, settings: Settings) -> Registration:
    """``POST /api/v1/workers/register``, keeping the saved identity when there is one.

    The backend answers 404 to a saved id only when its database lost the worker (a
    forgotten Redis entry re-registers under the same id): then the worker registers anew.
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
    reused = bool(settings.worker_id)
    if reused:
        # Sent exactly as issued: the backend uses the id verbatim in its Redis keys.
        payload["worker_id"] = settings.worker_id
        if settings.worker_token:
            payload["worker_token"] = settings.worker_token
    response = _post(session, settings, settings.server_url + REGISTER_PATH, payload)
    if response.status_code == 404 and reused:
        log.warning(
            "the server does not know worker %s any more (%s); registering as a new worker",
            settings.worker_id,
            _detail(response),
        )
        payload.pop("worker_id")
        payload.pop("worker_token", None)
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
            f"cannot reach the BSNexus server at {safe_url(settings.server_url)}: {http.describe_error(error)}"
        ) from None


def _raise_for_register_status(response: requests.Response, settings: Settings) -> None:
    status, detail = response.status_code, _detail(response)
    if status == 200 or status == 201:
        return
    if status == 403:  # newer backends: the saved worker token belongs to another worker id
        raise AuthError(
            f"the server refused to re-register worker {settings.worker_id} (HTTP 403: {detail or 'no detail'}); "
            "remove BSNEXUS_WORKER_ID and BSNEXUS_WORKER_TOKEN from the .env file to register as a new worker"
        )
    if status == 401:
        raise AuthError(
            f"the server refused the registration token (HTTP {status}: {detail or 'no detail'}): it is invalid, "
            "revoked or expired; get a new one from the BSNexus admin UI (Workers > Registration Token)"
        )
    if status == 404:
        raise ConfigError(
            f"{safe_url(settings.server_url)}{REGISTER_PATH} does not exist (HTTP 404): "
            "is --url the BSNexus backend's base URL?"
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
    except (ValueError, RecursionError):  # hostile answers: any nesting depth is bad input
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # 422: [{"loc": [...], "msg": ...}, ...]
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = item.get("loc")
                loc = loc if isinstance(loc, list) else []
                where = ".".join(str(part) for part in loc if part != "body")
                parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        detail = "; ".join(parts)
    return str(detail or "")[:300]


def _parse_registration(response: requests.Response, *, reused: bool) -> Registration:
    try:
        body = response.json()
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("worker_id"), str) or not body.get("token"):
        raise BackendUnavailable("the BSNexus server's registration answer has no worker_id and token")
    token = body["token"]
    if not isinstance(token, str) or not token.isascii() or not token.isprintable() or " " in token:
        raise BackendUnavailable("the BSNexus server's registration answer has a token that is not printable ASCII")
    register_secret(token)
    streams: dict[str, Any] = body["streams"] if isinstance(body.get("streams"), dict) else {}
    groups: dict[str, Any] = body["consumer_groups"] if isinstance(body.get("consumer_groups"), dict) else {}
    return Registration(
        worker_id=str(body["worker_id"]),
        token=token,
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
    # The answer's heartbeat_interval is not saved: the backend always says 30, and an
    # interval the operator set in the same file must survive re-registration.
    if not settings.registration_token_elsewhere:
        # Register once, run anytime: `run` re-registers with it when the backend forgot
        # the worker (docs/bsnexus.md).
        values["BSNEXUS_REGISTRATION_TOKEN"] = settings.registration_token
    for key, name in STREAM_KEYS.items():
        if key in registration.streams:
            values[name] = registration.streams[key]
    for key, name in GROUP_KEYS.items():
        if key in registration.consumer_groups:
            values[name] = registration.consumer_groups[key]
    _create_private(env_file)
    for key, value in values.items():
        set_key(env_file, key, value, quote_mode="auto")
    if settings.registration_token_elsewhere:
        _unset(env_file, ("BSNEXUS_REGISTRATION_TOKEN",))
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
    _unset(env_file, IDENTITY_KEYS)


def _unset(env_file: Path, keys: tuple[str, ...]) -> None:
    from dotenv import dotenv_values, unset_key

    if not env_file.exists():
        return
    present = dotenv_values(env_file)
    for key in keys:
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
    _request(session, settings, "POST", f"/api/v1/workers/{worker_id}/heartbeat", token=token)


def deregister(session: requests.Session, settings: Settings, *, worker_id: str) -> None:
    """``DELETE /api/v1/workers/{id}``: the backend forgets the worker's Redis entry and token
    (it needs no auth and answers 200 even for an unknown id; 422 for an id that is no UUID)."""
    try:
        _request(session, settings, "DELETE", f"/api/v1/workers/{worker_id}", token="")
    except CredentialsRefused as refused:
        if refused.status == 422:
            raise ConfigError(f"BSNEXUS_WORKER_ID {worker_id!r} is not a worker id the server issued") from None
        if refused.status != 404:
            raise


def _request(session: requests.Session, settings: Settings, method: str, path: str, *, token: str) -> None:
    import requests

    try:
        response = session.request(
            method,
            settings.server_url + path,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=(CONNECT_TIMEOUT_SECONDS, settings.http_timeout_seconds),
        )
    except requests.RequestException as error:
        raise BackendUnavailable(
            f"cannot reach the BSNexus server at {safe_url(settings.server_url)}: {http.describe_error(error)}"
        ) from None
    if response.status_code in (401, 403, 404, 422):
        raise CredentialsRefused(response.status_code, _detail(response))
    if response.status_code >= 400:
        raise BackendUnavailable(f"the BSNexus server answered HTTP {response.status_code}: {_detail(response)}")
