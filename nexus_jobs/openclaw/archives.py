"""Deletion archives and cold storage of OpenClaw's SQLite era (``docs/openclaw.md``): a
deleted session's whole transcript, as the archives table keeps it and as the exported file
``sessions/<id>.jsonl.deleted.<TS>.<generation>.zst`` holds it (zstd without a content size in
the frame), and the records of ``sessions/cold/<sha256>.jsonl.zst``, of which the ``event``
ones carry a session's rows while it is cold. Read-only, like the rest of this package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import database as openclaw_db
from .files import ZSTD_SUFFIX, decompress_zstd

COLD_DIR_NAME = "cold"
# Archives and cold files hold whole sessions: decompressed, at most this much.
ARCHIVE_LIMIT_BYTES = 256 << 20


def session_lines(database: Path, session: openclaw_db.SessionRow, *, sessions_dir: Path) -> list[tuple[int, bytes]]:
    """The session's lines as ``(seq, bytes)`` in seq order, the header (seq 0) first: from
    ``transcript_events``, or from its cold archive while it is cold. Raises the database's
    errors, ``OSError``, or ``ValueError`` for content that cannot be read."""
    if session.cold is None:
        return openclaw_db.event_rows(database, session)
    blob = openclaw_db.cold_blob(database, session.session_id)
    if blob is None:
        blob = read_file(sessions_dir / COLD_DIR_NAME / session.cold)
    lines: list[tuple[int, bytes]] = []
    for raw in decompress(blob, what=f"cold archive {session.cold}").splitlines():
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            raise ValueError(f"cold archive {session.cold} holds a line that is not JSON") from None
        if isinstance(record, dict) and record.get("kind") == "event" and isinstance(record.get("row"), dict):
            row = record["row"]
            if isinstance(row.get("seq"), int) and isinstance(row.get("event_json"), str):
                lines.append((row["seq"], row["event_json"].encode("utf-8", "surrogateescape")))
    lines.sort()
    return lines


def archive_content(database: Path, name: str, path: str | None) -> bytes:
    """An archive's transcript: the exported file when there is one and it decompresses,
    else the table's row (the file is its export). Raises ``OSError``, ``ValueError`` and the
    database's errors."""
    if path is not None:
        raw = read_file(Path(path))
        if not name.endswith(ZSTD_SUFFIX):
            return raw
        try:
            return decompress(raw, what=f"archive {name}")
        except ValueError:
            if openclaw_db.archive_blob(database, name) is None:
                raise
    row = openclaw_db.archive_blob(database, name)
    if row is None:
        raise OSError(f"{name} is no longer in the archives table")
    encoding, raw = row
    return decompress(raw, what=f"archive {name}") if encoding == "zstd" else raw


def read_file(path: Path) -> bytes:
    """A file of OpenClaw's, never through a symbolic link. Raises ``OSError``."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(descriptor, "rb") as handle:
        return handle.read()


def decompress(blob: bytes, *, what: str, limit: int = ARCHIVE_LIMIT_BYTES) -> bytes:
    """A zstd archive blob, whole. Raises ``ValueError`` when it does not decompress, is
    truncated or exceeds ``limit``."""
    try:
        content = decompress_zstd(blob, limit=limit)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None
    if len(content) > limit:
        raise ValueError(f"{what} decompresses to more than {limit} bytes")
    return content
