"""``nexus-jobs``: the operator's view of every scheduled job.

- ``status``: one row per configured job (enabled, interval, last run and result, next due,
  counts, dead letters, lock held), from the run records in the state directory.
- ``run-due``: every enabled job that is due runs once, as its own console script (so each
  takes its own lock and keeps its own exit code); one crontab line serves them all.
- ``check-config``: see :mod:`jobs_checks`.

This is the top layer: it may import the job modules, for their option lists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..cli import frame as cli
from ..core import config, state
from ..core.config import JobEntry
from ..core.errors import ConfigError
from ..core.exits import Exit, word_of, worst
from ..core.secrets import redact
from . import checks as jobs_checks

PROG = "nexus-jobs"
# How bad an exit code is, for run-due's overall result: a skipped overlapping run (75) is
# the mildest failure; a usage or internal error the worst.


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(prog=PROG, parser=build_parser(), run=run, argv=argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Status, due runs and config checks of every job.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("status", "show every configured job: enabled, interval, last run, result, next due, counts, lock"),
        ("run-due", "run every enabled job that is due, once, each under its own lock"),
        ("check-config", "check config, environment, state directory and backends without changing anything"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        cli.add_common_flags(sub, scheduled=False)
        if name == "run-due":
            sub.add_argument("--dry-run", action="store_true", help="say which jobs are due, run nothing")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "check-config":
        return jobs_checks.check_config(args)
    loaded = config.load(config_flag=args.config, env_file_flag=args.env_file)
    state_dir = config.resolve_state_dir(flag=args.state_dir, loaded=loaded)
    if args.command == "status":
        return show_status(loaded, state_dir, as_json=args.json)
    return run_due(loaded, state_dir, args)


def job_status(entry: JobEntry, state_dir: Path) -> dict[str, Any]:
    problem = ""
    try:
        record = state.read_json(state.run_record_path(state_dir, entry.job_id), repair=False) or {}
    except ConfigError as error:
        record, problem = {}, str(error)
    due = cli.next_due(record, entry.interval_minutes)
    try:
        lock_held: bool | None = state.lock_is_held(state_dir, entry.job_id)
    except OSError:
        lock_held = None  # e.g. another user's state directory
    return {
        "job": entry.job_id,
        "type": entry.job_type,
        "command": config.JOB_TYPES.get(entry.job_type, ""),
        "enabled": entry.enabled,
        "intervalMinutes": entry.interval_minutes,
        "lastRun": record.get("lastStartedAt"),
        "lastFinished": record.get("lastFinishedAt"),
        "lastResult": record.get("lastOutcome"),
        "lastExitCode": record.get("lastExitCode"),
        "lastMessage": redact(str(record.get("lastMessage") or problem)),
        "lastSuccess": record.get("lastSuccessStartedAt"),
        "consecutiveFailures": int(record.get("consecutiveFailures") or 0),
        "runs": int(record.get("runs") or 0),
        "nextDue": state.isoformat(due) if due else None,
        "due": entry.enabled and (due is None or state.now_utc() >= due),
        "counts": record.get("lastCounts") or {},
        "standing": record.get("standing") or {},
        "deadLetters": _dead_letter_count(state_dir, entry.job_id),
        "lockHeld": lock_held,
    }


def _dead_letter_count(state_dir: Path, job_id: str) -> int:
    try:
        document = state.read_json(state.data_path(state_dir, job_id, "dead-letters"), repair=False) or {}
    except ConfigError:
        return 0
    items = document.get("items")
    return len(items) if isinstance(items, list) else 0


def show_status(loaded: config.LoadedConfig, state_dir: Path, *, as_json: bool) -> int:
    rows = [job_status(entry, state_dir) for entry in config.scheduled_jobs(loaded)]
    if as_json:
        cli.print_json({"config": str(loaded.path) if loaded.path else None, "stateDir": str(state_dir), "jobs": rows})
        return Exit.OK
    print(f"config: {loaded.path or 'none found (defaults)'}")
    print(f"state:  {state_dir}")
    header = ("JOB", "TYPE", "ENABLED", "EVERY", "LAST RUN", "RESULT", "NEXT DUE", "COUNTS", "DEAD", "LOCK")
    table = [header, *(_table_row(row) for row in rows)]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    for row in rows:
        if row["lastResult"] not in (None, "success") and row["lastMessage"]:
            print(f"{row['job']}: {row['lastMessage']}")
    return Exit.OK


def _table_row(row: dict[str, Any]) -> tuple[str, ...]:
    if not row["enabled"]:
        next_due = "disabled"
    elif row["due"]:
        next_due = "now"
    else:
        next_due = _short_time(row["nextDue"])
    if row["lastResult"] is None:
        result = "never run" if row["lastRun"] is None else "running or killed"
    else:
        result = f"{row['lastResult']} ({row['lastExitCode']})" if row["lastExitCode"] else row["lastResult"]
    figures = row["standing"] or row["counts"]
    counts = ", ".join(f"{name} {value}" for name, value in figures.items() if value) or "-"
    lock = {True: "held", False: "free", None: "unknown"}[row["lockHeld"]]
    interval = f"{row['intervalMinutes']:g}m" if row["intervalMinutes"] else "each run"
    return (
        row["job"],
        row["type"],
        "yes" if row["enabled"] else "no",
        interval,
        _short_time(row["lastRun"]),
        result,
        next_due,
        counts,
        str(row["deadLetters"]),
        lock,
    )


def _short_time(text: str | None) -> str:
    moment = state.parse_time(text)
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


# ---------------------------------------------------------------- run-due


def run_due(loaded: config.LoadedConfig, state_dir: Path, args: argparse.Namespace) -> int:
    """Each due job as a subprocess, one after the other; the result is the worst exit code."""
    results: list[dict[str, Any]] = []
    for entry in config.scheduled_jobs(loaded):
        status = job_status(entry, state_dir)
        if not entry.enabled or not status["due"]:
            reason = "disabled" if not entry.enabled else f"not due until {status['nextDue']}"
            cli.log.info("%s: %s", entry.job_id, reason)
            results.append({"job": entry.job_id, "ran": False, "reason": reason, "exitCode": Exit.OK})
            continue
        if args.dry_run:
            cli.log.info("%s: due; would run %s", entry.job_id, config.JOB_TYPES[entry.job_type])
            results.append({"job": entry.job_id, "ran": False, "reason": "due (dry run)", "exitCode": Exit.OK})
            continue
        code = _run_job(entry, loaded=loaded, state_dir=state_dir, args=args)
        cli.log.info("%s: %s (exit %d)", entry.job_id, word_of(code), code)
        results.append({"job": entry.job_id, "ran": True, "outcome": word_of(code), "exitCode": code})
    overall = worst([result["exitCode"] for result in results])
    if args.json:
        cli.print_json({"jobs": results, "exitCode": overall, "outcome": word_of(overall)})
    return overall


def _run_job(entry: JobEntry, *, loaded: config.LoadedConfig, state_dir: Path, args: argparse.Namespace) -> int:
    argv = [_script(config.JOB_TYPES[entry.job_type]), "--state-dir", str(state_dir)]
    if entry.key_path:
        argv += ["--job-id", entry.job_id]
    if loaded.path is not None:
        argv += ["--config", str(loaded.path)]
    if args.env_file:
        argv += ["--env-file", args.env_file]
    argv += [flag for flag, wanted in (("--verbose", args.verbose), ("--debug", args.debug)) if wanted]
    try:
        # The job reads the environment and .env itself: no secret goes into its arguments.
        return subprocess.run(argv, check=False, stdin=subprocess.DEVNULL).returncode
    except OSError as error:
        cli.log.error("%s: cannot start %s: %s", entry.job_id, argv[0], error.strerror)
        return Exit.SOFTWARE


def _script(name: str) -> str:
    """The job's console script: beside this one (same installation) if there, else on PATH."""
    for folder in (Path(sys.argv[0]).parent, Path(sys.executable).parent):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name) or name


# ---------------------------------------------------------------- check-config
