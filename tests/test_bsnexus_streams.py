"""In-process tests of the intake order against a real Redis: claim only from the dead, and
keeping a running entry fresh never takes it back from a worker that claimed it (nor reports
it a second time)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from nexus_jobs.bsnexus import record, registration, streams, tasks
from nexus_jobs.bsnexus import settings as worker_settings
from nexus_jobs.bsnexus.executors import Executor, ExecutorOutcome, Request, ShouldAbort
from nexus_jobs.bsnexus.heartbeat import Heartbeat
from nexus_jobs.bsnexus.worker import Stop, Worker
from tests.bsnexus_backend import prompt_json
from tests.redis_server import RedisServer

QUEUE = streams.Channel("tasks:queue", "workers", tasks.EXECUTION)
QA = streams.Channel("tasks:qa", "reviewers", tasks.QA)
VISIBILITY_SECONDS = 60.0
LONG_IDLE_MS = 3_600_000  # an hour: an original worker's claude task


def _reader(client: Any, consumer: str) -> streams.TaskReader:
    return streams.TaskReader(client, [QUEUE, QA], consumer=consumer, visibility_timeout_seconds=VISIBILITY_SECONDS)


def _taken_by(client: Any, consumer: str, *, idle_ms: int) -> str:
    """A task delivered to ``consumer`` that has been idle for ``idle_ms`` (XCLAIM IDLE sets it)."""
    streams.ensure_groups(client, [QUEUE, QA])
    message_id = str(client.xadd("tasks:queue", {"task_id": "t-1", "worker_prompt": prompt_json("x")}))
    client.xreadgroup("workers", consumer, {"tasks:queue": ">"}, count=1)
    client.xclaim("tasks:queue", "workers", consumer, 0, [message_id], idle=idle_ms, justid=True)
    return message_id


def _owner(client: Any, message_id: str) -> str:
    (row,) = client.xpending_range("tasks:queue", "workers", min=message_id, max=message_id, count=1)
    return str(row["consumer"])


def test_a_live_consumers_entry_is_never_claimed_however_idle(redis_server: RedisServer) -> None:
    client = redis_server.client()
    original = str(uuid.uuid4())
    client.hset(f"worker:{original}", mapping={"id": original, "status": "idle"})  # its heartbeats keep this
    message_id = _taken_by(client, original, idle_ms=LONG_IDLE_MS)
    assert _reader(client, "ours").next(block_ms=1) is None
    assert _owner(client, message_id) == original

    client.delete(f"worker:{original}")  # the registry forgot it: dead
    claimed = _reader(client, "ours").next(block_ms=1)
    assert claimed is not None and claimed.message_id == message_id and claimed.source == "claimed"
    assert claimed.delivery_count == 2 and _owner(client, message_id) == "ours"


def test_a_dead_consumers_entry_waits_for_the_visibility_timeout(redis_server: RedisServer) -> None:
    client = redis_server.client()
    # No registry entry (a lapsed hash, or a consumer the registry never knew), recently active.
    message_id = _taken_by(client, "lapsed", idle_ms=int(VISIBILITY_SECONDS * 1000) // 2)
    assert _reader(client, "ours").next(block_ms=1) is None
    assert _owner(client, message_id) == "lapsed"
    client.xclaim("tasks:queue", "workers", "lapsed", 0, [message_id], idle=int(VISIBILITY_SECONDS * 1000) + 1)
    claimed = _reader(client, "ours").next(block_ms=1)
    assert claimed is not None and claimed.message_id == message_id


def test_keep_fresh_never_takes_back_an_entry_another_worker_claimed(redis_server: RedisServer) -> None:
    client = redis_server.client()
    message_id = _taken_by(client, "ours", idle_ms=0)
    delivery = streams.Delivery(QUEUE, message_id, {}, 1, "new")
    assert streams.keep_fresh(client, delivery, consumer="ours") is True
    client.xclaim("tasks:queue", "workers", "other", 0, [message_id])  # thought dead meanwhile
    assert streams.keep_fresh(client, delivery, consumer="ours") is False
    assert _owner(client, message_id) == "other"


def test_a_claimed_entry_deleted_from_the_stream_is_acknowledged_not_run(redis_server: RedisServer) -> None:
    client = redis_server.client()
    message_id = _taken_by(client, "gone", idle_ms=LONG_IDLE_MS)
    client.xdel("tasks:queue", message_id)
    assert _reader(client, "ours").next(block_ms=1) is None
    assert client.xpending("tasks:queue", "workers")["pending"] == 0


def _settings(redis_url: str, state_dir: Path) -> worker_settings.Settings:
    values: dict[str, Any] = {option.path: option.default for option in worker_settings.OPTIONS}
    values.update(
        server_url="http://127.0.0.1:9",
        redis_url=redis_url,
        executor_type="noop",
        worker_id=str(uuid.uuid4()),
        max_tasks=1,
        poll_seconds=0.1,
    )
    return worker_settings.Settings(**values, env_file=state_dir / ".env", state_dir=state_dir)


class _ClaimedMidTask(Executor):
    """While the task runs, another worker claims its entry (this one was thought dead)."""

    name = "noop"
    consumer: Worker
    heartbeat: Heartbeat

    def execute(self, request: Request, *, should_abort: ShouldAbort) -> ExecutorOutcome:
        delivery = self.consumer.in_flight
        assert delivery is not None
        self.consumer.client.xclaim("tasks:queue", "workers", "other", 0, [delivery.message_id])
        self.heartbeat.keep_task_fresh()
        return ExecutorOutcome(True, "done")


def test_an_entry_claimed_by_another_worker_mid_task_gets_no_second_result(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = _settings(redis_server.url, tmp_path)
    client = streams.connect(settings.redis_url, poll_seconds=settings.poll_seconds)
    message_id = str(client.xadd("tasks:queue", {"task_id": "t-1", "worker_prompt": prompt_json("x")}))
    executor = _ClaimedMidTask(settings)
    stop = Stop(grace_seconds=0)
    tally = record.Tally(settings=settings, worker_id=settings.worker_id)
    executor.consumer = Worker(settings=settings, executor=executor, client=client, stop=stop, tally=tally)
    session = registration.make_session(settings)
    executor.heartbeat = Heartbeat(
        settings=settings, session=session, client=client, stop=stop, tally=tally, worker=executor.consumer
    )
    summary = executor.consumer.work()
    assert summary.handled == 1 and summary.done == 0
    assert client.xlen("tasks:results") == 0  # the other worker's result is the one the backend gets
    assert _owner(client, message_id) == "other"
    session.close()
