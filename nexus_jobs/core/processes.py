"""THE child-process runner: every child the project starts (a webhook ``command``, an MQTT
job step, a BSNexus executor, git) goes through :func:`run`. The contract is
``docs/child-processes.md``; in short:

- the environment is :func:`secrets.child_environment` (no secret of the project) plus what
  the job passes, and a tag (:data:`TAG_VARIABLE`) that lets a later worker recognise the
  child and whatever it started;
- the child leads its own process group; on timeout or stop the whole group gets SIGTERM,
  then SIGKILL after a grace period; when the child ends, what it left in its group (and any
  process carrying its tag, daemons included) is killed too;
- the child gets PR_SET_PDEATHSIG(SIGKILL), so it dies with a worker killed by SIGKILL; what
  it started is found by the next worker through a :class:`GroupRecord` and killed before
  that worker runs anything;
- output is captured (bounded, redacted) or written to a log file the caller opened.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets as random_tokens
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .secrets import child_environment, redact

TAG_VARIABLE = "NEXUS_JOBS_CHILD_TAG"
KILL_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.1
CAPTURE_LIMIT_BYTES = 64 * 1024
TIMEOUT_EXIT_CODE = 124  # what timeout(1) reports
TIMEOUT, STOP = "timeout", "stop"


class CannotStart(Exception):
    """The child could not be started (no such program, not executable, bad cwd); the
    message is one line naming the program."""


@dataclass(frozen=True)
class Finished:
    """How a child ended. ``exit_code`` is its status (128 + n when signal n ended it);
    ``ended_by`` is ``""`` when it exited by itself, :data:`TIMEOUT` or :data:`STOP` when the
    runner ended its group. ``output`` (the head of stdout) and ``errors`` (the tail of
    stderr) are redacted, and empty when the output went to a log file."""

    exit_code: int
    ended_by: str
    output: str
    errors: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.ended_by

    def last_error_lines(self, count: int = 1, *, width: int = 300) -> str:
        """The last ``count`` non-empty lines of stderr on one line, for a one-line message."""
        lines = [line.strip() for line in self.errors.splitlines() if line.strip()]
        return " | ".join(lines[-count:])[:width]


@dataclass(frozen=True)
class Child:
    """A running child as a worker records it: its process group and its tag."""

    group_id: int
    tag: str


class GroupRecord:
    """A small local file naming the child a worker is running, so that the worker's
    successor can kill what is left of it (a worker killed by SIGKILL cannot). Keep it in a
    place private to one worker on one machine (its state directory, never a shared drive).

    Written without fsync on purpose: it guards against a killed worker, not against a power
    loss, after which no child survives anyway."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remember(self, child: Child) -> None:
        text = json.dumps({"groupId": child.group_id, "tag": child.tag, "bootId": _boot_id()})
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, self.path)

    def forget(self) -> None:
        # A record that cannot be removed is harmless: it names processes by their tag.
        with contextlib.suppress(OSError):
            self.path.unlink()

    def kill_leftovers(self) -> int:
        """Kill what a predecessor's child left running (its group and every process carrying
        its tag), then forget the record. Returns how many processes were killed; 0 when
        there was no record, it is unreadable, or it is from before the last boot."""
        try:
            recorded = json.loads(self.path.read_text(encoding="utf-8"))
            child = Child(group_id=int(recorded["groupId"]), tag=str(recorded["tag"]))
            same_boot = recorded.get("bootId") == _boot_id()
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            self.forget()  # unreadable: nothing can be identified safely
            return 0
        killed = _sweep(child) if same_boot and child.tag else []
        _wait_gone(killed, deadline=time.monotonic() + KILL_GRACE_SECONDS)  # gone before anything runs
        self.forget()
        return len(killed)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    stdin: bytes = b"",
    log: IO[bytes] | int | None = None,
    timeout_seconds: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    service: Callable[[], None] | None = None,
    record: GroupRecord | None = None,
    tag: str | None = None,
    keep_leftovers: bool = False,
    grace_seconds: float = KILL_GRACE_SECONDS,
    capture_limit_bytes: int = CAPTURE_LIMIT_BYTES,
) -> Finished:
    """Run ``argv`` to its end (see the module's docstring). ``env`` is what the job passes
    on top of the policy's environment; ``log`` (a file opened by the caller) receives
    stdout and stderr instead of capturing them; ``should_stop`` is polled and ends the
    group when it says so; ``service`` is called between polls (keep a connection alive);
    ``record`` is kept naming the child while it runs. Children run with one ``tag`` (from
    :func:`new_tag`) and ``keep_leftovers`` leave what they start running, and the record
    in place, until the caller calls :func:`sweep` and ``record.forget()`` (the steps of one
    MQTT job share their daemons). Raises :class:`CannotStart`."""
    tag = tag or new_tag()
    environment = child_environment({**(env or {}), TAG_VARIABLE: tag})
    began = time.monotonic()
    deadline = began + timeout_seconds if timeout_seconds is not None else None
    with contextlib.ExitStack() as files:
        if log is None:
            out: IO[bytes] | int = files.enter_context(tempfile.TemporaryFile())
            err: IO[bytes] | int = files.enter_context(tempfile.TemporaryFile())
        else:
            out, err = log, subprocess.STDOUT
        process = _start(argv, environment, cwd=cwd, stdin=bool(stdin), out=out, err=err)
        child = Child(group_id=process.pid, tag=tag)
        ended_by = "interrupted"
        try:
            if record is not None:
                _remember(record, child)
            ended_by = _wait(process, stdin, deadline=deadline, should_stop=should_stop, service=service)
            if ended_by:
                _end_group(process, grace_seconds=grace_seconds, service=service)
        finally:
            # Whatever the child left behind goes with it, also when the caller is interrupted.
            swept = not keep_leftovers or ended_by != ""  # "interrupted" while raising
            if swept:
                sweep(child)
            if process.poll() is None:
                process.wait()
            if record is not None and swept:
                record.forget()  # else the caller forgets it once it has swept the tag
        output = _head(out, capture_limit_bytes) if log is None else ""
        errors = _tail(err, capture_limit_bytes) if log is None else ""
    code = process.returncode
    exit_code = TIMEOUT_EXIT_CODE if ended_by == TIMEOUT else (code if code >= 0 else 128 - code)
    return Finished(exit_code, ended_by, output, errors, time.monotonic() - began)


def _remember(record: GroupRecord, child: Child) -> None:
    try:
        record.remember(child)
    except OSError as error:  # a full disk, say: better not run what could not be recorded
        raise CannotStart(f"cannot record the child in {record.path}: {error.strerror or error}") from None


def new_tag() -> str:
    """A fresh tag for the children of one job."""
    return random_tokens.token_hex(8)


def _head(handle: IO[bytes] | int, limit: int) -> str:
    """The first ``limit`` bytes a child wrote, redacted."""
    assert not isinstance(handle, int)
    handle.seek(0)
    data = handle.read(limit + 1)
    cut = len(data) > limit
    text = data[:limit].decode("utf-8", errors="replace")
    return redact(text) + (f"\n[output cut at {limit} bytes]" if cut else "")


def _tail(handle: IO[bytes] | int, limit: int) -> str:
    """The last ``limit`` bytes a child wrote (the reason of a failure is at the end), redacted."""
    assert not isinstance(handle, int)
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - limit))
    text = handle.read(limit).decode("utf-8", errors="replace")
    return (f"[output cut: last {limit} bytes]\n" if size > limit else "") + redact(text)


def _start(
    argv: Sequence[str],
    environment: Mapping[str, str],
    *,
    cwd: Path | str | None,
    stdin: bool,
    out: IO[bytes] | int,
    err: IO[bytes] | int,
) -> subprocess.Popen[bytes]:
    name = os.path.basename(str(argv[0])) if argv else "(nothing)"
    try:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(environment),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group (and session): one kill ends all of it
            preexec_fn=_die_with_parent_hook(),
        )
    except (OSError, ValueError, IndexError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise CannotStart(f"cannot start {name!r}: {reason}") from None


def _wait(
    process: subprocess.Popen[bytes],
    stdin: bytes,
    *,
    deadline: float | None,
    should_stop: Callable[[], bool],
    service: Callable[[], None] | None,
) -> str:
    """Feed stdin and wait for the child; "" when it ended, else why it must be ended."""
    pending_input: bytes | None = stdin or None
    while True:
        remaining = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
        if remaining <= 0:
            return TIMEOUT
        try:
            if process.stdin is not None:
                # communicate() writes stdin without blocking on a child that does not read it;
                # later rounds carry on with what is left of the input.
                process.communicate(pending_input, timeout=remaining)
                pending_input = None
            else:
                process.wait(timeout=remaining)
            return ""
        except subprocess.TimeoutExpired:
            pending_input = None
        if should_stop():
            return STOP
        if service is not None:
            service()


def _end_group(process: subprocess.Popen[bytes], *, grace_seconds: float, service: Callable[[], None] | None) -> None:
    """SIGTERM to the child's group, SIGKILL after the grace period."""
    kill_group(process.pid, signal.SIGTERM)
    grace_end = time.monotonic() + grace_seconds
    while process.poll() is None and time.monotonic() < grace_end:
        if service is not None:
            service()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=min(POLL_SECONDS, max(0.0, grace_end - time.monotonic())))
    kill_group(process.pid, signal.SIGKILL)
    process.wait()


def kill_group(group_id: int, signal_number: int) -> None:
    """Signal a child's process group; never our own (or "every process", for 0 and 1)."""
    if group_id <= 1 or group_id == os.getpgrp():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group_id, signal_number)


def sweep(child: Child) -> int:
    """SIGKILL the child's process group and every process carrying its tag (a daemon that
    left the group with setsid still carries it). Returns how many tagged processes there
    were (looked up before the group is killed: a killed process shows no environment)."""
    return len(_sweep(child))


def _sweep(child: Child) -> list[int]:
    marker = f"{TAG_VARIABLE}={child.tag}".encode()
    tagged = []
    for pid in _own_processes():
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if marker in handle.read().split(b"\0"):
                    tagged.append(pid)
        except OSError:
            continue
    kill_group(child.group_id, signal.SIGKILL)
    for pid in tagged:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return tagged


def _wait_gone(pids: list[int], *, deadline: float) -> None:
    """Wait until the processes have ended (a zombie has: it only waits for its reaper)."""
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        break
            except (OSError, IndexError):
                break
            time.sleep(0.01)


def _own_processes() -> list[int]:
    """Processes of this user other than this one (only those can carry our tag)."""
    me, uid = os.getpid(), os.getuid()
    pids = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) != me:
                with contextlib.suppress(OSError):
                    if entry.stat().st_uid == uid:
                        pids.append(int(entry.name))
    return pids


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


_hook_cache: dict[int, Callable[[], None] | None] = {}


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook giving the child PR_SET_PDEATHSIG(SIGKILL): if the worker is killed
    (-9), its child must not run on beside the rerun of its job. Linux delivers the signal
    when the *thread* that started the child ends, so start children from a thread that
    lives as long as the worker (the main thread). Prepared in the parent, so the child
    makes only system calls; a parent that died before the call is noticed through getppid."""
    parent = os.getpid()
    if parent not in _hook_cache:
        _hook_cache[parent] = _make_hook(parent)
    return _hook_cache[parent]


def _make_hook(parent: int) -> Callable[[], None] | None:
    try:
        import ctypes

        prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    kill = int(signal.SIGKILL)

    def hook() -> None:
        prctl(pr_set_pdeathsig, kill, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(128 + kill)  # as if the signal had come

    return hook
