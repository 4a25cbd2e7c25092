"""Lock-protected JSON state files.

Each job id owns ``<job-id>.json`` (its run record: small, read by every due check and by
``nexus-jobs status``) plus, for jobs that remember items, ``<job-id>.<name>.json`` files
written in checkpoints. All of them are guarded by one lock file, ``<job-id>.lock``.

Writes are atomic and durable: a temporary file in the same directory, flush + fsync,
``os.replace``, then an fsync of the directory. A crash at any instant leaves the old or the
new file, never a torn one. Files are created with mode 0600 and carry a ``version`` field.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import CannotCreate, ConfigError, LockHeld, StorageError

STATE_VERSION = 1

log = logging.getLogger("nexus_jobs")


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def isoformat(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def ensure_directory(path: Path) -> Path:
    """Create the state directory (mode 0700) if needed and check that it is writable."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise CannotCreate(f"state directory {path}: cannot create it: {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CannotCreate(f"state directory {path}: not writable by this user (fix its owner or use --state-dir)")
    return path


def run_record_path(state_dir: Path, job_id: str) -> Path:
    return state_dir / f"{job_id}.json"


def data_path(state_dir: Path, job_id: str, name: str) -> Path:
    return state_dir / f"{job_id}.{name}.json"


def lock_path(state_dir: Path, job_id: str) -> Path:
    return state_dir / f"{job_id}.lock"


@contextlib.contextmanager
def job_lock(state_dir: Path, job_id: str) -> Iterator[None]:
    """Hold the job's lock for the block; raise :class:`LockHeld` at once if another run has it."""
    import filelock  # imported here: a not-due run never needs it

    path = lock_path(state_dir, job_id)
    lock = filelock.FileLock(str(path), timeout=0, mode=0o600)
    try:
        lock.acquire()
    except filelock.Timeout:
        if path.is_dir():  # filelock reports a directory in the way as a lock held for ever
            raise CannotCreate(f"lock file {path}: is a directory; remove it") from None
        raise LockHeld(f"job {job_id!r} is already running (lock {lock.lock_file} is held)") from None
    except OSError as error:
        raise CannotCreate(f"lock file {path}: cannot create it: {error.strerror or error}") from None
    try:
        _remove_stale_temp_files(state_dir, job_id)
        yield
    finally:
        lock.release()


def lock_is_held(state_dir: Path, job_id: str) -> bool:
    """Whether some process holds the job's lock right now (for ``status``)."""
    path = lock_path(state_dir, job_id)
    if not path.exists():
        return False
    try:
        with job_lock(state_dir, job_id):
            return False
    except LockHeld:
        return True


def _remove_stale_temp_files(state_dir: Path, job_id: str) -> None:
    # Left behind by a run killed mid-write; safe to remove while we hold the lock.
    for leftover in state_dir.glob(f".{job_id}.*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()


class NotARegularFile(OSError):
    """A FIFO, a device or a directory where a file was expected (reading a FIFO would wait
    for a writer for ever, holding the job's lock)."""


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file: opened without blocking, so a FIFO
    in its place is refused at once. Raises ``FileNotFoundError``, :class:`NotARegularFile`
    or another ``OSError``."""
    import stat

    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise NotARegularFile(0, "not a regular file")
        return handle.read()


def read_json(
    path: Path,
    *,
    repair: bool,
    consequence: str = "",
    shape: Callable[[dict[str, Any]], str | None] | None = None,
) -> dict[str, Any] | None:
    """The state file's contents, or None when it does not exist.

    A file that does not parse, or whose contents ``shape`` finds wrong (it returns what is
    wrong, "" or None when nothing is), is moved aside as ``<name>.corrupt-<timestamp>`` (only with
    ``repair``, i.e. while the lock is held) and reported with ``consequence``; the caller
    starts from an empty state. A file from a newer version is an error: never clobber it.
    """
    try:
        raw = read_regular_file(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StorageError(f"state file {path}: cannot read it: {error.strerror or error}") from None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if shape is not None and (problem := shape(data)):
            raise ValueError(problem)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        if repair:
            # Milliseconds: two files moved aside within one second keep both.
            aside = path.with_name(f"{path.name}.corrupt-{now_utc().strftime('%Y%m%dT%H%M%S.%fZ')}")
            try:
                os.replace(path, aside)
            except OSError as move_error:
                raise CannotCreate(
                    f"state file {path} is corrupt and cannot be moved aside: {move_error.strerror}"
                ) from None
            log.warning(
                "state file %s was corrupt (%s); moved it to %s and started afresh%s",
                path,
                str(error).split("\n")[0][:80],
                aside.name,
                f": {consequence}" if consequence else "",
            )
        return None
    version = data.get("version")
    if isinstance(version, int) and version > STATE_VERSION:
        raise ConfigError(
            f"state file {path}: written by a newer nexus-jobs (state version {version}, this one "
            f"knows {STATE_VERSION}); upgrade nexus-jobs or move the file away"
        )
    return data


def run_record_shape(record: dict[str, Any]) -> str:
    """What is wrong with a run record's shape ("" when nothing is): counts are whole
    numbers, times are text, figures are objects."""
    for key in ("runs", "consecutiveFailures", "lastExitCode"):
        value = record.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return f"{key} is not a whole number"
    for key in ("lastStartedAt", "lastFinishedAt", "lastSuccessStartedAt", "lastOutcome", "lastMessage"):
        if record.get(key) is not None and not isinstance(record[key], str):
            return f"{key} is not text"
    for key in ("lastCounts", "standing", "files"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            return f"{key} is not an object"
    return ""


def write_json_atomic(path: Path, data: dict[str, Any], *, compact: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically and durably (mode 0600)."""
    document = {"version": STATE_VERSION, **{k: v for k, v in data.items() if k != "version"}}
    if compact:
        encoded = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    else:
        encoded = json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    write_bytes_atomic(path, encoded.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably: a temporary file (mode 0600)
    beside it, fsync, ``os.replace``, fsync of the directory. Readers see the old file or
    the new one, never a part."""
    try:
        descriptor, temporary = open_temporary(path.parent, prefix=f".{path.stem}.")
    except OSError as error:
        raise CannotCreate(f"state file {path}: cannot create it: {error.strerror or error}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        # A full disk (ENOSPC), a file size limit (EFBIG, ulimit -f), an I/O error: the old
        # file is intact; the run stops with the path so the operator can make room.
        raise StorageError(f"state file {path}: cannot write it: {error.strerror or error}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def open_temporary(directory: Path, *, prefix: str) -> tuple[int, str]:
    """A new private (0600) file ``<prefix><random>.tmp`` in ``directory``: its descriptor and
    path. (``tempfile`` would do, but importing it costs a not-due run several ms.)"""
    while True:
        path = os.path.join(directory, f"{prefix}{os.urandom(6).hex()}.tmp")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Checkpointer:
    """Saves a large state document every ``interval_seconds`` or ``every_items`` changes,
    whichever comes first, so a run with 100,000 markers does not rewrite a 20 MB file after
    every item. A crash loses at most that much progress, which the next run redoes (the
    server's dedup makes a repeated upload harmless)."""

    def __init__(self, path: Path, *, interval_seconds: float = 10.0, every_items: int = 5000) -> None:
        self.path = path
        self.interval_seconds = interval_seconds
        self.every_items = every_items
        self.pending_changes = 0
        self.last_save = time.monotonic()
        self.saves = 0

    def changed(self, document: dict[str, Any]) -> None:
        self.pending_changes += 1
        overdue = time.monotonic() - self.last_save >= self.interval_seconds
        if self.pending_changes >= self.every_items or overdue:
            self.flush(document)

    def flush(self, document: dict[str, Any]) -> None:
        if self.pending_changes == 0:
            return
        write_json_atomic(self.path, document, compact=True)
        self.pending_changes = 0
        self.last_save = time.monotonic()
        self.saves += 1
