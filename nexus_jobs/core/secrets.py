"""Every secret this process knows, so that none reaches a log line, an error message,
``--json`` output, a state file or a child process: settings marked secret register their
values here, everything written for a person or a file passes through :func:`redact`, and
every child gets :func:`child_environment` (the policy is in ``docs/child-processes.md``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

_secrets: set[str] = set()

# The environment variables of every setting marked ``secret=True`` in any command's Option
# table. Listed here, in the one layer every command shares, because a child of one command
# must not inherit another command's secrets either (a webhook command must not see the
# BSNexus worker token); tests/test_child_environment.py keeps this list equal to the tables.
SECRET_VARIABLES = frozenset(
    {
        "NEXUS_API_KEY",
        "OPENCLAW_HOOKS_TOKEN",
        "BSNEXUS_REGISTRATION_TOKEN",
        "BSNEXUS_WORKER_TOKEN",
        "MQTT_PASSWORD",
    }
)
# A backend URL with a password in it (``redis://:pw@host``, ``mqtt://user:pw@host``) is a
# secret whatever variable holds it.
_URL_WITH_PASSWORD = re.compile(r"(?i)^\s*(redis|rediss|unix|mqtt|mqtts|ws|wss)://[^/@\s]*:[^/@\s]+@")


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


def is_private(name: str, value: str) -> bool:
    """Whether the variable ``name=value`` of this process must not reach a child."""
    if name in SECRET_VARIABLES or _URL_WITH_PASSWORD.match(value):
        return True
    return any(secret in value for secret in _secrets)


def child_environment(
    passed: Mapping[str, str] | None = None, *, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a child process: this process's environment minus every secret the
    project knows, plus what the job explicitly passes (``passed`` wins). Values read from
    ``.env`` are never in it: they stay in the loaded configuration, not in ``os.environ``."""
    parent = os.environ if parent is None else parent
    environment = {name: value for name, value in parent.items() if not is_private(name, value)}
    environment.update(passed or {})
    return environment
