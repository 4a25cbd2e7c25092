"""Dead-man's switch: a job's optional ``pingUrl`` (healthchecks.io style) hears when a run
starts (``<url>/start``), succeeds (``<url>``) or fails (``<url>/fail``, with the run's
summary as the body), so a job that stops running, hangs or keeps failing raises an alert.

A ping is best effort: it has a short time limit, and a ping that fails is logged and never
changes the job's own outcome. The URL itself is treated as a secret (anyone holding it can
report on the job's behalf), so it never appears in messages.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..core.exits import word_of
from ..core.secrets import register_secret

if TYPE_CHECKING:
    from .summary import RunSummary

PING_TIMEOUT_SECONDS = 10.0
PING_RETRIES = 2
MAX_BODY_BYTES = 10_000  # healthchecks.io keeps the first 10 kB of a ping body
START, SUCCESS, FAIL = "start", "success", "fail"

log = logging.getLogger("nexus_jobs")


def ping_url_for(url: str, kind: str) -> str:
    base = url.rstrip("/")
    return {START: base + "/start", SUCCESS: base, FAIL: base + "/fail"}[kind]


def ping(url: str | None, kind: str, *, body: str = "") -> bool:
    """Send one ping; True when the monitor took it. Never raises."""
    if not url:
        return True
    from ..core import http

    # Anyone holding the URL can report for the job; debug logs show the path on its own.
    register_secret(url)
    path = urlsplit(url).path.rstrip("/")
    if len(path) >= 8:
        register_secret(path)

    session = http.make_session(retries=PING_RETRIES, backoff_seconds=0.2, backoff_max_seconds=2.0, retry_post=True)
    try:
        response = session.post(
            ping_url_for(url, kind),
            data=body.encode("utf-8")[:MAX_BODY_BYTES],
            headers={"Content-Type": "text/plain; charset=utf-8"},
            timeout=(PING_TIMEOUT_SECONDS, PING_TIMEOUT_SECONDS),
        )
        status = response.status_code
        response.close()
    except Exception as error:  # any failure of the monitor must leave the job alone
        log.warning("could not ping the monitor (%s ping): %s", kind, http.describe_error(error))
        return False
    finally:
        session.close()
    if not 200 <= status < 300:
        log.warning("the monitor refused the %s ping (HTTP %s)", kind, status)
        return False
    log.debug("pinged the monitor: %s", kind)
    return True


def describe(summary: RunSummary | None) -> str:
    """The body of a success or fail ping: outcome, counts, message, failed items."""
    if summary is None:
        return "the run ended with an internal error (see the job's log)"
    lines = [f"{summary.job_id}: {word_of(summary.exit_code)} (exit {summary.exit_code})"]
    if summary.counts:
        lines.append(", ".join(f"{name} {count}" for name, count in summary.counts.items()))
    if summary.message:
        lines.append(summary.message)
    lines.extend(summary.failures[:50])
    return "\n".join(lines) + "\n"


def finish_kind(summary: RunSummary | None) -> str:
    return SUCCESS if summary is not None and summary.exit_code == 0 else FAIL
