"""THE stop-signal helper: SIGTERM (systemd stop, ``timeout``, ``docker stop``) and SIGINT
(Ctrl-C) are handled alike, in one of two ways:

- workers (:class:`StopSignals`): the handlers only set flags. The first signal asks the
  worker to stop taking work and finish (or leave) what it is doing; a second one asks it to
  stop now. The first signal is remembered, so the run can report 143 or 130.
- one-shot jobs (:func:`interrupt_on_sigterm`): SIGTERM is raised as :class:`Terminated`, as
  Python raises KeyboardInterrupt for Ctrl-C, so a blocking request ends at once and every
  ``finally`` on the way out saves the work done; the frame records the run as interrupted.

``signal`` is imported only when a handler is installed: a not-due run never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .exits import Exit

if TYPE_CHECKING:
    import signal
    from types import FrameType


class Terminated(BaseException):
    """SIGTERM arrived (systemd stop, ``timeout``) in a one-shot job: handled like Ctrl-C's
    KeyboardInterrupt, so the work done is saved on the way out and the run is recorded as
    interrupted."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def interrupt_on_sigterm() -> None:
    """From here on, SIGTERM raises :class:`Terminated` (SIGINT raises KeyboardInterrupt)."""
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)


def _stop_signals() -> tuple[signal.Signals, ...]:
    import signal

    return (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Flags set by SIGTERM/SIGINT. Use as a context manager (installs the handlers and puts
    the previous ones back), or :meth:`install` / :meth:`restore`. Handlers can only be
    installed from the main thread."""

    def __init__(self) -> None:
        self.count = 0
        self.first: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignals:
        import signal

        for number in _stop_signals():
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def restore(self) -> None:
        import signal

        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        import signal

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
        return Exit.INTERRUPTED if self.first.name == "SIGINT" else Exit.TERMINATED
