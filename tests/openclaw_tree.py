"""Realistic OpenClaw state trees (JSONL storage, and the per-agent SQLite database of releases
2026.7.2 and later) for tests, benchmarks and the demo.

Run as a module to create the demo tree: ``python -m tests.openclaw_tree DIR``.
"""

from __future__ import annotations

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
    """An agent's sessions directory with every kind of file SPEC 4.1 names."""
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
    write(f"{ids['zst']}.jsonl.deleted.{STAMP}.zst", zstandard.ZstdCompressor().compress(content), old=False)
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


# The tables nexus-session-upload reads, as OpenClaw's agent database declares them (abridged:
# the real ones carry more columns).
SQLITE_SCHEMA = """
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
"""
NOW_MS = 1_790_000_000_000


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


def add_generation(
    connection: sqlite3.Connection,
    session_id: str,
    lines: list[str],
    *,
    key: str,
    current: bool = False,
    ended: bool = False,
    reason: str = "initial",
    compressed: tuple[int, ...] = (),
) -> None:
    """One transcript generation: its window, its events (those at ``compressed`` positions
    stored zstd-compressed), and, when ``current``, its session key pointing at it."""
    with connection:
        connection.execute("BEGIN")
        connection.execute(
            "INSERT INTO session_windows (session_id, session_key, reason, created_at, updated_at, ended_at, status)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session_id, key, reason, NOW_MS, NOW_MS, NOW_MS if ended else None, "done" if ended else "running"),
        )
        append_events(connection, session_id, lines, compressed=compressed, transaction=False)
        if current:
            connection.execute(
                "INSERT OR REPLACE INTO session_nodes (session_key, current_session_id, entry_json, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (key, session_id, json.dumps({"sessionId": session_id}), NOW_MS),
            )


def append_events(
    connection: sqlite3.Connection,
    session_id: str,
    lines: list[str],
    *,
    compressed: tuple[int, ...] = (),
    transaction: bool = True,
) -> None:
    if transaction:
        connection.execute("BEGIN")
    (last,) = connection.execute(
        "SELECT coalesce(max(seq), 0) FROM transcript_events WHERE session_id = ?", (session_id,)
    ).fetchone()
    for offset, line in enumerate(lines):
        if offset in compressed:
            blob = zstandard.ZstdCompressor().compress(line.encode())
            row: tuple[Any, ...] = (session_id, last + offset + 1, None, NOW_MS, blob, len(line.encode()))
        else:
            row = (session_id, last + offset + 1, line, NOW_MS, None, None)
        connection.execute(
            "INSERT INTO transcript_events (session_id, seq, event_json, created_at, event_zstd, event_utf8_bytes)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            row,
        )
    if transaction:
        connection.execute("COMMIT")


@dataclass
class SqliteTree:
    """What :func:`build_sqlite` made: upload names and contents, and what must wait."""

    root: Path
    sessions_dir: Path
    database: Path
    expected_uploads: dict[str, bytes] = field(default_factory=dict)
    held_back: list[str] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)


def build_sqlite(root: Path, agent_id: str = "main") -> SqliteTree:
    """An agent of the SQLite era in the middle of its migration: a database with every kind
    of generation, a sessions directory with the archive of an explicit delete, and the JSONL
    transcripts OpenClaw moved aside when it imported them."""
    sessions = root / "agents" / agent_id / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    database = database_path(root, agent_id)
    tree = SqliteTree(root=root, sessions_dir=sessions, database=database)
    ids = tree.ids
    for name in ("live", "reset", "rollover", "ended_current", "compressed", "imported", "moved_only", "deleted"):
        ids[name] = new_session_id()
    connection = create_database(database)
    contents = {name: transcript(ids[name], messages=3 + number) for number, name in enumerate(ids)}
    main_key = f"agent:{agent_id}:main"
    # The key's earlier generations: ended by a reset (ended_at set), and by a rollover that
    # left ended_at empty (complete all the same: no key's current generation).
    add_generation(connection, ids["reset"], transcript_lines(contents["reset"]), key=main_key, ended=True)
    add_generation(connection, ids["rollover"], transcript_lines(contents["rollover"]), key=main_key)
    add_generation(connection, ids["live"], transcript_lines(contents["live"]), key=main_key, current=True)
    tree.held_back.append(f"{ids['live']}.jsonl")
    # A key's current generation whose window has ended (a finished cron run): complete.
    add_generation(
        connection,
        ids["ended_current"],
        transcript_lines(contents["ended_current"]),
        key="cron:nightly",
        current=True,
        ended=True,
    )
    # Large events are stored zstd-compressed; the upload holds them decompressed.
    add_generation(
        connection,
        ids["compressed"],
        transcript_lines(contents["compressed"]),
        key="hook:1",
        ended=True,
        compressed=(1, 2),
    )
    # Imported from a JSONL file that now lies in the import archive: the database's copy is
    # the one uploaded (it holds the whole transcript); the moved file is not sent as well.
    add_generation(connection, ids["imported"], transcript_lines(contents["imported"]), key="hook:2", ended=True)
    archive = sessions / "session-sqlite-import-archive"
    archive.mkdir()
    (archive / f"{ids['imported']}.jsonl").write_bytes(contents["imported"])
    # Moved aside but not in the database (its rows were deleted since): uploaded once as a file.
    (archive / f"{ids['moved_only']}.jsonl").write_bytes(contents["moved_only"])
    # An explicit delete wrote its archive into sessions/ and removed the rows.
    deleted_name = f"{ids['deleted']}.jsonl.deleted.{STAMP}"
    (sessions / deleted_name).write_bytes(contents["deleted"])
    connection.close()
    for name in ("reset", "rollover", "ended_current", "compressed", "imported", "moved_only"):
        tree.expected_uploads[f"{ids[name]}.jsonl"] = contents[name]
    tree.expected_uploads[deleted_name] = contents["deleted"]
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
