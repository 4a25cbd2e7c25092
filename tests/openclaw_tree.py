"""Realistic OpenClaw state trees (JSONL storage, and the per-agent SQLite database of releases
2026.7.2 and later) for tests, benchmarks and the demo.

Run as a module to create the demo tree: ``python -m tests.openclaw_tree DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

STAMP = "2026-06-25T05-19-01.119Z"
OLD_SECONDS = 3600.0


def new_session_id(rng: random.Random | None = None) -> str:
    if rng is None:
        return str(uuid.uuid4())
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def transcript(session_id: str, *, messages: int = 4, rng: random.Random | None = None, pad_to: int = 0) -> bytes:
    """A transcript as OpenClaw writes it: a session header line, then one JSON object per
    line with quotes, backslashes, non-ASCII text and emoji in it."""
    rng = rng or random.Random(session_id)
    lines = [{"type": "session", "version": 3, "id": session_id, "timestamp": "2026-06-25T05:00:00.000Z"}]
    for number in range(messages):
        role = "user" if number % 2 == 0 else "assistant"
        text = f'Message {number}: "quoted" \\ back\\slash, tab\there, café ☕ 🚀 {rng.random():.6f}'
        lines.append({"type": "message", "id": f"m{number}", "message": {"role": role, "content": text}})
    body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
    if pad_to > len(body):
        filler = {"type": "custom", "data": ""}
        overhead = len(json.dumps(filler).encode()) + 1
        while len(body) < pad_to:
            chunk = min(pad_to - len(body), 64 * 1024)
            filler["data"] = "x" * max(1, chunk - overhead)
            body += (json.dumps(filler) + "\n").encode()
    return body


def make_old(path: Path, seconds: float = OLD_SECONDS) -> None:
    moment = time.time() - seconds
    os.utime(path, (moment, moment), follow_symlinks=False)


@dataclass
class Tree:
    """Names of what :func:`build_realistic` made, by what the uploader must do with them."""

    root: Path
    sessions_dir: Path
    expected_uploads: dict[str, bytes] = field(default_factory=dict)  # upload name -> content
    held_back: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def build_realistic(root: Path, agent_id: str = "main") -> Tree:
    """An agent's sessions directory with every kind of file docs/openclaw.md names for the JSONL era."""
    sessions = root / "agents" / agent_id / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    tree = Tree(root=root, sessions_dir=sessions)
    ids = {
        name: new_session_id()
        for name in (
            "live",
            "live_by_file",
            "orphan",
            "locked",
            "fresh",
            "reset",
            "deleted",
            "zst",
            "topic_live",
            "topic_orphan",
        )
    }

    def write(name: str, content: bytes, *, old: bool = True) -> Path:
        path = sessions / name
        path.write_bytes(content)
        if old:
            make_old(path)
        return path

    # Live: referenced by sessionId value under a session key, or by sessionFile only.
    write(f"{ids['live']}.jsonl", transcript(ids["live"]))
    write(f"{ids['live_by_file']}.jsonl", transcript(ids["live_by_file"]))
    write(f"{ids['topic_live']}-topic-42.jsonl", transcript(ids["topic_live"]))
    tree.held_back += [f"{ids['live']}.jsonl", f"{ids['live_by_file']}.jsonl", f"{ids['topic_live']}-topic-42.jsonl"]
    index = {
        "agent:main:main": {"sessionId": ids["live"], "updatedAt": 1766000000000},
        "hook:5f0c": {
            "sessionId": "not-on-disk",
            "updatedAt": 1766000000000,
            "sessionFile": f"/elsewhere/{ids['live_by_file']}.jsonl",
        },
        "agent:main:telegram:topic:42": {"sessionId": ids["topic_live"], "updatedAt": 1766000000000},
    }
    (sessions / "sessions.json").write_text(json.dumps(index, indent=2))
    (sessions / "sessions.json.bak.1766000000000").write_text("{}")
    # Orphans: complete past grace; held back with a .lock or within grace.
    content = transcript(ids["orphan"])
    write(f"{ids['orphan']}.jsonl", content)
    tree.expected_uploads[f"{ids['orphan']}.jsonl"] = content
    write(f"{ids['locked']}.jsonl", transcript(ids["locked"]))
    write(f"{ids['locked']}.jsonl.lock", b"")
    write(f"{ids['fresh']}.jsonl", transcript(ids["fresh"]), old=False)
    tree.held_back += [f"{ids['locked']}.jsonl", f"{ids['fresh']}.jsonl"]
    # Archives: always complete; .zst is sent decompressed under its name without .zst.
    for key, reason in (("reset", "reset"), ("deleted", "deleted")):
        content = transcript(ids[key], messages=6)
        name = f"{ids[key]}.jsonl.{reason}.{STAMP}"
        write(name, content, old=False)
        tree.expected_uploads[name] = content
    content = transcript(ids["zst"], messages=8)
    write(f"{ids['zst']}.jsonl.deleted.{STAMP}.zst", node_zstd(content), old=False)
    tree.expected_uploads[f"{ids['zst']}.jsonl.deleted.{STAMP}"] = content
    # A topic transcript whose session is gone: an orphan of its own.
    content = transcript(ids["topic_orphan"], messages=3)
    write(f"{ids['topic_orphan']}-topic-7.jsonl", content)
    tree.expected_uploads[f"{ids['topic_orphan']}-topic-7.jsonl"] = content
    # Not transcripts.
    for name in (
        f"{ids['orphan']}.trajectory.jsonl",
        f"{ids['orphan']}.trajectory-path.json",
        f"{ids['orphan']}.checkpoint.{uuid.uuid4()}.jsonl",
    ):
        write(name, b'{"type":"other"}\n')
        tree.ignored.append(name)
    return tree


# The tables nexus-session-upload reads, as OpenClaw 2026.9.6's agent database declares them
# (abridged: the real ones carry more columns; schema version 23).
SQLITE_SCHEMA = """
PRAGMA user_version = 23;
CREATE TABLE session_nodes (
  session_key TEXT NOT NULL PRIMARY KEY,
  current_session_id TEXT NOT NULL,
  entry_json TEXT NOT NULL,
  updated_at INTEGER NOT NULL
) STRICT;
CREATE TABLE session_windows (
  session_id TEXT NOT NULL PRIMARY KEY,
  session_key TEXT NOT NULL,
  previous_session_id TEXT,
  reason TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  ended_at INTEGER,
  status TEXT
) STRICT;
CREATE TABLE transcript_events (
  session_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  event_json TEXT,
  created_at INTEGER NOT NULL,
  event_zstd BLOB,
  event_utf8_bytes INTEGER,
  PRIMARY KEY (session_id, seq)
) STRICT;
CREATE TABLE session_transcript_archives (
  session_id TEXT NOT NULL, generation TEXT NOT NULL, session_key TEXT NOT NULL,
  reason TEXT NOT NULL, encoding TEXT NOT NULL, archive_blob BLOB NOT NULL,
  archive_sha256 TEXT NOT NULL, archive_name TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL,
  PRIMARY KEY (session_id, generation)
) STRICT;
CREATE TABLE session_transcript_cold_archives (
  session_id TEXT NOT NULL PRIMARY KEY, generation TEXT NOT NULL, archive_name TEXT NOT NULL UNIQUE,
  archive_sha256 TEXT NOT NULL, event_count INTEGER NOT NULL, raw_bytes INTEGER NOT NULL,
  archive_bytes INTEGER NOT NULL, last_seq INTEGER NOT NULL, archived_at INTEGER NOT NULL,
  storage TEXT NOT NULL, archive_blob BLOB
) STRICT;
"""
NOW_MS = 1_790_000_000_000
OLD_MS = NOW_MS - 86_400_000


def node_zstd(content: bytes) -> bytes:
    """zstd as node's zlib writes OpenClaw's archives: no content size in the frame header."""
    return zstandard.ZstdCompressor(write_content_size=False).compress(content)


def archive_stamp(epoch_ms: int) -> str:
    """OpenClaw's archive time format: ISO-8601 UTC to the millisecond, ':' -> '-'."""
    moment = time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime(epoch_ms // 1000))
    return f"{moment}.{epoch_ms % 1000:03d}Z"


def iso(epoch_ms: int) -> str:
    return archive_stamp(epoch_ms).replace("-", ":").replace(":", "-", 2)


def database_path(root: Path, agent_id: str = "main") -> Path:
    return root / "agents" / agent_id / "agent" / "openclaw-agent.sqlite"


def create_database(path: Path, schema: str = SQLITE_SCHEMA) -> sqlite3.Connection:
    """A new agent database in WAL mode, as OpenClaw's Gateway keeps it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.executescript(schema)
    return connection


def transcript_lines(content: bytes) -> list[str]:
    return content.decode().splitlines()


class SessionWriter:
    """Event lines of one session as OpenClaw 2026.9.6 writes them: a version-4 header, events
    with ids and parent ids, and reset boundaries ``{"type":"reset","id","parentId",
    "timestamp","reason"}`` that keep the session id."""

    def __init__(self, session_id: str, *, rng: random.Random | None = None, start_ms: int = OLD_MS) -> None:
        self.session_id = session_id
        self.rng = rng or random.Random(session_id)
        self.clock_ms = start_ms
        self.parent: str | None = None
        header = {"type": "session", "version": 4, "id": session_id, "timestamp": iso(start_ms), "cwd": "/w"}
        self.lines = [json.dumps(header, separators=(",", ":"))]

    def _add(self, event: dict[str, Any]) -> str:
        self.clock_ms += 1000
        event.update(parentId=self.parent, timestamp=iso(self.clock_ms))
        self.lines.append(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
        self.parent = event["id"]
        return self.lines[-1]

    def turn(self, text: str, *, reply_bytes: int = 0) -> None:
        self._add({"type": "message", "id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                   "message": {"role": "user", "content": f'{text}: "quoted" \\ café ☕ 🚀'}})  # fmt: skip
        reply = f"reply to {text}" + " with plenty of plain words" * (reply_bytes // 27)
        self._add({"type": "message", "id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                   "message": {"role": "assistant", "content": [{"type": "text", "text": reply}]}})  # fmt: skip

    def boundary(self, reason: str = "reset") -> str:
        """A reset boundary; returns the name of the segment it closes."""
        self._add({"type": "reset", "id": f"{self.rng.getrandbits(32):08x}", "reason": reason})
        return f"{self.session_id}.jsonl.{reason}.{archive_stamp(self.clock_ms)}"

    def segment_bytes(self, start: int, end: int) -> bytes:
        """The transcript of events ``start..end-1`` (1 = the first event after the header)."""
        return "".join(line + "\n" for line in [self.lines[0], *self.lines[start:end]]).encode()

    @property
    def last_ms(self) -> int:
        return self.clock_ms


def session_with_an_untimed_boundary() -> tuple[SessionWriter, str]:
    """A session whose reset boundary lost its timestamp, then a live turn; and the name its
    closed segment must get (from the boundary's event id)."""
    writer = SessionWriter(new_session_id())
    writer.turn("one")
    writer.boundary("reset")
    boundary = json.loads(writer.lines[-1])
    del boundary["timestamp"]
    writer.lines[-1] = json.dumps(boundary)
    writer.turn("live")
    return writer, f"{writer.session_id}.jsonl.reset.event-{boundary['id']}"


def add_session(
    connection: sqlite3.Connection,
    writer: SessionWriter,
    *,
    key: str,
    current: bool = True,
    status: str = "done",
    compressed: tuple[int, ...] = (),
    lines: list[str] | None = None,
) -> None:
    """One session: its window (``status``/``ended_at`` describe its last turn, as in OpenClaw),
    its rows from seq 0 (the header; rows at ``compressed`` seqs stored zstd-compressed, with a
    content size as OpenClaw's per-event frames have), and, when ``current``, its key."""
    with connection:
        connection.execute("BEGIN")
        connection.execute(
            "INSERT INTO session_windows (session_id, session_key, created_at, updated_at, ended_at, status)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (writer.session_id, key, OLD_MS, writer.last_ms, writer.last_ms, status),
        )
        insert_rows(connection, writer.session_id, lines if lines is not None else writer.lines, 0, compressed)
        if current:
            connection.execute(
                "INSERT OR REPLACE INTO session_nodes (session_key, current_session_id, entry_json, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (key, writer.session_id, json.dumps({"sessionId": writer.session_id}), writer.last_ms),
            )


def insert_rows(
    connection: sqlite3.Connection, session_id: str, lines: list[str], first_seq: int, compressed: tuple[int, ...] = ()
) -> None:
    for offset, line in enumerate(lines):
        seq = first_seq + offset
        if seq in compressed:
            row: tuple[Any, ...] = (session_id, seq, None, OLD_MS + seq, zstandard.ZstdCompressor().compress(
                line.encode()), len(line.encode()))  # fmt: skip
        else:
            row = (session_id, seq, line, OLD_MS + seq * 1000, None, None)
        connection.execute(
            "INSERT INTO transcript_events (session_id, seq, event_json, created_at, event_zstd, event_utf8_bytes)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            row,
        )


def append(connection: sqlite3.Connection, writer: SessionWriter, count_before: int) -> None:
    """Rows for the lines ``writer`` gained since it had ``count_before`` lines."""
    with connection:
        connection.execute("BEGIN")
        insert_rows(connection, writer.session_id, writer.lines[count_before:], count_before)


def delete_session(
    connection: sqlite3.Connection, writer: SessionWriter, sessions_dir: Path, *, key: str, export: bool = True
) -> str:
    """What ``openclaw sessions delete`` does: the rows go, the whole transcript goes into the
    archives table (zstd without content size), then into an exported file unless the export
    fails. Returns the segment name of the deleted session's last segment."""
    writer.clock_ms += 1000
    stamp = archive_stamp(writer.clock_ms)
    generation = uuid.UUID(int=writer.rng.getrandbits(128)).hex
    name = f"{writer.session_id}.jsonl.deleted.{stamp}.{generation}.zst"
    blob = node_zstd("".join(line + "\n" for line in writer.lines).encode())
    with connection:
        connection.execute("BEGIN")
        for table in ("transcript_events", "session_windows"):
            connection.execute(f"DELETE FROM {table} WHERE session_id = ?", (writer.session_id,))
        connection.execute("DELETE FROM session_nodes WHERE session_key = ?", (key,))
        connection.execute(
            "INSERT INTO session_transcript_archives VALUES (?, ?, ?, 'deleted', 'zstd', ?, ?, ?, ?)",
            (writer.session_id, generation, key, blob, hashlib.sha256(blob).hexdigest(), name, writer.clock_ms),
        )
    if export:
        sessions_dir.mkdir(parents=True, exist_ok=True)
        (sessions_dir / name).write_bytes(blob)
    return f"{writer.session_id}.jsonl.deleted.{stamp}"


def move_to_cold(connection: sqlite3.Connection, writer: SessionWriter, sessions_dir: Path) -> str:
    """What cold storage does: the rows go into ``sessions/cold/<sha256>.jsonl.zst`` as records
    (header, one ``event`` record per row, then others) and leave transcript_events."""
    records = [{"kind": "header", "version": 1, "sessionId": writer.session_id, "generation": "g" * 32}]
    records += [{"kind": "event", "row": {"seq": seq, "event_json": line, "created_at": OLD_MS}}
                for seq, line in enumerate(writer.lines)]  # fmt: skip
    records.append({"kind": "identity", "rows": len(writer.lines)})
    blob = node_zstd("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode())
    name = hashlib.sha256(blob).hexdigest() + ".jsonl.zst"
    (sessions_dir / "cold").mkdir(parents=True, exist_ok=True)
    (sessions_dir / "cold" / name).write_bytes(blob)
    with connection:
        connection.execute("BEGIN")
        connection.execute("DELETE FROM transcript_events WHERE session_id = ?", (writer.session_id,))
        connection.execute(
            "INSERT INTO session_transcript_cold_archives VALUES (?, 'g', ?, ?, ?, 0, ?, ?, ?, 'file', NULL)",
            (writer.session_id, name, hashlib.sha256(blob).hexdigest(), len(writer.lines), len(blob),
             len(writer.lines) - 1, writer.last_ms),
        )  # fmt: skip
    return name


@dataclass
class SqliteTree:
    """What :func:`build_sqlite` made: upload names and contents, and what must wait."""

    root: Path
    sessions_dir: Path
    database: Path
    expected_uploads: dict[str, bytes] = field(default_factory=dict)
    live: dict[str, bytes] = field(default_factory=dict)  # lines of live segments, by session
    writers: dict[str, SessionWriter] = field(default_factory=dict)


def build_sqlite(root: Path, agent_id: str = "main") -> SqliteTree:
    """An agent of OpenClaw 2026.9.6: sessions with reset boundaries and a live last segment,
    a long reply stored compressed, a session replaced on its key, a finished cron run,
    sessions deleted (exported, and only in the table), one in cold storage, a long id."""
    sessions = root / "agents" / agent_id / "sessions"
    database = database_path(root, agent_id)
    tree = SqliteTree(root=root, sessions_dir=sessions, database=database)
    connection = create_database(database)
    rng = random.Random(7)
    writers = tree.writers
    for name in ("main", "chat", "replaced", "cron", "deleted", "table_only", "cold"):
        writers[name] = SessionWriter(new_session_id(rng), rng=rng)
    writers["long"] = SessionWriter("x" * 120, rng=rng)
    expect = tree.expected_uploads

    def segment(writer: SessionWriter, name: str, start: int) -> int:
        expect[name] = writer.segment_bytes(start, len(writer.lines))
        return len(writer.lines)

    main = writers["main"]
    main.turn("one")
    main.turn("two")
    start = segment(main, main.boundary("reset"), 1)
    main.turn("three", reply_bytes=3000)  # a long reply, stored zstd-compressed
    long_seq = len(main.lines) - 1
    start = segment(main, main.boundary("new"), start)
    main.turn("four, live")
    tree.live[main.session_id] = main.segment_bytes(start, len(main.lines))
    add_session(connection, main, key=f"agent:{agent_id}:main", compressed=(long_seq,))
    # A session some key still uses, no boundary: wholly live, whatever its window says.
    chat = writers["chat"]
    chat.turn("chat")
    tree.live[chat.session_id] = chat.segment_bytes(1, len(chat.lines))
    add_session(connection, chat, key=f"agent:{agent_id}:chat", status="done")
    # Replaced on its key (no key uses it any more), and a finished isolated cron run.
    for name, key, current in (("replaced", f"agent:{agent_id}:old", False),
                               ("cron", f"agent:{agent_id}:cron:{uuid.UUID(int=rng.getrandbits(128))}", True),
                               ("long", f"agent:{agent_id}:imported", False)):  # fmt: skip
        writer = writers[name]
        writer.turn(name)
        add_session(connection, writer, key=key, current=current)
        stamp = archive_stamp(OLD_MS + (len(writer.lines) - 1) * 1000)
        label = name if name != "long" else "session-" + hashlib.sha256(writer.session_id.encode()).hexdigest()
        segment(writer, f"{writer.session_id if name != 'long' else label}.jsonl.ended.{stamp}", 1)
    # Deleted: the archive holds both segments; only the table holds the second one's archive.
    for name in ("deleted", "table_only"):
        writer = writers[name]
        writer.turn(f"{name} a")
        start = segment(writer, writer.boundary("reset"), 1)
        writer.turn(f"{name} b")
        key = f"agent:{agent_id}:{name}"
        add_session(connection, writer, key=key)
        segment(writer, delete_session(connection, writer, sessions, key=key, export=name == "deleted"), start)
    cold = writers["cold"]
    cold.turn("cold")
    add_session(connection, cold, key=f"agent:{agent_id}:cold", current=False)
    move_to_cold(connection, cold, sessions)
    segment(cold, f"{cold.session_id}.jsonl.ended.{archive_stamp(cold.last_ms)}", 1)
    connection.close()
    return tree


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.openclaw_tree DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    trees = [build_realistic(root, agent) for agent in ("main", "ops")]
    for tree in trees:
        print(
            f"sample OpenClaw sessions in {tree.sessions_dir}: {len(tree.expected_uploads)} complete, "
            f"{len(tree.held_back)} live or not complete yet, {len(tree.ignored)} other files"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
