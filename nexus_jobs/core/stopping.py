"""THE stop-signal helper: SIGTERM (systemd stop, ``timeout``, ``docker stop``) and SIGINT
(Ctrl-C) are handled alike, and their handlers only set flags. The first signal asks the
worker to stop taking work and finish (or leave) what it is doing; a second one asks it to
stop now. The first signal is remembered, so the run can report 143 or 130.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from .exits import Exit

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Flags set by SIGTERM/SIGINT. Use as a context manager (installs the handlers and puts
    the previous ones back), or :meth:`install` / :meth:`restore`. Handlers can only be
    installed from the main thread."""

    def __init__(self) -> None:
        self.count = 0
        self.first: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignals:
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.first is None:
            self.first = signal.Signals(signum)

    @property
    def requested(self) -> bool:
        """A first signal came: take no new work, finish (or leave) the current one."""
        return self.count >= 1

    @property
    def now(self) -> bool:
        """A second signal came: stop at once."""
        return self.count >= 2

    @property
    def name(self) -> str:
        """The first signal's name ("SIGTERM"), or "" when none came."""
        return self.first.name if self.first is not None else ""

    @property
    def exit_code(self) -> Exit | None:
        """The documented exit code of a run stopped by the first signal: 130 for SIGINT,
        143 for SIGTERM; None when no signal came."""
        if self.first is None:
            return None
        return Exit.INTERRUPTED if self.first == signal.SIGINT else Exit.TERMINATED
