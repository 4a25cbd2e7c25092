"""Sending what a scan found: read, check and upload concurrently over keep-alive connections,
one marker per answer (saved in checkpoints), then the records of sessions and archives whose
segments all have an answer. What each answer means is ``docs/nexus.md``."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ..cli import frame as cli
from ..core import state
from ..core.errors import AuthError
from ..core.exits import Exit
from ..nexus import sessions as nexus_sessions
from ..nexus import settings as nexus_settings
from ..nexus.sessions import ALREADY_STORED, CONFLICT, FAILED, REFUSED, REJECTED, STORED, StoreAnswer
from . import markers as upload_markers
from . import sqlite_era, transcripts
from .markers import Item

if TYPE_CHECKING:
    import concurrent.futures

    from .settings import Settings

log = logging.getLogger("nexus_jobs")
# The sessions route is not there: the endpoint is wrong, for every file alike (exit 78).
WRONG_PATH = 404


@dataclass
class Plan:
    """What a scan found to send, and the records to save once it was sent."""

    items: list[Item] = field(default_factory=list)
    settlements: list[tuple[str, sqlite_era.Settlement]] = field(default_factory=list)
    markers_changed: bool = False


class Sent(NamedTuple):
    """The store's answer, and the sha256 and size of what was sent (None and 0 when nothing was)."""

    answer: StoreAnswer
    sha256: str | None = None
    size: int = 0


def send_all(
    plan: Plan,
    *,
    settings: Settings,
    summary: cli.RunSummary,
    markers: dict[str, upload_markers.AgentMarkers],
    document: dict[str, Any],
    checkpoints: state.Checkpointer,
) -> None:
    """Upload ``plan.items`` with ``concurrency`` threads, recording each answer as it arrives.
    Stops early when the key is refused (exit 77) or the backend keeps failing."""
    try:
        if plan.items:
            _send_concurrently(
                plan.items,
                settings=settings,
                summary=summary,
                markers=markers,
                document=document,
                checkpoints=checkpoints,
            )
    finally:
        for agent_id, settlement in plan.settlements:
            if sqlite_era.settle([settlement], markers[agent_id]):
                checkpoints.pending_changes += 1


def _send_concurrently(
    items: list[Item],
    *,
    settings: Settings,
    summary: cli.RunSummary,
    markers: dict[str, upload_markers.AgentMarkers],
    document: dict[str, Any],
    checkpoints: state.Checkpointer,
) -> None:
    import concurrent.futures  # imported here: a run with nothing to upload never needs it

    store = _open_store(settings)
    failures_in_a_row = 0
    give_up_after = max(3, settings.concurrency)
    bar = cli.progress(total=len(items), description="uploading", enabled=settings.show_progress)
    pending = _Queue(items)
    digests: dict[str, upload_markers.SentDigests] = {}
    in_flight: dict[concurrent.futures.Future[Sent], Item] = {}
    refused: StoreAnswer | None = None
    answered = 0  # answers from the backend, whatever they said
    with concurrent.futures.ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
        try:
            while True:
                stop = refused is not None or failures_in_a_row >= give_up_after
                while not stop and len(in_flight) < settings.concurrency * 2:
                    item = pending.next(busy={(item.agent_id, item.session_id) for item in in_flight.values()})
                    if item is None:
                        break
                    # Taken when the session's earlier segments have their answers recorded.
                    if item.agent_id not in digests:
                        digests[item.agent_id] = upload_markers.SentDigests(markers[item.agent_id])
                    before = digests[item.agent_id].before(item)
                    in_flight[pool.submit(_send, item, before, store=store, settings=settings)] = item
                if not in_flight:
                    break
                done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    item = in_flight.pop(future)
                    sent = future.result()
                    bar.update(nbytes=sent.size or 0, failed=sent.answer.kind in (FAILED, REJECTED, CONFLICT))
                    _record(sent, item, markers=markers, summary=summary)
                    if isinstance(item, sqlite_era.Segment) and sent.sha256:
                        digests[item.agent_id].add(item.session_id, sent.sha256)
                    if sent.answer.kind == REFUSED or sent.answer.http_status == WRONG_PATH:
                        refused = sent.answer
                    failures_in_a_row = failures_in_a_row + 1 if sent.answer.kind == FAILED else 0
                    answered += sent.answer.kind not in (FAILED, transcripts.UNREADABLE)
                    checkpoints.changed(document)
        finally:
            bar.close()
            store.close()
    left = pending.left()
    if refused is not None and refused.http_status == WRONG_PATH:
        url = store.url if isinstance(store, nexus_sessions.HttpSessionStore) else store.location
        error = nexus_settings.answer_error(WRONG_PATH, b"", url=url, what="uploading transcripts")
        assert error is not None
        raise error
    if refused is not None:
        raise AuthError(f"{refused.detail}; stopped ({left} transcript(s) left for the next run)")
    if failures_in_a_row >= give_up_after or (failures_in_a_row and not answered):
        summary.exit_code = Exit.UNAVAILABLE
        summary.failures.append(
            f"backend unavailable: {failures_in_a_row} upload(s) failed in a row and none succeeded since; "
            f"{left + summary.counts['failed']} transcript(s) left for the next run"
        )
        log.error("%s", summary.failures[-1])


class _Queue:
    """Items in order, except that a session's segments go one at a time: a 409 without
    sha256 is judged by what was sent of its session before (docs/nexus.md)."""

    def __init__(self, items: list[Item]) -> None:
        self.items = iter(items)
        self.deferred: list[Item] = []

    def next(self, *, busy: set[tuple[str, str]]) -> Item | None:
        for index, item in enumerate(self.deferred):
            if (item.agent_id, item.session_id) not in busy:
                return self.deferred.pop(index)
        for item in self.items:
            if isinstance(item, sqlite_era.Segment) and (item.agent_id, item.session_id) in busy:
                self.deferred.append(item)
                continue
            return item
        return None

    def left(self) -> int:
        return len(self.deferred) + sum(1 for _ in self.items)


def _open_store(settings: Settings) -> nexus_sessions.SessionStore:
    if settings.store_root is not None:
        return nexus_sessions.FileSessionStore(settings.store_root)
    return nexus_sessions.HttpSessionStore(settings.nexus, pool_size=settings.concurrency)


def _send(item: Item, sent_before: frozenset[str], *, store: nexus_sessions.SessionStore, settings: Settings) -> Sent:
    prepared = transcripts.read_item(item, max_bytes=settings.max_bytes)
    if isinstance(prepared, StoreAnswer):
        return Sent(prepared)
    answer = store.upload(dataclasses.replace(prepared, sent_before=sent_before))
    return Sent(answer, prepared.sha256, len(prepared.content))


def _record(
    sent: Sent, item: Item, *, markers: dict[str, upload_markers.AgentMarkers], summary: cli.RunSummary
) -> None:
    answer = sent.answer
    where = f"{item.agent_id}/{item.name}"
    counts = summary.counts
    agent_markers = markers[item.agent_id]
    marker = agent_markers.get(item.name)
    if answer.kind in (STORED, ALREADY_STORED):
        if marker is not None and marker.get("status") == "uploaded" and marker.get("sha256") != sent.sha256:
            counts["reuploaded"] += 1
            log.warning(
                "%s changed after it was uploaded (%s); uploaded again",
                where,
                upload_markers.describe_change(marker, item),
            )
        else:
            counts["uploaded" if answer.kind == STORED else "alreadyStored"] += 1
            log.info("%s: %s", where, answer.detail)
        status = "uploaded"
    elif answer.kind == REJECTED:
        counts["rejected"] += 1
        log.warning("%s: rejected: %s (see status; --retry-rejected tries again)", where, answer.detail)
        status = "rejected"
    elif answer.kind == CONFLICT:
        counts["conflicts"] += 1
        summary.failures.append(f"{where}: conflict: {answer.detail}")
        log.error("%s", summary.failures[-1])
        status = "conflict"
    elif answer.kind == REFUSED or answer.http_status == WRONG_PATH:
        return  # the run stops; nothing is said of the item
    else:
        counts["failed"] += 1
        summary.failures.append(f"{where}: upload failed: {answer.detail}")
        log.error("%s", summary.failures[-1])
        return
    response = answer.detail if answer.http_status is None else f"{answer.http_status} {answer.detail}"
    agent_markers[item.name] = upload_markers.new_marker(item, status=status, response=response, sha256=sent.sha256)
