"""OpenClaw's per-agent SQLite session storage (releases 2026.7.2 and later): which transcript
generations of ``<stateDir>/agents/<agentId>/agent/openclaw-agent.sqlite`` are complete, and
their transcripts.

Tables read (the schema still changes between releases, so each is looked up, never assumed):
``transcript_events`` (``session_id``, ``seq``, ``event_json``; newer builds keep large events
zstd-compressed in ``event_zstd``), ``session_nodes`` (``current_session_id`` of every session
key) and ``session_windows`` (``session_id``, ``ended_at``). A generation is complete when its
session id is no key's current one, or its window has ended.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .agents import DATABASE_NAME
from .files import TOPIC_SEPARATOR, TRANSCRIPT_SUFFIX, ZSTD_SUFFIX

if TYPE_CHECKING:
    import sqlite3

IMPORT_ARCHIVE_NAME = "session-sqlite-import-archive"
# A locked database is waited for about 3 s in all; a writer that opens and closes the
# database around us (its -wal coming and going) gets several quick attempts.
BUSY_TIMEOUT_SECONDS = 0.5
ATTEMPTS = 5
RETRY_PAUSE_SECONDS = 0.05
T = TypeVar("T")
SUFFIX = (TRANSCRIPT_SUFFIX,)  # a query parameter
# Tables a session database has; a database with none of them predates SQLite sessions
# (2026.6.5 to 2026.7.1 keep only auth and agent state there): nothing to read, nothing to say.
SESSION_TABLES = ("transcript_events", "session_nodes", "session_windows")
REQUIRED_EVENT_COLUMNS = ("session_id", "seq", "event_json")
# sqlite3 error names (Python 3.11+) and messages that mean "someone else is busy with it":
# worth retrying now and on the next run, not a broken database.
_TRANSIENT_NAMES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL")
_TRANSIENT_WORDS = ("locked", "busy", "readonly database", "unable to open", "locking protocol")


class DatabaseBusy(Exception):
    """The database is locked or being recovered by its writer: try again next run."""


class DatabaseUnreadable(Exception):
    """The database cannot be read at all (corrupt, not a database, permissions)."""


class Generation(NamedTuple):
    """A complete transcript generation: one session id's events, as counted by :func:`scan`.
    ``rows`` and ``last_seq`` are its fingerprint: an unchanged generation is never read again."""

    agent_id: str
    database: str
    session_id: str
    rows: int
    last_seq: int
    zstd_column: bool = False
    archive_reason: str | None = None

    @property
    def name(self) -> str:
        """Marker key and file name sent: the name its JSONL transcript had before the move to
        SQLite, so a session uploaded as a file then is recognised as done."""
        return self.session_id + TRANSCRIPT_SUFFIX

    @property
    def upload_name(self) -> str:
        return self.name

    @property
    def origin(self) -> str:
        return "generation"

    @property
    def extent(self) -> str:
        return f"{self.rows} events"

    def fingerprint(self) -> dict[str, int]:
        return {"rows": self.rows, "lastSeq": self.last_seq}


@dataclass(slots=True, eq=False)
class DatabaseScan:
    """What one agent database holds: complete generations, and why others wait."""

    found: bool = False
    complete: list[Generation] = field(default_factory=list)
    adopted: list[tuple[Generation, int]] = field(default_factory=list)  # and its size in bytes
    present: set[str] = field(default_factory=set)  # <sessionId>.jsonl of every generation
    unchanged: int = 0
    live: int = 0
    undecided: int = 0
    problems: list[str] = field(default_factory=list)
    usable: bool = True


def database_path(sessions_dir: Path) -> Path:
    """The agent database beside an agent's default sessions directory:
    ``agents/<agentId>/sessions`` -> ``agents/<agentId>/agent/openclaw-agent.sqlite``."""
    return sessions_dir.parent / "agent" / DATABASE_NAME


def import_archive_dirs(sessions_dir: Path) -> list[Path]:
    """Where OpenClaw moves the JSONL transcripts it imported: ``sessions/<archive>/`` as
    described for the first SQLite builds, and ``agents/<agentId>/<archive>/`` beside it."""
    return [sessions_dir / IMPORT_ARCHIVE_NAME, sessions_dir.parent / IMPORT_ARCHIVE_NAME]


def scan(
    *,
    agent_id: str,
    database: Path,
    markers: Mapping[str, Mapping[str, Any]],
    retry_rejected: bool,
    sizes_uploaded_as_files: Callable[[str], set[int]],
) -> DatabaseScan:
    """Classify the generations of ``database`` (a missing file, or one without session
    tables, is no session database: ``found`` stays False). Generations whose marker has
    their fingerprint and says uploaded (or rejected, unless ``retry_rejected``) are only
    counted. A complete generation whose session was uploaded as a JSONL file before the move
    (``sizes_uploaded_as_files(session_id)`` holds that file's size) is adopted, not uploaded
    again, when its transcript has the same size. Raises :class:`DatabaseBusy` or
    :class:`DatabaseUnreadable`."""
    if not database.is_file():
        return DatabaseScan()
    return run_read(
        database,
        lambda connection: _classify(
            connection,
            agent_id=agent_id,
            database=database,
            markers=markers,
            retry_rejected=retry_rejected,
            sizes_uploaded_as_files=sizes_uploaded_as_files,
        ),
    )


def _classify(
    connection: sqlite3.Connection,
    *,
    agent_id: str,
    database: Path,
    markers: Mapping[str, Mapping[str, Any]],
    retry_rejected: bool,
    sizes_uploaded_as_files: Callable[[str], set[int]],
) -> DatabaseScan:
    result = DatabaseScan()
    columns = _columns(connection)
    if not columns:
        return result
    result.found = True
    events = columns.get("transcript_events", set())
    missing = [f"transcript_events.{name}" for name in REQUIRED_EVENT_COLUMNS if name not in events]
    if missing:
        what = "table transcript_events" if not events else "column " + ", ".join(missing)
        result.problems.append(f"{database}: no {what}; its transcripts cannot be read")
        result.usable = False
        return result
    has_current = "current_session_id" in columns.get("session_nodes", set())
    has_ended = {"session_id", "ended_at"} <= columns.get("session_windows", set())
    problem = _missing_signal(columns, has_current=has_current, has_ended=has_ended)
    if problem:
        result.problems.append(f"{database}: {problem}")
    # Names (<sessionId>.jsonl) rather than ids throughout: SQLite builds them, and the loop
    # over every generation of a nothing-new run does no string work of its own.
    current: set[str] = set()
    ended: set[str] = set()
    if has_current:
        current = {row[0] for row in connection.execute("SELECT current_session_id || ? FROM session_nodes", SUFFIX)}
    if has_ended:
        # Only a current generation needs its window: any other is complete anyway.
        ended_query = "SELECT session_id || ? FROM session_windows WHERE ended_at IS NOT NULL"
        if has_current:
            ended_query += " AND session_id IN (SELECT current_session_id FROM session_nodes)"
        ended = {row[0] for row in connection.execute(ended_query, SUFFIX)}
    zstd_column = "event_zstd" in events
    candidates: list[Generation] = []
    present_add = result.present.add
    marker_of = markers.get
    counted = connection.execute(
        "SELECT session_id || ?, count(*), max(seq) FROM transcript_events GROUP BY session_id", SUFFIX
    )
    for name, rows, last_seq in counted:
        if name is None:
            continue
        present_add(name)
        if not ((has_current and name not in current) or name in ended):
            if has_current or has_ended:
                result.live += 1
            else:
                result.undecided += 1
        elif (
            (marker := marker_of(name)) is not None
            and marker.get("lastSeq") == last_seq
            and marker.get("rows") == rows
            and (marker.get("status") == "uploaded" or not retry_rejected)
        ):
            result.unchanged += 1  # uploaded and unchanged: not read again
        else:
            session_id = name[: -len(TRANSCRIPT_SUFFIX)]
            candidates.append(Generation(agent_id, str(database), session_id, rows, last_seq, zstd_column))
    for generation in candidates:
        sizes = sizes_uploaded_as_files(generation.session_id)
        size = _size(connection, generation, columns=events) if sizes else -1
        if size in sizes:
            result.adopted.append((generation, size))
        else:
            result.complete.append(generation)
    return result


def uploaded_file_sizes(agent_markers: dict[str, dict[str, Any]]) -> Callable[[str], set[int]]:
    """Byte sizes of each session's uploaded, uncompressed JSONL files, forum topics included
    (built on first use: only sessions seen in a database for the first time ask)."""
    by_session: dict[str, set[int]] = {}
    built = False

    def sizes(session_id: str) -> set[int]:
        nonlocal built
        if not built:
            built = True
            for name, marker in agent_markers.items():
                # The size of a compressed archive is not its transcript's.
                if name.endswith(ZSTD_SUFFIX) or "mtimeNs" not in marker:
                    continue
                if marker.get("status") == "uploaded" and isinstance(marker.get("size"), int):
                    owner = name.partition(TRANSCRIPT_SUFFIX)[0].partition(TOPIC_SEPARATOR)[0]
                    by_session.setdefault(owner, set()).add(marker["size"])
        return by_session.get(session_id, set())

    return sizes


def adopt(generations: list[tuple[Generation, int]], agent_markers: dict[str, dict[str, Any]], *, at: str) -> None:
    """Mark generations whose transcript was uploaded as a file (same session, same size) as
    uploaded, with their fingerprint: from now on the fingerprint tells when they change."""
    for generation, size in generations:
        marker = agent_markers.get(generation.name)
        if marker is None or marker.get("status") != "uploaded":
            marker = agent_markers[generation.name] = {
                "status": "uploaded",
                "response": "uploaded as a JSONL file before the move to SQLite",
                "at": at,
            }
        marker.update(generation.fingerprint(), bytes=size)


def _columns(connection: sqlite3.Connection) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for table in SESSION_TABLES:
        names = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        if names:
            found[table] = names
    return found


def _missing_signal(columns: dict[str, set[str]], *, has_current: bool, has_ended: bool) -> str | None:
    """A warning naming what is missing of the two signals that complete a generation: a
    session id that is no key's current one, or a window with ``ended_at`` set."""
    nodes = "column session_nodes.current_session_id" if "session_nodes" in columns else "table session_nodes"
    windows = "column session_windows.ended_at" if "session_windows" in columns else "table session_windows"
    if not has_current and not has_ended:
        return f"no {nodes} and no {windows}; no generation can be called complete, none is uploaded"
    if not has_current:
        return f"no {nodes}; only generations whose window has ended count as complete"
    if not has_ended:
        return f"no {windows}; a generation counts as complete once no session key uses it"
    return None


def _size(connection: sqlite3.Connection, generation: Generation, *, columns: set[str]) -> int:
    """The byte size of the generation's transcript, computed by SQLite (only for sessions
    uploaded as files before the move, once: afterwards the fingerprint decides)."""
    length = "length(CAST(event_json AS BLOB))"
    if "event_utf8_bytes" in columns:
        length = f"coalesce({length}, event_utf8_bytes)"
    row = connection.execute(
        f"SELECT coalesce(sum({length}), 0) + count(*) - coalesce(sum(substr(event_json, -1) = char(10)), 0) "
        "FROM transcript_events WHERE session_id = ? AND seq <= ?",
        (generation.session_id, generation.last_seq),
    ).fetchone()
    return int(row[0])


def read_generation(generation: Generation, *, limit: int) -> bytes:
    """The transcript: ``event_json`` of the generation's rows up to its fingerprint's last
    ``seq``, in ``seq`` order, each line ending in a newline; at most ``limit`` bytes (more
    means too large). Raises :class:`DatabaseBusy`, :class:`DatabaseUnreadable`, or
    ``ValueError`` for an event that cannot be turned into a line."""
    columns = "seq, event_json, event_zstd" if generation.zstd_column else "seq, event_json, NULL"

    def read(connection: sqlite3.Connection) -> bytes:
        connection.text_factory = bytes  # the bytes as stored; the UTF-8 check comes later
        parts: list[bytes] = []
        size = 0
        rows = connection.execute(
            f"SELECT {columns} FROM transcript_events WHERE session_id = ? AND seq <= ? ORDER BY seq",
            (generation.session_id, generation.last_seq),
        )
        for seq, event, compressed in rows:
            line = _line(seq, event, compressed)
            parts.append(line)
            size += len(line)
            if size > limit:
                break
        return b"".join(parts)

    return run_read(Path(generation.database), read)


def _line(seq: int, event: bytes | None, compressed: bytes | None) -> bytes:
    if event is None and compressed is not None:
        import zstandard  # imported here: only compressed events need it

        try:
            event = zstandard.ZstdDecompressor().decompressobj().decompress(compressed)
        except zstandard.ZstdError as error:
            raise ValueError(f"event {seq} is not valid zstd ({error})") from None
    if event is None:
        raise ValueError(f"event {seq} has no content")
    return event if event.endswith(b"\n") else event + b"\n"


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
