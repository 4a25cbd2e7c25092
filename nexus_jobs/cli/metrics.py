"""Metrics for node_exporter's textfile collector (opt-in: config ``metricsFile`` or
``$NEXUS_JOBS_METRICS_FILE``), so a Prometheus server watches these jobs as it watches other
cron jobs: last success time, last duration, last exit code and counts, one series per job.

Every job rewrites only its own lines of the shared file, under a lock beside it, and
replaces the file atomically (node_exporter must never read half a file). The file is
readable by other users (0644): node_exporter runs as a user of its own, and the file holds
no secret. ``docs/operating.md`` lists the series.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ..core import state

PREFIX = "nexus_jobs_"
# Each series: name, help text, type.
SERIES = (
    ("last_success_timestamp_seconds", "Start of the last successful run (Unix time).", "gauge"),
    ("last_run_timestamp_seconds", "End of the last run (Unix time).", "gauge"),
    ("last_run_duration_seconds", "Duration of the last run.", "gauge"),
    ("last_exit_code", "Exit code of the last run (0 success; docs/exit-codes.md).", "gauge"),
    ("consecutive_failures", "Runs in a row that did not succeed.", "gauge"),
    ("runs_total", "Runs recorded.", "counter"),
    ("last_run_items", "Items of the last run, by kind (uploaded, failed, ...).", "gauge"),
)


def update(path: Path, record: dict[str, Any]) -> None:
    """Replace the lines of ``record``'s job in the metrics file at ``path``."""
    import filelock  # imported here: only runs with a metrics file need it

    job = str(record.get("jobId", ""))
    with filelock.FileLock(str(path) + ".lock", timeout=30):
        try:
            kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _job_of(line) not in ("", job)]
        except FileNotFoundError:
            kept = []
        samples = sorted(kept + _samples(job, record))
        lines = []
        for name, text, kind in SERIES:
            lines += [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} {kind}"]
            lines += [sample for sample in samples if sample.startswith(f"{PREFIX}{name}{{")]
        _write(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _samples(job: str, record: dict[str, Any]) -> list[str]:
    label = f'job="{_escape(job)}"'
    values: dict[str, Any] = {
        "last_success_timestamp_seconds": _epoch(record.get("lastSuccessStartedAt")),
        "last_run_timestamp_seconds": _epoch(record.get("lastFinishedAt")),
        "last_run_duration_seconds": record.get("lastDurationSeconds"),
        "last_exit_code": record.get("lastExitCode"),
        "consecutive_failures": record.get("consecutiveFailures"),
        "runs_total": record.get("runs"),
    }
    lines = [f"{PREFIX}{name}{{{label}}} {_text(value)}" for name, value in values.items() if _is_number(value)]
    counts = record.get("lastCounts")
    for kind, value in counts.items() if isinstance(counts, dict) else ():
        if _is_number(value):
            lines.append(f'{PREFIX}last_run_items{{{label},kind="{_escape(str(kind))}"}} {_text(value)}')
    return lines


def _job_of(line: str) -> str:
    """The job label of a sample line ("" for comments)."""
    if line.startswith("#") or 'job="' not in line:
        return ""
    rest = line.split('job="', 1)[1]
    return rest.split('"', 1)[0].replace('\\"', '"').replace("\\\\", "\\")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _epoch(text: Any) -> float | None:
    moment = state.parse_time(text)
    return moment.timestamp() if moment else None


def _text(value: float) -> str:
    """A sample value in full (``:g`` would round a Unix time to six digits)."""
    return str(int(value)) if isinstance(value, int) else repr(float(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _write(path: Path, data: bytes) -> None:
    descriptor, temporary = state.open_temporary(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
