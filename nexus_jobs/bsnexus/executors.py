"""Executors: what actually runs a task, behind one small interface, chosen by name.

Built in: ``claude-code`` (Claude Code CLI) and ``command`` (a configured argv template).
Others plug in through the ``nexus_jobs.bsnexus_executors`` entry-point group: a class taking
the :class:`~nexus_jobs.bsnexus.settings.Settings` and implementing :meth:`Executor.execute`.

The prompt always goes to the child on stdin, never in its arguments. Children start through
:func:`run_process` (the project's one runner): their own process group, killed whole on
timeout or stop, no secret in their environment, dead with their worker, and recorded so a
restarted worker kills what a killed one left.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from ..core import processes
from ..core.errors import ConfigError
from .settings import Settings
from .tasks import truncate

ENTRY_POINT_GROUP = "nexus_jobs.bsnexus_executors"
COMMAND_PLACEHOLDERS = ("task_id", "kind", "repo_path", "branch_name")

ShouldAbort = Callable[[], str]  # returns why the task must be killed now, or ""


@dataclass(frozen=True)
class Request:
    task_id: str
    kind: str  # "execution" or "qa"
    prompt: str
    repo_path: str  # absolute, or "" when the task named none
    branch_name: str
    timeout_seconds: float


@dataclass(frozen=True)
class ExecutorOutcome:
    success: bool
    output: str = ""
    error_message: str = ""
    exit_code: int | None = None
    output_path: str = ""


@dataclass(frozen=True)
class Verdict:
    passed: bool
    feedback: str = ""
    error_message: str = ""
    exit_code: int | None = None


class Executor:
    """Runs one task. Subclasses implement :meth:`execute`; :meth:`review` asks the same
    executor for a verdict whose output starts with PASS or FAIL."""

    name = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Names the running child for the next worker of this identity (see run_process).
        self.record = processes.GroupRecord(settings.state_dir / f"{settings.job_id}.children.json")

    def warnings(self) -> list[str]:
        """Problems worth a warning at start (each task still reports its own failure)."""
        return []

    def execute(self, request: Request, *, should_abort: ShouldAbort) -> ExecutorOutcome:
        raise NotImplementedError

    def review(self, request: Request, *, should_abort: ShouldAbort) -> Verdict:
        review_request = Request(
            task_id=request.task_id,
            kind=request.kind,
            prompt=f"Please review the following code changes.\n\n{request.prompt}\n\n"
            "Response format:\n- Start with PASS or FAIL\n- Explain the reason\n",
            repo_path=request.repo_path,
            branch_name=request.branch_name,
            timeout_seconds=request.timeout_seconds,
        )
        outcome = self.execute(review_request, should_abort=should_abort)
        if not outcome.success:
            return Verdict(False, outcome.output, outcome.error_message, outcome.exit_code)
        return parse_verdict(outcome.output, exit_code=outcome.exit_code)


def parse_verdict(output: str, *, exit_code: int | None = None) -> Verdict:
    """PASS or FAIL from the first non-empty line of a review (markdown emphasis ignored)."""
    feedback = truncate(output.strip())
    for line in output.splitlines():
        word = line.strip().lstrip("*#`>_ -").upper()
        if not word:
            continue
        if word.startswith("PASS"):
            return Verdict(True, feedback, exit_code=exit_code)
        if word.startswith("FAIL"):
            return Verdict(False, feedback, exit_code=exit_code)
        break
    return Verdict(
        False, feedback, "the review gave no verdict: its output does not start with PASS or FAIL", exit_code
    )


class ClaudeCodeExecutor(Executor):
    """``claude --print --dangerously-skip-permissions`` in the task's repository."""

    name = "claude-code"

    def warnings(self) -> list[str]:
        if shutil.which(self.settings.claude_binary) is None:
            return [
                f"{self.settings.claude_binary!r} is not on PATH: every task will fail until Claude Code is installed"
            ]
        return []

    def execute(self, request: Request, *, should_abort: ShouldAbort) -> ExecutorOutcome:
        binary = shutil.which(self.settings.claude_binary)
        if binary is None:
            return ExecutorOutcome(
                False,
                error_message=f"the Claude Code CLI {self.settings.claude_binary!r} was not found on PATH "
                "(install it, or set BSNEXUS_CLAUDE_BINARY)",
            )
        if not request.repo_path:
            return ExecutorOutcome(
                False, error_message="the task has no repo_path: claude-code needs a working directory"
            )
        argv = [binary, "--print", "--dangerously-skip-permissions"]
        return run_process(
            argv,
            prompt=request.prompt,
            cwd=request.repo_path,
            timeout_seconds=request.timeout_seconds,
            should_abort=should_abort,
            record=self.record,
        )


class CommandExecutor(Executor):
    """A configured argv template (``BSNEXUS_COMMAND``), the prompt on stdin."""

    name = "command"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        try:
            self.template = shlex.split(settings.command)
        except ValueError as error:
            raise ConfigError(f"BSNEXUS_COMMAND: cannot split it into arguments: {error}") from None
        if not self.template:
            raise ConfigError("BSNEXUS_COMMAND: the command executor needs a command (an argv template)")
        try:
            for part in self.template:
                part.format(**{name: "" for name in COMMAND_PLACEHOLDERS})
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(
                f"BSNEXUS_COMMAND: unknown placeholder {error} (known: "
                + ", ".join("{" + name + "}" for name in COMMAND_PLACEHOLDERS)
                + ")"
            ) from None

    def execute(self, request: Request, *, should_abort: ShouldAbort) -> ExecutorOutcome:
        values = {
            "task_id": request.task_id,
            "kind": request.kind,
            "repo_path": request.repo_path,
            "branch_name": request.branch_name,
        }
        argv = [part.format(**values) for part in self.template]
        return run_process(
            argv,
            prompt=request.prompt,
            cwd=request.repo_path or None,
            timeout_seconds=request.timeout_seconds,
            should_abort=should_abort,
            record=self.record,
        )


BUILT_IN: dict[str, type[Executor]] = {"claude-code": ClaudeCodeExecutor, "command": CommandExecutor}


def available() -> dict[str, Callable[[Settings], Executor]]:
    """Executors by name: the built-in ones, plus (or replaced by) the entry-point group."""
    found: dict[str, Callable[[Settings], Executor]] = dict(BUILT_IN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found[entry.name] = _lazy(entry)
    return found


def _lazy(entry: EntryPoint) -> Callable[[Settings], Executor]:
    def build(settings: Settings) -> Executor:
        try:
            factory = entry.load()
        except Exception as error:
            raise ConfigError(
                f"executor {entry.name!r}: cannot load {entry.value}: {type(error).__name__}: {error}"
            ) from None
        executor = factory(settings)
        if not hasattr(executor, "execute"):
            raise ConfigError(f"executor {entry.name!r}: {entry.value} is not an executor")
        return executor

    return build


def load(name: str, settings: Settings) -> Executor:
    known = available()
    if name not in known:
        raise ConfigError(
            f"BSNEXUS_EXECUTOR_TYPE / --executor: unknown executor {name!r} (known: {', '.join(sorted(known))})"
        )
    return known[name](settings)


def run_process(
    argv: list[str],
    *,
    prompt: str,
    cwd: str | None,
    timeout_seconds: float,
    should_abort: ShouldAbort,
    record: processes.GroupRecord | None = None,
) -> ExecutorOutcome:
    """Run ``argv`` with ``prompt`` on stdin through the project's one child-process runner
    (docs/child-processes.md): its own process group killed whole on timeout or when
    ``should_abort`` says so, no secret in its environment, dead with a worker killed by
    SIGKILL, and named in ``record`` while it runs so that a restarted worker can kill what
    it left."""
    name = os.path.basename(argv[0])
    reasons: list[str] = []

    def should_stop() -> bool:
        reason = should_abort()
        if reason:
            reasons.append(reason)
        return bool(reason)

    try:
        finished = processes.run(
            argv,
            stdin=prompt.encode("utf-8"),
            cwd=cwd,
            timeout_seconds=timeout_seconds,
            should_stop=should_stop,
            record=record,
        )
    except processes.CannotStart as error:
        return ExecutorOutcome(False, error_message=str(error))
    if finished.ended_by == processes.TIMEOUT:
        message = f"{name} timed out after {timeout_seconds:g} s; its process group was killed"
        return ExecutorOutcome(False, finished.output, message, finished.exit_code)
    if finished.ended_by == processes.STOP:
        return ExecutorOutcome(False, finished.output, f"{name} {reasons[-1]}", finished.exit_code)
    if finished.exit_code != 0:
        last_lines = finished.last_error_lines(3, width=500)
        message = f"{name} exited with code {finished.exit_code}" + (f": {last_lines}" if last_lines else "")
        return ExecutorOutcome(False, finished.output, message, finished.exit_code)
    return ExecutorOutcome(True, finished.output, "", finished.exit_code)
