"""What ``nexus-session-upload`` remembers, per destination (``docs/openclaw.md``, "Markers"):
one marker per transcript file or segment with its fingerprint (size and mtime of a file; the
session and first and last events of a segment), the sha256 of what was sent, the status
(uploaded, rejected, conflict), the server's answer and the time; and a record per database
session (its rows and last seq) so an unchanged session is never read again.

Markers belong to the destination they were sent to: switching the endpoint makes every
complete transcript due again there. Markers of files gone for the retention period are
forgotten, so the state does not grow without bound.

The markers document: ``{"destinations": {"<destination>": {"agents": {"<agentId>": {"<name>":
marker}}, "archived": {"<agentId>": {"<period>": count}}}}}``; uploaded archives' markers are in
files of their own per agent and period (:mod:`archived`), listed under ``archived``. The
layouts before, one document with every marker (with or without ``destinations``), are read
and converted once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core import state
from ..openclaw import files as openclaw
from .archived import AgentMarkers, Shelf, SqliteRecords
from .sqlite_era import Segment

# What a run may send: a transcript file (JSONL era), or a segment (SQLite era).
Item = openclaw.Transcript | Segment


def shape_problem(document: dict[str, Any]) -> str | None:
    """Why a markers document cannot be used (it is then moved aside like a corrupt one)."""
    layouts: list[Any] = []
    if "destinations" in document:
        if not isinstance(document["destinations"], dict):
            return "destinations is not an object"
        for destination in document["destinations"].values():
            if not isinstance(destination, dict):
                return "a destination is not an object"
            layouts.append(destination.get("agents", {}))
            archived = destination.get("archived", {})
            if not isinstance(archived, dict) or not all(
                isinstance(periods, dict) and all(type(count) is int for count in periods.values())
                for periods in archived.values()
            ):
                return "archived is not an object of objects of counts"
            listed = destination.get("sqlite", {})
            if not isinstance(listed, dict) or not all(type(count) is int for count in listed.values()):
                return "sqlite is not an object of counts"
    if "agents" in document:
        layouts.append(document["agents"])
    for agents in layouts:
        if not isinstance(agents, dict) or not all(isinstance(markers, dict) for markers in agents.values()):
            return "agents is not an object of objects"
        for markers in agents.values():
            if not set(map(type, markers.values())) <= {dict}:  # map: 100,000 markers at C speed
                return "a marker is not an object"
    return None


class DestinationMarkers(dict[str, AgentMarkers]):
    """The agents' markers for one destination; an agent's are read on first use."""

    def __init__(self, entry: dict[str, Any], *, state_dir: Path, job_id: str, destination: str) -> None:
        super().__init__()
        self.entry = entry
        self.state_dir, self.job_id, self.destination = state_dir, job_id, destination
        self.converting = "archived" not in entry
        self.archived: dict[str, dict[str, int]] = entry.setdefault("archived", {})
        self.sqlite: dict[str, int] = entry.setdefault("sqlite", {})

    def __missing__(self, agent_id: str) -> AgentMarkers:
        plain = self.entry["agents"].setdefault(agent_id, {})
        periods = self.archived.setdefault(agent_id, {})
        shelf = Shelf(self.state_dir, self.job_id, self.destination, agent_id, periods)
        sqlite = SqliteRecords(self.state_dir / f"{shelf.prefix}sqlite.json", self.sqlite, agent_id)
        markers = AgentMarkers(plain, shelf, sqlite)
        if self.converting:
            markers.adopt()
        self[agent_id] = markers
        return markers

    def load_all(self) -> None:
        for agent_id in [*self.entry["agents"], *self.archived]:
            self[agent_id]  # reads it

    def save_shelves(self) -> None:
        for markers in self.values():
            markers.shelf.save()
            markers.sqlite.save()
        for agent_id in [agent_id for agent_id, periods in self.archived.items() if not periods]:
            del self.archived[agent_id]


class Checkpointer(state.Checkpointer):
    """Saves the shelves' changed periods, then the markers document (``archived``)."""

    def __init__(self, path: Path, markers: DestinationMarkers) -> None:
        super().__init__(path)
        self.markers = markers

    def flush(self, document: dict[str, Any]) -> None:
        if self.pending_changes:
            self.markers.save_shelves()
        super().flush(document)


def of_destination(document: dict[str, Any], destination: str, *, state_dir: Path, job_id: str) -> DestinationMarkers:
    """The agents' markers for ``destination``; the layout before destinations becomes the
    current destination's, and markers that belong on a shelf move there (converted once: the
    next save writes the new layout)."""
    destinations = document.setdefault("destinations", {})
    legacy = document.pop("agents", None)
    if legacy and destination not in destinations:
        destinations[destination] = {"agents": legacy}
    entry = destinations.setdefault(destination, {})
    entry.setdefault("agents", {})
    markers = DestinationMarkers(entry, state_dir=state_dir, job_id=job_id, destination=destination)
    if markers.converting:
        markers.load_all()
    return markers


def new_marker(item: Item, *, status: str, response: str, sha256: str | None) -> dict[str, Any]:
    marker: dict[str, Any] = {**item.fingerprint(), "status": status, "at": _now()}
    if response != "200 stored" or not isinstance(item, Segment):
        marker["response"] = response  # a segment's plain success goes unsaid: there are many
    if sha256 is not None:
        marker["sha256"] = sha256
    return marker


class SentDigests:
    """sha256 of what was sent earlier under each name and session id of an agent: a 409
    without sha256 proves nothing when the content differs from one of them (docs/nexus.md).
    Built once per run (a lookup per upload must not walk every marker)."""

    def __init__(self, agent_markers: AgentMarkers) -> None:
        self.by_session: dict[str, set[str]] = {}
        for _, marker in agent_markers.documented():  # a shelved archive has no session
            if marker.get("status") == "uploaded" and isinstance(marker.get("sha256"), str):
                self.add(marker.get("session"), marker["sha256"])
        self.agent_markers = agent_markers

    def add(self, session_id: object, sha256: str) -> None:
        """Record what was sent of a session (a segment's; a JSONL file is judged by name)."""
        if isinstance(session_id, str):
            self.by_session.setdefault(session_id, set()).add(sha256)

    def before(self, item: Item) -> frozenset[str]:
        digests = set(self.by_session.get(item.session_id, ()))
        marker = self.agent_markers.get(item.name)
        if marker is not None and isinstance(marker.get("sha256"), str):
            digests.add(marker["sha256"])
        return frozenset(digests)


def done_check(agent_markers: AgentMarkers, *, retry_rejected: bool) -> Callable[[str, int, int], bool]:
    """Whether a file needs nothing: its marker has the same size and mtime (so it is not even
    read again) and says uploaded, or rejected when rejected files are not being retried."""

    plain = agent_markers.plain

    def is_done(name: str, size: int, mtime_ns: int) -> bool:
        marker = plain.get(name)
        if marker is None or marker.get("size") != size or marker.get("mtimeNs") != mtime_ns:
            return False
        return marker.get("status") == "uploaded" or not retry_rejected

    return is_done


def prune(
    agent_markers: AgentMarkers,
    *,
    names: set[str],
    gone_archives: list[str],
    sessions: set[str],
    retention_seconds: float,
) -> bool:
    """Forget markers of files (``names`` are there; of the shelved archives, ``gone_archives``
    are not) and of sessions' segments and records (``sessions`` are there) gone for the
    retention period; True if anything changed. A gone archive's marker leaves its shelf."""
    changed = False
    now = time.time()
    for name in gone_archives:
        agent_markers[name] = {**agent_markers[name], "goneSince": now}
        changed = True
    for name, marker in agent_markers.documented():
        gone_since = marker.get("goneSince")
        if name in names or marker.get("session", "") in sessions:
            if gone_since is not None:
                del marker["goneSince"]
                agent_markers[name] = marker  # back on its shelf, if it belongs there
                changed = True
        elif gone_since is None:
            marker["goneSince"] = now
            changed = True
        elif now - gone_since >= retention_seconds:
            del agent_markers[name]
            changed = True
    return changed


def describe_change(marker: dict[str, Any], item: Item) -> str:
    if isinstance(item, Segment):
        return f"its events up to {marker.get('last')} -> up to {item.last}"
    return f"{marker.get('size')} -> {item.size} bytes"


def standing(markers: dict[str, AgentMarkers]) -> dict[str, int]:
    standing = {"uploaded": 0, "rejected": 0, "conflict": 0}
    for agent_markers in markers.values():
        standing["uploaded"] += agent_markers.shelf.count()
        for _, marker in agent_markers.documented():
            if marker.get("status") in standing and "goneSince" not in marker:
                standing[marker["status"]] += 1
    return {"uploaded": standing["uploaded"], "rejected": standing["rejected"], "conflicts": standing["conflict"]}


def needing_the_operator(markers: dict[str, AgentMarkers]) -> dict[str, list[dict[str, str]]]:
    """The rejected and conflicting files and segments, with the reason of each (the run
    record's ``files``, listed by ``nexus-jobs status --files``): only the document holds
    them, never a shelf."""
    files: dict[str, list[dict[str, str]]] = {"rejected": [], "conflicts": []}
    kinds = {"rejected": "rejected", "conflict": "conflicts"}
    for agent_id, agent_markers in markers.items():
        for name, marker in agent_markers.plain.items():
            kind = kinds.get(str(marker.get("status")))
            if kind is not None and "goneSince" not in marker:
                files[kind].append({"name": f"{agent_id}/{name}", "reason": str(marker.get("response", ""))})
    return {kind: sorted(items, key=lambda item: item["name"]) for kind, items in files.items()}


def _now() -> str:
    return state.isoformat(state.now_utc())
