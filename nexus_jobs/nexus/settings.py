"""The Nexus backend as every job sees it: its settings (the top-level ``nexus`` section,
described once), how requests authenticate, how a server's error message is shown, and where
the embedded store lives when there is no HTTP endpoint. ``docs/nexus.md`` is the contract."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import config
from ..core.config import Option
from ..core.errors import ConfigError
from ..core.secrets import redact, register_secret

DEFAULT_STORE_DIR_NAME = "nexus-store"

OPTIONS = (
    Option(
        "nexus.endpoint",
        str,
        "",
        "Nexus API base URL, or file:///dir for a local directory store (empty: the embedded store "
        "in the state directory)",
        flag="--endpoint",
        env="NEXUS_ENDPOINT",
    ),
    Option(
        "nexus.apiKey",
        str,
        "",
        "Nexus API key; keep it in the environment or .env, not in config.json",
        env="NEXUS_API_KEY",
        secret=True,
    ),
    Option(
        "nexus.authMode",
        str,
        "header",
        "how the key is sent: header (x-functions-key) or query (?code=, for older deployments)",
        env="NEXUS_AUTH_MODE",
        choices=("header", "query"),
    ),
    Option(
        "nexus.timeoutSeconds",
        float,
        60.0,
        "read timeout of one request, in seconds",
        env="NEXUS_TIMEOUT_SECONDS",
        minimum=1,
        maximum=3600,
    ),
    Option(
        "nexus.retries",
        int,
        4,
        "retries of a transient failure (connection, timeout, 429, 502-504) within one run",
        env="NEXUS_RETRIES",
        minimum=0,
        maximum=10,
    ),
)


@dataclass(frozen=True)
class NexusSettings:
    endpoint: str
    api_key: str
    auth_mode: str
    timeout_seconds: float
    retries: int

    def store_root(self, state_dir: Path) -> Path | None:
        return local_store_root(self.endpoint, state_dir=state_dir)


def resolve(loaded: config.LoadedConfig, flags: Mapping[str, Any]) -> NexusSettings:
    """The ``nexus`` settings by the usual precedence; the key is registered as a secret."""
    values = config.resolve(OPTIONS, loaded=loaded, section=loaded.data, section_path="", flags=flags, strict=False)
    register_secret(values["nexus.apiKey"])
    return NexusSettings(
        endpoint=values["nexus.endpoint"],
        api_key=values["nexus.apiKey"],
        auth_mode=values["nexus.authMode"],
        timeout_seconds=values["nexus.timeoutSeconds"],
        retries=values["nexus.retries"],
    )


def auth(api_key: str, auth_mode: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and query parameters that authenticate a request: ``x-functions-key``, or
    ``?code=`` for older deployments (``authMode: query``)."""
    if not api_key:
        return {}, {}
    if auth_mode == "query":
        return {}, {"code": api_key}
    return {"x-functions-key": api_key}, {}


def server_message(raw: bytes) -> str:
    """The server's own words from an error body (``error``, ``detail`` or ``message``, else the
    first bytes), redacted, on one line, prefixed for appending to a message."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    text = None
    if isinstance(body, dict):
        text = next((body[key] for key in ("error", "detail", "message") if isinstance(body.get(key), str)), None)
    if text is None:
        text = raw[:200].decode("utf-8", "replace")
    text = " ".join(redact(text).split())[:200]
    return f": {text}" if text else ""


def local_store_root(endpoint: str, *, state_dir: Path) -> Path | None:
    """The directory of the embedded store, or None when ``endpoint`` is an HTTP backend:
    no endpoint means ``<state dir>/nexus-store``; ``file:///dir`` means ``/dir``."""
    if not endpoint:
        return state_dir / DEFAULT_STORE_DIR_NAME
    if endpoint.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(endpoint)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigError(f"nexus.endpoint: expected file:///absolute/dir, got {endpoint!r}")
        return Path(unquote(parts.path))
    if endpoint.startswith(("http://", "https://")):
        return None
    raise ConfigError(f"nexus.endpoint: expected an http(s):// URL or file:///dir, got {endpoint!r}")
