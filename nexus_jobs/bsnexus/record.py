"""The worker's state file, ``<state dir>/bsnexus-worker-<id>.json``: task counters across
runs and the last heartbeat, read by ``status``. Written atomically on every heartbeat and at
the end of a run (not per task: a busy worker must not fsync for every task)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import state
from .settings import Settings

log = logging.getLogger("nexus_jobs.bsnexus")


def record_path(settings: Settings) -> Path:
    return state.run_record_path(settings.state_dir, settings.job_id)


def read(settings: Settings) -> dict[str, Any]:
    return state.read_json(record_path(settings), repair=False) or {}


@dataclass
class Tally:
    """Counters and heartbeat facts of this identity, saved in ``<state>/<job-id>.json``
    (read by ``status``). Shared with the heartbeat thread."""

    settings: Settings
    worker_id: str
    done: int = 0
    failed: int = 0
    earlier_done: int = 0
    earlier_failed: int = 0
    record: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        path = record_path(self.settings)
        self.record = state.read_json(path, repair=True, consequence="task counters start from zero") or {}
        self.earlier_done = _whole(self.record.get("tasksDone"))
        self.earlier_failed = _whole(self.record.get("tasksFailed"))
        self.record.update(
            workerId=self.worker_id,
            serverUrl=self.settings.server_url,
            startedAt=state.isoformat(state.now_utc()),
        )

    def count(self, *, success: bool) -> None:
        with self.lock:
            if success:
                self.done += 1
            else:
                self.failed += 1

    def heartbeat(self, outcome: str) -> None:
        with self.lock:
            if outcome == "ok":
                self.record["lastHeartbeatAt"] = state.isoformat(state.now_utc())
            self.record["lastHeartbeatOutcome"] = outcome
        self.save()

    def save(self, **final: Any) -> None:
        with self.lock:
            self.record.update(
                final, tasksDone=self.earlier_done + self.done, tasksFailed=self.earlier_failed + self.failed
            )
            document = dict(self.record)
            try:
                state.write_json_atomic(record_path(self.settings), document)
            except OSError as error:
                log.warning("cannot save the worker's state file: %s", error.strerror)


def _whole(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
