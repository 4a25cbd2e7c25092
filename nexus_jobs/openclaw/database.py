"""OpenClaw's per-agent SQLite session storage (releases 2026.7.2 and later):
``<stateDir>/agents/<agentId>/agent/openclaw-agent.sqlite``. What it holds of each session
(its events, its key, whether its key still uses it, whether its run ended), its deletion
archives and its cold-stored sessions, and the event lines themselves. ``docs/openclaw.md``
describes the tables and what "complete" means; :mod:`segments` cuts sessions into segments.

Tables read (the schema changes between releases, so each is looked up, never assumed):
``transcript_events`` (``session_id``, ``seq``: 0 is the header line, ``event_json``, or
``event_zstd`` for large events), ``session_nodes`` (``current_session_id`` of every key),
``session_windows`` (``session_key``, ``status``, ``ended_at`` of a session's last run),
``session_transcript_archives`` (what a deletion archived) and
``session_transcript_cold_archives`` (sessions moved to ``sessions/cold/``).

Read-only by design, including SQLite's own side files: OpenClaw's Gateway writes the database
in WAL mode, and a plain ``mode=ro`` connection still writes its read mark into the ``-shm``
file, and creates ``-wal``/``-shm`` when they are missing. So:

- with a ``-wal`` file present, the connection opens the ``-shm`` read-only too
  (``readonly_shm=1``): SQLite then reads the shared index without writing it, or builds a
  private one from the WAL when it cannot trust it;
- with no ``-wal`` file (the writer closed and checkpointed everything), or an empty one and
  no ``-shm``, the database file is complete by itself and is read as ``immutable=1``, which
  opens no side file; the read counts only if the three files did not change meanwhile,
  otherwise it is redone the first way.

One thing SQLite does on its own: if the writer closes (and removes its ``-wal``) in the
instant between our look and our open, opening the WAL creates an empty one. That is harmless
to OpenClaw and, by the second rule, to us.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from .agents import DATABASE_NAME

if TYPE_CHECKING:
    import sqlite3

# A locked database is waited for about 3 s in all; a writer that opens and closes the
# database around us (its -wal coming and going) gets several quick attempts.
BUSY_TIMEOUT_SECONDS = 0.5
ATTEMPTS = 5
RETRY_PAUSE_SECONDS = 0.05
# The schema versions (PRAGMA user_version) this release was checked against with the real
# OpenClaw (docs/openclaw.md); others are read when their tables have what is needed.
CHECKED_SCHEMA_VERSIONS = (23,)
# One event row holds at most 4 MiB (the table's CHECK).
ROW_LIMIT_BYTES = 4 << 20
T = TypeVar("T")
# Tables a session database has; a database with none of them predates SQLite sessions
# (2026.6.5 to 2026.7.1 keep only auth and agent state there): nothing to read, nothing to say.
SESSION_TABLES = (
    "transcript_events",
    "session_nodes",
    "session_windows",
    "session_transcript_archives",
    "session_transcript_cold_archives",
)
REQUIRED_EVENT_COLUMNS = ("session_id", "seq", "event_json")
# Window statuses of a run that is over (the window describes the session's last run).
RUN_OVER = ("done", "failed", "killed", "timeout")
# Keys whose sessions OpenClaw never continues (docs/openclaw.md, "Sessions never continued"):
# isolated cron runs and webhook runs (agent:<id>:cron:<job or uuid>[:run:<id>]), boot tasks,
# gateway model-run probes; hook:<uuid> is the logical key older builds stored.
RUN_KEY_PREFIXES = ("cron:", "boot:", "hook:", "explicit:model-run-")
# sqlite3 error names (Python 3.11+) and messages that mean "someone else is busy with it":
# worth retrying now and on the next run, not a broken database.
_TRANSIENT_NAMES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL")
_TRANSIENT_WORDS = ("locked", "busy", "readonly database", "unable to open", "locking protocol")


class DatabaseBusy(Exception):
    """The database is locked or being recovered by its writer: try again next run."""


class DatabaseUnreadable(Exception):
    """The database cannot be read at all (corrupt, not a database, permissions)."""


class SessionRow(NamedTuple):
    """What the database says of one session, without reading its events. ``rows`` and
    ``last_seq`` are its fingerprint: an unchanged session is never read again."""

    session_id: str
    rows: int
    last_seq: int
    last_event_ms: int
    current: bool  # some key's current session
    run_over: bool  # a session of a key never continued, whose run ended
    cold: str | None = None  # its cold archive's name, while its events are in cold storage


class ArchiveRow(NamedTuple):
    """A row of ``session_transcript_archives``: a deleted (or replaced) session, whole."""

    name: str
    session_id: str
    reason: str


@dataclass(slots=True, eq=False)
class DatabaseScan:
    found: bool = False
    sessions: list[SessionRow] = field(default_factory=list)
    archives: list[ArchiveRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    usable: bool = True


def database_path(sessions_dir: Path) -> Path:
    """The agent database beside an agent's default sessions directory:
    ``agents/<agentId>/sessions`` -> ``agents/<agentId>/agent/openclaw-agent.sqlite``."""
    return sessions_dir.parent / "agent" / DATABASE_NAME


def is_run_key(session_key: str) -> bool:
    """A key OpenClaw never continues: ``agent:<id>:cron:...`` and the like (see above)."""
    rest = session_key
    if rest.startswith("agent:"):
        rest = rest.partition(":")[2].partition(":")[2]
    return rest.startswith(RUN_KEY_PREFIXES)


# Known sessions: (rows, last seq) of each session whose events were all dealt with.
Settled = dict[str, tuple[int, int]]
# When more sessions than this share need their last event's time, one pass over every row
# is cheaper than a lookup each.
LOOKUP_SHARE = 8


def scan(database: Path, settled: Settled | None = None) -> DatabaseScan:
    """What ``database`` holds (a missing file, or one without session tables, is no session
    database: ``found`` stays False). Raises :class:`DatabaseBusy` or :class:`DatabaseUnreadable`.

    Each session is counted through the (session_id, seq) key alone, never reading an event;
    the time of its last event is read only for a session not in ``settled`` with the same rows
    and last seq (its ``last_event_ms`` is 0 otherwise): a run with nothing new reads no row."""
    if not database.is_file():
        return DatabaseScan()
    return run_read(database, lambda connection: _scan(connection, database, settled or {}))


def _scan(connection: sqlite3.Connection, database: Path, settled: Settled) -> DatabaseScan:
    result = DatabaseScan()
    columns = _columns(connection)
    if not columns:
        return result
    result.found = True
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    events = columns.get("transcript_events", set())
    missing = [f"transcript_events.{name}" for name in REQUIRED_EVENT_COLUMNS if name not in events]
    if "current_session_id" not in columns.get("session_nodes", set()):
        missing.append("session_nodes.current_session_id")
    if missing:
        result.problems.append(
            f"{database}: schema version {version} has no {', '.join(missing)}; its transcripts cannot be read"
        )
        result.usable = False
        return result
    if version not in CHECKED_SCHEMA_VERSIONS:
        result.problems.append(
            f"{database}: schema version {version}, not one this release was checked against "
            f"({', '.join(map(str, CHECKED_SCHEMA_VERSIONS))}); read because it has the tables needed"
        )
    current = {row[0] for row in connection.execute("SELECT current_session_id FROM session_nodes")}
    over = _run_over(connection, columns.get("session_windows", set()))
    # Answered from the (session_id, seq) key alone: no event is read.
    keys = "SELECT session_id, count(*), max(seq) FROM transcript_events GROUP BY session_id"
    counted = [row for row in connection.execute(keys) if isinstance(row[0], str)]
    unsettled = [session_id for session_id, rows, last_seq in counted if settled.get(session_id) != (rows, last_seq)]
    times = _last_event_times(connection, unsettled, dated="created_at" in events, everything=len(counted))
    append = result.sessions.append
    for session_id, rows, last_seq in counted:
        last_ms = times.get(session_id) or 0
        append(SessionRow(session_id, rows, last_seq, last_ms, session_id in current, session_id in over))
    _cold(connection, columns, result, current=current, over=over)
    if {"archive_name", "session_id", "reason"} <= columns.get("session_transcript_archives", set()):
        result.archives = [
            ArchiveRow(*row)
            for row in connection.execute("SELECT archive_name, session_id, reason FROM session_transcript_archives")
        ]
    return result


def _last_event_times(
    connection: sqlite3.Connection, session_ids: list[str], *, dated: bool, everything: int
) -> dict[str, int]:
    """The time of each session's last event: looked up by key for a few sessions, in one pass
    over every row when many (a first run) need it."""
    if not dated or not session_ids:
        return {}
    if len(session_ids) * LOOKUP_SHARE > everything:
        wanted = set(session_ids)
        rows = connection.execute("SELECT session_id, max(created_at) FROM transcript_events GROUP BY session_id")
        return {session_id: last_ms for session_id, last_ms in rows if session_id in wanted}
    query = "SELECT max(created_at) FROM transcript_events WHERE session_id = ?"
    return {session_id: connection.execute(query, (session_id,)).fetchone()[0] for session_id in session_ids}


def _run_over(connection: sqlite3.Connection, windows: set[str]) -> set[str]:
    if not {"session_id", "session_key"} <= windows:
        return set()
    ended = [f"status IN {RUN_OVER!r}"] if "status" in windows else []
    ended += ["ended_at IS NOT NULL"] if "ended_at" in windows else []
    if not ended:
        return set()
    # SQLite narrows the rows down to the key shapes (GLOB is case-sensitive, as keys are);
    # is_run_key decides.
    shapes = " OR ".join(f"session_key GLOB '*{prefix}*'" for prefix in RUN_KEY_PREFIXES)
    rows = connection.execute(
        f"SELECT session_id, session_key FROM session_windows WHERE ({' OR '.join(ended)}) AND ({shapes})"
    )
    return {session_id for session_id, key in rows if isinstance(key, str) and is_run_key(key)}


def _cold(
    connection: sqlite3.Connection,
    columns: dict[str, set[str]],
    result: DatabaseScan,
    *,
    current: set[str],
    over: set[str],
) -> None:
    """Sessions whose events are in cold storage: their rows are gone from transcript_events
    until a later turn brings them back (then the cold row is deleted, the file stays)."""
    if not {"session_id", "archive_name", "event_count", "last_seq"} <= columns.get(
        "session_transcript_cold_archives", set()
    ):
        return
    hot = {session.session_id for session in result.sessions}
    archived = "archived_at" if "archived_at" in columns["session_transcript_cold_archives"] else "0"
    for session_id, name, count, last_seq, archived_ms in connection.execute(
        f"SELECT session_id, archive_name, event_count, last_seq, {archived} FROM session_transcript_cold_archives"
    ):
        if session_id not in hot:
            row = SessionRow(session_id, count, last_seq, archived_ms or 0, session_id in current, session_id in over)
            result.sessions.append(row._replace(cold=name))


def _columns(connection: sqlite3.Connection) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for table in SESSION_TABLES:
        names = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        if names:
            found[table] = names
    return found


def event_rows(database: Path, session: SessionRow) -> list[tuple[int, bytes]]:
    """The session's rows in ``transcript_events`` as ``(seq, line)``, large events
    decompressed, up to its fingerprint's last seq. Raises :class:`DatabaseBusy`,
    :class:`DatabaseUnreadable`, or ``ValueError`` for an event that cannot be read."""

    def read(connection: sqlite3.Connection) -> list[tuple[int, bytes]]:
        zstd = "event_zstd" if "event_zstd" in _columns(connection).get("transcript_events", set()) else "NULL"
        connection.text_factory = bytes  # the bytes as stored; the UTF-8 check comes later
        rows = connection.execute(
            f"SELECT seq, event_json, {zstd} FROM transcript_events WHERE session_id = ? AND seq <= ? ORDER BY seq",
            (session.session_id, session.last_seq),
        )
        return [(seq, _line(seq, event, compressed)) for seq, event, compressed in rows]

    return run_read(database, read)


def _line(seq: int, event: bytes | None, compressed: bytes | None) -> bytes:
    if event is None and compressed is not None:
        import zstandard  # imported here: only compressed events need it

        try:
            # OpenClaw's per-event frames declare their size (docs/openclaw.md, "event_zstd").
            event = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=ROW_LIMIT_BYTES)
        except zstandard.ZstdError as error:
            raise ValueError(f"event {seq} is not valid zstd ({error})") from None
    if event is None:
        raise ValueError(f"event {seq} has no content")
    return event[:-1] if event.endswith(b"\n") else event


def archive_blob(database: Path, name: str) -> tuple[str, bytes] | None:
    """The encoding and blob of the archive row named ``name``, or None."""

    def read(connection: sqlite3.Connection) -> tuple[str, bytes] | None:
        row = connection.execute(
            "SELECT encoding, archive_blob FROM session_transcript_archives WHERE archive_name = ?", (name,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    return run_read(database, read)


def cold_blob(database: Path, session_id: str) -> bytes | None:
    """The cold archive a session's row keeps in the database (``storage='sqlite'``), or None."""

    def read(connection: sqlite3.Connection) -> bytes | None:
        if "archive_blob" not in _columns(connection).get("session_transcript_cold_archives", set()):
            return None
        row = connection.execute(
            "SELECT archive_blob FROM session_transcript_cold_archives WHERE session_id = ?", (session_id,)
        ).fetchone()
        return row[0] if row else None

    return run_read(database, read)


def run_read(database: Path, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work(connection)`` on a read-only connection inside one read transaction (a
    consistent snapshot), redone briefly while the database is busy. Nothing is created or
    written under the database's directory (see the module's description)."""
    import sqlite3  # imported here: agents without a database never need it

    problem = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(RETRY_PAUSE_SECONDS * 2 ** (attempt - 1))
        before = _files(database)
        _, wal_bytes, shm_present = before
        # The file alone is complete without a WAL, or with an empty one and no index (as a
        # read through the WAL that lost a race with the writer's close may leave behind).
        alone = wal_bytes is None or (wal_bytes == 0 and not shm_present)
        query = "mode=ro&immutable=1" if alone else "mode=ro&readonly_shm=1"
        try:
            connection = sqlite3.connect(
                f"file:{_uri_path(database)}?{query}", uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None
            )
        except sqlite3.Error as error:
            if not _transient(error) or not os.access(database, os.R_OK):
                raise DatabaseUnreadable(f"{database}: {_describe(error)}") from None
            problem = _describe(error)
            continue
        try:
            connection.execute("BEGIN")
            result = work(connection)
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            if not _transient(error):
                raise DatabaseUnreadable(f"{database}: {_describe(error)}") from None
            problem = _describe(error)
            continue
        finally:
            connection.close()
        if alone and _files(database) != before:
            # A writer started while the file was read as immutable: the snapshot may be stale
            # or torn. Read again, through the WAL.
            problem = "the database changed while it was read"
            continue
        return result
    raise DatabaseBusy(f"{database}: {problem}; tried {ATTEMPTS} times")


def file_identity(database: Path) -> list[int] | None:
    """The database file's and its WAL's inode, size and mtime: every committed write changes
    one of them. None without a database file."""
    identity: list[int] = []
    for path in (str(database), f"{database}-wal"):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            identity += [-1, -1, -1]
            continue
        except OSError:
            return None
        identity += [info.st_ino, info.st_size, info.st_mtime_ns]
    return identity if identity[0] != -1 else None


def _files(database: Path) -> tuple[tuple[int, int, int] | None, int | None, bool]:
    """The database file's identity (inode, size, mtime), its WAL's size (None: no WAL) and
    whether its shared-memory index exists."""
    identities: list[tuple[int, int, int] | None] = []
    for path in (str(database), f"{database}-wal"):
        try:
            info = os.stat(path)
        except OSError:
            identities.append(None)
        else:
            identities.append((info.st_ino, info.st_size, info.st_mtime_ns))
    main, wal = identities
    return main, None if wal is None else wal[1], os.path.exists(f"{database}-shm")


def _uri_path(database: Path) -> str:
    # In a URI "?" and "#" end the path and "%" escapes; nothing else needs quoting.
    return str(database.absolute()).replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _transient(error: Exception) -> bool:
    name = getattr(error, "sqlite_errorname", "") or ""
    if name:
        return name.startswith(_TRANSIENT_NAMES)
    return any(word in str(error).lower() for word in _TRANSIENT_WORDS)


def _describe(error: Exception) -> str:
    name = getattr(error, "sqlite_errorname", None)
    return f"{error} ({name})" if name else str(error)
