"""What one run did, as the frame records it, prints with ``--json`` and pings with."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..core import state
from ..core.exits import Exit, word_of


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

    def as_json(self, *, started: datetime, duration_seconds: float, dry_run: bool) -> dict[str, Any]:
        return {
            "job": self.job_id,
            "type": self.job_type,
            "outcome": word_of(self.exit_code),
            "exitCode": self.exit_code,
            "dryRun": dry_run,
            "startedAt": state.isoformat(started),
            "durationSeconds": round(duration_seconds, 3),
            "counts": self.counts,
            "failures": self.failures,
            "message": self.message,
            **self.details,
        }
