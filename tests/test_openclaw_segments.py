"""Cutting sessions into segments and naming them (pure functions, in process: milliseconds)."""

from __future__ import annotations

import hashlib
import json

import pytest

from nexus_jobs.openclaw import segments
from nexus_jobs.openclaw.segments import Event, Span


def line(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def boundary(identity: str, timestamp: str | None = "2026-11-30T18:27:05.883Z", reason: str = "reset") -> bytes:
    fields: dict[str, object] = {"type": "reset", "id": identity, "parentId": None, "reason": reason}
    if timestamp is not None:
        fields["timestamp"] = timestamp
    return line(**fields)


def events_of(*lines: bytes) -> list[Event]:
    return [segments.event_of(position, raw) for position, raw in enumerate(lines, 1)]


def test_each_boundary_closes_its_segment_and_the_rest_is_the_last_one() -> None:
    events = events_of(
        line(type="message", id="a"),
        boundary("r1"),
        boundary("r2", "2026-11-30T18:27:06Z", "new"),  # two resets in a row
        line(type="message", id="b"),
    )
    assert segments.split(events) == [
        Span(0, 2, "a", "r1", "reset", "2026-11-30T18-27-05.883Z"),
        Span(2, 3, "r2", "r2", "new", "2026-11-30T18-27-06.000Z"),
        Span(3, 4, "b", "b", None, None),
    ]


def test_a_boundary_without_a_usable_timestamp_is_named_by_its_id() -> None:
    (span,) = segments.split(events_of(line(type="message", id="a"), boundary("r1", None)))
    assert span.stamp == "event-r1"
    (span,) = segments.split(events_of(boundary("r2", "yesterday")))
    assert span.stamp == "event-r2"


def test_lines_without_an_id_or_not_json_are_identified_by_their_hash() -> None:
    first, second = events_of(b'{"type":"message"}', b"not json")
    assert first.identity.startswith("sha256:") and second.identity.startswith("sha256:")
    assert first.identity != second.identity and second.boundary_reason is None


def test_only_what_no_marker_covers_is_left_to_send() -> None:
    events = events_of(*(line(type="message", id=name) for name in "abcd"), boundary("r"))
    (span,) = segments.split(events)
    assert segments.unsent_part(span, events, {}) == span
    assert segments.unsent_part(span, events, {"a": "r"}) is None
    # The session's last segment was sent up to "b" before the session went on:
    assert segments.unsent_part(span, events, {"a": "b"}) == Span(2, 5, "c", "r", "reset", span.stamp)
    # A marker whose last event is not in this segment covers nothing of it.
    assert segments.unsent_part(span, events, {"a": "zz"}) == span


@pytest.mark.parametrize(
    ("session_id", "expected"),
    [
        ("5aa69cdb-42d7-48df-9377-3887a4cff539", "5aa69cdb-42d7-48df-9377-3887a4cff539"),
        ("x" * 96, "x" * 96),
        ("x" * 97, "session-" + hashlib.sha256(b"x" * 97).hexdigest()),
    ],
)
def test_long_session_ids_are_named_as_openclaw_names_its_archives(session_id: str, expected: str) -> None:
    assert segments.name_component(session_id) == expected
    assert segments.upload_name(session_id, "reset", "T").startswith(expected + ".jsonl.reset.")


def test_archive_names_of_both_eras_parse() -> None:
    parsed = segments.parse_archive_name(
        "3a54c7cc-a706-4d82-8ec8-bf65ffbfc904.jsonl.deleted.2026-11-30T18-35-11.488Z."
        "3a67e1173acf4c8597425b5728314376.zst"
    )
    assert parsed is not None
    assert (parsed["reason"], parsed["stamp"], parsed["generation"]) == (
        "deleted",
        "2026-11-30T18-35-11.488Z",
        "3a67e1173acf4c8597425b5728314376",
    )
    old = segments.parse_archive_name("abc.jsonl.reset.2026-06-25T05-19-01.119Z")
    assert old is not None and old["generation"] is None and old["zst"] is None
    assert segments.parse_archive_name("abc.jsonl") is None


def test_the_header_must_be_a_session_line() -> None:
    assert segments.check_header(line(type="session", version=4, id="s1")) == "s1"
    for bad in (b"", line(type="message", id="m"), b"[" * 100_000):
        with pytest.raises(segments.HeaderMissing):
            segments.check_header(bad)


def test_stamps_match_openclaws_archive_format() -> None:
    assert segments.file_stamp("2026-06-25T05:19:01.119Z") == "2026-06-25T05-19-01.119Z"
    assert segments.file_stamp("2026-06-25T05:19:01.1Z") == "2026-06-25T05-19-01.100Z"
    assert segments.stamp_of_ms(1_782_364_741_119) == "2026-06-25T05-19-01.119Z"
