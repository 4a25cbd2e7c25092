"""What one run did, as the frame records it, prints with ``--json`` and pings with.

Every command prints the same object with ``--json`` (``docs/operating.md``): the keys of
:data:`COMMON_KEYS` always, whatever happened; what is particular to a command goes under
``details``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..core import state
from ..core.exits import Exit, word_of

COMMON_KEYS = (
    "job",
    "type",
    "outcome",
    "exitCode",
    "dryRun",
    "startedAt",
    "durationSeconds",
    "counts",
    "failures",
    "message",
    "planned",
    "details",
)


def result_object(
    *,
    job: str | None,
    job_type: str | None,
    exit_code: int,
    outcome: str | None = None,
    started: datetime | None = None,
    duration_seconds: float | None = None,
    counts: dict[str, int] | None = None,
    failures: list[str] | None = None,
    message: str = "",
    planned: list[str] | None = None,
    dry_run: bool = False,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one ``--json`` shape. ``outcome`` defaults to the word of ``exit_code``; words
    that share a code (``not-due`` and ``disabled`` are exit 0) are passed explicitly."""
    return {
        "job": job,
        "type": job_type,
        "outcome": outcome or word_of(exit_code),
        "exitCode": int(exit_code),
        "dryRun": dry_run,
        "startedAt": state.isoformat(started) if started else None,
        "durationSeconds": round(duration_seconds, 3) if duration_seconds is not None else None,
        "counts": counts or {},
        "failures": failures or [],
        "message": message,
        "planned": planned or [],
        "details": details or {},
    }


@dataclass
class RunSummary:
    """What one run did: counts per outcome, one line per failed item, and its exit code."""

    job_id: str
    job_type: str
    exit_code: int = Exit.OK
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    # Figures that describe the job's state after the run (markers uploaded, rejected, dead
    # letters...), kept in the run record for ``nexus-jobs status``.
    standing: dict[str, int] = field(default_factory=dict)
    # Items that need the operator (rejected or conflicting files, with the reason of each),
    # kept in the run record for ``nexus-jobs status --files``: {"rejected": [{"name", "reason"}]}.
    files: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    # What a dry run would do, one line per item ("would upload main/a.jsonl (...)").
    planned: list[str] = field(default_factory=list)
    outcome: str | None = None

    def would(self, text: str) -> None:
        """Note one thing a dry run would do."""
        self.planned.append(text)

    def as_json(self, *, started: datetime, duration_seconds: float, dry_run: bool) -> dict[str, Any]:
        return result_object(
            job=self.job_id,
            job_type=self.job_type,
            exit_code=self.exit_code,
            outcome=self.outcome,
            started=started,
            duration_seconds=duration_seconds,
            counts=self.counts,
            failures=self.failures,
            message=self.message,
            planned=self.planned,
            dry_run=dry_run,
            details=self.details,
        )
