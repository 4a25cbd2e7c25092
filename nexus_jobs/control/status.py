"""``nexus-jobs status``: what every configured job did last and what it will do next, from
the run records in the state directory, in 80 columns.

A run in progress shows as ``running`` (its lock is held), a run that ended without
recording how (killed with SIGKILL, a power cut) as ``killed``: a previous result is never
shown as the latest. Counts of the last run and the job's standing (totals kept in its
state) are labelled apart. The exit code is 3 when an enabled job's last run failed, like
``systemctl is-failed`` (``docs/exit-codes.md``), so a monitor can use it.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

from ..cli import frame as cli
from ..cli.summary import result_object
from ..core import config, state
from ..core.config import JobEntry
from ..core.errors import JobError, UsageError
from ..core.exits import Exit
from ..core.secrets import redact

FILE_KINDS = ("rejected", "conflicts", "all")
WIDTH = 80
# Results that do not make a job "failed" for the exit code: nothing went wrong with the job.
_NOT_FAILED = (None, "success", "running", "busy", "interrupted")


def job_status(entry: JobEntry, state_dir: Path) -> dict[str, Any]:
    problem = ""
    path = state.run_record_path(state_dir, entry.job_id)
    try:
        record = state.read_json(path, repair=False, shape=state.run_record_shape) or {}
    except JobError as error:
        record, problem = {}, str(error)
    due = cli.next_due(record, entry.interval_minutes)
    try:
        lock_held: bool | None = state.lock_is_held(state_dir, entry.job_id)
    except (OSError, JobError):
        lock_held = None  # e.g. another user's state directory
    return {
        "job": entry.job_id,
        "type": entry.job_type,
        "command": config.JOB_TYPES.get(entry.job_type, ""),
        "enabled": entry.enabled,
        "intervalMinutes": entry.interval_minutes,
        "lastRun": record.get("lastStartedAt"),
        "lastFinished": record.get("lastFinishedAt"),
        "lastResult": _result(record, lock_held),
        "lastExitCode": record.get("lastExitCode"),
        "lastMessage": redact(str(record.get("lastMessage") or problem)),
        "lastSuccess": record.get("lastSuccessStartedAt"),
        "lastDurationSeconds": record.get("lastDurationSeconds"),
        "consecutiveFailures": record.get("consecutiveFailures") or 0,
        "runs": record.get("runs") or 0,
        "nextDue": state.isoformat(due) if due else None,
        "due": entry.enabled and (due is None or state.now_utc() >= due),
        "counts": record.get("lastCounts") or {},
        "standing": record.get("standing") or {},
        "files": record.get("files") or {},
        "deadLetters": _dead_letter_count(state_dir, entry.job_id),
        "lockHeld": lock_held,
    }


def _result(record: dict[str, Any], lock_held: bool | None) -> str | None:
    """The latest result: "running" while a run holds the lock, "killed" when the last run
    started and never recorded its end, else the recorded outcome (None: never run)."""
    if lock_held:
        return "running"
    started = state.parse_time(record.get("lastStartedAt"))
    finished = state.parse_time(record.get("lastFinishedAt"))
    if started is not None and (finished is None or finished < started):
        return "killed"
    outcome = record.get("lastOutcome")
    return outcome if isinstance(outcome, str) else None


def failed(row: dict[str, Any]) -> bool:
    return bool(row["enabled"]) and row["lastResult"] not in _NOT_FAILED


def _dead_letter_count(state_dir: Path, job_id: str) -> int:
    try:
        document = state.read_json(state.data_path(state_dir, job_id, "dead-letters"), repair=False) or {}
    except JobError:
        return 0
    items = document.get("items")
    return len(items) if isinstance(items, list) else 0


def show(loaded: config.LoadedConfig, state_dir: Path, args: argparse.Namespace) -> int:
    entries = config.scheduled_jobs(loaded)
    if args.job is not None:
        entries = [entry for entry in entries if entry.job_id == args.job]
        if not entries:
            known = ", ".join(entry.job_id for entry in config.scheduled_jobs(loaded))
            raise UsageError(f"no job {args.job!r} in the config (jobs: {known})")
    elif args.files:
        raise UsageError("--files needs --job ID")
    rows = [job_status(entry, state_dir) for entry in entries]
    code = Exit.JOB_FAILED if any(failed(row) for row in rows) else Exit.OK
    if args.json:
        details: dict[str, Any] = {"config": str(loaded.path) if loaded.path else None, "stateDir": str(state_dir)}
        details["jobs"] = rows
        counts = {
            "jobs": len(rows),
            "running": sum(row["lastResult"] == "running" for row in rows),
            "failed": sum(failed(row) for row in rows),
        }
        failures = [f"{row['job']}: {row['lastResult']}: {row['lastMessage']}" for row in rows if failed(row)]
        cli.print_json(
            result_object(
                job=args.job, job_type="status", exit_code=code, counts=counts, failures=failures, details=details
            )
        )
        return code
    if args.files:
        print_files(rows[0], args.files)
        return code
    print(f"config: {loaded.path or 'none found (defaults)'}")
    print(f"state:  {state_dir}")
    print_table(rows)
    for row in rows:
        print_details(row, full=args.job is not None)
    return code


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("JOB", "EVERY", "LAST RUN (UTC)", "RESULT", "NEXT DUE (UTC)")
    table = [header, *(_table_row(row) for row in rows)]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _table_row(row: dict[str, Any]) -> tuple[str, ...]:
    if not row["enabled"]:
        next_due = "disabled"
    elif row["due"]:
        next_due = "now"
    else:
        next_due = _short_time(row["nextDue"])
    result = row["lastResult"] or "never run"
    if row["lastExitCode"] and row["lastResult"] not in ("running", "killed"):
        result += f" ({row['lastExitCode']})"
    interval = f"{row['intervalMinutes']:g}m" if row["intervalMinutes"] else "-"
    job = row["job"] if len(row["job"]) <= 20 else row["job"][:19] + "~"
    return (job, interval, _short_time(row["lastRun"]), result, next_due)


def print_details(row: dict[str, Any], *, full: bool) -> None:
    """Indented lines under the table: the last run's counts, the standing, dead letters,
    the failure message; how to list files that need the operator."""
    lines = []
    last = _figures(row["counts"])
    if last and row["lastResult"] != "running":
        lines.append(f"last run: {last}")
    if _figures(row["standing"]):
        lines.append(f"in total: {_figures(row['standing'])}")
    if row["deadLetters"]:
        lines.append(f"dead letters: {row['deadLetters']}")
    if row["lastResult"] == "running":
        since = f" since {_short_time(row['lastRun'])} UTC" if row["lastRun"] else ""
        lines.append(f"running{since} (its lock is held)")
    elif row["lastResult"] == "killed":
        lines.append("the last run ended without recording a result (killed?); the next run redoes its work")
    elif row["lastResult"] not in (None, "success") and row["lastMessage"]:
        lines.append(row["lastMessage"])
    listed = {kind: len(items) for kind, items in row["files"].items() if items}
    if listed:
        shown = ", ".join(f"{count} {kind}" for kind, count in listed.items())
        lines.append(f"files that need you: {shown}; list them with:")
    if full:
        lines.append(f"runs: {row['runs']}, failures in a row: {row['consecutiveFailures']}")
    for line in lines:
        print(textwrap.fill(line, WIDTH, initial_indent=f"{row['job']}: ", subsequent_indent="    "))
        if line.endswith("list them with:"):
            print(f"    nexus-jobs status --job {row['job']} --files all")


def print_files(row: dict[str, Any], kind: str) -> None:
    kinds = [name for name in row["files"] if kind in ("all", name)]
    items = [(name, item) for name in kinds for item in row["files"].get(name) or []]
    if not items:
        print(f"{row['job']}: no {kind if kind != 'all' else 'rejected or conflicting'} files in the last run's record")
        return
    for name, item in items:
        print(textwrap.fill(f"{item.get('reason', '')}", WIDTH, initial_indent=f"{name}: {item.get('name', '?')}: "))
    print(f"{len(items)} file(s); to send one again, see 'Re-uploading a file' in the README")


def _figures(figures: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value}" for name, value in figures.items() if value)


def _short_time(text: str | None) -> str:
    moment = state.parse_time(text)
    return moment.strftime("%m-%d %H:%M") if moment else "-"
