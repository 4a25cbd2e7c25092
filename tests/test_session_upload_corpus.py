"""Bad input for nexus-session-upload, one case a row of ``tests/corpus/nexus-session-upload.jsonl``:
each sets up an OpenClaw tree (SQLite era, or JSONL for ``sessions.json`` and file names), spoils
one thing as ``input.setup`` says, runs the command twice, and checks the exit code, the one-line
message, and that nothing was lost: each event of a complete segment sent once, nothing live.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.corpus import cases, deep_json
from tests.openclaw_tree import (
    SQLITE_SCHEMA,
    SessionWriter,
    SqliteTree,
    add_session,
    build_realistic,
    build_sqlite,
    create_database,
    new_session_id,
    session_with_an_untimed_boundary,
)
from tests.test_session_upload_sqlite import Writer, event_ids, inbox

COMMAND = "nexus-session-upload"


def prepare(case: dict[str, Any], root: Path, state_dir: Path) -> tuple[dict[str, bytes], list[bytes], Writer | None]:
    """Spoil a tree as the case says: (what must reach the store, live content, a writer to stop)."""
    spec = case["input"]
    setup = spec["setup"]
    if setup in ("sessions_json", "file_name_not_utf8", "jsonl_archive_truncated"):
        tree = build_realistic(root)
        if setup == "jsonl_archive_truncated":
            (archive,) = tree.sessions_dir.glob("*.zst")
            archive.write_bytes(archive.read_bytes()[:-6])  # the end of the frame is missing
            kept = archive.name.removesuffix(".zst")
            return {name: body for name, body in tree.expected_uploads.items() if name != kept}, [], None
        if setup == "sessions_json":
            (tree.sessions_dir / "sessions.json").write_text(deep_json(spec["deep"]))
            return {name: body for name, body in tree.expected_uploads.items() if ".jsonl." in name}, [], None
        (tree.sessions_dir / os.fsdecode(b"bad-\xff.jsonl.reset.2026-06-25T05-19-01.119Z")).write_bytes(b"{}\n")
        return tree.expected_uploads, [], None
    sqlite = build_sqlite(root)
    expected, live = dict(sqlite.expected_uploads), list(sqlite.live.values())
    writer = None
    if setup == "schema_version":
        _execute(sqlite, f"PRAGMA user_version = {spec['version']}")
    elif setup == "drop_event_json":
        sqlite.database.unlink()
        schema = SQLITE_SCHEMA.replace("event_json", "payload_json").replace("= 23", f"= {spec['version']}")
        create_database(sqlite.database, schema).close()
        expected = {}
    elif setup == "boundary_without_timestamp":
        expected.update(_boundary_without_timestamp(sqlite))
    elif setup == "headless_session":
        headless = SessionWriter(new_session_id())
        headless.turn("no header")
        connection = sqlite3.connect(sqlite.database, isolation_level=None)
        add_session(connection, headless, key="agent:main:headless", current=False, lines=headless.lines[1:])
        connection.close()
    elif setup == "archive_garbage":
        for path in sqlite.sessions_dir.glob("*.zst"):
            path.write_bytes(b"\x28\xb5\x2f\xfdgarbage")
        _execute(sqlite, "UPDATE session_transcript_archives SET archive_blob = X'DEADBEEF'")
        gone = (sqlite.writers["deleted"].session_id, sqlite.writers["table_only"].session_id)
        expected = {name: body for name, body in expected.items() if not name.startswith(gone)}
    elif setup == "archive_truncated":
        for path in sqlite.sessions_dir.glob("*.zst"):
            path.write_bytes(path.read_bytes()[:-6])
        _execute(sqlite, "UPDATE session_transcript_archives SET archive_blob = substr(archive_blob, 1, 12)")
        gone = (sqlite.writers["deleted"].session_id, sqlite.writers["table_only"].session_id)
        expected = {name: body for name, body in expected.items() if not name.startswith(gone)}
    elif setup == "database_locked":
        writer = Writer(sqlite.database, "exclusive")
        expected = {}
    elif setup == "database_corrupt":
        sqlite.database.write_bytes(b"this is not a database" * 100)
        expected = {}
    elif setup == "markers":
        state_dir.mkdir()
        (state_dir / "session-upload.markers.json").write_text(json.dumps(spec["document"]))
    return expected, live, writer


def _execute(tree: SqliteTree, statement: str) -> None:
    connection = sqlite3.connect(tree.database, isolation_level=None)
    connection.execute(statement)
    connection.close()


def _boundary_without_timestamp(tree: SqliteTree) -> dict[str, bytes]:
    writer, name = session_with_an_untimed_boundary()
    connection = sqlite3.connect(tree.database, isolation_level=None)
    add_session(connection, writer, key="agent:main:odd")
    connection.close()
    return {name: writer.segment_bytes(1, 4)}


@pytest.mark.parametrize("case", cases("nexus-session-upload"))
def test_bad_input(case: dict[str, Any], clean_env: dict[str, str], tmp_path: Path) -> None:
    root, state_dir = tmp_path / "openclaw", tmp_path / "state"
    if case["input"]["setup"] == "markers" and "deep" in case["input"]:
        # Written as text: the test's own json cannot build a document this deep.
        state_dir.mkdir()
        build_sqlite(root)
        document = '{"agents": ' + deep_json(case["input"]["deep"]) + "}"
        (state_dir / "session-upload.markers.json").write_text(document)
        expected: dict[str, bytes] = {}
        live: list[bytes] = []
        writer = None
    else:
        expected, live, writer = prepare(case, root, state_dir)
    env = {**clean_env, "OPENCLAW_STATE_DIR": str(root), "NEXUS_STATE_DIR": str(state_dir)}
    env["NEXUS_ENDPOINT"] = "embedded"  # asked for by name: quiet
    try:
        result = run_cli(COMMAND, env=env)
    finally:
        if writer is not None:
            writer.stop()
    assert result.returncode == case["exit"], result.stderr
    assert "Traceback" not in result.stderr
    if case["message"]:
        assert case["message"] in result.stderr and len(result.stderr.splitlines()) <= 3, result.stderr
    else:
        assert result.stderr == ""
    again = run_cli(COMMAND, env=env)
    assert "Traceback" not in again.stderr and again.returncode != 70
    stored = inbox(env)
    check = case["check"]
    if check == "markers_moved_aside":
        assert list(state_dir.glob("session-upload.markers.json.corrupt-*")), "moved aside, not lost"
        assert json.loads((state_dir / "session-upload.markers.json").read_text())["destinations"]
        return
    if check == "nothing_sent":
        assert stored == {} or (case["exit"] == 75 and again.returncode == 0)
        return
    for name, body in expected.items():
        assert stored.get(name) == body, name
    if check == "exactly_these":
        assert set(stored) == set(expected), "what could not be read is not stored"
    if check == "complete_once_nothing_live":
        ids = event_ids(list(stored.values()))
        assert len(ids) == len(set(ids)), "nothing sent twice"
        live_ids = set(event_ids(live))
        assert live_ids and not live_ids & set(ids), "nothing live sent"
