"""Exceptions that carry the documented exit code of the failure they describe.

Deeper layers raise these; each console script's ``main()`` turns them into one line on
stderr and the exit code. Nothing below ``main()`` calls ``sys.exit``.
"""

from __future__ import annotations

from .exits import Exit


class JobError(Exception):
    """A failure that ends the run with a documented exit code."""

    exit_code = Exit.PARTIAL


class UsageError(JobError):
    exit_code = Exit.USAGE


class BackendUnavailable(JobError):
    exit_code = Exit.UNAVAILABLE


class LockHeld(JobError):
    exit_code = Exit.TEMPFAIL


class TransientError(JobError):
    exit_code = Exit.TEMPFAIL


class CannotCreate(JobError):
    """A state file or directory cannot be created (unwritable, a directory in the way)."""

    exit_code = Exit.CANTCREATE


class StorageError(JobError):
    """Reading or writing state failed (disk full, file size limit, I/O error)."""

    exit_code = Exit.IOERR


class AuthError(JobError):
    exit_code = Exit.NOPERM


class ConfigError(JobError):
    """One or more configuration problems, each naming the file and the key path."""

    exit_code = Exit.CONFIG

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))
