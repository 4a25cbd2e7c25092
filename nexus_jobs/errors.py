"""Exceptions that carry the documented exit code of the failure they describe.

Deeper layers raise these; each console script's ``main()`` turns them into one line on
stderr and the exit code. Nothing below ``main()`` calls ``sys.exit``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77
EXIT_CONFIG = 78

# From mildest to worst, to report the worst of several results: another run already going
# (75) is the mildest failure, a bug (70) the worst.
_SEVERITY = (
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_PARTIAL,
    EXIT_UNAVAILABLE,
    EXIT_NOPERM,
    EXIT_CONFIG,
    EXIT_USAGE,
    EXIT_SOFTWARE,
)


def worst_exit_code(codes: list[int]) -> int:
    """The most severe of ``codes`` (0 when there are none); unknown codes count as worst."""
    rank = {code: position for position, code in enumerate(_SEVERITY)}
    return max(codes, key=lambda code: rank.get(code, len(_SEVERITY)), default=EXIT_OK)


class JobError(Exception):
    """A failure that ends the run with a documented exit code."""

    exit_code = EXIT_PARTIAL


class UsageError(JobError):
    exit_code = EXIT_USAGE


class BackendUnavailable(JobError):
    exit_code = EXIT_UNAVAILABLE


class LockHeld(JobError):
    exit_code = EXIT_TEMPFAIL


class TransientError(JobError):
    exit_code = EXIT_TEMPFAIL


class AuthError(JobError):
    exit_code = EXIT_NOPERM


class ConfigError(JobError):
    """One or more configuration problems, each naming the file and the key path."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))
