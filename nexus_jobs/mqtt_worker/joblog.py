"""``job.log`` of one run of a build job: the worker's header lines and everything the steps
write, in real time, capped (``docs/mqtt.md``).

The workDir is on a drive the controller writes, so ``job.log`` is opened without following
a symlink and must be a regular file: a planted link must not make the worker append to a
file outside the jobs root, and a FIFO must not block it. The steps write into a pipe the
worker drains into the file, so that what one run appends stays under the cap; past it, one
marker line says what was discarded, and the steps go on unhindered.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

PIPE_BYTES = 1024 * 1024  # room for a burst of output between two drains
READ_CHUNK_BYTES = 256 * 1024


class JobLogRefused(Exception):
    """``job.log`` exists but is not a regular file of the workDir (symlink, FIFO, directory)."""


class JobLog:
    """One run's view of ``job.log``: :meth:`line` for the worker's own lines, :attr:`child_fd`
    for the steps' stdout and stderr, :meth:`drain` often (between polls), :meth:`close` at
    the end. ``max_bytes`` caps the steps' output of this run."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.output_bytes = 0
        self.discarded_bytes = 0
        self.fd = _open_regular(path)
        self._reader, self.child_fd = os.pipe()
        os.set_blocking(self._reader, False)
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._reader, fcntl.F_SETPIPE_SZ, PIPE_BYTES)

    def line(self, text: str) -> None:
        """A line of the worker's own, after what the steps wrote so far."""
        self.drain()
        self._write(f"{text}\n".encode("utf-8", errors="replace"))

    def drain(self) -> None:
        """Copy what the steps wrote into the file, up to the cap."""
        while True:
            try:
                chunk = os.read(self._reader, READ_CHUNK_BYTES)
            except BlockingIOError:
                return
            if not chunk:
                return
            room = self.max_bytes - self.output_bytes
            if room > 0:
                self._write(chunk[:room])
                self.output_bytes += min(room, len(chunk))
                if len(chunk) > room:
                    self._write(
                        f"\n=== job.log cap of {self.max_bytes} bytes reached: the rest of this run's output "
                        "is discarded\n".encode()
                    )
            self.discarded_bytes += max(0, len(chunk) - max(0, room))

    def close(self) -> None:
        self.drain()
        if self.discarded_bytes:
            self._write(f"=== {self.discarded_bytes} bytes of output discarded (job.log cap)\n".encode())
        for fd in (self._reader, self.child_fd, self.fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def __enter__(self) -> JobLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _open_regular(path: Path) -> int:
    """``path`` opened for appending, never through a symlink, and only if it is a regular file."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise JobLogRefused(f"{path.name} is a symbolic link; refusing to follow it") from None
        if error.errno in (errno.EISDIR, errno.ENXIO):
            raise JobLogRefused(f"{path.name} is not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise JobLogRefused(f"{path.name} is not a regular file")
    os.set_blocking(fd, True)
    return fd
