"""HTTP for every job: one ``requests.Session`` per run, explicit timeouts, and urllib3's
``Retry`` for transient failures (connection errors, timeouts, 429, 502, 503, 504) with
exponential backoff, jitter and ``Retry-After``, bounded in count and in wait."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .. import __version__

if TYPE_CHECKING:
    import requests

CONNECT_TIMEOUT_SECONDS = 10.0
RETRY_STATUSES = (429, 502, 503, 504)
USER_AGENT = f"nexus-jobs/{__version__}"


def make_session(
    *,
    retries: int = 4,
    backoff_seconds: float = 0.5,
    backoff_max_seconds: float = 30.0,
    retry_after_max_seconds: int = 120,
    pool_size: int = 10,
    retry_post: bool = False,
    base_url: str | None = None,
) -> requests.Session:
    """A session whose adapter retries transient failures. POST is retried only when the
    caller says the endpoint is idempotent (``retry_post``). With ``base_url`` the proxy
    settings of the environment are resolved once, for that URL."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    methods = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"} | ({"POST"} if retry_post else set())
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        allowed_methods=frozenset(methods),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_seconds,
        backoff_max=backoff_max_seconds,
        backoff_jitter=backoff_seconds,
        respect_retry_after_header=True,
        retry_after_max=retry_after_max_seconds,
        raise_on_status=False,
        raise_on_redirect=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    if base_url:
        # requests walks the whole environment for proxy settings on every request (about
        # 0.4 ms each, a lot over thousands of uploads); resolve them once instead.
        session.proxies.update(requests.utils.get_environ_proxies(base_url))
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.trust_env = False
    return session


def describe_error(error: BaseException) -> str:
    """One line for a network failure, without the URL (it may carry a key in its query)."""
    import requests

    reason: BaseException | None = error
    # Walk to the innermost cause: "Max retries exceeded ... (Caused by ...)" is noise.
    while reason is not None and reason.__context__ is not None and not isinstance(reason, OSError):
        reason = reason.__context__
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(error, requests.exceptions.ReadTimeout):
        return "no answer within the read timeout"
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS error (certificate verification failed?)"
    if isinstance(error, requests.exceptions.ConnectionError):
        text = str(reason) if isinstance(reason, OSError) else ""
        for known in (
            "Connection refused",
            "Connection reset",
            "Name or service not known",
            "timed out",
            "No route to host",
            "Remote end closed connection",
            "Temporary failure in name resolution",
        ):
            if known.lower() in str(error).lower() or known.lower() in text.lower():
                return known.lower()
        return "connection failed"
    if isinstance(error, requests.exceptions.RetryError):
        return "still failing after retries"
    return type(error).__name__
