"""What every console script shares: flags, logging, secret redaction, the ``main()``
wrapper that turns exceptions into one line and an exit code, and the cron conventions of a
scheduled run (due check, lock, run record, ``--json`` summary, progress bar)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .. import __version__
from ..core import secrets, state, stopping
from ..core.config import JobEntry, Option
from ..core.errors import JobError, LockHeld
from ..core.exits import DISABLED, NOT_DUE, Exit, word_of
from ..core.secrets import redact
from ..core.stopping import Terminated
from .progress import progress as progress
from .summary import RunSummary, result_object

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


def handle_stop_signals() -> None:
    """From here on the run changes state: SIGTERM is handled like Ctrl-C (raised as
    :class:`Terminated`), and past a file size limit (ulimit -f) a write fails with EFBIG,
    reported with its path, instead of the signal killing the process without a word. (Not
    earlier: importing ``signal`` costs a not-due run about half a millisecond.)"""
    import signal

    stopping.interrupt_on_sigterm()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def main(
    *,
    prog: str,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """The one place where exceptions become a one-line message and a documented exit code.
    With ``--json``, exactly one object is printed whatever happened (``docs/operating.md``)."""
    global _json_printed
    _json_printed = False
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exit_:
        if exit_.code not in (0, None) and "--json" in arguments:
            print_json(result_object(job=None, job_type=None, exit_code=Exit.USAGE, message="invalid arguments"))
        raise
    setup_logging(prog, verbose=args.verbose, debug=args.debug)
    try:
        return run(args)
    except LockHeld as error:
        # Cron mails any output: a skipped overlapping run is quiet unless -v.
        log.info("%s", error)
        return _fail(args, error.exit_code, str(error))
    except JobError as error:
        problems = getattr(error, "problems", None) or [str(error)]
        for line in problems:
            log.error("%s", line)
        return _fail(args, error.exit_code, "; ".join(problems))
    except (KeyboardInterrupt, Terminated) as interruption:
        code = Exit.TERMINATED if isinstance(interruption, Terminated) else Exit.INTERRUPTED
        log.error("interrupted by %s; the work done so far is saved", _signal_name(code))
        return _fail(args, code, f"interrupted by {_signal_name(code)}")
    except Exception as error:
        if args.debug:
            log.exception("internal error")
        else:
            log.error("internal error: %s: %s (run with --debug for details)", type(error).__name__, error)
        return _fail(args, Exit.SOFTWARE, f"internal error: {type(error).__name__}")


def _signal_name(code: int) -> str:
    return "SIGTERM" if code == Exit.TERMINATED else "SIGINT"


def _fail(args: argparse.Namespace, code: int, message: str) -> int:
    """The ``--json`` object of a run that ended before its job could print one."""
    if getattr(args, "json", False) and not _json_printed:
        job_type = getattr(args, "command", None)  # nexus-jobs names its subcommand
        print_json(result_object(job=getattr(args, "job_id", None), job_type=job_type, exit_code=code, message=message))
    return code


def print_line(text: str) -> None:
    """One line of requested output (``--dry-run`` listings) on stdout."""
    sys.stdout.write(redact(text) + "\n")


_json_printed = False


def print_json(document: dict[str, Any]) -> None:
    """Print the run's one ``--json`` object (a second one would break every reader)."""
    global _json_printed
    if _json_printed:
        return
    _json_printed = True
    sys.stdout.write(redact(json.dumps(document, ensure_ascii=False)) + "\n")
    sys.stdout.flush()


# A start is recorded a moment after its trigger (process start-up, the lock, a job before it
# in run-due): a job triggered exactly every intervalMinutes must still be due at each trigger
# (docs/operating.md). A tenth of the interval, at most five minutes.
DUE_TOLERANCE_FRACTION = 0.1
DUE_TOLERANCE_MAX_SECONDS = 300.0
# Set by ``nexus-jobs run-due`` for the jobs it starts: when the trigger fired.
TRIGGERED_AT_ENV = "NEXUS_JOBS_TRIGGERED_AT"


def next_due(record: dict[str, Any] | None, interval_minutes: float) -> datetime | None:
    """When the job is next due: its last successful start plus the interval, less the
    tolerance (None = now)."""
    last = state.parse_time((record or {}).get("lastSuccessStartedAt"))
    if last is None or interval_minutes <= 0:
        return None
    interval_seconds = interval_minutes * 60
    tolerance = min(interval_seconds * DUE_TOLERANCE_FRACTION, DUE_TOLERANCE_MAX_SECONDS)
    return last + timedelta(seconds=interval_seconds - tolerance)


def trigger_time() -> datetime:
    """When this run was triggered: run-due's moment if it started us (and it is recent),
    else now."""
    now = state.now_utc()
    given = state.parse_time(os.environ.get(TRIGGERED_AT_ENV))
    if given is not None and timedelta(0) <= now - given <= timedelta(days=1):
        return given
    return now


def run_scheduled(
    *,
    job: JobEntry,
    state_dir: Path,
    args: argparse.Namespace,
    work: Callable[[], RunSummary],
) -> int:
    """Run ``work`` under cron conventions: skip when disabled or not due (exit 0), take the
    job's lock (exit 75 if held), record the run, print the ``--json`` summary."""
    triggered = trigger_time()
    record_path = state.run_record_path(state_dir, job.job_id)
    if not args.force and (skip := _skip_reason(job, _read_record(record_path, repair=False))):
        return _skipped(job, args, *skip)
    if args.dry_run:
        return _summarise(job, work, started=state.now_utc(), args=args, dry_run=True).exit_code
    handle_stop_signals()
    state.ensure_directory(state_dir)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(state.job_lock(state_dir, job.job_id))
        except LockHeld as error:
            if args.json:
                code = error.exit_code
                print_json(result_object(job=job.job_id, job_type=job.job_type, exit_code=code, message=str(error)))
            raise
        record = _read_record(record_path, repair=True) or {}
        if not args.force and (skip := _skip_reason(job, record)):
            return _skipped(job, args, *skip)  # another run finished while we were starting
        return _run_recorded(job, work, record_path=record_path, record=record, started=triggered, args=args)


def _read_record(path: Path, *, repair: bool) -> dict[str, Any] | None:
    """The job's run record; one of the wrong shape counts as absent (and is moved aside
    while the lock is held), so the job runs now as if never run."""
    try:
        return state.read_json(
            path, repair=repair, consequence="the job runs now as if never run", shape=state.run_record_shape
        )
    except JobError:
        if repair:
            raise
        return None  # unreadable before the lock: the locked read reports it


def _run_recorded(
    job: JobEntry,
    work: Callable[[], RunSummary],
    *,
    record_path: Path,
    record: dict[str, Any],
    started: datetime,
    args: argparse.Namespace,
) -> int:
    """Record the start, do the work, record how it ended (also when it was interrupted or
    crashed), ping the monitor."""
    record.update(jobId=job.job_id, jobType=job.job_type, lastStartedAt=state.isoformat(state.now_utc()))
    state.write_json_atomic(record_path, record)
    from . import monitoring  # imported here: a not-due run never needs it

    monitoring.ping(job.ping_url, monitoring.START)
    summary: RunSummary | None = None
    try:
        summary = _summarise(job, work, started=started, args=args)
        return summary.exit_code
    except (Exception, KeyboardInterrupt, Terminated) as error:
        summary = _summary_of_failure(job, error)
        if args.json:
            print_json(summary.as_json(started=started, duration_seconds=_elapsed(started), dry_run=False))
        raise
    finally:
        if summary is not None:
            _record_finish(record_path, record, summary, started=started, metrics_file=job.metrics_file)
        monitoring.ping(job.ping_url, monitoring.finish_kind(summary), body=redact(monitoring.describe(summary)))


def _summary_of_failure(job: JobEntry, error: BaseException) -> RunSummary:
    if isinstance(error, (KeyboardInterrupt, Terminated)):
        code = Exit.TERMINATED if isinstance(error, Terminated) else Exit.INTERRUPTED
        message = f"interrupted by {_signal_name(code)}; the work done so far is saved"
    elif isinstance(error, JobError):
        code, message = error.exit_code, str(error)
    else:
        code, message = Exit.SOFTWARE, f"internal error: {type(error).__name__}: {error}"
    return RunSummary(job.job_id, job.job_type, exit_code=code, message=message)


def _skip_reason(job: JobEntry, record: dict[str, Any] | None) -> tuple[str, str] | None:
    """Why the job does not run now (outcome word and message), or None when it should."""
    if not job.enabled:
        return DISABLED, f"job {job.job_id!r} is disabled in the config; not running (use --force to run it)"
    due = next_due(record, job.interval_minutes)
    if due is not None and state.now_utc() < due:
        return NOT_DUE, f"job {job.job_id!r} is not due until {state.isoformat(due)}"
    return None


def _skipped(job: JobEntry, args: argparse.Namespace, outcome: str, message: str) -> int:
    log.info("%s", message)
    if args.json:
        print_json(
            result_object(job=job.job_id, job_type=job.job_type, exit_code=Exit.OK, outcome=outcome, message=message)
        )
    return Exit.OK


def _summarise(
    job: JobEntry, work: Callable[[], RunSummary], *, started: datetime, args: argparse.Namespace, dry_run: bool = False
) -> RunSummary:
    summary = work()
    if dry_run and not args.json:
        for line in summary.planned:
            print_line(line)
        print_line(f"dry run: {len(summary.planned)} item(s) would be handled; nothing was changed")
    if args.json:
        print_json(summary.as_json(started=started, duration_seconds=_elapsed(started), dry_run=dry_run))
    if summary.message:
        (log.info if summary.exit_code == Exit.OK else log.warning)("%s", summary.message)
    return summary


def _elapsed(started: datetime) -> float:
    return (state.now_utc() - started).total_seconds()


def _record_finish(
    record_path: Path, record: dict[str, Any], summary: RunSummary, *, started: datetime, metrics_file: str | None
) -> None:
    record.update(
        lastFinishedAt=state.isoformat(state.now_utc()),
        lastExitCode=summary.exit_code,
        lastOutcome=summary.outcome or word_of(summary.exit_code),
        lastMessage=redact(summary.message),
        lastCounts=summary.counts,
        lastDurationSeconds=round(_elapsed(started), 3),
        runs=_whole(record.get("runs")) + 1,
    )
    if summary.standing:
        record["standing"] = summary.standing
    if summary.files or "files" in record:
        record["files"] = {kind: [_redacted(item) for item in items] for kind, items in summary.files.items()}
    if summary.exit_code == Exit.OK:
        record["lastSuccessStartedAt"] = state.isoformat(started)
        record["lastSuccessFinishedAt"] = record["lastFinishedAt"]
        record["consecutiveFailures"] = 0
    else:
        record["consecutiveFailures"] = _whole(record.get("consecutiveFailures")) + 1
    state.write_json_atomic(record_path, record)
    if metrics_file:
        from . import metrics  # imported here: only a run that did something writes metrics

        try:
            metrics.update(Path(metrics_file), record)
        except Exception as error:  # metrics are for watching the job; they never change its outcome
            log.warning("cannot write the metrics file %s: %s", metrics_file, getattr(error, "strerror", None) or error)


def _whole(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _redacted(item: dict[str, str]) -> dict[str, str]:
    return {key: redact(str(value)) for key, value in item.items()}
