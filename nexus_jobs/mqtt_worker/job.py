"""One job of ``mqtt-job-worker``: the pointer, the workDir, the steps, the result record.

Nothing here talks to MQTT: the worker hands in a ``service`` callback that keeps the broker
connection alive while steps run, and a ``stop_now`` predicate for the second stop signal.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..core import state

JOB_FILE = "job.json"
LOG_FILE = "job.log"
RESULT_FILE = "job.result.json"
LOCK_FILE = "job.lock"

# A pointer names a directory; anything bigger than this is not a pointer.
POINTER_MAX_BYTES = 64 * 1024
JOB_FILE_MAX_BYTES = 1024 * 1024
# The id becomes an MQTT topic level and appears in file names: no '/', '+', '#' or spaces.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@-]{0,199}")
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KILL_GRACE_SECONDS = 5.0
TIMEOUT_EXIT_CODE = 124  # what timeout(1) reports
PROCESS_POLL_SECONDS = 0.25

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
    if not isinstance(message, dict):
        raise InvalidPointer(f"pointer is a JSON {type(message).__name__}, not an object")
    job_id = message.get("id")
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
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


def _read_job_file(pointer: Pointer, path: Path, *, where: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(JOB_FILE_MAX_BYTES + 1)
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


def read_result_record(work_dir: Path, *, job_id: str) -> dict[str, Any] | None:
    """The recorded result of an earlier run of this job, or None."""
    record = state.read_json(work_dir / RESULT_FILE, repair=False)
    if record is None or record.get("id") != job_id or record.get("status") not in STATUSES:
        return None
    return {key: value for key, value in record.items() if key != "version"}


def write_result_record(work_dir: Path, result: Mapping[str, Any]) -> None:
    state.write_json_atomic(work_dir / RESULT_FILE, dict(result))


def run_steps(
    definition: JobDefinition,
    *,
    work_dir: Path,
    header: str,
    base_env: Mapping[str, str],
    service: Callable[[], None],
    stop_now: Callable[[], bool],
) -> StepsOutcome:
    """Run the steps in order through the shell in ``work_dir``, stopping at the first
    failure, with all output appended to ``job.log`` as it is written."""
    deadline = time.monotonic() + definition.timeout_seconds
    env = {**base_env, **definition.env}
    total = len(definition.steps)
    # Unbuffered and appended: the controller can tail it, and a rerun after a crash keeps
    # the output of the interrupted run above its own.
    with open(work_dir / LOG_FILE, "ab", buffering=0) as log:
        _log_line(log, header)
        for number, step in enumerate(definition.steps, start=1):
            _log_line(log, f"=== step {number}/{total}: {step}")
            began = time.monotonic()
            exit_code = _run_one(
                step, work_dir=work_dir, env=env, log=log, deadline=deadline, service=service, stop_now=stop_now
            )
            seconds = time.monotonic() - began
            if exit_code is None:
                message = f"timed out after {definition.timeout_seconds:g} s in step {number}/{total}"
                _log_line(log, f"=== {message}: process group killed")
                return StepsOutcome("timeout", TIMEOUT_EXIT_CODE, message)
            _log_line(log, f"=== step {number}/{total} exited with {exit_code} after {seconds:.1f} s")
            if exit_code != 0:
                return StepsOutcome("failure", exit_code, f"step {number}/{total} exited with {exit_code}")
        _log_line(log, f"=== job finished: {total} step{'s' if total != 1 else ''} succeeded")
    return StepsOutcome("success", 0)


def _log_line(log: BinaryIO, text: str) -> None:
    log.write(f"{text}\n".encode("utf-8", errors="replace"))


def _run_one(
    step: str,
    *,
    work_dir: Path,
    env: Mapping[str, str],
    log: BinaryIO,
    deadline: float,
    service: Callable[[], None],
    stop_now: Callable[[], bool],
) -> int | None:
    """The step's exit code (128 + signal when killed), or None when the job timed out."""
    process = subprocess.Popen(
        ["/bin/sh", "-c", step],
        cwd=work_dir,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a timeout can end all of it
        preexec_fn=_die_with_worker_hook(),  # safe: the worker runs no other threads
    )
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _end_group(process, service=service)
                return None
            if stop_now():
                _end_group(process, service=service)
                raise JobAbandoned("stopped by a second signal")
            try:
                code = process.wait(timeout=min(PROCESS_POLL_SECONDS, remaining))
            except subprocess.TimeoutExpired:
                service()
                continue
            _kill_group(process.pid, signal.SIGKILL)  # background leftovers of the step
            return code if code >= 0 else 128 - code
    except BaseException:
        _kill_group(process.pid, signal.SIGKILL)
        raise


def _end_group(process: subprocess.Popen[bytes], *, service: Callable[[], None]) -> None:
    """SIGTERM to the step's process group, SIGKILL after a grace period."""
    _kill_group(process.pid, signal.SIGTERM)
    grace_end = time.monotonic() + KILL_GRACE_SECONDS
    while process.poll() is None and time.monotonic() < grace_end:
        service()
        time.sleep(0.02)
    _kill_group(process.pid, signal.SIGKILL)
    process.wait()


def _kill_group(group_id: int, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group_id, signal_number)


@functools.cache
def _die_with_worker_hook() -> Callable[[], None] | None:
    """A pre-exec hook that makes the step's shell die with the worker: if the worker is
    killed (-9), the redelivered job must not run beside an unsupervised earlier run.
    Prepared in the worker, so the child only makes one system call. Linux only."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)

    return hook
