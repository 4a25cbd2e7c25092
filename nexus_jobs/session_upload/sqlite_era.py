"""The SQLite era of an agent (OpenClaw 2026.7.2 and later): its complete segments, from the
database, from deletion archives (the table and the exported files) and from cold storage,
less what was sent already (``docs/openclaw.md``, "What complete means").

Each event is sent once. A segment's marker (keyed by its upload name) records its session and
the identities of its first and last events; every source is cut into segments the same way,
and only the part of a segment no marker covers is sent. A session whose events did not change
(same rows, same last seq) and whose last segment was settled is not read again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..cli import frame as cli
from ..core import state
from ..openclaw import archives, segments
from ..openclaw import database as openclaw_db
from ..openclaw import files as openclaw
from ..openclaw.agents import Agent
from . import archived, quiet
from .archived import AgentMarkers

log = logging.getLogger("nexus_jobs")
SESSION_RECORD_PREFIX = archived.SESSION_RECORD_PREFIX
SETTLED_STATUSES = ("uploaded", "rejected", "conflict")
# An archive all of whose segments have an answer (they carry the status, not the archive).
COVERED = archived.COVERED
FINGERPRINT_KEYS = ("size", "mtimeNs", "rows", "lastSeq", "settled")


class Source(NamedTuple):
    """Where a segment's lines are read again when it is sent: a session of the database, or
    an archive (a file in the sessions directory, or a row of the archives table)."""

    database: str
    session: openclaw_db.SessionRow | None = None
    archive_name: str | None = None
    archive_path: str | None = None
    sessions_dir: str = ""


class Segment(NamedTuple):
    """A complete segment to send: ``lines[start:end]`` of its source after the header."""

    agent_id: str
    session_id: str
    name: str
    archive_reason: str
    source: Source
    start: int
    end: int
    first: str
    last: str

    @property
    def upload_name(self) -> str:
        return self.name

    @property
    def origin(self) -> str:
        return f"segment ended by {self.archive_reason}"

    @property
    def extent(self) -> str:
        return f"{self.end - self.start} events"

    def fingerprint(self) -> dict[str, Any]:
        return {"session": self.session_id, "first": self.first, "last": self.last}


@dataclass(slots=True, eq=False)
class Settlement:
    """A marker to save once every segment in ``segments`` has an answer: a session's record
    (its fingerprint) or an archive's marker."""

    key: str
    value: dict[str, Any]
    segments: list[Segment]


@dataclass
class DatabasePart:
    found: bool = False
    complete: list[Segment] = field(default_factory=list)
    settlements: list[Settlement] = field(default_factory=list)
    # What is there, for pruning markers: archive names, and session ids (of the database's
    # sessions and the archives'); None when the database could not be read (no pruning).
    archive_names: set[str] = field(default_factory=set)
    sessions: set[str] | None = field(default_factory=set)
    markers_changed: bool = False


def scan(
    agent: Agent,
    agent_markers: AgentMarkers,
    *,
    archives: list[openclaw.Transcript],
    grace_seconds: float,
    now_ms: int,
    retry_rejected: bool,
    summary: cli.RunSummary,
    prune: bool,
) -> DatabasePart:
    """The complete, unsent segments of the agent's database and of ``archives`` (the archive
    files the sessions directory holds, not already done by name). A run that prunes scans
    in full (pruning needs every session id)."""
    part = DatabasePart()
    where = f"agent {agent.agent_id}"
    database = openclaw_db.database_path(agent.sessions_dir)
    files = openclaw_db.file_identity(database)
    files = files and [*files, int(grace_seconds * 1000)]  # a scan with another grace may find more
    last_scan = quiet.LastScan(agent_markers, files, now_ms)
    if not (archives or retry_rejected or prune) and last_scan.repeat(summary):
        part.found, part.sessions = True, None
        return part
    try:
        found = openclaw_db.scan(database, _settled(agent_markers, retry_rejected=retry_rejected))
    except openclaw_db.DatabaseBusy as error:
        log.warning("%s: %s; its database is skipped until the next run", where, error)
        summary.details.setdefault("databasesBusy", []).append(agent.agent_id)
        part.found, part.sessions = True, None
        return part
    except openclaw_db.DatabaseUnreadable as error:
        summary.failures.append(f"{where}: cannot read {error}")
        log.error("%s", summary.failures[-1])
        part.found, part.sessions = True, None
        return part
    part.found = found.found
    for problem in found.problems:
        (log.warning if found.usable else log.error)("%s: %s", where, problem)
        if not found.usable:
            summary.failures.append(f"{where}: {problem}")
    if not found.found:
        return part
    if not found.usable:
        part.sessions = None
        return part
    planner = _Planner(agent, agent_markers, database=database, retry_rejected=retry_rejected, summary=summary)
    grace_ms = grace_seconds * 1000
    last_scan.start(summary)
    for session in found.sessions:
        last_complete = _last_complete(session, now_ms=now_ms, grace_ms=grace_ms)
        planner.session(session, last_complete=last_complete)
        last_scan.waiting(session, last_complete=last_complete, grace_ms=grace_ms)
    for archive in archives:
        planner.archive(archive.name, path=archive.path, fingerprint=archive.fingerprint())
    listed = {archive.name for archive in archives}
    for row in found.archives:
        if row.name not in listed and row.name not in agent_markers:
            planner.archive(row.name, path=None, fingerprint={})
    part.complete, part.settlements = planner.segments, planner.settlements
    nothing_to_send = not planner.segments and not found.problems
    part.markers_changed = last_scan.finish(summary, nothing_to_send=nothing_to_send) or planner.markers_changed
    part.archive_names = listed | {row.name for row in found.archives}
    part.sessions = {session.session_id for session in found.sessions} | {row.session_id for row in found.archives}
    return part


def _settled(agent_markers: AgentMarkers, *, retry_rejected: bool) -> openclaw_db.Settled:
    """The sessions whose records say all their events were dealt with (see _Planner.session):
    the database does not read their events' times again while they are unchanged."""
    if retry_rejected:
        return {}
    settled: openclaw_db.Settled = {}
    for key, record in agent_markers.documented():
        if key.startswith(SESSION_RECORD_PREFIX) and record.get("settled"):
            rows, last_seq = record.get("rows"), record.get("lastSeq")
            if isinstance(rows, int) and isinstance(last_seq, int):
                settled[key[len(SESSION_RECORD_PREFIX) :]] = (rows, last_seq)
    return settled


def _last_complete(session: openclaw_db.SessionRow, *, now_ms: int, grace_ms: float) -> bool:
    """The last segment of a session is complete when no key uses the session any more, or
    its key is one OpenClaw never continues and its run ended; and nothing was added for the
    grace period either way. Whatever the window's ended_at says of a current session, it
    describes the last turn, not the session."""
    quiet = now_ms - session.last_event_ms >= grace_ms
    return quiet and (not session.current or session.run_over)


class _Planner:
    """Cuts sources into segments and keeps those no marker covers (see the module's text)."""

    def __init__(
        self,
        agent: Agent,
        agent_markers: AgentMarkers,
        *,
        database: Path,
        retry_rejected: bool,
        summary: cli.RunSummary,
    ) -> None:
        self.agent = agent
        self.markers = agent_markers
        self.database = database
        self.retry_rejected = retry_rejected
        self.summary = summary
        self.counts = summary.counts
        self.segments: list[Segment] = []
        self.settlements: list[Settlement] = []
        self.markers_changed = False
        self._sent: dict[str, dict[str, str]] | None = None  # session -> first -> last

    def sent(self, session_id: str) -> dict[str, str]:
        if self._sent is None:
            self._sent = {}
            counted = ("uploaded",) if self.retry_rejected else SETTLED_STATUSES
            for _, marker in self.markers.documented():  # a shelved archive's marker has no events
                if marker.get("status") in counted and isinstance(marker.get("first"), str):
                    self._sent.setdefault(str(marker.get("session")), {})[marker["first"]] = str(marker.get("last"))
        return self._sent.setdefault(session_id, {})

    def session(self, session: openclaw_db.SessionRow, *, last_complete: bool) -> None:
        key = SESSION_RECORD_PREFIX + session.session_id
        record = self.markers.get(key) or {}
        unchanged = record.get("rows") == session.rows and record.get("lastSeq") == session.last_seq
        if unchanged and (record.get("settled") or not last_complete):
            self.counts["unchanged" if record.get("settled") else "waiting"] += 1
            return
        source = Source(str(self.database), session=session, sessions_dir=str(self.agent.sessions_dir))
        try:
            lines = archives.session_lines(self.database, session, sessions_dir=self.agent.sessions_dir)
        except (openclaw_db.DatabaseBusy, openclaw_db.DatabaseUnreadable, OSError, ValueError) as error:
            self._failed(f"session {session.session_id}", error)
            return
        if not lines or lines[0][0] != 0:
            lines = []
        value = {"rows": session.rows, "lastSeq": session.last_seq, "settled": last_complete}
        self._plan(
            session.session_id,
            [line for _, line in lines],
            source,
            key,
            value,
            final=None if not last_complete else "ended",
            adopt=True,
            stamp_ms=session.last_event_ms,
        )

    def archive(self, name: str, *, path: str | None, fingerprint: dict[str, int]) -> None:
        try:
            content = archives.archive_content(self.database, name, path)
        except (openclaw_db.DatabaseBusy, openclaw_db.DatabaseUnreadable, OSError) as error:
            self._failed(name, error)
            return
        except ValueError as error:
            self._reject(name, fingerprint, str(error))
            return
        parts = segments.parse_archive_name(name)
        reason = str(parts["reason"]) if parts else "deleted"
        stamp = str(parts["stamp"]) if parts else None
        source = Source(str(self.database), archive_name=name, archive_path=path)
        value = {**fingerprint, "status": COVERED, "at": _now()}
        lines = content.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        self._plan(None, lines, source, name, value, final=reason, stamp=stamp)

    def _plan(
        self,
        session_id: str | None,
        lines: list[bytes],
        source: Source,
        settle_key: str,
        settle_value: dict[str, Any],
        *,
        final: str | None,
        adopt: bool = False,
        stamp: str | None = None,
        stamp_ms: int = 0,  # a last segment's time when the source has no archive name
    ) -> None:
        """Cut ``lines`` (header first) into segments; plan what was not sent."""
        where = settle_key if session_id is None else f"session {session_id}"
        try:
            header_id = segments.check_header(lines[0] if lines else b"")
        except segments.HeaderMissing as error:
            # Keeps the fingerprint, so an unchanged session is not read again.
            kept = {key: value for key, value in settle_value.items() if key in FINGERPRINT_KEYS}
            self._reject(settle_key, kept, f"{where}: {error}")
            return
        session_id = session_id or header_id
        events = [segments.event_of(index, line) for index, line in enumerate(lines[1:], 1)]
        sent = self.sent(session_id)
        if adopt:
            self._adopt(session_id, lines, events, sent)
        spans = segments.split(events)
        live = final is None and bool(spans) and spans[-1].reason is None
        if "settled" in settle_value:
            settle_value["settled"] = not live  # nothing after its last boundary: nothing waits
        self.counts["waiting"] += live
        planned: list[Segment] = []
        for span in spans:
            reason, span_stamp = span.reason, span.stamp
            if reason is None:
                if final is None or not events:
                    continue  # the live last segment: never sent
                reason = final
                span_stamp = stamp or segments.stamp_of_ms(stamp_ms)
            part = segments.unsent_part(span, events, sent)
            if part is None:
                continue
            name = segments.upload_name(session_id, reason, span_stamp or "")
            if name in self.markers and self.markers[name].get("first") != part.first:
                name = f"{name}.{part.first[:8]}"  # two segments ended in the same millisecond
            segment = Segment(
                self.agent.agent_id, session_id, name, reason, source, part.start, part.end, part.first, part.last
            )
            sent[part.first] = part.last  # planned: no other source in this run sends it again
            planned.append(segment)
        self.segments.extend(planned)
        if planned:
            self.settlements.append(Settlement(settle_key, settle_value, planned))
        else:
            self.counts["unchanged"] += not live
            if self.markers.get(settle_key) != settle_value:
                self.markers[settle_key] = settle_value
                self.markers_changed = True

    def _adopt(self, session_id: str, lines: list[bytes], events: list[segments.Event], sent: dict[str, str]) -> None:
        """A session sent whole before segments (as its JSONL file, or as a database
        generation by an earlier release): its marker gets the identities of the events it
        held, so they are not sent again."""
        marker = self.markers.get(session_id + segments.TRANSCRIPT_SUFFIX)
        if not events or marker is None or marker.get("status") != "uploaded" or "first" in marker:
            return
        count = 0
        if isinstance(marker.get("lastSeq"), int):
            count = sum(1 for event in events if event.position <= marker["lastSeq"])
        elif isinstance(marker.get("size"), int):
            count = _prefix_of_size(lines, marker["size"], marker.get("sha256"))
        if count:
            marker.update(session=session_id, first=events[0].identity, last=events[count - 1].identity)
            sent[events[0].identity] = events[count - 1].identity
            self.markers_changed = True

    def _failed(self, what: str, error: Exception) -> None:
        self.counts["failed"] += 1
        self.summary.failures.append(f"{self.agent.agent_id}/{what}: cannot read it: {error} (will retry next run)")
        log.error("%s", self.summary.failures[-1])

    def _reject(self, key: str, fingerprint: dict[str, Any], reason: str) -> None:
        marker = self.markers.get(key)
        if marker is not None and marker.get("status") == "rejected" and not self.retry_rejected:
            return
        self.counts["rejected"] += 1
        log.warning("%s/%s: rejected: %s (see status; --retry-rejected tries again)", self.agent.agent_id, key, reason)
        self.markers[key] = {**fingerprint, "status": "rejected", "response": reason, "at": _now()}
        self.markers_changed = True


def _prefix_of_size(lines: list[bytes], size: int, sha256: object) -> int:
    """How many events (after the header) make a transcript of ``size`` bytes (with the same
    sha256 when one was recorded); 0 when no prefix does."""
    import hashlib

    total = len(lines[0]) + 1
    digest = hashlib.sha256(lines[0] + b"\n")
    for count, line in enumerate(lines[1:], 1):
        total += len(line) + 1
        digest.update(line + b"\n")
        if total == size:
            return count if not isinstance(sha256, str) or digest.hexdigest() == sha256 else 0
        if total > size:
            return 0
    return 0


def read_segment(segment: Segment) -> bytes:
    """The transcript of ``segment``: the session's header line, then its events, exactly as
    stored, each line ending in a newline. Raises ``ValueError`` when the source no longer
    holds it as planned (read again next run), and the errors of the readers."""
    source = segment.source
    if source.session is not None:
        rows = archives.session_lines(Path(source.database), source.session, sessions_dir=Path(source.sessions_dir))
        lines = [line for _, line in rows]
    else:
        assert source.archive_name is not None
        lines = archives.archive_content(Path(source.database), source.archive_name, source.archive_path).split(b"\n")
    body = lines[1 + segment.start : 1 + segment.end]
    if (
        len(body) != segment.end - segment.start
        or segments.event_of(0, body[0]).identity != segment.first
        or segments.event_of(0, body[-1]).identity != segment.last
    ):
        raise openclaw_db.DatabaseBusy("its session changed since it was listed")
    return b"".join(line + b"\n" for line in (lines[0], *body))


def settle(settlements: list[Settlement], agent_markers: AgentMarkers) -> bool:
    """Save the records whose segments all have an answer; True if anything was saved."""
    changed = False
    for settlement in settlements:
        if all(
            agent_markers.get(segment.name, {}).get("status") in SETTLED_STATUSES
            and agent_markers[segment.name].get("last") == segment.last
            for segment in settlement.segments
        ):
            agent_markers[settlement.key] = settlement.value
            changed = True
    return changed


def _now() -> str:
    return state.isoformat(state.now_utc())
