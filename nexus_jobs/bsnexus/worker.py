"""The ``run`` loop, in the manner of rq's ``work()``: dequeue, execute, report, acknowledge,
each a short function; every way out of the loop is named and logged.

Signal handlers only set flags (:class:`Stop`): the first SIGTERM/SIGINT stops intake and lets
the running task finish within the grace period, a second one kills it at once. Either way
the task's failure is published before it is acknowledged, and the run exits 0.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import gitops, streams, tasks
from .executors import Executor, Request
from .record import Tally
from .settings import Settings

if TYPE_CHECKING:
    import redis

log = logging.getLogger("nexus_jobs.bsnexus")

REDIS_BACKOFF_START_SECONDS = 0.1


class Stop:
    """Why the loop must end. Set by signal handlers, the heartbeat thread and the clock."""

    def __init__(self, *, grace_seconds: float, duration_seconds: float = 0.0) -> None:
        self.grace_seconds = grace_seconds
        self.ends_at = time.monotonic() + duration_seconds if duration_seconds else None
        self.duration_seconds = duration_seconds
        self.reason = ""
        self.since: float | None = None
        self.now = False
        self.signals = 0
        self.exit_error: Exception | None = None  # raised by main() once the loop has ended

    def request(self, reason: str, *, now: bool = False, error: Exception | None = None) -> None:
        if not self.reason:
            self.reason, self.since = reason, time.monotonic()
        if error is not None and self.exit_error is None:
            self.exit_error = error
        self.now = self.now or now

    def on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        self.request(f"received {signal.Signals(signum).name}", now=self.signals > 1)

    def stopping(self) -> bool:
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


@dataclass
class InFlight:
    """The delivery being worked on, for the heartbeat thread to keep fresh."""

    delivery: streams.Delivery | None = None


@dataclass
class Summary:
    handled: int = 0
    done: int = 0
    failed: int = 0
    unpublished: int = 0
    stop_reason: str = ""
    redis_down: bool = False


class RedisLink:
    """Reconnection with exponential backoff; says so once per outage."""

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


def work(
    *,
    settings: Settings,
    worker_id: str,
    executor: Executor,
    client: redis.Redis,
    stop: Stop,
    tally: Tally,
    in_flight: InFlight | None = None,
) -> Summary:
    """Take tasks until told to stop; see the module docstring."""
    channel_list = streams.channels(settings)
    reader = streams.TaskReader(
        client, channel_list, consumer=worker_id, visibility_timeout_seconds=settings.visibility_timeout_seconds
    )
    link = RedisLink(max_seconds=settings.reconnect_max_seconds)
    in_flight = in_flight or InFlight()
    summary = Summary()
    groups_ready = False
    block_ms = max(1, int(settings.poll_seconds * 1000))
    while True:
        if stop.stopping():
            summary.stop_reason = stop.reason
            break
        if settings.max_tasks and summary.handled >= settings.max_tasks:
            summary.stop_reason = f"--max-tasks {settings.max_tasks} reached"
            break
        try:
            if not groups_ready:
                streams.ensure_groups(client, channel_list)
                groups_ready = True
            delivery = reader.next(block_ms=block_ms)
            link.worked()
        except streams.down_errors() + streams.response_errors() as error:
            refused = streams.refusal(error, what=f"read tasks from {settings.tasks_queue} and {settings.tasks_qa}")
            if refused is not None:
                raise refused from None
            if streams.is_missing_group(error):
                groups_ready = False  # Redis restarted without its data: create them again
                continue
            link.failed(error, stop)
            continue
        if delivery is None:
            continue
        in_flight.delivery = delivery
        try:
            result, poison_reason = execute(
                delivery, settings=settings, worker_id=worker_id, executor=executor, stop=stop
            )
            published = report(
                delivery,
                result,
                poison_reason,
                settings=settings,
                worker_id=worker_id,
                client=client,
                link=link,
                stop=stop,
            )
            if published:
                acknowledge(delivery, client=client, link=link, stop=stop, settings=settings)
        finally:
            in_flight.delivery = None
        summary.handled += 1
        if not published:
            summary.unpublished += 1
            continue
        success = result is None or result.get("success", result.get("passed")) == "true"
        tally.count(success=success)
        if success:
            summary.done += 1
        else:
            summary.failed += 1
    summary.redis_down = link.down_since is not None
    log.info("stopping: %s", summary.stop_reason)
    return summary


def execute(
    delivery: streams.Delivery, *, settings: Settings, worker_id: str, executor: Executor, stop: Stop
) -> tuple[dict[str, str] | None, str]:
    """The result fields for ``delivery`` (None for a revert, which BSNexus does not expect
    a result for) and, for a poison message, why it is dead-lettered."""
    started = time.monotonic()
    fields = delivery.fields
    task_id = fields.get("task_id", "")
    extra = {"message_id": delivery.message_id, "delivery_count": str(delivery.delivery_count)}

    def failure(message: str) -> dict[str, str]:
        extra["duration_seconds"] = f"{time.monotonic() - started:.3f}"
        log.warning("task %s (message %s) failed: %s", task_id or "?", delivery.message_id, message)
        return tasks.failure_result(
            delivery.channel.kind,
            task_id=task_id,
            worker_id=worker_id,
            error_message=message,
            fields=fields,
            extra=extra,
        )

    if delivery.delivery_count > settings.max_deliveries:
        reason = (
            f"poison message: delivered {delivery.delivery_count} times (more than {settings.max_deliveries}); "
            f"not run again, copied to {settings.dead_letter_stream}"
        )
        return failure(reason), reason
    try:
        task = tasks.parse(delivery.message_id, fields, kind=delivery.channel.kind)
    except tasks.BadTask as error:
        return failure(str(error)), ""
    if task.executor_type and task.executor_type != executor.name:
        return failure(f"the task asks for executor {task.executor_type!r}; this worker runs {executor.name!r}"), ""
    log.info("task %s (%s, message %s, %s) started", task.task_id, task.kind, delivery.message_id, delivery.source)
    request = Request(
        task_id=task.task_id,
        kind=task.kind,
        prompt=task.prompt,
        repo_path=task.repo_path,
        branch_name=task.branch_name,
        timeout_seconds=settings.task_timeout_seconds,
    )
    try:
        if task.kind == tasks.REVERT:
            revert_hash = gitops.revert(task.repo_path, commit_hash=task.commit_hash, branch_name=task.branch_name)
            log.info("task %s: reverted %s as %s", task.task_id, task.commit_hash, revert_hash)
            return None, ""
        if task.kind == tasks.QA:
            verdict = executor.review(request, should_abort=stop.abort_reason)
            extra.update(_timing(started, verdict.exit_code))
            if verdict.error_message:
                return failure(verdict.error_message) | {"feedback": verdict.feedback}, ""
            log.info("task %s reviewed: %s", task.task_id, "PASS" if verdict.passed else "FAIL")
            return tasks.qa_result(
                task_id=task.task_id, worker_id=worker_id, passed=verdict.passed, feedback=verdict.feedback, extra=extra
            ), ""
        if task.repo_path:
            gitops.prepare(task.repo_path, task.branch_name)
        outcome = executor.execute(request, should_abort=stop.abort_reason)
        extra.update(_timing(started, outcome.exit_code), output=tasks.truncate(outcome.output))
        if not outcome.success:
            return failure(outcome.error_message), ""
        commit_hash = ""
        if task.repo_path:
            commit_hash = gitops.commit_task(
                task.repo_path, task_id=task.task_id, title=task.title, branch_name=task.branch_name
            )
        log.info("task %s done%s", task.task_id, f": commit {commit_hash[:12]}" if commit_hash else "")
        return tasks.execution_result(
            task_id=task.task_id,
            worker_id=worker_id,
            success=True,
            commit_hash=commit_hash,
            branch_name=task.branch_name,
            output_path=outcome.output_path,
            extra=extra,
        ), ""
    except gitops.GitError as error:
        return failure(str(error)), ""
    except Exception as error:  # an executor plug-in's bug must not stop the worker
        log.debug("task %s: unexpected error", task.task_id, exc_info=True)
        return failure(f"internal error: {type(error).__name__}: {error}"), ""


def _timing(started: float, exit_code: int | None) -> dict[str, str]:
    timing = {"duration_seconds": f"{time.monotonic() - started:.3f}"}
    if exit_code is not None:
        timing["exit_code"] = str(exit_code)
    return timing


def report(
    delivery: streams.Delivery,
    result: dict[str, str] | None,
    poison_reason: str,
    *,
    settings: Settings,
    worker_id: str,
    client: redis.Redis,
    link: RedisLink,
    stop: Stop,
) -> bool:
    """Publish the result (and the dead-letter copy) before the acknowledgement, retrying
    while Redis is away. False when the worker had to stop first: the entry stays pending
    and runs again, so nothing is lost."""
    while True:
        try:
            if poison_reason:
                streams.dead_letter(
                    client, settings.dead_letter_stream, delivery, reason=poison_reason, worker_id=worker_id
                )
                poison_reason = ""  # copied once, even if publishing the result must be retried
            if result is not None:
                streams.publish(client, settings.tasks_results, result)
            link.worked()
            return True
        except streams.down_errors() + streams.response_errors() as error:
            refused = streams.refusal(error, what=f"publish a result to {settings.tasks_results}")
            if refused is not None:
                raise refused from None
            if stop.now:
                log.error(
                    "the result of task %s was not published (Redis unreachable while stopping); "
                    "its entry stays pending and will run again",
                    delivery.fields.get("task_id", "?"),
                )
                return False
            link.failed(error, _no_stop)


def acknowledge(
    delivery: streams.Delivery, *, client: redis.Redis, link: RedisLink, stop: Stop, settings: Settings
) -> None:
    while True:
        try:
            streams.acknowledge(client, delivery.channel, delivery.message_id)
            link.worked()
            return
        except streams.down_errors() + streams.response_errors() as error:
            if streams.is_missing_group(error):  # Redis lost the group: nothing left to acknowledge
                return
            refused = streams.refusal(error, what=f"acknowledge in {delivery.channel.stream}")
            if refused is not None:
                raise refused from None
            if stop.now:
                log.error(
                    "message %s not acknowledged (Redis unreachable); its result may be published twice",
                    delivery.message_id,
                )
                return
            link.failed(error, _no_stop)


# Waiting to publish a finished task's result must not be cut short by a first signal.
_no_stop = Stop(grace_seconds=0)


def _short(error: BaseException) -> str:
    text = str(error).split("\n")[0]
    return text[:200] or type(error).__name__
