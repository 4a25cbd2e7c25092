"""One build job of ``mqtt-job-worker``: the pointer, the workDir, the steps, the result
record (the contract is ``docs/mqtt.md``). Steps run through the project's one child-process
runner (``core.processes``).

Nothing here talks to MQTT: the worker hands in a ``service`` callback that keeps the broker
connection alive while steps run, and a ``stop_now`` predicate for the second stop signal.
Everything here comes from the controller and the shared drive, so everything is checked:
size, JSON nesting, types, where paths lead.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from ..core import processes, state
from .joblog import JobLog

JOB_FILE = "job.json"
LOG_FILE = "job.log"
RESULT_FILE = "job.result.json"
LOCK_FILE = "job.lock"

# A pointer names a directory; anything bigger than this is not a pointer.
POINTER_MAX_BYTES = 64 * 1024
JOB_FILE_MAX_BYTES = 1024 * 1024
RESULT_FILE_MAX_BYTES = 1024 * 1024
# The id becomes an MQTT topic level and appears in file names: no '/', '+', '#' or spaces.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@-]{0,199}")
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

STATUSES = ("success", "failure", "error", "timeout")


class InvalidPointer(Exception):
    """A pointer that cannot be run. ``job_id`` is set when it is known (and safe to use in a
    topic), so the controller can be told; ``log_file`` when the workDir was valid."""

    def __init__(self, reason: str, *, job_id: str | None = None, log_file: str | None = None) -> None:
        super().__init__(reason)
        self.job_id = job_id
        self.log_file = log_file


class JobAbandoned(Exception):
    """The worker was told to stop now: the step was killed and the job is left unacknowledged."""


@dataclass(frozen=True)
class Pointer:
    job_id: str
    work_dir: Path  # resolved, inside the jobs root
    log_file: str  # as the controller sees it: under the configured jobs root
    message_steps: Any


@dataclass(frozen=True)
class JobDefinition:
    steps: tuple[str, ...]
    env: Mapping[str, str]
    timeout_seconds: float
    source: str


@dataclass(frozen=True)
class StepsOutcome:
    status: str
    exit_code: int
    error: str | None = None


def parse_pointer(payload: bytes, *, jobs_root: Path) -> Pointer:
    """The validated pointer, or :class:`InvalidPointer` saying what is wrong with it."""
    if len(payload) > POINTER_MAX_BYTES:
        raise InvalidPointer(f"pointer of {len(payload)} bytes is larger than {POINTER_MAX_BYTES} bytes")
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidPointer(f"pointer is not JSON: {str(error)[:80]}") from None
    except RecursionError:
        job_id = _shallow_id(payload)
        raise InvalidPointer(
            "pointer is nested too deeply to be a pointer", job_id=job_id if _is_job_id(job_id) else None
        ) from None
    if not isinstance(message, dict):
        raise InvalidPointer(f"pointer is a JSON {type(message).__name__}, not an object")
    job_id = message.get("id")
    if not _is_job_id(job_id):
        shown = "missing" if job_id is None else repr(job_id)[:60]
        raise InvalidPointer(f"pointer id is {shown}: expected letters, digits and . _ : @ - (at most 200)")
    work_dir_text = message.get("workDir")
    if not isinstance(work_dir_text, str) or not work_dir_text or "\0" in work_dir_text:
        raise InvalidPointer("pointer has no workDir (a path inside the jobs root)", job_id=job_id)
    work_dir, shown_dir = resolve_work_dir(work_dir_text, jobs_root=jobs_root, job_id=job_id)
    return Pointer(
        job_id=job_id,
        work_dir=work_dir,
        log_file=str(shown_dir / LOG_FILE),
        message_steps=message.get("steps"),
    )


def _is_job_id(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and JOB_ID_PATTERN.fullmatch(value) is not None


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SPACE = re.compile(r"\s*")


def _shallow_id(payload: bytes) -> str | None:
    """The top-level ``"id"`` of a pointer nested too deeply for the JSON parser, found by a
    scan that keeps no stack, so the controller can still be told."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    position = _SPACE.match(text).end()  # type: ignore[union-attr]
    if not text.startswith("{", position):
        return None
    depth = 0
    while position < len(text):
        character = text[position]
        if character == '"':
            token = _JSON_STRING.match(text, position)
            if token is None:
                return None
            position = token.end()
            after = _SPACE.match(text, position).end()  # type: ignore[union-attr]
            if depth == 1 and text.startswith(":", after) and json.loads(token.group()) == "id":
                value = _JSON_STRING.match(text, _SPACE.match(text, after + 1).end())  # type: ignore[union-attr]
                return json.loads(value.group()) if value is not None else None
            continue
        depth += 1 if character in "{[" else -1 if character in "}]" else 0
        position += 1
    return None


def resolve_work_dir(text: str, *, jobs_root: Path, job_id: str) -> tuple[Path, Path]:
    """The workDir with every symlink resolved, and the same place spelled under the
    configured root. It must be an existing directory strictly inside the root."""
    root = jobs_root.resolve()
    try:
        resolved = (jobs_root / text).resolve(strict=True)
    except (OSError, RuntimeError):
        raise InvalidPointer(f"workDir {text!r} does not exist", job_id=job_id) from None
    if resolved == root or not resolved.is_relative_to(root):
        raise InvalidPointer(f"workDir {text!r} is outside the jobs root {jobs_root}", job_id=job_id)
    if not resolved.is_dir():
        raise InvalidPointer(f"workDir {text!r} is not a directory", job_id=job_id)
    return resolved, jobs_root / resolved.relative_to(root)


def load_definition(pointer: Pointer, *, default_timeout_seconds: float) -> JobDefinition:
    """Steps, env and timeout from ``job.json``; the message's steps only when there is none."""
    where = f"{JOB_FILE} of job {pointer.job_id}"
    path = pointer.work_dir / JOB_FILE
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        resolved = None
    except (OSError, RuntimeError) as error:
        raise _invalid(pointer, f"{where}: cannot resolve it: {error}") from None
    if resolved is None:
        if pointer.message_steps is None:
            raise _invalid(pointer, f"no {JOB_FILE} in the workDir and no steps in the pointer")
        steps = _check_steps(pointer, pointer.message_steps, where="pointer steps")
        return JobDefinition(steps=steps, env={}, timeout_seconds=default_timeout_seconds, source="pointer")
    if not resolved.is_relative_to(pointer.work_dir):
        raise _invalid(pointer, f"{where}: a symlink leading outside the workDir")
    document = _read_job_file(pointer, resolved, where=where)
    unknown = sorted(set(document) - {"steps", "env", "timeout"})
    if unknown:
        raise _invalid(pointer, f"{where}: unknown key {unknown[0]!r} (known: steps, env, timeout)")
    steps = _check_steps(pointer, document.get("steps"), where=f"{where}: steps")
    env = document.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(value, str) and ENV_NAME_PATTERN.fullmatch(name) and "\0" not in value for name, value in env.items()
    ):
        raise _invalid(pointer, f'{where}: env must be an object of NAME: "string" pairs')
    timeout = document.get("timeout", default_timeout_seconds)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 7 * 86400:
        raise _invalid(pointer, f"{where}: timeout must be a number of seconds from 0 to 604800")
    return JobDefinition(steps=steps, env=dict(env), timeout_seconds=float(timeout), source=JOB_FILE)


def read_regular_file(path: Path, *, limit_bytes: int) -> bytes:
    """At most ``limit_bytes`` + 1 bytes of ``path``, which must be a regular file: a FIFO
    must not block the worker, nor a link to a device feed it for ever. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit_bytes + 1)
    finally:
        os.close(fd)


def _read_job_file(pointer: Pointer, path: Path, *, where: str) -> dict[str, Any]:
    try:
        raw = read_regular_file(path, limit_bytes=JOB_FILE_MAX_BYTES)
    except OSError as error:
        raise _invalid(pointer, f"{where}: cannot read it: {error.strerror}") from None
    if len(raw) > JOB_FILE_MAX_BYTES:
        raise _invalid(pointer, f"{where}: larger than {JOB_FILE_MAX_BYTES} bytes")
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as error:
        raise _invalid(
            pointer, f"{where}: line {error.lineno} column {error.colno}: invalid JSON: {error.msg}"
        ) from None
    except UnicodeDecodeError:
        raise _invalid(pointer, f"{where}: not UTF-8 text") from None
    except RecursionError:
        raise _invalid(pointer, f"{where}: nested too deeply to be a job definition") from None
    if not isinstance(document, dict):
        raise _invalid(pointer, f"{where}: expected a JSON object")
    return document


def _check_steps(pointer: Pointer, steps: Any, *, where: str) -> tuple[str, ...]:
    if not isinstance(steps, list) or not steps:
        raise _invalid(pointer, f"{where}: expected a non-empty list of shell commands")
    if not all(isinstance(step, str) and step.strip() and "\0" not in step for step in steps):
        raise _invalid(pointer, f"{where}: every step must be a non-empty string")
    return tuple(steps)


def _invalid(pointer: Pointer, reason: str) -> InvalidPointer:
    return InvalidPointer(reason, job_id=pointer.job_id, log_file=pointer.log_file)


def make_result(
    *,
    job_id: str,
    status: str,
    log_file: str | None,
    exit_code: int | None,
    worker_id: str,
    started_at: str,
    error: str | None = None,
) -> dict[str, Any]:
    """The result message (and record): the seed's four fields plus what a controller needs."""
    result: dict[str, Any] = {"id": job_id, "status": status, "logFile": log_file, "exitCode": exit_code}
    if error:
        result["error"] = error
    result.update(startedAt=started_at, finishedAt=state.isoformat(state.now_utc()), workerId=worker_id)
    return result


def read_result_record(pointer: Pointer) -> dict[str, Any] | None:
    """The recorded result of an earlier run of this job, or None (also for a record that is
    not one - not a regular file, too big, not JSON, nested too deeply, another job's: the
    record is ours, written atomically, so anything else was put there, and is replaced)."""
    path = pointer.work_dir / RESULT_FILE
    try:
        raw = read_regular_file(path, limit_bytes=RESULT_FILE_MAX_BYTES)
        record = json.loads(raw) if len(raw) <= RESULT_FILE_MAX_BYTES else None
    except FileNotFoundError:
        return None
    except (ValueError, RecursionError):
        return None
    except OSError as error:
        if error.errno == errno.EINVAL and stat.S_ISDIR(os.lstat(path).st_mode):
            # The record could never be written there: the job would run at every delivery.
            raise _invalid(pointer, f"{RESULT_FILE} is a directory; remove it to run the job") from None
        if error.errno in (errno.EINVAL, errno.ELOOP, errno.ENXIO):
            return None
        # Unreadable: whether the job already ran cannot be known, so it is not run.
        raise _invalid(pointer, f"{RESULT_FILE}: cannot read it: {error.strerror}") from None
    if not isinstance(record, dict) or record.get("id") != pointer.job_id or record.get("status") not in STATUSES:
        return None
    return {key: value for key, value in record.items() if key != "version"}


def write_result_record(work_dir: Path, result: Mapping[str, Any]) -> None:
    state.write_json_atomic(work_dir / RESULT_FILE, dict(result))


def run_steps(
    definition: JobDefinition,
    *,
    work_dir: Path,
    header: str,
    log_max_bytes: int,
    record: processes.GroupRecord | None,
    service: Callable[[], None],
    stop_now: Callable[[], bool],
) -> StepsOutcome:
    """Run the steps in order through the shell in ``work_dir``, stopping at the first
    failure, with all output appended to ``job.log`` as it is written. The steps share one
    tag: a daemon one step starts is there for the next, and is killed when the job ends."""
    deadline = time.monotonic() + definition.timeout_seconds
    total = len(definition.steps)
    tag = processes.new_tag()
    # Appended: a rerun after a crash keeps the output of the interrupted run above its own.
    with JobLog(work_dir / LOG_FILE, max_bytes=log_max_bytes) as log:
        try:
            log.line(header)
            for number, step in enumerate(definition.steps, start=1):
                log.line(f"=== step {number}/{total}: {step}")
                finished = processes.run(
                    ["/bin/sh", "-c", step],
                    env=definition.env,
                    cwd=work_dir,
                    log=log.child_fd,
                    timeout_seconds=max(0.0, deadline - time.monotonic()),
                    should_stop=stop_now,
                    service=functools.partial(_service, log, service),
                    record=record,
                    tag=tag,
                    keep_leftovers=True,
                )
                outcome = _step_outcome(finished, number=number, total=total, definition=definition, log=log)
                if outcome is not None:
                    return outcome
            log.line(f"=== job finished: {total} step{'s' if total != 1 else ''} succeeded")
            return StepsOutcome("success", 0)
        finally:
            processes.sweep(processes.Child(group_id=0, tag=tag))  # daemons do not outlive the job
            if record is not None:
                record.forget()


def _service(log: JobLog, service: Callable[[], None]) -> None:
    log.drain()
    service()


def _step_outcome(
    finished: processes.Finished, *, number: int, total: int, definition: JobDefinition, log: JobLog
) -> StepsOutcome | None:
    """How the job ends after this step, or None to go on with the next one."""
    if finished.ended_by == processes.STOP:
        log.line(f"=== step {number}/{total} killed: the worker was told to stop at once")
        raise JobAbandoned("stopped by a second signal")
    if finished.ended_by == processes.TIMEOUT:
        message = f"timed out after {definition.timeout_seconds:g} s in step {number}/{total}"
        log.line(f"=== {message}: process group killed")
        return StepsOutcome("timeout", processes.TIMEOUT_EXIT_CODE, message)
    log.line(f"=== step {number}/{total} exited with {finished.exit_code} after {finished.seconds:.1f} s")
    if finished.exit_code != 0:
        return StepsOutcome("failure", finished.exit_code, f"step {number}/{total} exited with {finished.exit_code}")
    return None
