"""The exit codes of every command: one table, each code with the word ``--json`` and
``status`` use for it and its severity (to report the worst of several results).

Codes follow BSD ``sysexits.h`` where one fits; ``docs/exit-codes.md`` is the operator's view.
"""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """An exit code. ``word`` is the machine word of the outcome; ``severity`` orders codes
    from mildest to worst: another run already going (75) is the mildest failure, a bug (70)
    the worst."""

    word: str
    severity: int

    def __new__(cls, code: int, word: str, severity: int) -> Exit:
        member = int.__new__(cls, code)
        member._value_ = code
        member.word = word
        member.severity = severity
        return member

    OK = 0, "success", 0
    PARTIAL = 1, "partial", 3
    USAGE = 2, "usage", 9
    # Only ``nexus-jobs status``: a job's last run failed (as ``systemctl is-failed`` tells).
    JOB_FAILED = 3, "failed", 5
    UNAVAILABLE = 69, "unavailable", 4
    SOFTWARE = 70, "internal", 10
    CANTCREATE = 73, "io", 6
    IOERR = 74, "io", 6
    TEMPFAIL = 75, "busy", 1
    NOPERM = 77, "auth", 7
    CONFIG = 78, "config", 8
    INTERRUPTED = 130, "interrupted", 2
    TERMINATED = 143, "interrupted", 2

    @classmethod
    def of(cls, code: int) -> Exit | None:
        """The member for ``code``, or None for a code this project never uses itself (a
        child's own exit code, say)."""
        return cls._value2member_map_.get(code)  # type: ignore[return-value]


# Outcome words of runs that end with 0 without doing the work: skipped by the schedule.
NOT_DUE = "not-due"
DISABLED = "disabled"


def word_of(code: int) -> str:
    """The outcome word of ``code``; codes outside the table are "failure"."""
    member = Exit.of(code)
    return member.word if member is not None else "failure"


def worst(codes: list[int]) -> int:
    """The most severe of ``codes`` (0 when there are none); unknown codes count as worst."""

    def severity(code: int) -> int:
        member = Exit.of(code)
        return member.severity if member is not None else Exit.SOFTWARE.severity + 1

    return max(codes, key=severity, default=Exit.OK)
