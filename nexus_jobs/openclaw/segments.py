"""Segments: the unit of a transcript in OpenClaw's SQLite era (``docs/openclaw.md``,
"Segments").

A session keeps its id across ``/reset``, ``/new``, idle and daily resets; each reset appends a
boundary event ``{"type":"reset","id","parentId","timestamp","reason"}`` to the same session.
A segment is the run of events that ends with such a boundary (the boundary included), or the
events after the last boundary (the session's last segment). Every event belongs to exactly
one segment; a segment is named ``<sessionId>.jsonl.<reason>.<TS>`` with ``TS`` the boundary's
time in OpenClaw's archive format (``2026-06-25T05-19-01.119Z``).

Pure functions over event lines: where they come from (the database, a deletion archive,
cold storage) is :mod:`database`'s business.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

TRANSCRIPT_SUFFIX = ".jsonl"
BOUNDARY_TYPE = "reset"
HEADER_TYPE = "session"
# OpenClaw names registry archives by the session id only while it is at most 96 bytes long;
# longer ids are replaced by "session-<sha256 of the id>" (docs/openclaw.md, "Long ids").
MAX_NAMED_ID_BYTES = 96
# <id>.jsonl.<reason>.<TS>[.<32-hex generation>][.zst], as OpenClaw's ARCHIVE_SUFFIX_RE reads it.
ARCHIVE_NAME = re.compile(
    r"^(?P<id>.+?)\.jsonl\.(?P<reason>reset|deleted)\."
    r"(?P<stamp>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d{3})?Z)"
    r"(?:\.(?P<generation>[0-9a-f]{32}))?(?P<zst>\.zst)?$"
)
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z$")


@dataclass(frozen=True, slots=True)
class Event:
    """One event line: where it sits, its identity and, for a boundary, why and when."""

    position: int  # seq in the database, line number in an archive (the header is 0)
    identity: str
    boundary_reason: str | None = None
    boundary_stamp: str | None = None


@dataclass(frozen=True, slots=True)
class Span:
    """A run of events of one session: ``events[start:end]`` of the list it was cut from."""

    start: int
    end: int
    first: str  # identity of its first event
    last: str  # identity of its last event
    reason: str | None  # the closing boundary's reason; None for the last segment
    stamp: str | None  # the closing boundary's time, archive format


class HeaderMissing(ValueError):
    """The first line is not a ``{"type":"session"}`` header."""


def event_of(position: int, line: bytes) -> Event:
    """What a segment needs of one event line. Its identity is its ``id``, or a hash of the
    line when it has none (transcripts of old releases); a line that is not a JSON object is
    identified by its hash too and never a boundary."""
    try:
        value: Any = json.loads(line)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        return Event(position, _hashed(line))
    identity = value.get("id")
    if not isinstance(identity, str) or not identity:
        identity = _hashed(line)
    if value.get("type") != BOUNDARY_TYPE:
        return Event(position, identity)
    reason = value.get("reason")
    reason = reason if isinstance(reason, str) and re.fullmatch(r"[a-z][a-z0-9-]{0,31}", reason) else "reset"
    return Event(position, identity, reason, file_stamp(value.get("timestamp")))


def _hashed(line: bytes) -> str:
    return "sha256:" + hashlib.sha256(line.rstrip(b"\n")).hexdigest()[:32]


def file_stamp(timestamp: object) -> str | None:
    """An event's ISO-8601 UTC time in OpenClaw's archive format (``:`` -> ``-``), to the
    millisecond; None when it is missing or not such a time."""
    if not isinstance(timestamp, str) or not _ISO.match(timestamp):
        return None
    whole, _, fraction = timestamp[:-1].partition(".")
    return f"{whole.replace(':', '-')}.{(fraction + '000')[:3]}Z"


def stamp_of_ms(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H-%M-%S.") + f"{epoch_ms % 1000:03d}Z"


def check_header(line: bytes) -> str:
    """The session id of a header line; raises :class:`HeaderMissing` otherwise."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict) or value.get("type") != HEADER_TYPE or not isinstance(value.get("id"), str):
        raise HeaderMissing("its first line is not a session header")
    return str(value["id"])


def split(events: Sequence[Event]) -> list[Span]:
    """Cut a session's events (header excluded) into segments: each boundary closes one."""
    spans: list[Span] = []
    start = 0
    for index, event in enumerate(events):
        if event.boundary_reason is not None:
            stamp = event.boundary_stamp or f"event-{event.identity[:32]}"
            spans.append(_span(events, start, index + 1, event.boundary_reason, stamp))
            start = index + 1
    if start < len(events):
        spans.append(_span(events, start, len(events), None, None))
    return spans


def _span(events: Sequence[Event], start: int, end: int, reason: str | None, stamp: str | None) -> Span:
    return Span(start, end, events[start].identity, events[end - 1].identity, reason, stamp)


def unsent_part(span: Span, events: Sequence[Event], sent_last: dict[str, str]) -> Span | None:
    """What of ``span`` was never sent, given ``sent_last`` (first event identity -> last event
    identity of every segment sent of this session). A segment sent whole is None; one whose
    beginning was sent (a last segment sent before the session went on) leaves its rest."""
    start = span.start
    while start < span.end:
        last = sent_last.get(events[start].identity)
        if last is None:
            break
        ends = [index for index in range(start, span.end) if events[index].identity == last]
        if not ends:
            break
        start = ends[0] + 1
    if start >= span.end:
        return None
    if start == span.start:
        return span
    return Span(start, span.end, events[start].identity, span.last, span.reason, span.stamp)


def name_component(session_id: str) -> str:
    """The session id as OpenClaw writes it into archive names."""
    if len(session_id.encode("utf-8", "surrogateescape")) <= MAX_NAMED_ID_BYTES:
        return session_id
    return "session-" + hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


def upload_name(session_id: str, reason: str, stamp: str) -> str:
    return f"{name_component(session_id)}{TRANSCRIPT_SUFFIX}.{reason}.{stamp}"


def parse_archive_name(name: str) -> dict[str, str | None] | None:
    """The parts of an archive file name, or None when it is none."""
    match = ARCHIVE_NAME.match(name)
    return match.groupdict() if match else None
