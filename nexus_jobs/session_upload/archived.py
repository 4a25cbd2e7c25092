"""Markers of uploaded archive files, kept apart from the markers document (``docs/openclaw.md``,
"Markers"): an archive (``<file>.jsonl.reset.<TS>``, ``.deleted.<TS>[.zst]``) is final by
OpenClaw's rules, never written again, so once uploaded its name alone says it is done. A
sessions directory holds mostly archives (hundreds of thousands over a year), and a run with
nothing new must cost about a bare directory walk: these markers are never ``stat``-checked and
their full records are not even parsed.

Per destination, agent and period (the month of the archive's time stamp), two files beside
the markers document, both atomic JSON like every state file:

- ``<job>.markers.<where>.<period>.done.json``: ``{"names": [...]}``, the done names, read by
  every run;
- ``<job>.markers.<where>.<period>.json``: ``{"records": {name: [size, mtimeNs, sha256, at,
  response]}}``, read only when a marker of that period is looked at or changed.

A checkpoint writes only the periods that changed, records before names, and the markers
document last: a crash at any instant leaves each file old or new, and a name is never listed
done without its record.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from ..core import state
from ..openclaw import files as openclaw

RECORD_FIELDS = ("size", "mtimeNs", "sha256", "at", "response")
# As the SQLite era's planner names them (sqlite_era): a session's record, an archive all of
# whose segments have an answer.
SESSION_RECORD_PREFIX = "session:"
COVERED = "covered"
OTHER_PERIOD = "other"


def period_of(name: str) -> str | None:
    """The month of an archive name's time stamp (``2026-06``), ``other`` for a stamp that
    does not start with one, None when ``name`` is not an archive's."""
    _, dot_jsonl, rest = name.partition(openclaw.TRANSCRIPT_SUFFIX)
    if not dot_jsonl or rest[:1] != ".":
        return None
    reason, _, stamp = rest[1:].partition(".")
    if reason not in openclaw.ARCHIVE_REASONS or not stamp or stamp == openclaw.ZSTD_SUFFIX[1:]:
        return None
    month = stamp[:7]
    if len(month) == 7 and month[4] == "-" and month[:4].isdigit() and month[5:].isdigit():
        return month
    return OTHER_PERIOD


def keeps(name: str, marker: dict[str, Any]) -> bool:
    """Whether a marker belongs here: an uploaded archive file's, nothing else to say."""
    return (
        marker.get("status") == "uploaded"
        and set(marker) <= {*RECORD_FIELDS, "status"}
        and isinstance(marker.get("size"), int)
        and isinstance(marker.get("mtimeNs"), int)
        and period_of(name) is not None
    )


def file_prefix(job_id: str, destination: str, agent_id: str) -> str:
    """How the names of an agent's marker files for a destination begin."""
    where = hashlib.sha256(f"{destination}\n{agent_id}".encode()).hexdigest()[:16]
    return f"{job_id}.markers.{where}."


class Shelf:
    """The archive markers of one agent for one destination."""

    def __init__(self, state_dir: Path, job_id: str, destination: str, agent_id: str, periods: dict[str, int]) -> None:
        self.prefix = file_prefix(job_id, destination, agent_id)
        self.state_dir = state_dir
        self.periods = periods  # period -> number of done names (kept in the markers document)
        self._done: set[str] | None = None  # read on first use, dropped by release()
        self.records: dict[str, dict[str, list[Any]]] = {}  # periods read for a lookup
        # Records put (or None: taken off) since the last save, by period: a save merges them
        # into their period's file, so a run adding 200,000 never holds what is saved.
        self.changes: dict[str, dict[str, list[Any] | None]] = {}

    @property
    def done(self) -> set[str]:
        """The done names (of every period)."""
        if self._done is None:
            self._done = set()
            for period in list(self.periods):
                names = self._read(period, "done").get("names")
                if isinstance(names, list):
                    self._done.update(name for name in names if isinstance(name, str))
                    self.periods[period] = len(names)
                else:
                    del self.periods[period]
        return self._done

    def count(self) -> int:
        return len(self._done) if self._done is not None else sum(self.periods.values())

    def release(self) -> None:
        """Drop the done names while nothing of them is unsaved (read again when needed): a
        run goes through its agents one at a time, and 100,000 names are some 15 MB."""
        if not self.changes:
            self._done = None

    def _path(self, period: str, kind: str) -> Path:
        return self.state_dir / f"{self.prefix}{period}{'.done' if kind == 'done' else ''}.json"

    def _read(self, period: str, kind: str) -> dict[str, Any]:
        # A lost or corrupt file only makes its transcripts due again (the server knows them).
        return state.read_json(self._path(period, kind), repair=False) or {}

    def _period_records(self, period: str) -> dict[str, list[Any]]:
        if period not in self.records:
            # A period the document does not list (new, or the document was lost): not ours to trust.
            records = self._read(period, "records").get("records") if period in self.periods else None
            self.records[period] = {
                name: record
                for name, record in (records.items() if isinstance(records, dict) else ())
                if isinstance(record, list) and period_of(name) == period
            }
        return self.records[period]

    def get(self, name: str) -> dict[str, Any] | None:
        if name not in self.done:
            return None
        period = period_of(name) or OTHER_PERIOD
        record = self.changes.get(period, {}).get(name) or self._period_records(period).get(name)
        marker: dict[str, Any] = {"status": "uploaded"}
        if isinstance(record, list):
            marker.update((key, value) for key, value in zip(RECORD_FIELDS, record, strict=False) if value is not None)
        return marker

    def put(self, name: str, marker: dict[str, Any]) -> None:
        period = period_of(name) or OTHER_PERIOD
        self.changes.setdefault(period, {})[name] = [marker.get(key) for key in RECORD_FIELDS]
        self.done.add(name)

    def discard(self, name: str) -> bool:
        if name not in self.done:
            return False
        self.changes.setdefault(period_of(name) or OTHER_PERIOD, {})[name] = None
        self.done.discard(name)
        return True

    def save(self) -> None:
        """Write the periods that changed (records, then names), one at a time, then drop
        what was read: a run uploading 200,000 archives holds a checkpoint's worth of them."""
        for period in sorted(self.changes):
            records = self._period_records(period)
            self.records.pop(period)
            for name, record in self.changes[period].items():
                if record is None:
                    records.pop(name, None)
                else:
                    records[name] = record
            if records:
                state.write_json_atomic(self._path(period, "records"), {"records": records}, compact=True)
                state.write_json_atomic(self._path(period, "done"), {"names": list(records)}, compact=True)
                self.periods[period] = len(records)
            else:
                for kind in ("done", "records"):  # names first: never a name without its record
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._path(period, kind))
                self.periods.pop(period, None)
            del records
        self.changes.clear()
        self.records.clear()


class SqliteRecords:
    """The SQLite era's markers of one agent that say something was sent or covered (segments
    uploaded, archives covered, sessions' records): ``<job>.markers.<where>.sqlite.json``, read
    only when the agent's database is scanned or a marker of it is looked up, so a run that
    skips an unchanged database (``quiet``) never parses them."""

    def __init__(self, path: Path, listed: dict[str, int], agent_id: str) -> None:
        self.path = path
        self.listed = listed  # agent -> how many (the markers document's "sqlite")
        self.agent_id = agent_id
        self._markers: dict[str, dict[str, Any]] | None = None

    @property
    def markers(self) -> dict[str, dict[str, Any]]:
        if self._markers is None:
            # Not listed in the document (a new or lost document): a file there is not ours to trust.
            listed = self.agent_id in self.listed
            found = (state.read_json(self.path, repair=False) or {}).get("markers") if listed else None
            items = found.items() if isinstance(found, dict) else ()
            self._markers = {name: marker for name, marker in items if isinstance(marker, dict)}
        return self._markers

    @property
    def loaded(self) -> bool:
        return self._markers is not None

    def save(self) -> None:
        if self._markers is not None:
            state.write_json_atomic(self.path, {"markers": self._markers}, compact=True)
            self.listed[self.agent_id] = len(self._markers)


def is_sqlite_record(name: str, marker: dict[str, Any]) -> bool:
    """Whether a marker belongs with :class:`SqliteRecords`: a session's record, a covered
    archive, an uploaded segment (rejected and conflicting ones stay in the document, which
    ``nexus-jobs status --files`` is made from)."""
    status = marker.get("status")
    if name.startswith(SESSION_RECORD_PREFIX):
        return status is None
    return status == COVERED or (status == "uploaded" and "first" in marker)


class AgentMarkers(MutableMapping[str, dict[str, Any]]):
    """An agent's markers: those of the markers document (``plain``), uploaded archives' on a
    :class:`Shelf`, and the SQLite era's in :class:`SqliteRecords`. Looking a marker up by
    name never reads more than its period, or the SQLite records when it is none of the rest."""

    def __init__(self, plain: dict[str, dict[str, Any]], shelf: Shelf, sqlite: SqliteRecords) -> None:
        self.plain = plain
        self.shelf = shelf
        self.sqlite = sqlite
        # The shelf is saved before the document: after a crash between the two, its word is newer.
        for name in [name for name in plain if name in shelf.done]:
            del plain[name]

    def __getitem__(self, name: str) -> dict[str, Any]:
        marker = self.plain.get(name)
        if marker is None:
            marker = self.shelf.get(name) or self.sqlite.markers.get(name)
            if marker is None:
                raise KeyError(name)
        return marker

    def __setitem__(self, name: str, marker: dict[str, Any]) -> None:
        if keeps(name, marker):
            self.plain.pop(name, None)
            self.shelf.put(name, marker)
        elif is_sqlite_record(name, marker):
            self.plain.pop(name, None)
            self.shelf.discard(name)
            self.sqlite.markers[name] = marker
        else:
            self.shelf.discard(name)
            if self.sqlite.loaded:
                self.sqlite.markers.pop(name, None)
            self.plain[name] = marker

    def __delitem__(self, name: str) -> None:
        found = self.plain.pop(name, None) is not None
        found |= self.sqlite.markers.pop(name, None) is not None
        if not self.shelf.discard(name) and not found:
            raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in self.plain or name in self.shelf.done or name in self.sqlite.markers

    def __iter__(self) -> Iterator[str]:
        yield from self.plain
        yield from (name for name in list(self.shelf.done) if name not in self.plain)
        yield from (name for name in list(self.sqlite.markers) if name not in self.plain)

    def __len__(self) -> int:
        return len(set(self))

    def documented(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every marker but the shelved archives' (which say only: uploaded)."""
        yield from list(self.plain.items())
        yield from ((name, marker) for name, marker in list(self.sqlite.markers.items()) if name not in self.plain)

    def adopt(self) -> int:
        """Move the document's markers that belong on the shelf or with the SQLite records
        there (a layout before them is converted once); how many moved."""
        moved = 0
        for name, marker in list(self.plain.items()):
            if keeps(name, marker) or is_sqlite_record(name, marker):
                self[name] = self.plain.pop(name)
                moved += 1
        return moved
