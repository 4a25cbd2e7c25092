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
from ..core.errors import AuthError, BackendUnavailable, ConfigError, JobError
from ..core.secrets import redact, register_secret

DEFAULT_STORE_DIR_NAME = "nexus-store"
# The endpoint that asks for the embedded store in the state directory; an empty endpoint gets
# the same store, but every run that stores something there says so (docs/nexus.md).
EMBEDDED = "embedded"

OPTIONS = (
    Option(
        "nexus.endpoint",
        str,
        "",
        "Nexus API base URL; file:///dir for a local directory store; 'embedded' for the one in "
        "the state directory (empty: that store too, with a warning on every run that stores there)",
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

    @property
    def implicit_store(self) -> bool:
        """No endpoint at all: the embedded store serves, though nobody asked for it (an env
        file that did not load, a typo): runs that store something there must say so."""
        return not self.endpoint


def resolve(loaded: config.LoadedConfig, flags: Mapping[str, Any]) -> NexusSettings:
    """The ``nexus`` settings by the usual precedence; the key is registered as a secret.
    Every problem is reported at once: values, the form of the endpoint and the key, and keys
    of the ``nexus`` section that no option describes (a typo such as ``endpont`` would
    otherwise leave the endpoint empty and send everything to the embedded store)."""
    problems: list[str] = []
    try:
        values = config.resolve(OPTIONS, loaded=loaded, section=loaded.data, section_path="", flags=flags, strict=False)
    except ConfigError as error:
        problems.extend(error.problems)
        values = {}
    section = loaded.data.get("nexus")
    known = [option.path.split(".", 1)[1] for option in OPTIONS]
    for key in section if isinstance(section, dict) else ():
        if key not in known:
            problems.append(f"{loaded.where('nexus.' + key)}: {config.unknown_key(key, known)}")
    if values:
        register_secret(values["nexus.apiKey"])
        problems.extend(_form_problems(values["nexus.endpoint"], values["nexus.apiKey"]))
    if problems:
        raise ConfigError(problems)
    return NexusSettings(
        endpoint=values["nexus.endpoint"],
        api_key=values["nexus.apiKey"],
        auth_mode=values["nexus.authMode"],
        timeout_seconds=values["nexus.timeoutSeconds"],
        retries=values["nexus.retries"],
    )


def _form_problems(endpoint: str, api_key: str) -> list[str]:
    """What is wrong with the form of the endpoint and the key, before any request is made."""
    problems = []
    if any(character.isspace() or not character.isprintable() for character in endpoint):
        problems.append(f"nexus.endpoint: contains spaces or control characters: {endpoint!r}")
    elif endpoint.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(endpoint)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
            if not parts.hostname:
                raise ValueError("no host name")
        except ValueError as error:
            problems.append(f"nexus.endpoint: not a valid URL ({error}): {endpoint!r}")
    elif endpoint and endpoint != EMBEDDED and not endpoint.startswith("file://"):
        problems.append(
            f"nexus.endpoint: expected an http(s):// URL, file:///dir or {EMBEDDED!r}, got {endpoint!r}"
        )
    # An HTTP header holds printable ASCII only; the key itself is never shown.
    if api_key and not all(33 <= ord(character) <= 126 for character in api_key):
        problems.append("nexus.apiKey (NEXUS_API_KEY): contains spaces or characters that are not printable ASCII")
    return problems


def api_key_in_config_file(loaded: config.LoadedConfig) -> bool:
    """Whether the config file itself holds the API key (it belongs in the environment or .env)."""
    section = loaded.data.get("nexus")
    return isinstance(section, dict) and bool(section.get("apiKey"))


def auth(api_key: str, auth_mode: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and query parameters that authenticate a request: ``x-functions-key``, or
    ``?code=`` for older deployments (``authMode: query``)."""
    if not api_key:
        return {}, {}
    if auth_mode == "query":
        return {}, {"code": api_key}
    return {"x-functions-key": api_key}, {}


def answer_error(status: int, raw: bytes, *, url: str, what: str) -> JobError | None:
    """The job error of a Nexus answer that ends the run, naming the URL (never the key:
    ``url`` is the endpoint without the query) and what to fix; None for other answers.
    401/403: the key (77); 404: a wrong path, so a configuration error (78); 5xx: the backend
    is unavailable (69). ``docs/exit-codes.md`` lists them."""
    where = f"Nexus at {url} answered {status} while {what}{server_message(raw)}"
    if status in (401, 403):
        return AuthError(
            f"Nexus at {url} refused the API key ({status}) while {what}; check NEXUS_API_KEY and nexus.authMode"
        )
    if status == 404:
        return ConfigError(f"{where}; nexus.endpoint must be the API base URL (the part before /sessions)")
    if status >= 500:
        return BackendUnavailable(f"{where}; try again later or ask the Nexus operator")
    return None


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
    no endpoint or ``embedded`` means ``<state dir>/nexus-store``; ``file:///dir`` means ``/dir``."""
    if not endpoint or endpoint == EMBEDDED:
        return state_dir / DEFAULT_STORE_DIR_NAME
    if endpoint.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(endpoint)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigError(f"nexus.endpoint: expected file:///absolute/dir, got {endpoint!r}")
        return Path(unquote(parts.path))
    if endpoint.startswith(("http://", "https://")):
        return None
    raise ConfigError(f"nexus.endpoint: expected an http(s):// URL, file:///dir or {EMBEDDED!r}, got {endpoint!r}")
