"""The progress bar of long work, on a terminal only (never under cron or systemd): files
done of the total with the ETA, bytes sent and the rate, errors so far. Log messages are
printed through the bar (no stale copies of it), and when the work ends one line says what
was done, instead of a bar that vanishes and leaves a blank terminal."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any


class NoProgress:
    """What :func:`progress` returns when no bar is shown."""

    def update(self, count: int = 1, *, nbytes: int = 0, failed: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    def __init__(self, *, total: int, description: str) -> None:
        from tqdm import tqdm  # imported here: only terminals need it
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            columns, rows = os.get_terminal_size(sys.stderr.fileno())
        except OSError:
            columns, rows = 0, 0
        self.description = description
        self.total = total
        self.done = self.nbytes = self.errors = 0
        self.started = time.monotonic()
        # A pseudo-terminal may report a size of 0x0; tqdm would then draw nothing at all.
        self.bar = tqdm(
            total=total,
            desc=description,
            unit="file",
            file=sys.stderr,
            leave=False,
            ncols=columns or 80,
            nrows=rows or 24,
            bar_format="{desc}: {n_fmt}/{total_fmt} files |{bar}| {remaining} left, {postfix}",
        )
        self.redirect = contextlib.ExitStack()
        self.redirect.enter_context(logging_redirect_tqdm())
        # The handler tqdm puts in place of ours must redact secrets as ours does.
        ours = [f for handler in logging.getLogger().handlers for f in handler.filters]
        for handler in logging.getLogger().handlers:
            for kept in ours:
                if kept not in handler.filters:
                    handler.addFilter(kept)
        self._postfix()

    def update(self, count: int = 1, *, nbytes: int = 0, failed: bool = False) -> None:
        self.done += count
        self.nbytes += nbytes
        self.errors += int(failed)
        self._postfix()
        self.bar.update(count)

    def _postfix(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        text = f"{human_bytes(self.nbytes)} at {human_bytes(self.nbytes / elapsed)}/s, {self.errors} error(s)"
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self.bar.close()
        self.redirect.close()
        elapsed = time.monotonic() - self.started
        rate = human_bytes(self.nbytes / max(elapsed, 1e-6))
        sys.stderr.write(
            f"{self.description}: {self.done}/{self.total} files, {human_bytes(self.nbytes)} in {elapsed:.1f} s "
            f"({rate}/s), {self.errors} error(s)\n"
        )


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def progress(*, total: int, description: str, enabled: bool) -> Any:
    """A progress bar on stderr when it is a terminal; nothing under cron or systemd."""
    if not enabled or total < 2 or not sys.stderr.isatty():
        return NoProgress()
    return Progress(total=total, description=description)
