"""Every secret this process knows, so that none reaches a log line, an error message,
``--json`` output or a state file: settings marked secret register their values here, and
everything written for a person or a file passes through :func:`redact`."""

from __future__ import annotations

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Make sure ``value`` never reaches logs, error messages or ``--json`` output."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def known() -> bool:
    """Whether any secret is registered (redaction has work to do)."""
    return bool(_secrets)
