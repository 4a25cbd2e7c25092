"""The ``run`` loop, in the manner of rq's ``Worker.work()``: a :class:`Worker` holds the
settings, the Redis client, the executor, the stop flags and the tally; ``work()`` dequeues,
executes, reports and acknowledges, each a short method, and every way out of the loop is
named and logged.

Signal handlers only count (:class:`Stop` reads them): the first SIGTERM/SIGINT stops intake and lets
the running task finish within the grace period, a second one kills it at once. Either way
the task's failure is published before it is acknowledged, and the run exits 0.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.stopping import StopSignals
from . import gitops, streams, tasks
from .executors import Executor, Request
from .record import Tally
from .settings import Settings

if TYPE_CHECKING:
    import redis

log = logging.getLogger("nexus_jobs.bsnexus")

REDIS_BACKOFF_START_SECONDS = 0.1


class Stop:
    """Why the loop must end: the stop signals (:class:`~nexus_jobs.core.stopping.StopSignals`,
    whose handlers only count), the heartbeat thread, and the clock of ``--duration``."""

    def __init__(
        self, *, grace_seconds: float, duration_seconds: float = 0.0, signals: StopSignals | None = None
    ) -> None:
        self.grace_seconds = grace_seconds
        self.ends_at = time.monotonic() + duration_seconds if duration_seconds else None
        self.duration_seconds = duration_seconds
        self.signals = signals or StopSignals()
        self.reason = ""
        self.since: float | None = None
        self.exit_error: Exception | None = None  # raised by main() once the loop has ended

    def request(self, reason: str, *, error: Exception | None = None) -> None:
        if not self.reason:
            self.reason, self.since = reason, time.monotonic()
        if error is not None and self.exit_error is None:
            self.exit_error = error

    @property
    def now(self) -> bool:
        """A second signal came: the running task is killed at once."""
        return self.signals.now

    def stopping(self) -> bool:
        if not self.reason and self.signals.requested:
            self.request(f"received {self.signals.name}")
        if not self.reason and self.ends_at is not None and time.monotonic() >= self.ends_at:
            self.request(f"--duration of {self.duration_seconds:g} s reached")
        return bool(self.reason)

    def abort_reason(self) -> str:
        """Why the running task must be killed now ("" while it may go on)."""
        if not self.stopping():
            return ""
        if self.now:
            return f"was killed: the worker had to stop at once ({self.reason}, then a second signal)"
        if self.since is not None and time.monotonic() >= self.since + self.grace_seconds:
            return (
                f"was killed: the worker is stopping ({self.reason}) and the task did not finish "
                f"within the {self.grace_seconds:g} s grace period"
            )
        return ""

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early when asked to stop."""
        until = time.monotonic() + seconds
        while not self.stopping() and time.monotonic() < until:
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))


# Waiting to publish a finished task's result must not be cut short by a first signal.
_NEVER = Stop(grace_seconds=0)


@dataclass
class Summary:
    handled: int = 0
    done: int = 0
    failed: int = 0
    unpublished: int = 0
    stop_reason: str = ""
    redis_down: bool = False


class RedisBackoff:
    """Exponential backoff between attempts to reach Redis; says so once per outage."""

    def __init__(self, *, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self.wait_seconds = REDIS_BACKOFF_START_SECONDS
        self.down_since: float | None = None

    def failed(self, error: BaseException, stop: Stop) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("Redis is unreachable (%s); reconnecting with backoff", _short(error))
        stop.sleep(self.wait_seconds)
        self.wait_seconds = min(self.wait_seconds * 2, self.max_seconds)

    def worked(self) -> None:
        if self.down_since is not None:
            log.warning("Redis is reachable again after %.1f s", time.monotonic() - self.down_since)
        self.down_since = None
        self.wait_seconds = REDIS_BACKOFF_START_SECONDS


class Worker:
    """One consumer (named by the worker id) on the task and QA streams."""

    def __init__(
        self, *, settings: Settings, executor: Executor, client: redis.Redis, stop: Stop, tally: Tally
    ) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self.executor = executor
        self.client = client
        self.stop = stop
        self.tally = tally
        self.channels = streams.channels(settings)
        self.reader = streams.TaskReader(
            client,
            self.channels,
            consumer=self.worker_id,
            visibility_timeout_seconds=settings.visibility_timeout_seconds,
        )
        self.backoff = RedisBackoff(max_seconds=settings.reconnect_max_seconds)
        self.block_ms = max(1, int(settings.poll_seconds * 1000))
        self.groups_ready = False
        self.in_flight: streams.Delivery | None = None  # read by the heartbeat thread
        self.taken_over = ""  # set by the heartbeat thread: another worker claimed this entry
        self.summary = Summary()

    def work(self) -> Summary:
        """Take tasks until a way out is reached; see the module docstring."""
        while True:
            if self.stop.stopping():
                self.summary.stop_reason = self.stop.reason
                break
            if self.settings.max_tasks and self.summary.handled >= self.settings.max_tasks:
                self.summary.stop_reason = f"--max-tasks {self.settings.max_tasks} reached"
                break
            delivery = self.dequeue()
            if delivery is not None:
                self.handle(delivery)
        self.summary.redis_down = self.backoff.down_since is not None
        log.info("stopping: %s", self.summary.stop_reason)
        return self.summary

    def dequeue(self) -> streams.Delivery | None:
        """The next delivery, or None after a quiet wait or a Redis failure (backed off)."""
        try:
            if not self.groups_ready:
                streams.ensure_groups(self.client, self.channels)
                self.groups_ready = True
            delivery = self.reader.next(block_ms=self.block_ms)
            self.backoff.worked()
            return delivery
        except streams.down_errors() + streams.response_errors() as error:
            what = f"read tasks from {self.settings.tasks_queue} and {self.settings.tasks_qa}"
            refused = streams.refusal(error, what=what)
            if refused is not None:
                raise refused from None
            if streams.is_missing_group(error):
                self.groups_ready = False  # Redis restarted without its data: create them again
            else:
                self.backoff.failed(error, self.stop)
            return None

    def handle(self, delivery: streams.Delivery) -> None:
        self.in_flight = delivery
        try:
            result, poison_reason = self.execute(delivery)
            if self.taken_over == delivery.message_id:
                # The backend had forgotten this worker and another one claimed the entry: its
                # result is the one the backend gets; a second would confuse its state machine.
                log.warning("message %s belongs to another worker now: result not published", delivery.message_id)
                self.summary.handled += 1
                return
            published = self.report(delivery, result, poison_reason)
            if published:
                self.acknowledge(delivery)
        finally:
            self.in_flight = None
        self.summary.handled += 1
        if not published:
            self.summary.unpublished += 1
            return
        success = result is None or result.get("success", result.get("passed")) == "true"
        self.tally.count(success=success)
        if success:
            self.summary.done += 1
        else:
            self.summary.failed += 1

    def execute(self, delivery: streams.Delivery) -> tuple[dict[str, str] | None, str]:
        """The result fields for ``delivery`` (None for a revert, which BSNexus does not expect
        a result for) and, for a poison message, why it is dead-lettered."""
        run = _TaskRun(self, delivery)
        if delivery.delivery_count > self.settings.max_deliveries:
            reason = (
                f"poison message: delivered {delivery.delivery_count} times (more than "
                f"{self.settings.max_deliveries}); not run again, copied to {self.settings.dead_letter_stream}"
            )
            return run.failure(reason), reason
        try:
            task = tasks.parse(delivery.message_id, delivery.fields, kind=delivery.channel.kind)
        except tasks.BadTask as error:
            return run.failure(str(error)), ""
        if task.executor_type and task.executor_type != self.executor.name:
            wanted = f"the task asks for executor {task.executor_type!r}; this worker runs {self.executor.name!r}"
            return run.failure(wanted), ""
        log.info("task %s (%s, message %s, %s) started", task.task_id, task.kind, delivery.message_id, delivery.source)
        try:
            return run.perform(task), ""
        except gitops.GitError as error:
            return run.failure(str(error)), ""
        except Exception as error:  # an executor plug-in's bug must not stop the worker
            log.debug("task %s: unexpected error", task.task_id, exc_info=True)
            return run.failure(f"internal error: {type(error).__name__}: {error}"), ""

    def report(self, delivery: streams.Delivery, result: dict[str, str] | None, poison_reason: str) -> bool:
        """Publish the result (and the dead-letter copy) before the acknowledgement, retrying
        while Redis is away. False when the worker had to stop first: the entry stays pending
        and runs again, so nothing is lost."""
        while True:
            try:
                if poison_reason:
                    streams.dead_letter(
                        self.client,
                        self.settings.dead_letter_stream,
                        delivery,
                        reason=poison_reason,
                        worker_id=self.worker_id,
                    )
                    poison_reason = ""  # copied once, even if publishing the result must be retried
                if result is not None:
                    streams.publish(self.client, self.settings.tasks_results, result)
                self.backoff.worked()
                return True
            except streams.down_errors() + streams.response_errors() as error:
                refused = streams.refusal(error, what=f"publish a result to {self.settings.tasks_results}")
                if refused is not None:
                    raise refused from None
                if self.stop.now:
                    log.error(
                        "the result of task %s was not published (Redis unreachable while stopping); "
                        "its entry stays pending and will run again",
                        delivery.fields.get("task_id", "?"),
                    )
                    return False
                self.backoff.failed(error, _NEVER)

    def acknowledge(self, delivery: streams.Delivery) -> None:
        while True:
            try:
                streams.acknowledge(self.client, delivery.channel, delivery.message_id)
                self.backoff.worked()
                return
            except streams.down_errors() + streams.response_errors() as error:
                if streams.is_missing_group(error):  # Redis lost the group: nothing left to acknowledge
                    return
                refused = streams.refusal(error, what=f"acknowledge in {delivery.channel.stream}")
                if refused is not None:
                    raise refused from None
                if self.stop.now:
                    log.error(
                        "message %s not acknowledged (Redis unreachable); its result may be published twice",
                        delivery.message_id,
                    )
                    return
                self.backoff.failed(error, _NEVER)


class _TaskRun:
    """One delivery being executed: its clock and the extra result fields."""

    def __init__(self, worker: Worker, delivery: streams.Delivery) -> None:
        self.worker = worker
        self.delivery = delivery
        self.started = time.monotonic()
        self.extra = {"message_id": delivery.message_id, "delivery_count": str(delivery.delivery_count)}

    def failure(self, message: str) -> dict[str, str]:
        fields = self.delivery.fields
        task_id = fields.get("task_id", "")
        self.extra["duration_seconds"] = f"{time.monotonic() - self.started:.3f}"
        log.warning("task %s (message %s) failed: %s", task_id or "?", self.delivery.message_id, message)
        return tasks.failure_result(
            self.delivery.channel.kind,
            task_id=task_id,
            worker_id=self.worker.worker_id,
            error_message=message,
            fields=fields,
            extra=self.extra,
        )

    def timing(self, exit_code: int | None) -> None:
        self.extra["duration_seconds"] = f"{time.monotonic() - self.started:.3f}"
        if exit_code is not None:
            self.extra["exit_code"] = str(exit_code)

    def perform(self, task: tasks.Task) -> dict[str, str] | None:
        worker = self.worker
        request = Request(
            task_id=task.task_id,
            kind=task.kind,
            prompt=task.prompt,
            repo_path=task.repo_path,
            branch_name=task.branch_name,
            timeout_seconds=worker.settings.task_timeout_seconds,
        )
        if task.kind == tasks.REVERT:
            revert_hash = gitops.revert(task.repo_path, commit_hash=task.commit_hash, branch_name=task.branch_name)
            log.info("task %s: reverted %s as %s", task.task_id, task.commit_hash, revert_hash)
            return None
        if task.kind == tasks.QA:
            verdict = worker.executor.review(request, should_abort=worker.stop.abort_reason)
            self.timing(verdict.exit_code)
            if verdict.error_message:
                return self.failure(verdict.error_message) | {"feedback": verdict.feedback or verdict.error_message}
            log.info("task %s reviewed: %s", task.task_id, "PASS" if verdict.passed else "FAIL")
            return tasks.qa_result(
                task_id=task.task_id,
                worker_id=worker.worker_id,
                passed=verdict.passed,
                feedback=verdict.feedback,
                extra=self.extra,
            )
        if task.repo_path:
            gitops.prepare(task.repo_path, task.branch_name)
        outcome = worker.executor.execute(request, should_abort=worker.stop.abort_reason)
        self.timing(outcome.exit_code)
        self.extra["output"] = tasks.truncate(outcome.output)
        if not outcome.success:
            return self.failure(outcome.error_message)
        commit_hash = ""
        if task.repo_path and task.branch_name:  # as the original: no branch, no commit
            commit_hash = gitops.commit_task(
                task.repo_path, task_id=task.task_id, title=task.title, branch_name=task.branch_name
            )
        log.info("task %s done%s", task.task_id, f": commit {commit_hash[:12]}" if commit_hash else "")
        return tasks.execution_result(
            task_id=task.task_id,
            worker_id=worker.worker_id,
            success=True,
            commit_hash=commit_hash,
            branch_name=task.branch_name,
            output_path=outcome.output_path,
            extra=self.extra,
        )


def _short(error: BaseException) -> str:
    text = str(error).split("\n")[0]
    return text[:200] or type(error).__name__
