"""What every console script shares: flags, logging, secret redaction, the ``main()``
wrapper that turns exceptions into one line and an exit code, and the cron conventions of a
scheduled run (due check, lock, run record, ``--json`` summary, progress bar)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .. import __version__
from ..core import secrets, state
from ..core.config import JobEntry, Option
from ..core.errors import JobError, LockHeld
from ..core.exits import Exit, word_of
from ..core.secrets import redact
from .summary import RunSummary

log = logging.getLogger("nexus_jobs")


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if secrets.known():
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


def setup_logging(prog: str, *, verbose: bool, debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter())
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if debug else f"{prog}: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    log.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    # urllib3 warns on every retry; under cron a retry that then succeeds must stay quiet.
    logging.getLogger("urllib3").setLevel(logging.DEBUG if debug else logging.WARNING if verbose else logging.ERROR)


class _HelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        # argparse builds a formatter for every add_argument() and, left to itself, imports
        # shutil (and with it bz2 and lzma) to ask for the terminal width: ms on every run.
        try:
            columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(sys.stdout.fileno()).columns
        except (ValueError, OSError, AttributeError):
            columns = 80
        super().__init__(prog, width=max(columns - 2, 40))


def new_parser(prog: str, description: str, *, scheduled: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_HelpFormatter)
    add_common_flags(parser, scheduled=scheduled)
    return parser


def add_common_flags(parser: argparse.ArgumentParser, *, scheduled: bool) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $NEXUS_JOBS_CONFIG, ./config.json, ~/.config/nexus-jobs/config.json, "
        "/etc/nexus-jobs/config.json)",
    )
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        help="the .env file to read (default: $NEXUS_JOBS_ENV_FILE, else .env beside the config file, "
        "else ~/.config/nexus-jobs/.env)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state directory (default: $NEXUS_STATE_DIR, config stateDir, $STATE_DIRECTORY, "
        "state/ beside the config, ~/.local/state/nexus-jobs)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="say what is done (default: quiet unless something fails)"
    )
    parser.add_argument("--debug", action="store_true", help="debug logging, with tracebacks")
    parser.add_argument("--json", action="store_true", help="print one JSON summary object on stdout")
    if scheduled:
        parser.add_argument(
            "--job-id", metavar="ID", help="which entry of jobs[] to run (default: the first of this type)"
        )
        parser.add_argument("--dry-run", action="store_true", help="show what would be done, change nothing")
        parser.add_argument("--force", action="store_true", help="run even when not due or disabled")


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option], *, in_config_file: bool = True) -> None:
    """A flag for each option that has one (secrets have none); the help text names its
    default, its environment variable and, for settings that a config file can hold, its key."""
    for option in options:
        if option.secret or option.flag is None:
            continue
        where = [f"default: {option.default!r}"] if option.default not in (None, "", []) else []
        if option.env:
            where.append(f"env {option.env}")
        if in_config_file:
            where.append(f"config {option.path}")
        help_text = f"{option.help} ({'; '.join(where)})"
        if option.kind is bool:
            parser.add_argument(option.flag, dest=option.dest, action="store_const", const=True, help=help_text)
        else:
            metavar = option.flag.lstrip("-").replace("-", "_").upper()
            parser.add_argument(option.flag, dest=option.dest, metavar=metavar, help=help_text)


def main(
    *,
    prog: str,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """The one place where exceptions become a one-line message and a documented exit code."""
    args = parser.parse_args(argv)
    setup_logging(prog, verbose=args.verbose, debug=args.debug)
    try:
        return run(args)
    except LockHeld as error:
        # Cron mails any output: a skipped overlapping run is quiet unless -v.
        log.info("%s", error)
        return error.exit_code
    except JobError as error:
        for line in getattr(error, "problems", None) or [str(error)]:
            log.error("%s", line)
        return error.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as error:
        if args.debug:
            log.exception("internal error")
        else:
            log.error("internal error: %s: %s (run with --debug for details)", type(error).__name__, error)
        return Exit.SOFTWARE


def print_line(text: str) -> None:
    """One line of requested output (``--dry-run`` listings) on stdout."""
    sys.stdout.write(redact(text) + "\n")


def print_json(document: dict[str, Any]) -> None:
    sys.stdout.write(redact(json.dumps(document, ensure_ascii=False)) + "\n")
    sys.stdout.flush()


def next_due(record: dict[str, Any] | None, interval_minutes: float) -> datetime | None:
    """When the job is next due: its last successful start plus the interval (None = now)."""
    last = state.parse_time((record or {}).get("lastSuccessStartedAt"))
    if last is None or interval_minutes <= 0:
        return None
    return last + timedelta(minutes=interval_minutes)


def run_scheduled(
    *,
    job: JobEntry,
    state_dir: Path,
    args: argparse.Namespace,
    work: Callable[[], RunSummary],
) -> int:
    """Run ``work`` under cron conventions: skip when disabled or not due (exit 0), take the
    job's lock (exit 75 if held), record the run, print the ``--json`` summary."""
    record_path = state.run_record_path(state_dir, job.job_id)
    if not args.force and not _should_run(job, state.read_json(record_path, repair=False)):
        return Exit.OK
    if args.dry_run:
        return _summarise(job, work, started=state.now_utc(), args=args, dry_run=True).exit_code
    state.ensure_directory(state_dir)
    with state.job_lock(state_dir, job.job_id):
        record = state.read_json(record_path, repair=True, consequence="the job runs now as if never run") or {}
        if not args.force and not _should_run(job, record):
            return Exit.OK  # another run finished while we were starting
        started = state.now_utc()
        record.update(jobId=job.job_id, jobType=job.job_type, lastStartedAt=state.isoformat(started))
        state.write_json_atomic(record_path, record)
        from . import monitoring  # imported here: a not-due run never needs it

        monitoring.ping(job.ping_url, monitoring.START)
        summary: RunSummary | None = None
        try:
            summary = _summarise(job, work, started=started, args=args)
            return summary.exit_code
        except Exception as error:
            exit_code = error.exit_code if isinstance(error, JobError) else Exit.SOFTWARE
            message = str(error) if isinstance(error, JobError) else f"internal error: {type(error).__name__}: {error}"
            summary = RunSummary(job.job_id, job.job_type, exit_code=exit_code, message=message)
            if args.json:
                print_json(summary.as_json(started=started, duration_seconds=_elapsed(started), dry_run=False))
            raise
        finally:
            if summary is not None:
                _record_finish(record_path, record, summary, started=started)
            monitoring.ping(job.ping_url, monitoring.finish_kind(summary), body=redact(monitoring.describe(summary)))


def _should_run(job: JobEntry, record: dict[str, Any] | None) -> bool:
    if not job.enabled:
        log.info("job %r is disabled in the config; not running (use --force to run it)", job.job_id)
        return False
    due = next_due(record, job.interval_minutes)
    if due is not None and state.now_utc() < due:
        log.info("job %r is not due until %s", job.job_id, state.isoformat(due))
        return False
    return True


def _summarise(
    job: JobEntry, work: Callable[[], RunSummary], *, started: datetime, args: argparse.Namespace, dry_run: bool = False
) -> RunSummary:
    summary = work()
    if args.json:
        print_json(summary.as_json(started=started, duration_seconds=_elapsed(started), dry_run=dry_run))
    if summary.message:
        (log.info if summary.exit_code == Exit.OK else log.warning)("%s", summary.message)
    return summary


def _elapsed(started: datetime) -> float:
    return (state.now_utc() - started).total_seconds()


def _record_finish(record_path: Path, record: dict[str, Any], summary: RunSummary, *, started: datetime) -> None:
    record.update(
        lastFinishedAt=state.isoformat(state.now_utc()),
        lastExitCode=summary.exit_code,
        lastOutcome=word_of(summary.exit_code),
        lastMessage=redact(summary.message),
        lastCounts=summary.counts,
        runs=int(record.get("runs", 0)) + 1,
    )
    if summary.standing:
        record["standing"] = summary.standing
    if summary.exit_code == Exit.OK:
        record["lastSuccessStartedAt"] = state.isoformat(started)
        record["consecutiveFailures"] = 0
    else:
        record["consecutiveFailures"] = int(record.get("consecutiveFailures", 0)) + 1
    state.write_json_atomic(record_path, record)


class _NoProgress:
    def update(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(*, total: int, description: str, enabled: bool) -> Any:
    """A progress bar on stderr when it is a terminal; nothing under cron or systemd."""
    if not enabled or total < 2 or not sys.stderr.isatty():
        return _NoProgress()
    from tqdm import tqdm  # imported here: only terminals need it

    try:
        columns, rows = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        columns, rows = 0, 0
    # A pseudo-terminal may report a size of 0x0; tqdm would then draw nothing at all.
    return tqdm(
        total=total, desc=description, unit="file", file=sys.stderr, leave=False, ncols=columns or 80, nrows=rows or 24
    )
