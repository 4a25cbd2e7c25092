"""Redis Streams plumbing with redis-py: consumer groups, the order in which a worker takes
tasks, results, acknowledgements, dead letters and the pending-entry figures of ``status``.

Order of intake: first the worker's own pending entries (id ``0``: what it held when it last
stopped), then entries of dead consumers, then new ones (``>``).

Claim only from the dead (docs/bsnexus.md): a consumer is a worker id, and the backend's
own registry says whether it lives: the hash ``worker:{id}`` in this Redis, renewed by its
heartbeats. An entry of a consumer whose hash exists is never claimed, however long it has
been idle (the original BSNexus worker never refreshes its entries, and a task may run an
hour). An entry of a consumer without a hash (forgotten, deregistered, or never registered)
is claimed once idle longer than the visibility timeout: the idle time guards against a
worker whose hash lapsed during a backend outage while it still works (ours keep their
running entry fresh, so it never goes idle). XAUTOCLAIM cannot filter by consumer, so the
claim is XPENDING per dead consumer, then XCLAIM with the same minimum idle time.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.errors import AuthError, ConfigError, JobError
from . import tasks
from .settings import Settings

if TYPE_CHECKING:
    import redis

OWN_PENDING_BATCH = 10
CLAIM_CANDIDATES = 10
# The backend's registry of live workers (renewed by heartbeats, TTL 90 s).
REGISTRY_KEY = "worker:{}"
# Refresh the entry only while this consumer still owns it: another worker may have claimed
# it (this worker was thought dead), and taking it back would run the task twice.
KEEP_FRESH_SCRIPT = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if rows[1] and rows[1][2] == ARGV[3] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
  return 1
end
return 0
"""
# After this many tasks in a row from one stream, look at the other one first.
FAIRNESS_STREAK = 8


@dataclass(frozen=True)
class Channel:
    stream: str
    group: str
    kind: str  # tasks.EXECUTION or tasks.QA


@dataclass(frozen=True)
class Delivery:
    channel: Channel
    message_id: str
    fields: dict[str, str]
    delivery_count: int
    source: str  # "new", "own pending" or "claimed"


def channels(settings: Settings) -> list[Channel]:
    return [
        Channel(settings.tasks_queue, settings.workers_group, tasks.EXECUTION),
        Channel(settings.tasks_qa, settings.reviewers_group, tasks.QA),
    ]


def connect(url: str, *, poll_seconds: float) -> redis.Redis:
    import redis

    # Replace undecodable bytes instead of failing the whole read: a garbled field must
    # become a failure result, not a crash.
    try:
        return redis.Redis.from_url(
            url,
            decode_responses=True,
            encoding_errors="replace",
            socket_connect_timeout=5,
            socket_timeout=poll_seconds + 10,
            health_check_interval=30,
        )
    except ValueError as error:
        raise ConfigError(f"BSNEXUS_REDIS_URL: {error}") from None


def down_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean Redis went away (reconnect with backoff) or refused us (see
    :func:`refusal`)."""
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def response_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.exceptions.ResponseError,)


def is_missing_group(error: BaseException) -> bool:
    return "NOGROUP" in str(error)


def refusal(error: BaseException, *, what: str) -> JobError | None:
    """The documented error for a Redis answer that waiting cannot fix (wrong password, a
    key of the wrong type, no permission), or None when reconnecting may help."""
    import redis

    text = str(error).split("\n")[0][:200]
    if isinstance(error, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)):
        return AuthError(f"Redis refused the worker's credentials ({text}); check the password in BSNEXUS_REDIS_URL")
    if isinstance(error, redis.exceptions.ResponseError) and not is_missing_group(error):
        return ConfigError(f"Redis refused to {what}: {text}")
    return None


def ensure_groups(client: redis.Redis, channel_list: list[Channel]) -> None:
    """Create the streams and groups when missing. The group starts at ``0`` so tasks added
    before it existed are not skipped."""
    import redis

    for channel in channel_list:
        try:
            client.xgroup_create(channel.stream, channel.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise


class TaskReader:
    """Hands out deliveries one at a time in the intake order described above."""

    def __init__(
        self, client: redis.Redis, channel_list: list[Channel], *, consumer: str, visibility_timeout_seconds: float
    ) -> None:
        self.client = client
        self.channels = channel_list
        self.consumer = consumer
        self.visibility_ms = max(1, int(visibility_timeout_seconds * 1000))
        self.claim_every_seconds = min(max(visibility_timeout_seconds / 2, 0.05), 30.0)
        self.own_pending_done = False
        self.next_claim_at = 0.0
        self.buffer: collections.deque[Delivery] = collections.deque()
        self.preferred = 0
        self.streak = 0

    def next(self, *, block_ms: int) -> Delivery | None:
        if self.buffer:
            return self.buffer.popleft()
        if not self.own_pending_done:
            self.buffer.extend(self._own_pending())
            if self.buffer:
                return self.buffer.popleft()
            self.own_pending_done = True
        if time.monotonic() >= self.next_claim_at:
            claimed = self._claim_from_dead()
            if claimed is not None:
                return claimed  # there may be more: look again next time
            self.next_claim_at = time.monotonic() + self.claim_every_seconds
        return self._new(block_ms=block_ms)

    def _own_pending(self) -> list[Delivery]:
        found = []
        for channel in self.channels:
            reply = self.client.xreadgroup(channel.group, self.consumer, {channel.stream: "0"}, count=OWN_PENDING_BATCH)
            for message_id, fields in _entries(reply):
                if not fields:  # deleted from the stream while pending: nothing to run
                    self.client.xack(channel.stream, channel.group, message_id)
                    continue
                found.append(Delivery(channel, message_id, fields, self._count(channel, message_id), "own pending"))
        return found

    def _claim_from_dead(self) -> Delivery | None:
        for channel in self.channels:
            for consumer in self._dead_consumers(channel):
                rows = self.client.xpending_range(
                    channel.stream,
                    channel.group,
                    min="-",
                    max="+",
                    count=CLAIM_CANDIDATES,
                    consumername=consumer,
                    idle=self.visibility_ms,
                )
                if not rows:
                    continue
                ids: list[Any] = [row["message_id"] for row in rows]
                # The same minimum idle time: an entry refreshed meanwhile stays where it is.
                claimed: Any = self.client.xclaim(channel.stream, channel.group, self.consumer, self.visibility_ms, ids)
                for message_id, fields in claimed:
                    if not fields:  # deleted from the stream while pending: nothing to run
                        self.client.xack(channel.stream, channel.group, message_id)
                        continue
                    self.buffer.append(
                        Delivery(channel, message_id, fields, self._count(channel, message_id), "claimed")
                    )
                if self.buffer:
                    return self.buffer.popleft()
        return None

    def _dead_consumers(self, channel: Channel) -> list[str]:
        """Consumers other than this one with pending entries and no registry entry."""
        try:
            summary = self.client.xpending(channel.stream, channel.group)
        except _response_error() as error:
            if is_missing_group(error):
                return []
            raise
        others = [str(row["name"]) for row in summary.get("consumers") or [] if row["name"] != self.consumer]
        if not others:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for name in others:
                pipe.exists(REGISTRY_KEY.format(name))
            alive = pipe.execute()
        return [name for name, exists in zip(others, alive, strict=True) if not exists]

    def _new(self, *, block_ms: int) -> Delivery | None:
        if self.streak >= FAIRNESS_STREAK:
            self.preferred, self.streak = (self.preferred + 1) % len(self.channels), 0
        order = self.channels[self.preferred :] + self.channels[: self.preferred]
        for channel in order:
            reply = self.client.xreadgroup(channel.group, self.consumer, {channel.stream: ">"}, count=1)
            for message_id, fields in _entries(reply):
                self._note(channel)
                return Delivery(channel, message_id, fields or {}, 1, "new")
        # Nothing anywhere: wait on one stream (alternating) for a while.
        waiting_on = order[0]
        self.preferred = (self.preferred + 1) % len(self.channels)
        reply = self.client.xreadgroup(
            waiting_on.group, self.consumer, {waiting_on.stream: ">"}, count=1, block=block_ms
        )
        for message_id, fields in _entries(reply):
            self._note(waiting_on)
            return Delivery(waiting_on, message_id, fields or {}, 1, "new")
        return None

    def _note(self, channel: Channel) -> None:
        index = self.channels.index(channel)
        if index == self.preferred:
            self.streak += 1
        else:
            self.preferred, self.streak = index, 1

    def _count(self, channel: Channel, message_id: str) -> int:
        """Redis's own delivery counter of a pending entry."""
        rows = self.client.xpending_range(channel.stream, channel.group, min=message_id, max=message_id, count=1)
        return int(rows[0]["times_delivered"]) if rows else 1


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [entry for messages in reply.values() for entry in (messages[0] if messages else [])]
    return [entry for _stream, messages in reply for entry in messages]


def publish(client: redis.Redis, stream: str, fields: dict[str, str]) -> str:
    return str(client.xadd(stream, fields))  # type: ignore[arg-type]


def acknowledge(client: redis.Redis, channel: Channel, message_id: str) -> None:
    client.xack(channel.stream, channel.group, message_id)


def dead_letter(client: redis.Redis, stream: str, delivery: Delivery, *, reason: str, worker_id: str) -> str:
    """Copy a poison message, with why and where it came from, to the dead-letter stream."""
    fields = {
        **delivery.fields,
        "dead_letter_reason": reason,
        "source_stream": delivery.channel.stream,
        "source_group": delivery.channel.group,
        "source_message_id": delivery.message_id,
        "delivery_count": str(delivery.delivery_count),
        "dead_lettered_by": worker_id,
    }
    return publish(client, stream, fields)


def keep_fresh(client: redis.Redis, delivery: Delivery, *, consumer: str) -> bool:
    """Reset the idle time of a running task's entry so no other worker claims it (JUSTID:
    the delivery counter is not incremented). False when another consumer owns it now."""
    owned = client.eval(
        KEEP_FRESH_SCRIPT, 1, delivery.channel.stream, delivery.channel.group, delivery.message_id, consumer
    )
    return bool(owned)


def registered(client: redis.Redis, worker_id: str) -> bool:
    """Whether the backend's registry lists ``worker_id`` as alive."""
    return bool(client.exists(REGISTRY_KEY.format(worker_id)))


def _response_error() -> type[BaseException]:
    import redis

    return redis.exceptions.ResponseError


def pending_counts(client: redis.Redis, channel_list: list[Channel], *, consumer: str) -> dict[str, int]:
    """Entries pending on ``consumer`` per ``stream/group``."""
    import redis

    counts = {}
    for channel in channel_list:
        key = f"{channel.stream}/{channel.group}"
        try:
            summary = client.xpending(channel.stream, channel.group)
        except redis.exceptions.ResponseError:  # no such stream or group yet
            counts[key] = 0
            continue
        counts[key] = sum(int(row["pending"]) for row in summary.get("consumers", []) if row["name"] == consumer)
    return counts
