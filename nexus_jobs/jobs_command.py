"""``nexus-jobs``: the operator's view of every scheduled job.

- ``status``: one row per configured job (enabled, interval, last run and result, next due,
  counts, dead letters, lock held), from the run records in the state directory.
- ``run-due``: every enabled job that is due runs once, as its own console script (so each
  takes its own lock and keeps its own exit code); one crontab line serves them all.
- ``check-config``: config, each job's options, environment, state directory, and that each
  backend answers, one line per check. Read-only: only GET requests, nothing is created.

This is the top layer: it may import the job modules, for their option lists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, cli, config, state
from .config import JobEntry
from .errors import EXIT_CONFIG, EXIT_OK, EXIT_SOFTWARE, EXIT_UNAVAILABLE, ConfigError, JobError

PROG = "nexus-jobs"
DEFAULT_JOB = JobEntry(job_id="session-upload", job_type="session_upload")
# How bad an exit code is, for run-due's overall result: a skipped overlapping run (75) is
# the mildest failure; a usage or internal error the worst.
_SEVERITY = {0: 0, 75: 1, 1: 2, 69: 3, 77: 4, 78: 5, 2: 6, 70: 7}


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
        return check_config(args)
    loaded = config.load(config_flag=args.config, env_file_flag=args.env_file)
    state_dir = config.resolve_state_dir(flag=args.state_dir, loaded=loaded)
    if args.command == "status":
        return show_status(loaded, state_dir, as_json=args.json)
    return run_due(loaded, state_dir, args)


def configured_jobs(loaded: config.LoadedConfig) -> list[JobEntry]:
    """Every job of the config file; when it lists none, the default session-upload job."""
    return config.job_entries(loaded) or [DEFAULT_JOB]


# ---------------------------------------------------------------- status


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
        "lastMessage": cli.redact(str(record.get("lastMessage") or problem)),
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
    rows = [job_status(entry, state_dir) for entry in configured_jobs(loaded)]
    if as_json:
        cli.print_json({"config": str(loaded.path) if loaded.path else None, "stateDir": str(state_dir), "jobs": rows})
        return EXIT_OK
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
    return EXIT_OK


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
    for entry in configured_jobs(loaded):
        status = job_status(entry, state_dir)
        if not entry.enabled or not status["due"]:
            reason = "disabled" if not entry.enabled else f"not due until {status['nextDue']}"
            cli.log.info("%s: %s", entry.job_id, reason)
            results.append({"job": entry.job_id, "ran": False, "reason": reason, "exitCode": EXIT_OK})
            continue
        if args.dry_run:
            cli.log.info("%s: due; would run %s", entry.job_id, config.JOB_TYPES[entry.job_type])
            results.append({"job": entry.job_id, "ran": False, "reason": "due (dry run)", "exitCode": EXIT_OK})
            continue
        code = _run_job(entry, loaded=loaded, state_dir=state_dir, args=args)
        cli.log.info("%s: %s (exit %d)", entry.job_id, cli.OUTCOMES.get(code, "failure"), code)
        results.append(
            {"job": entry.job_id, "ran": True, "outcome": cli.OUTCOMES.get(code, "failure"), "exitCode": code}
        )
    worst = max((result["exitCode"] for result in results), key=lambda code: _SEVERITY.get(code, 8), default=EXIT_OK)
    if args.json:
        cli.print_json({"jobs": results, "exitCode": worst, "outcome": cli.OUTCOMES.get(worst, "failure")})
    return worst


def _run_job(entry: JobEntry, *, loaded: config.LoadedConfig, state_dir: Path, args: argparse.Namespace) -> int:
    argv = [_script(config.JOB_TYPES[entry.job_type]), "--state-dir", str(state_dir)]
    if entry is not DEFAULT_JOB:
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
        return EXIT_SOFTWARE


def _script(name: str) -> str:
    """The job's console script: beside this one (same installation) if there, else on PATH."""
    for folder in (Path(sys.argv[0]).parent, Path(sys.executable).parent):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name) or name


# ---------------------------------------------------------------- check-config


@dataclass(frozen=True)
class Check:
    status: str  # "ok", "warn" (worth a look, not a failure) or "FAIL"
    name: str
    detail: str
    exit_code: int = EXIT_OK


def check_config(args: argparse.Namespace) -> int:
    checks = list(_all_checks(args))
    failed = [check for check in checks if check.status == "FAIL"]
    if args.json:
        cli.print_json(
            {"ok": not failed, "checks": [{"status": c.status, "check": c.name, "detail": c.detail} for c in checks]}
        )
    else:
        for check in checks:
            print(cli.redact(f"{check.status:<4}  {check.name}: {check.detail}"))
    if not failed:
        return EXIT_OK
    return max((check.exit_code for check in failed), key=lambda code: _SEVERITY.get(code, 8))


def _all_checks(args: argparse.Namespace) -> Any:
    try:
        loaded = config.load(config_flag=args.config, env_file_flag=args.env_file)
    except ConfigError as error:
        for problem in error.problems:
            yield Check("FAIL", "config", problem, EXIT_CONFIG)
        return
    entries = configured_jobs(loaded)
    yield Check(
        "ok",
        "config",
        f"{loaded.path} ({len(config.job_entries(loaded))} job(s))"
        if loaded.path
        else "no config file found; defaults apply (default job: session-upload)",
    )
    yield _check_env_file(loaded)
    nexus: dict[str, Any] | None = None
    try:
        nexus = config.resolve(
            config.NEXUS_OPTIONS, loaded=loaded, section=loaded.data, section_path="", flags={}, strict=False
        )
    except ConfigError as error:
        for problem in error.problems:
            yield Check("FAIL", "nexus settings", problem, EXIT_CONFIG)
    if nexus is not None:
        cli.register_secret(nexus["nexus.apiKey"])
    job_options: dict[str, dict[str, Any]] = {}
    for entry in entries:
        try:
            job_options[entry.job_id] = _job_options(loaded, entry)
            state_of = "enabled" if entry.enabled else "disabled"
            every = f"every {entry.interval_minutes:g} min" if entry.interval_minutes else "every run"
            yield Check("ok", f"job {entry.job_id}", f"{entry.job_type}, {state_of}, {every}; options valid")
        except ConfigError as error:
            for problem in error.problems:
                yield Check("FAIL", f"job {entry.job_id}", problem, EXIT_CONFIG)
    try:
        state_dir = config.resolve_state_dir(flag=args.state_dir, loaded=loaded)
        yield _check_state_dir(state_dir)
    except ConfigError as error:
        yield Check("FAIL", "state directory", str(error), EXIT_CONFIG)
        return
    yield from _check_agents(loaded, entries)
    if nexus is not None:
        yield _check_nexus(nexus, loaded=loaded, state_dir=state_dir, entries=entries)
    for entry in entries:
        options = job_options.get(entry.job_id)
        if entry.job_type == "webhook_pull" and options is not None:
            yield from _check_delivery(entry, options)
        if entry.ping_url:
            # A GET would count as a ping at healthchecks.io: only the form is checked.
            yield Check("ok", f"job {entry.job_id} pingUrl", "set (not contacted: any request would count as a ping)")


def _job_options(loaded: config.LoadedConfig, entry: JobEntry) -> dict[str, Any]:
    if entry.job_type == "webhook_pull":
        from . import webhook_pull

        return webhook_pull.resolve_job_options(loaded, entry, {})
    from . import session_upload

    where = f"{entry.key_path}.config" if entry.key_path else "config"
    return config.resolve(session_upload.OPTIONS, loaded=loaded, section=entry.config, section_path=where, flags={})


def _check_env_file(loaded: config.LoadedConfig) -> Check:
    path = loaded.env_file
    if path is None or not path.exists():
        return Check("ok", "env file", f"none at {path}; settings come from the environment")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return Check("warn", "env file", f"{path} is readable by other users (mode {mode:o}); run chmod 600 on it")
    return Check("ok", "env file", f"{path} (mode {mode:o})")


def _check_state_dir(state_dir: Path) -> Check:
    if state_dir.is_dir():
        if not os.access(state_dir, os.W_OK | os.X_OK):
            return Check("FAIL", "state directory", f"{state_dir} is not writable by this user", EXIT_CONFIG)
        mode = state_dir.stat().st_mode & 0o777
        if mode & 0o077:
            return Check("warn", "state directory", f"{state_dir} is open to other users (mode {mode:o}); chmod 700")
        return Check("ok", "state directory", f"{state_dir} (writable, mode {mode:o})")
    if state_dir.exists():
        return Check("FAIL", "state directory", f"{state_dir} exists but is not a directory", EXIT_CONFIG)
    parent = state_dir
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return Check("ok", "state directory", f"{state_dir} does not exist yet; the first run creates it")
    return Check("FAIL", "state directory", f"{state_dir} does not exist and {parent} is not writable", EXIT_CONFIG)


def _check_agents(loaded: config.LoadedConfig, entries: list[JobEntry]) -> Any:
    agents = config.resolve_agents(loaded)
    if not agents:
        where = config.openclaw_state_dir(loaded) / "agents"
        yield Check("FAIL", "agents", f"none configured and none found under {where}", EXIT_CONFIG)
        return
    types = {entry.job_type for entry in entries}
    for agent in agents:
        missing = []
        if "session_upload" in types and not agent.sessions_dir.is_dir():
            missing.append(f"sessions folder {agent.sessions_dir}")
        if "webhook_pull" in types and not agent.workspace.is_dir():
            missing.append(f"workspace {agent.workspace}")
        if missing:
            yield Check("warn", f"agent {agent.agent_id}", "missing " + " and ".join(missing))
        else:
            yield Check("ok", f"agent {agent.agent_id}", f"sessions {agent.sessions_dir}, workspace {agent.workspace}")


def _check_nexus(
    nexus: dict[str, Any], *, loaded: config.LoadedConfig, state_dir: Path, entries: list[JobEntry]
) -> Check:
    from . import nexus_webhooks

    endpoint = nexus["nexus.endpoint"]
    try:
        local_root = config.local_store_root(endpoint, state_dir=state_dir)
    except ConfigError as error:
        return Check("FAIL", "nexus backend", str(error), EXIT_CONFIG)
    if local_root is None and not nexus["nexus.apiKey"]:
        return Check("FAIL", "nexus backend", f"{endpoint} needs an API key: set NEXUS_API_KEY", EXIT_CONFIG)
    store = nexus_webhooks.open_store(
        endpoint=endpoint,
        local_root=local_root,
        api_key=nexus["nexus.apiKey"],
        auth_mode=nexus["nexus.authMode"],
        timeout_seconds=min(nexus["nexus.timeoutSeconds"], 15.0),
        retries=0,
    )
    agents = config.resolve_agents(loaded)
    try:
        if isinstance(store, nexus_webhooks.HttpWebhookStore) and all(e.job_type != "webhook_pull" for e in entries):
            return _check_sessions_api(store)
        # A read-only GET of one pending item proves reachability and the key at once.
        return Check("ok", "nexus backend", store.probe(agents[0].agent_id if agents else "main"))
    except JobError as error:
        return Check("FAIL", "nexus backend", str(error), error.exit_code)
    finally:
        store.close()


def _check_sessions_api(store: Any) -> Check:
    """Without a webhook job the backend may serve only ``POST /sessions``: a HEAD of that
    route (never a POST) shows it answers; any answer but 401/403 or a 5xx will do."""
    import requests

    from . import http

    try:
        response = store.session.head(
            store.base + "/sessions", params=store.params, headers=store.headers, timeout=store.timeout
        )
        response.close()
    except requests.RequestException as error:
        return Check("FAIL", "nexus backend", f"Nexus at {store.location}: {http.describe_error(error)}", 69)
    if response.status_code in (401, 403):
        detail = f"Nexus refused the API key ({response.status_code}); check NEXUS_API_KEY and nexus.authMode"
        return Check("FAIL", "nexus backend", detail, 77)
    if response.status_code >= 500:
        return Check("FAIL", "nexus backend", f"Nexus at {store.location} answered {response.status_code}", 69)
    return Check("ok", "nexus backend", f"Nexus sessions API at {store.location} answers (HTTP {response.status_code})")


def _check_delivery(entry: JobEntry, options: dict[str, Any]) -> Any:
    name = f"job {entry.job_id} delivery"
    if "hook" in options["delivery"]:
        yield _check_gateway(name, options["gatewayUrl"])
    if "command" in options["delivery"]:
        program = options["command"][0]
        found = shutil.which(program)
        if found:
            yield Check("ok", name, f"command {program} found at {found}")
        else:
            yield Check("FAIL", name, f"command {program!r} not found or not executable", EXIT_CONFIG)


def _check_gateway(name: str, gateway_url: str) -> Check:
    import requests

    from . import http

    session = http.make_session(retries=0)
    try:
        # Any HTTP answer proves the Gateway listens; nothing is posted.
        response = session.get(gateway_url.rstrip("/") + "/", timeout=(5.0, 10.0), allow_redirects=False)
        response.close()
        return Check("ok", name, f"OpenClaw Gateway at {gateway_url} answers (HTTP {response.status_code})")
    except requests.RequestException as error:
        detail = f"OpenClaw Gateway at {gateway_url}: {http.describe_error(error)}"
        return Check("FAIL", name, detail, EXIT_UNAVAILABLE)
    finally:
        session.close()
