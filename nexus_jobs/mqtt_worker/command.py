"""``mqtt-job-worker``: take ONE job pointer from MQTT, run its steps in the workDir on the
shared drive, publish the result, acknowledge the pointer, exit. A restart policy (Docker
``restart: always``, systemd ``Restart=always``) starts the next one in a fresh process.

Nothing is lost: the worker keeps a persistent session (fixed client id, clean start off,
session expiry) with a QoS 1 subscription and a receive maximum of 1, so the broker hands it
one pointer at a time and keeps the others queued while it works or is down. The pointer is
acknowledged (paho-mqtt manual ack) only after the result has been published and the broker
has acknowledged it; a worker killed mid-job gets the pointer again at its next start.

Nothing is run twice: a result record in the workDir, written before publishing, turns a
redelivered finished job into a re-publication of its result, and a lock file in the workDir
keeps two workers from running one job. The contract is ``docs/mqtt.md``.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from ..cli import frame as cli
from ..cli.summary import result_object
from ..core import processes, state
from ..core.errors import ConfigError, JobError, TransientError
from ..core.exits import Exit
from ..core.stopping import StopSignals
from . import job
from .broker import WAIT_SLICE_SECONDS, BrokerSession
from .joblog import JobLogRefused
from .settings import OPTIONS, PROG, Settings, load_settings

log = logging.getLogger("nexus_jobs.mqtt_worker")

# How one cycle ended: ``details.cycle`` of the --json object (docs/mqtt.md).
RAN = "ran"
REPUBLISHED = "re-published"
INVALID_POINTER = "invalid-pointer"
NO_JOB = "no-job"
STOPPED = "stopped"
# ``type`` of the --json object.
JSON_TYPE = PROG


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.new_parser(
        PROG,
        "Take one job pointer from MQTT, run its steps in the shared-drive workDir, publish the result, exit.",
        scheduled=False,
    )
    cli.add_options(parser, OPTIONS, in_config_file=False)
    return cli.main(prog=PROG, parser=parser, run=run, argv=argv)


def run(args: argparse.Namespace) -> int:
    """One cycle. Exit 0 when a job's result was published or no job came; 143 (SIGTERM) or
    130 (SIGINT) when a stop signal came, whether the job was finished first or not. With
    ``--json``, the one object of every command, printed here once the exit code is known,
    also when the cycle ends with an error (``docs/mqtt.md``)."""
    started = state.now_utc()
    settings: Settings | None = None
    signals = StopSignals()
    try:
        settings = load_settings(args)
        with signals:
            cycle, result = work(settings, signals)
    except JobError as error:
        exit_code = signals.exit_code or error.exit_code
        if args.json:
            ended = STOPPED if signals.requested else None
            cli.print_json(summary(settings, started, exit_code=exit_code, cycle=ended, message=_one_line(error)))
        if signals.exit_code is not None:
            raise Stopped(str(error), signals.exit_code) from None
        raise
    exit_code = signals.exit_code or Exit.OK
    if args.json:
        message = _describe(cycle, result, settings=settings, signal_name=signals.name)
        cli.print_json(summary(settings, started, exit_code=exit_code, cycle=cycle, result=result, message=message))
    if exit_code != Exit.OK:
        log.info("stopped by %s", signals.name)
    return exit_code


class Stopped(JobError):
    """A stop signal ended the run early: its exit code is the signal's (130 or 143)."""

    def __init__(self, message: str, exit_code: Exit) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def summary(
    settings: Settings | None,
    started: datetime,
    *,
    exit_code: int,
    cycle: str | None,
    result: dict[str, Any] | None = None,
    message: str = "",
) -> dict[str, Any]:
    """The run's ``--json`` object: the common keys, the cycle's facts under ``details``.
    ``settings`` is None when they could not be loaded."""
    return result_object(
        job=settings.worker_id if settings else None,
        job_type=JSON_TYPE,
        exit_code=exit_code,
        started=started,
        duration_seconds=(state.now_utc() - started).total_seconds(),
        message=message,
        details={
            "cycle": cycle,
            "result": result,
            "broker": settings.broker if settings else None,
            "workerId": settings.worker_id if settings else None,
        },
    )


def _describe(cycle: str, result: dict[str, Any] | None, *, settings: Settings, signal_name: str) -> str:
    """The one-line ``message`` of a cycle that ended without an error."""
    if cycle == NO_JOB:
        return f"no job came within {settings.wait_timeout_seconds:g} s"
    if cycle == STOPPED:
        return f"stopped by {signal_name} before a job came"
    if result is None:
        return "invalid pointer without a usable id: dropped"
    verb = {RAN: "ran", REPUBLISHED: "re-published the recorded result", INVALID_POINTER: "invalid pointer"}[cycle]
    return f"job {result['id']}: {verb}, status {result['status']}"


def _one_line(error: JobError) -> str:
    return "; ".join(getattr(error, "problems", None) or [str(error)])


# --- the one-shot flow ----------------------------------------------------------------


def work(settings: Settings, signals: StopSignals) -> tuple[str, dict[str, Any] | None]:
    """Kill what a killed predecessor left running, connect, take one pointer, handle it,
    disconnect. Returns how the run ended (one of the named ways out) and the result
    published, if any."""
    record = children_record(settings)
    if record is not None:
        killed = record.kill_leftovers()
        if killed:
            log.warning("killed %d process(es) a previous run of this worker left running", killed)
    session = BrokerSession(settings)
    session.open()
    try:
        message = receive(session, settings=settings, signals=signals)
        if message is None:
            if signals.requested:
                log.info("stopped by a signal before a job came")
                return STOPPED, None
            log.info("no job came within %g s", settings.wait_timeout_seconds)
            return NO_JOB, None
        return handle(message, session=session, settings=settings, signals=signals, record=record)
    finally:
        session.close()


def children_record(settings: Settings) -> processes.GroupRecord | None:
    """Where this worker notes the step it runs, in its local state directory, so that its
    next start can kill what a killed run left (``docs/child-processes.md``). Without a
    writable state directory the steps still die with the worker; their children may not."""
    try:
        state.ensure_directory(settings.state_dir)
    except ConfigError as error:
        log.warning("%s; a step's children may outlive a killed worker", error)
        return None
    name = re.sub(r"[^A-Za-z0-9._-]", "_", settings.worker_id)
    return processes.GroupRecord(settings.state_dir / f"{PROG}.{name}.children.json")


def receive(session: BrokerSession, *, settings: Settings, signals: StopSignals) -> Any:
    """The first pointer the broker hands us, or None (wait timeout or stop signal)."""
    wait = settings.wait_timeout_seconds
    deadline = time.monotonic() + wait if wait > 0 else None
    message = session.next_message(deadline=deadline, stop=lambda: signals.requested)
    if message is not None:
        log.info(
            "received a pointer on %s (%d bytes%s)",
            message.topic,
            len(message.payload),
            ", redelivered" if message.dup else "",
        )
    return message


def handle(
    message: Any,
    *,
    session: BrokerSession,
    settings: Settings,
    signals: StopSignals,
    record: processes.GroupRecord | None,
) -> tuple[str, dict[str, Any] | None]:
    started_at = state.isoformat(state.now_utc())
    try:
        pointer = job.parse_pointer(message.payload, jobs_root=settings.jobs_root)
    except job.InvalidPointer as problem:
        return reject(problem, message=message, session=session, settings=settings, started_at=started_at)
    try:
        with hold_job_lock(pointer, session=session, signals=signals):
            recorded = job.read_result_record(pointer)
            if recorded is not None:
                log.info(
                    "job %s already finished (%s): re-publishing its recorded result",
                    pointer.job_id,
                    recorded["status"],
                )
                cycle, result = REPUBLISHED, recorded
            else:
                cycle, result = (
                    RAN,
                    execute(
                        pointer,
                        session=session,
                        settings=settings,
                        signals=signals,
                        record=record,
                        started_at=started_at,
                    ),
                )
            report(session, settings=settings, result=result)
            acknowledge(session, message)
            return cycle, result
    except job.InvalidPointer as problem:
        return reject(problem, message=message, session=session, settings=settings, started_at=started_at)


def reject(
    problem: job.InvalidPointer, *, message: Any, session: BrokerSession, settings: Settings, started_at: str
) -> tuple[str, dict[str, Any] | None]:
    """An invalid pointer: an ``error`` result when its id is known, then acknowledged."""
    result = None
    if problem.job_id is None:
        log.warning("invalid pointer dropped (no usable id): %s", problem)
    else:
        log.warning("job %s: invalid pointer: %s", problem.job_id, problem)
        result = job.make_result(
            job_id=problem.job_id,
            status="error",
            log_file=problem.log_file,
            exit_code=None,
            worker_id=settings.worker_id,
            started_at=started_at,
            error=str(problem),
        )
        report(session, settings=settings, result=result)
    acknowledge(session, message)
    return INVALID_POINTER, result


@contextmanager
def hold_job_lock(pointer: job.Pointer, *, session: BrokerSession, signals: StopSignals) -> Iterator[None]:
    """The workDir's lock, waited for (keeping the broker connection alive) when another
    worker is running this job: afterwards its recorded result is simply re-published."""
    import filelock

    lock = filelock.FileLock(str(pointer.work_dir / job.LOCK_FILE), timeout=0)
    announced = False
    while True:
        try:
            lock.acquire()
            break
        except filelock.Timeout:
            if not announced:
                log.info("job %s is being run by another worker; waiting for it to finish", pointer.job_id)
                announced = True
            if signals.requested:
                raise TransientError(
                    f"stopped while waiting for another worker to finish job {pointer.job_id}; its pointer stays queued"
                ) from None
            session.service(WAIT_SLICE_SECONDS)
        except OSError as error:
            raise job.InvalidPointer(
                f"workDir is not writable: {error.strerror}", job_id=pointer.job_id, log_file=pointer.log_file
            ) from None
    try:
        yield
    finally:
        lock.release()


def execute(
    pointer: job.Pointer,
    *,
    session: BrokerSession,
    settings: Settings,
    signals: StopSignals,
    record: processes.GroupRecord | None,
    started_at: str,
) -> dict[str, Any]:
    """Run the job's steps and record the result in the workDir (before it is published)."""
    definition = job.load_definition(pointer, default_timeout_seconds=settings.job_timeout_seconds)
    rerun = (pointer.work_dir / job.LOG_FILE).exists()
    header = (
        f"=== job {pointer.job_id} started {started_at} by {settings.worker_id}: {len(definition.steps)} "
        f"step(s) from {definition.source}, timeout {definition.timeout_seconds:g} s"
    )
    if rerun:
        header += " (an earlier run did not finish: running the steps again)"
    log.info("job %s: running %d step(s) in %s", pointer.job_id, len(definition.steps), pointer.work_dir)
    # The steps get the worker's environment without its secrets (core.secrets), plus these.
    passed = {"JOB_ID": pointer.job_id, "JOB_WORK_DIR": str(pointer.work_dir), **definition.env}
    try:
        outcome = job.run_steps(
            job.JobDefinition(definition.steps, passed, definition.timeout_seconds, definition.source),
            work_dir=pointer.work_dir,
            header=header,
            log_max_bytes=settings.job_log_max_bytes,
            record=record,
            service=lambda: session.service(0),
            stop_now=lambda: signals.now,
        )
    except job.JobAbandoned:
        raise TransientError(
            f"stopped by a second signal: job {pointer.job_id} was killed and stays queued for the next start"
        ) from None
    except (OSError, JobLogRefused, processes.CannotStart) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise job.InvalidPointer(
            f"cannot run the job: {reason}", job_id=pointer.job_id, log_file=pointer.log_file
        ) from None
    result = job.make_result(
        job_id=pointer.job_id,
        status=outcome.status,
        log_file=pointer.log_file,
        exit_code=outcome.exit_code,
        worker_id=settings.worker_id,
        started_at=started_at,
        error=outcome.error,
    )
    try:
        job.write_result_record(pointer.work_dir, result)
    except OSError as error:
        # Without the record a redelivery would run the job again: better not to report it.
        raise TransientError(
            f"job {pointer.job_id}: cannot write its result record: {error.strerror or error}; the pointer stays queued"
        ) from None
    log.info("job %s: %s (exit code %d)", pointer.job_id, outcome.status, outcome.exit_code)
    return result


def report(session: BrokerSession, *, settings: Settings, result: dict[str, Any]) -> None:
    """Publish the result at QoS 1 and wait until the broker has acknowledged it."""
    topic = settings.result_topic.replace("{id}", result["id"])
    session.publish(topic, result)
    log.info("published the result of job %s on %s", result["id"], topic)


def acknowledge(session: BrokerSession, message: Any) -> None:
    """Only now may the broker forget the pointer."""
    session.ack(message)
