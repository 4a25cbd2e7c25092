"""Skipping the scan of a database that cannot hold anything new (``docs/openclaw.md``, "How
sent-once is kept"): when the last scan left nothing to send, the database's files are the same
(every committed write changes the database or its WAL), the grace period is the same, and no
last segment can complete by time alone yet, a scan would find nothing either. Its counts are
repeated instead. A full scan happens at least hourly anyway.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from ..cli import frame as cli
from ..openclaw import database as openclaw_db

QUIET_KEY = "database:"  # in the agent's markers
SCAN_AT_LEAST_EVERY_MS = 3_600_000
COUNTED = ("unchanged", "waiting")


class LastScan:
    """What the last full scan of one agent database found, and this one's bookkeeping."""

    def __init__(
        self, agent_markers: MutableMapping[str, dict[str, Any]], files: list[int] | None, now_ms: int
    ) -> None:
        self.markers = agent_markers
        self.files = files
        self.now_ms = now_ms
        self.wake_ms = now_ms + SCAN_AT_LEAST_EVERY_MS
        self.before: tuple[int, ...] = ()

    def repeat(self, summary: cli.RunSummary) -> bool:
        """True, with the last scan's counts added, when this scan can be skipped."""
        quiet = self.markers.get(QUIET_KEY)
        if self.files is None or quiet is None or quiet.get("files") != self.files:
            return False
        wake = quiet.get("wakeAtMs")
        if not isinstance(wake, int) or self.now_ms >= wake:
            return False
        for key in COUNTED:
            summary.counts[key] += quiet[key] if isinstance(quiet.get(key), int) else 0
        return True

    def start(self, summary: cli.RunSummary) -> None:
        self.before = (*(summary.counts[key] for key in COUNTED), len(summary.failures))

    def waiting(self, session: openclaw_db.SessionRow, *, last_complete: bool, grace_ms: float) -> None:
        """Note a session whose last segment completes by time alone, once quiet long enough."""
        if not last_complete and (not session.current or session.run_over):
            self.wake_ms = min(self.wake_ms, int(session.last_event_ms + grace_ms))

    def finish(self, summary: cli.RunSummary, *, nothing_to_send: bool) -> bool:
        """Remember this scan when it left nothing to send; True if the markers changed."""
        previous = self.markers.pop(QUIET_KEY, None)
        if self.files is not None and nothing_to_send and len(summary.failures) == self.before[-1]:
            self.markers[QUIET_KEY] = {
                "files": self.files,
                "wakeAtMs": self.wake_ms,
                **{key: summary.counts[key] - before for key, before in zip(COUNTED, self.before[:-1], strict=True)},
            }
        current = self.markers.get(QUIET_KEY)
        # Not saved for a later wake time alone: only when it appears, goes, or the files changed.
        return (previous is None) != (current is None) or bool(
            previous and current and previous.get("files") != current["files"]
        )
