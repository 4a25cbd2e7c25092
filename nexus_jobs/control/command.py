"""``nexus-jobs``: the operator's view of every scheduled job.

- ``status``: one row per configured job (enabled, interval, last run and result, next due,
  counts, dead letters, lock held), from the run records in the state directory.
- ``run-due``: every enabled job that is due runs once, as its own console script (so each
  takes its own lock and keeps its own exit code); one crontab line serves them all.
- ``check-config``: see :mod:`.checks`; ``status``: see :mod:`.status`.

This is the top layer: it may import the job modules, for their option lists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..cli import frame as cli
from ..cli.summary import result_object
from ..core import config, state, statedir
from ..core.config import JobEntry
from ..core.exits import Exit, word_of, worst
from ..core.stopping import Terminated
from . import checks as jobs_checks
from . import status as status_view
from .status import FILE_KINDS

PROG = "nexus-jobs"


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(prog=PROG, parser=build_parser(), run=run, argv=argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Status, due runs and config checks of every job.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("status", "show every configured job: last run, result, next due, counts; exit 3 if a job's last run failed"),
        ("run-due", "run every enabled job that is due, once, each under its own lock"),
        ("check-config", "check config, environment, state directory and backends without changing anything"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        cli.add_common_flags(sub, scheduled=False)
        if name == "run-due":
            sub.add_argument("--dry-run", action="store_true", help="say which jobs are due, run nothing")
        if name == "status":
            sub.add_argument("--job", metavar="ID", help="only this job, with every detail")
            sub.add_argument(
                "--files",
                choices=FILE_KINDS,
                help="list the files of the job's last run that need you (rejected or conflicting), with the reasons",
            )
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "check-config":
        return jobs_checks.check_config(args)
    loaded = config.load(config_flag=args.config, env_file_flag=args.env_file)
    state_dir = statedir.resolve_state_dir(flag=args.state_dir, loaded=loaded)
    if args.command == "status":
        return status_view.show(loaded, state_dir, args)
    return run_due(loaded, state_dir, args)


# ---------------------------------------------------------------- run-due


def run_due(loaded: config.LoadedConfig, state_dir: Path, args: argparse.Namespace) -> int:
    """Each due job as a subprocess, one after the other; the result is the worst exit code.
    Every job is started with the moment run-due was triggered, so that a job waiting behind
    another one is still on its schedule at the next trigger (docs/operating.md)."""
    started = state.now_utc()
    results: list[dict[str, Any]] = []
    planned: list[str] = []
    if not args.dry_run:
        cli.handle_stop_signals()  # a stop reaches the running job, and is recorded (exit 143/130)
    for entry in config.scheduled_jobs(loaded):
        status = status_view.job_status(entry, state_dir)
        if not entry.enabled or not status["due"]:
            outcome = "disabled" if not entry.enabled else "not-due"
            reason = "disabled" if not entry.enabled else f"not due until {status['nextDue']}"
            cli.log.info("%s: %s", entry.job_id, reason)
            results.append({"job": entry.job_id, "ran": False, "outcome": outcome, "exitCode": Exit.OK, "counts": {}})
            continue
        if args.dry_run:
            planned.append(f"would run {config.JOB_TYPES[entry.job_type]} for job {entry.job_id}")
            cli.log.info("%s: due; would run %s", entry.job_id, config.JOB_TYPES[entry.job_type])
            results.append({"job": entry.job_id, "ran": False, "outcome": "due", "exitCode": Exit.OK, "counts": {}})
            continue
        code = _run_job(entry, loaded=loaded, state_dir=state_dir, args=args, triggered=started)
        cli.log.info("%s: %s (exit %d)", entry.job_id, word_of(code), code)
        after = status_view.job_status(entry, state_dir)
        counts = after["counts"] if after["lastRun"] and after["lastExitCode"] == code else {}
        results.append({"job": entry.job_id, "ran": True, "outcome": word_of(code), "exitCode": code, "counts": counts})
    overall = worst([result["exitCode"] for result in results])
    if args.dry_run and not args.json:
        for line in planned:
            cli.print_line(line)
        cli.print_line(f"dry run: {len(planned)} job(s) would run; nothing was changed")
    if args.json:
        ran = sum(result["ran"] for result in results)
        failed = sum(1 for result in results if result["exitCode"] != Exit.OK)
        cli.print_json(
            result_object(
                job=None,
                job_type="run-due",
                exit_code=overall,
                started=started,
                duration_seconds=(state.now_utc() - started).total_seconds(),
                counts={"jobs": len(results), "ran": ran, "failed": failed, "wouldRun": len(planned)},
                failures=[f"{r['job']}: {r['outcome']} (exit {r['exitCode']})" for r in results if r["exitCode"]],
                planned=planned,
                dry_run=bool(args.dry_run),
                details={"jobs": results},
            )
        )
    return overall


def _run_job(
    entry: JobEntry, *, loaded: config.LoadedConfig, state_dir: Path, args: argparse.Namespace, triggered: datetime
) -> int:
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
        environment = {**os.environ, cli.TRIGGERED_AT_ENV: state.isoformat(triggered)}
        job = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=environment)
    except OSError as error:
        cli.log.error("%s: cannot start %s: %s", entry.job_id, argv[0], error.strerror)
        return Exit.SOFTWARE
    try:
        return job.wait()
    except Terminated:
        # systemd may stop only this process: the job gets the SIGTERM too, saves its work and
        # records itself as interrupted; run-due waits for that, then reports 143.
        job.terminate()
        job.wait()
        raise
    except KeyboardInterrupt:
        job.wait()  # Ctrl-C reached the job as well (the same process group)
        raise


def _script(name: str) -> str:
    """The job's console script: beside this one (same installation) if there, else on PATH."""
    for folder in (Path(sys.argv[0]).parent, Path(sys.executable).parent):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name) or name
