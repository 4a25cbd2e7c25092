"""What ``nexus-session-upload`` remembers per transcript: one marker per file (or database
generation) with its fingerprint (size and mtime, or events and last seq), the sha256 and size
of what was sent, the status (uploaded, rejected, conflict), the server's answer and the time.

An unchanged file is never read again; a changed one is uploaded again; markers of files gone
for the retention period are forgotten, so the state does not grow without bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..core import state
from ..openclaw import database as openclaw_sqlite
from ..openclaw import files as openclaw

# A transcript file, or a transcript generation of an agent database.
Found = openclaw.Transcript | openclaw_sqlite.Generation


def new_marker(
    transcript: Found, *, status: str, response: str, sha256: str | None, sent_bytes: int | None
) -> dict[str, Any]:
    marker: dict[str, Any] = {**transcript.fingerprint(), "status": status, "response": response, "at": _now()}
    if sha256 is not None:
        marker["sha256"] = sha256
    if sent_bytes is not None and isinstance(transcript, openclaw_sqlite.Generation):
        # So the archive OpenClaw writes when the session is deleted is known as a copy.
        marker["bytes"] = sent_bytes
    return marker


def done_check(agent_markers: dict[str, dict[str, Any]], *, retry_rejected: bool) -> Callable[[str, int, int], bool]:
    """Whether a file needs nothing: its marker has the same size and mtime (so it is not even
    read again) and says uploaded, or rejected when rejected files are not being retried."""

    def is_done(name: str, size: int, mtime_ns: int) -> bool:
        marker = agent_markers.get(name)
        if marker is None or marker.get("size") != size or marker.get("mtimeNs") != mtime_ns:
            return False
        return marker.get("status") == "uploaded" or not retry_rejected

    return is_done


def prune(agent_markers: dict[str, dict[str, Any]], *, present: set[str], retention_seconds: float) -> bool:
    """Forget markers of files gone for the retention period; True if anything changed."""
    changed = False
    now = time.time()
    for name in list(agent_markers):
        marker = agent_markers[name]
        gone_since = marker.get("goneSince")
        if name in present:
            if gone_since is not None:
                del marker["goneSince"]
                changed = True
        elif gone_since is None:
            marker["goneSince"] = now
            changed = True
        elif now - gone_since >= retention_seconds:
            del agent_markers[name]
            changed = True
    return changed


def copies_of_generations(
    complete: list[openclaw.Transcript], agent_markers: dict[str, dict[str, Any]], *, dry_run: bool
) -> set[str]:
    """Archives whose session's generation was uploaded from the database already, with the
    same transcript size: OpenClaw wrote them when it deleted the session, a copy of what
    was sent. They are marked uploaded instead of being sent again under their own name."""
    copies = set()
    for transcript in complete:
        generation = agent_markers.get(transcript.session_id + openclaw.TRANSCRIPT_SUFFIX)
        if (
            transcript.archive_reason is None
            or generation is None
            or generation.get("status") != "uploaded"
            or generation.get("bytes") is None
            or generation["bytes"] != openclaw.transcript_size(transcript)
        ):
            continue
        copies.add(transcript.name)
        if not dry_run:
            agent_markers[transcript.name] = {
                **transcript.fingerprint(),
                "status": "uploaded",
                "response": f"a copy of {transcript.session_id}.jsonl, uploaded from the database before",
                "at": _now(),
            }
    return copies


def describe_change(marker: dict[str, Any], transcript: Found) -> str:
    if isinstance(transcript, openclaw_sqlite.Generation):
        if "rows" in marker:
            return f"{marker['rows']} -> {transcript.rows} events"
        return f"a {marker.get('size')} byte file before the move to SQLite, now {transcript.rows} events"
    return f"{marker.get('size')} -> {transcript.size} bytes"


def standing(markers: dict[str, dict[str, dict[str, Any]]]) -> dict[str, int]:
    standing = {"uploaded": 0, "rejected": 0, "conflict": 0}
    for agent_markers in markers.values():
        for marker in agent_markers.values():
            if marker.get("status") in standing and "goneSince" not in marker:
                standing[marker["status"]] += 1
    return {"uploaded": standing["uploaded"], "rejected": standing["rejected"], "conflicts": standing["conflict"]}


def _now() -> str:
    return state.isoformat(state.now_utc())
