"""The ``bsnexus-worker`` console script: ``register``, ``run``, ``status``, ``unregister``.

Exit codes (docs/bsnexus.md): 0 done; 2 bad flags or no registration token; 69 server or Redis
unreachable; 75 another ``run`` of this identity is running, a result could not be published
before stopping, or the server had lost the worker and a new identity was saved; 77 the
server refused a token and the worker cannot re-register; 78 bad settings or no saved
identity.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..cli import frame as cli
from ..cli.summary import result_object
from ..core import config, state
from ..core.errors import (
    AuthError,
    BackendUnavailable,
    ConfigError,
    JobError,
    LockHeld,
    TransientError,
    UsageError,
)
from ..core.exits import Exit
from ..core.secrets import redact
from ..core.stopping import StopSignals
from . import executors, record, registration, streams, worker
from . import settings as worker_settings
from .heartbeat import Heartbeat
from .settings import Settings, safe_url

PROG = "bsnexus-worker"
log = logging.getLogger("nexus_jobs.bsnexus")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="BSNexus worker: register once, then run from a timer or a service; tasks come "
        "from Redis Streams. Settings come from flags, the environment and the .env file register writes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('nexus_jobs').__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    register = commands.add_parser("register", help="register with the server and save the credentials, then exit")
    cli.add_common_flags(register, scheduled=False)
    cli.add_options(register, worker_settings.REGISTER_FLAGS, in_config_file=False)
    register.add_argument(
        "--token",
        metavar="TOKEN",
        help="registration token from the admin UI (glrt-...); BSNEXUS_REGISTRATION_TOKEN keeps it out of "
        "the process list",
    )
    run = commands.add_parser("run", help="take tasks from Redis Streams, execute them, publish the results")
    cli.add_common_flags(run, scheduled=False)
    cli.add_options(run, worker_settings.RUN_FLAGS, in_config_file=False)
    status = commands.add_parser("status", help="identity, server, last heartbeat, task counts, pending entries")
    cli.add_common_flags(status, scheduled=False)
    unregister = commands.add_parser("unregister", help="deregister from the server and forget the saved identity")
    cli.add_common_flags(unregister, scheduled=False)
    unregister.add_argument(
        "--force", action="store_true", help="forget the saved identity even when the server cannot be told"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(prog=PROG, parser=build_parser(), run=run, argv=argv)


@dataclasses.dataclass
class Report:
    """What the subcommand's ``--json`` object says, filled in as the run learns it: the
    worker's job id once its identity is known, its counts and facts (docs/bsnexus.md)."""

    job_type: str
    started: datetime = dataclasses.field(default_factory=state.now_utc)
    job: str | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    message: str = ""

    def identify(self, settings: Settings) -> None:
        if settings.worker_id:
            self.job = settings.job_id
            self.details["workerId"] = settings.worker_id

    def as_json(self, exit_code: int, *, message: str | None = None) -> dict[str, Any]:
        return result_object(
            job=self.job,
            job_type=self.job_type,
            exit_code=exit_code,
            started=self.started,
            duration_seconds=(state.now_utc() - self.started).total_seconds(),
            counts=self.counts,
            message=self.message if message is None else message,
            details=self.details,
        )


def run(args: argparse.Namespace) -> int:
    """Run the subcommand. With ``--json``, its one object is printed here once the exit code
    is known, also when the subcommand ends with an error."""
    handlers = {"register": register_command, "run": run_command, "status": status_command}
    handlers["unregister"] = unregister_command
    report = Report(job_type=f"bsnexus-{args.subcommand}")
    try:
        exit_code = handlers[args.subcommand](args, report)
    except JobError as error:
        if args.json:
            message = "; ".join(getattr(error, "problems", None) or [str(error)])
            cli.print_json(report.as_json(error.exit_code, message=message))
        raise
    if args.json:
        cli.print_json(report.as_json(exit_code))
    return exit_code


def _load(args: argparse.Namespace, *, env_file_may_be_new: bool = False) -> tuple[config.LoadedConfig, Settings]:
    environ: dict[str, str] = dict(os.environ)
    env_file_flag = args.env_file
    if env_file_may_be_new and env_file_flag:
        # register creates the file: name it through the environment, where a missing file is fine
        environ[config.ENV_FILE_ENV_VAR] = env_file_flag
        env_file_flag = None
    loaded = config.load(config_flag=args.config, env_file_flag=env_file_flag, environ=environ)
    return loaded, worker_settings.load(args, loaded, token_flag=getattr(args, "token", None))


def _require_identity(settings: Settings) -> None:
    if not settings.worker_id or not settings.worker_token:
        raise ConfigError(
            f"{settings.env_file}: no saved worker identity (BSNEXUS_WORKER_ID and BSNEXUS_WORKER_TOKEN); "
            "run `bsnexus-worker register --url URL --token TOKEN` first"
        )
    if not settings.server_url:
        raise ConfigError(f"{settings.env_file}: no BSNEXUS_SERVER_URL; run `bsnexus-worker register` again")


def register_command(args: argparse.Namespace, report: Report) -> int:
    loaded, settings = _load(args, env_file_may_be_new=True)
    if not settings.server_url:
        raise UsageError("register needs the server URL: --url URL (or BSNEXUS_SERVER_URL)")
    if not settings.registration_token:
        raise UsageError("register needs a registration token: --token TOKEN (or BSNEXUS_REGISTRATION_TOKEN)")
    saved_server = loaded.env.get("BSNEXUS_SERVER_URL", "").rstrip("/")
    if settings.worker_id and saved_server and saved_server != settings.server_url:
        log.info(
            "the saved identity belongs to %s; registering with %s as a new worker",
            safe_url(saved_server),
            safe_url(settings.server_url),
        )
        settings = dataclasses.replace(settings, worker_id="", worker_token="")
    report.identify(settings)  # the saved identity being registered again, if any
    session = registration.make_session(settings)
    try:
        answer = registration.register(session, settings)
    finally:
        session.close()
    registration.save_identity(settings.env_file, settings, answer)
    report.identify(dataclasses.replace(settings, worker_id=answer.worker_id))
    report.details.update(
        reusedIdentity=answer.reused, serverUrl=safe_url(settings.server_url), envFile=str(settings.env_file)
    )
    verb = "re-registered" if answer.reused else "registered"
    report.message = f"{verb} worker {answer.worker_id}; credentials saved to {settings.env_file}"
    if not args.json:
        cli.print_line(report.message)
        cli.print_line(f"start it with: {PROG} run" + (f" --env-file {settings.env_file}" if args.env_file else ""))
    return Exit.OK


def run_command(args: argparse.Namespace, report: Report) -> int:
    _loaded, settings = _load(args)
    report.identify(settings)
    _require_identity(settings)
    executor = executors.load(settings.executor_type, settings)
    state.ensure_directory(settings.state_dir)
    try:
        with state.job_lock(settings.state_dir, settings.job_id):
            return _run_locked(settings, executor, report)
    except LockHeld:
        raise LockHeld(f"worker {settings.worker_id} is already running (another `run` holds its lock)") from None


def _run_locked(settings: Settings, executor: executors.Executor, report: Report) -> int:
    for warning in executor.warnings():
        log.warning("%s", warning)
    signals = StopSignals().install()
    stop = worker.Stop(
        grace_seconds=settings.grace_seconds, duration_seconds=settings.duration_seconds, signals=signals
    )
    children = getattr(executor, "record", None)  # None for a plug-in not built on Executor
    killed = children.kill_leftovers() if children is not None else 0  # before anything runs: never twice at once
    if killed:
        log.warning("killed %d process(es) a previous run of worker %s left running", killed, settings.worker_id)
    client = streams.connect(settings.redis_url, poll_seconds=settings.poll_seconds)
    session = registration.make_session(settings)
    tally = record.Tally(settings=settings, worker_id=settings.worker_id)
    tally.save(pid=os.getpid(), stoppedAt=None, stopReason=None)
    consumer = worker.Worker(settings=settings, executor=executor, client=client, stop=stop, tally=tally)
    beat = Heartbeat(settings=settings, session=session, client=client, stop=stop, tally=tally, worker=consumer)
    log.info(
        "worker %s taking tasks from %s (executor %s, server %s)",
        settings.worker_id,
        safe_url(settings.redis_url),
        executor.name,
        safe_url(settings.server_url),
    )
    try:
        beat.register_if_forgotten()
        beat.start()
        summary = consumer.work()
    finally:
        beat.close()
        beat.deregister()
        signals.restore()
        tally.save(stoppedAt=state.isoformat(state.now_utc()), stopReason=stop.reason or "ended", pid=None)
        client.close()
        session.close()
    return _outcome(settings, stop, summary, report)


def _outcome(settings: Settings, stop: worker.Stop, summary: worker.Summary, report: Report) -> int:
    """The exit code of a run that has ended; what it did goes into its report."""
    report.counts.update(
        tasks=summary.handled, done=summary.done, failed=summary.failed, unpublished=summary.unpublished
    )
    report.details["stopReason"] = summary.stop_reason
    report.message = (
        f"{summary.handled} task(s): {summary.done} done, {summary.failed} failed, "
        f"{summary.unpublished} unpublished; stopped: {summary.stop_reason}"
    )
    if stop.exit_error is not None:
        raise stop.exit_error
    if summary.unpublished:
        log.error("%d result(s) could not be published before stopping; those tasks stay pending", summary.unpublished)
        return Exit.TEMPFAIL
    if summary.redis_down:
        raise BackendUnavailable(f"Redis at {safe_url(settings.redis_url)} was still unreachable when the run ended")
    return Exit.OK


def status_command(args: argparse.Namespace, report: Report) -> int:
    _loaded, settings = _load(args)
    report.identify(settings)
    _require_identity(settings)
    facts_of_runs = record.read(settings)
    running = settings.state_dir.is_dir() and state.lock_is_held(settings.state_dir, settings.job_id)
    pending: dict[str, int] | None = None
    dead_letters: int | None = None
    redis_problem = ""
    refused = None
    client = streams.connect(settings.redis_url, poll_seconds=1.0)
    try:
        pending = streams.pending_counts(client, streams.channels(settings), consumer=settings.worker_id)
        dead_letters = int(client.xlen(settings.dead_letter_stream))
    except streams.down_errors() as error:
        redis_problem = str(error).split("\n")[0][:200]
        refused = streams.refusal(error, what="show pending entries")
    finally:
        client.close()
    facts: dict[str, Any] = {
        "workerId": settings.worker_id,
        "workerName": settings.worker_name,
        "serverUrl": safe_url(settings.server_url),
        "redisUrl": safe_url(settings.redis_url),
        "executorType": settings.executor_type,
        "envFile": str(settings.env_file),
        "running": running,
        "lastHeartbeatAt": facts_of_runs.get("lastHeartbeatAt"),
        "lastHeartbeatOutcome": facts_of_runs.get("lastHeartbeatOutcome"),
        "tasksDone": facts_of_runs.get("tasksDone", 0),
        "tasksFailed": facts_of_runs.get("tasksFailed", 0),
        "lastStoppedAt": facts_of_runs.get("stoppedAt"),
        "lastStopReason": facts_of_runs.get("stopReason"),
        "pending": pending,
        "deadLetters": dead_letters,
    }
    report.details.update(facts)
    report.message = f"worker {settings.worker_id}: " + ("running" if running else "not running")
    if not args.json:
        _print_status(facts, redis_problem)
    if refused is not None:
        raise refused
    if redis_problem:
        raise BackendUnavailable(f"Redis at {safe_url(settings.redis_url)} is unreachable: {redis_problem}")
    return Exit.OK


def _print_status(facts: dict[str, Any], redis_problem: str) -> None:
    heartbeat = facts["lastHeartbeatAt"] or "never"
    if facts["lastHeartbeatOutcome"] and facts["lastHeartbeatOutcome"] != "ok":
        heartbeat += f" (last attempt: {facts['lastHeartbeatOutcome']})"
    pending = (
        ", ".join(f"{key} {count}" for key, count in facts["pending"].items())
        if facts["pending"] is not None
        else f"unknown (Redis unreachable: {redis_problem})"
    )
    lines = [
        ("worker", f"{facts['workerId']}" + (f" ({facts['workerName']})" if facts["workerName"] else "")),
        ("server", facts["serverUrl"]),
        ("redis", facts["redisUrl"]),
        ("executor", facts["executorType"]),
        ("env file", facts["envFile"]),
        ("running", "yes" if facts["running"] else "no"),
        ("last heartbeat", heartbeat),
        ("tasks done", str(facts["tasksDone"])),
        ("tasks failed", str(facts["tasksFailed"])),
        ("pending", pending),
        ("dead letters", "unknown" if facts["deadLetters"] is None else f"{facts['deadLetters']} (all workers)"),
    ]
    for label, value in lines:
        sys.stdout.write(redact(f"{label + ':':<16}{value}") + "\n")


def unregister_command(args: argparse.Namespace, report: Report) -> int:
    _loaded, settings = _load(args)
    report.identify(settings)
    _require_identity(settings)
    if settings.state_dir.is_dir() and state.lock_is_held(settings.state_dir, settings.job_id):
        raise TransientError(f"worker {settings.worker_id} is running: stop it before unregistering it")
    session = registration.make_session(settings)
    try:
        registration.deregister(session, settings, worker_id=settings.worker_id)
    except registration.CredentialsRefused as refused:
        if not args.force:
            raise AuthError(
                f"the server refused to deregister worker {settings.worker_id} ({refused}); "
                "use --force to forget it here anyway"
            ) from None
        log.warning("the server refused the deregistration (%s); forgetting the identity anyway", refused)
    except BackendUnavailable as error:
        if not args.force:
            raise BackendUnavailable(f"{error}; use --force to forget the identity here anyway") from None
        log.warning("%s; forgetting the identity anyway", error)
    finally:
        session.close()
    registration.forget_identity(settings.env_file)
    report.details.update(unregistered=True, envFile=str(settings.env_file))
    report.message = f"unregistered worker {settings.worker_id}; removed its identity from {settings.env_file}"
    if not args.json:
        cli.print_line(report.message)
    return Exit.OK
