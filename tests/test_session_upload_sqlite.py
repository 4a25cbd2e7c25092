"""nexus-session-upload on agents of OpenClaw's SQLite era (per-agent WAL database), driven as
a user drives it: databases built with the documented schema and drifted variants, writers in
other processes, the embedded store and the local HTTP double of Nexus."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from tests.conftest import assert_clean_failure, run_cli
from tests.nexus_double import LIMIT_BYTES, NexusDouble
from tests.openclaw_tree import (
    SQLITE_SCHEMA,
    STAMP,
    SqliteTree,
    Tree,
    add_generation,
    append_events,
    build_realistic,
    build_sqlite,
    create_database,
    new_session_id,
    transcript,
    transcript_lines,
)
from tests.test_session_upload import http_env, markers, snapshot

COMMAND = "nexus-session-upload"

# A writer in its own process, as OpenClaw's Gateway is: "idle" writes once and keeps its
# connection open; "exclusive" holds the database's exclusive lock; "busy" appends to the
# current generation and rolls over to a new one every few writes until told to stop;
# "reopening" does the same on a new connection each time, so its -wal comes and goes.
WRITER = r"""
import json, sqlite3, sys, time, uuid
path, mode = sys.argv[1], sys.argv[2]
connection = sqlite3.connect(path, isolation_level=None)
connection.execute("PRAGMA journal_mode=WAL")
if mode == "exclusive":
    connection.execute("PRAGMA locking_mode=EXCLUSIVE")
connection.execute("UPDATE session_nodes SET updated_at = updated_at + 1")
print("ready", flush=True)
if mode not in ("busy", "reopening"):
    sys.stdin.readline()
    raise SystemExit(0)
import select
key, writes = "agent:main:main", 0
while not select.select([sys.stdin], [], [], 0)[0]:
    if mode == "reopening":
        connection.close()
        connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    (current,) = connection.execute(
        "SELECT current_session_id FROM session_nodes WHERE session_key = ?", (key,)
    ).fetchone()
    (last,) = connection.execute(
        "SELECT max(seq) FROM transcript_events WHERE session_id = ?", (current,)
    ).fetchone()
    writes += 1
    if writes % 7 == 0:
        fresh = str(uuid.uuid4())
        connection.execute(
            "INSERT INTO session_windows (session_id, session_key, previous_session_id, reason, created_at, "
            "updated_at) VALUES (?, ?, ?, 'reset', 0, 0)", (fresh, key, current))
        connection.execute(
            "INSERT INTO transcript_events (session_id, seq, event_json, created_at) VALUES (?, 1, ?, 0)",
            (fresh, json.dumps({"type": "session", "version": 3, "id": fresh})))
        connection.execute("UPDATE session_nodes SET current_session_id = ? WHERE session_key = ?", (fresh, key))
    else:
        line = json.dumps({"type": "message", "id": f"w{writes}", "text": "x" * (writes % 50) * 40})
        connection.execute(
            "INSERT INTO transcript_events (session_id, seq, event_json, created_at) VALUES (?, ?, ?, 0)",
            (current, last + 1, line))
    connection.execute("COMMIT")
    time.sleep(0.002)
print(writes, flush=True)
"""


class Writer:
    def __init__(self, database: Path, mode: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(database), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def stop(self) -> str:
        output, _ = self.process.communicate("stop\n", timeout=30)
        assert self.process.returncode == 0
        return output


@pytest.fixture
def tree(tmp_path: Path) -> SqliteTree:
    return build_sqlite(tmp_path / "openclaw")


@pytest.fixture
def env(clean_env: dict[str, str], tree: SqliteTree, tmp_path: Path) -> dict[str, str]:
    clean_env.update(OPENCLAW_STATE_DIR=str(tree.root), NEXUS_STATE_DIR=str(tmp_path / "state"))
    return clean_env


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for writer in started:
        if writer.process.poll() is None:
            writer.process.kill()
            writer.process.wait()


def inbox(env: dict[str, str], agent_id: str = "main") -> dict[str, bytes]:
    directory = Path(env["NEXUS_STATE_DIR"]) / "nexus-store" / "inbox" / agent_id
    return {path.name: path.read_bytes() for path in directory.iterdir()} if directory.exists() else {}


def generation_content(database: Path, session_id: str) -> bytes:
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute(
            "SELECT CAST(event_json AS BLOB), event_zstd FROM transcript_events WHERE session_id = ? ORDER BY seq",
            (session_id,),
        ).fetchall()
    finally:
        connection.close()
    return b"".join((event or zstandard.ZstdDecompressor().decompress(blob)) + b"\n" for event, blob in rows)


def side_files(database: Path) -> list[str]:
    return sorted(path.name for path in database.parent.iterdir() if path.name != database.name)


# --- completion rules, and nothing under OpenClaw's directory changes ---------------------


def test_sqlite_agent_uploads_complete_generations_archives_and_moved_files_and_touches_nothing(
    tree: SqliteTree, env: dict[str, str]
) -> None:
    before = snapshot(tree.root)
    result = run_cli(COMMAND, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", "a successful cron run is quiet"
    assert inbox(env) == tree.expected_uploads
    assert snapshot(tree.root) == before, "OpenClaw's tree must stay byte-for-byte unchanged"
    assert side_files(tree.database) == [], "no -wal or -shm file may be created"
    again = run_cli(COMMAND, "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"]["uploaded"] == 0
    generation = markers(env)["main"][f"{tree.ids['reset']}.jsonl"]
    assert {"rows", "lastSeq", "status"} <= set(generation) and generation["status"] == "uploaded"


def test_idle_writer_with_an_open_wal_sees_its_files_unchanged_byte_for_byte(
    tree: SqliteTree, env: dict[str, str], writers: list[Writer]
) -> None:
    writers.append(Writer(tree.database, "idle"))
    assert side_files(tree.database) == ["openclaw-agent.sqlite-shm", "openclaw-agent.sqlite-wal"]
    before = snapshot(tree.root)
    for _ in range(2):
        result = run_cli(COMMAND, env=env)
        assert result.returncode == 0, result.stderr
        assert snapshot(tree.root) == before, "the -shm read marks and the -wal stay untouched"
    assert inbox(env) == tree.expected_uploads
    writers[0].stop()


def test_wal_left_by_a_killed_writer_is_read_without_recovering_or_writing_it(
    tree: SqliteTree, env: dict[str, str], writers: list[Writer]
) -> None:
    writer = Writer(tree.database, "idle")
    writers.append(writer)
    writer.process.kill()
    writer.process.wait()
    assert side_files(tree.database) == ["openclaw-agent.sqlite-shm", "openclaw-agent.sqlite-wal"]
    before = snapshot(tree.root)
    result = run_cli(COMMAND, env=env)
    assert result.returncode == 0, result.stderr
    assert snapshot(tree.root) == before, "recovery is the writer's job; a reader changes nothing"
    assert inbox(env) == tree.expected_uploads


def test_an_empty_wal_without_its_index_is_read_as_the_complete_file(tree: SqliteTree, env: dict[str, str]) -> None:
    (tree.database.parent / "openclaw-agent.sqlite-wal").write_bytes(b"")
    before = snapshot(tree.root)
    result = run_cli(COMMAND, env=env)
    assert result.returncode == 0, result.stderr
    assert snapshot(tree.root) == before
    assert inbox(env) == tree.expected_uploads


def test_a_generation_completes_when_its_key_moves_on_or_its_window_ends(tree: SqliteTree, env: dict[str, str]) -> None:
    assert run_cli(COMMAND, env=env).returncode == 0
    live = f"{tree.ids['live']}.jsonl"
    assert live not in inbox(env)
    connection = sqlite3.connect(tree.database, isolation_level=None)
    connection.execute("UPDATE session_windows SET ended_at = 1 WHERE session_id = ?", (tree.ids["live"],))
    connection.close()
    assert run_cli(COMMAND, env=env).returncode == 0
    assert inbox(env)[live] == generation_content(tree.database, tree.ids["live"])


# --- the Nexus contract, fingerprints ------------------------------------------------------


def test_http_upload_of_generations_sends_the_contract(
    tree: SqliteTree, env: dict[str, str], nexus: NexusDouble
) -> None:
    result = run_cli(COMMAND, env=http_env(env, nexus))
    assert result.returncode == 0, result.stderr
    posts = nexus.posts()
    assert {request.body["fileName"] for request in posts} == set(tree.expected_uploads)  # type: ignore[index]
    for request in posts:
        body = request.body
        assert body is not None
        content = tree.expected_uploads[body["fileName"]]
        assert body["transcript"].encode() == content and body["agentId"] == "main"
        assert body["fileName"].startswith(body["sessionId"])
        assert body["sha256"] == hashlib.sha256(content).hexdigest() and body["bytes"] == len(content)
    assert run_cli(COMMAND, env=http_env(env, nexus)).returncode == 0
    assert len(nexus.posts()) == len(posts), "a second run uploads nothing"


def test_changed_generation_is_uploaded_again_and_reported(
    tree: SqliteTree, env: dict[str, str], nexus: NexusDouble
) -> None:
    environment = http_env(env, nexus)
    assert run_cli(COMMAND, env=environment).returncode == 0
    connection = sqlite3.connect(tree.database, isolation_level=None)
    rows = connection.execute("SELECT count(*) FROM transcript_events WHERE session_id = ?", (tree.ids["rollover"],))
    (count,) = rows.fetchone()
    append_events(connection, tree.ids["rollover"], ['{"type":"message","resumed":true}'])
    connection.close()
    nexus.stored.clear()  # a server that keeps every version answers 200 again
    result = run_cli(COMMAND, env=environment)
    assert result.returncode == 0, result.stderr
    name = f"{tree.ids['rollover']}.jsonl"
    assert f"main/{name} changed after it was uploaded ({count} -> {count + 1} events)" in result.stderr
    assert [request.body["fileName"] for request in nexus.posts()[-1:]] == [name]  # type: ignore[index]
    assert nexus.stored[("main", name)].endswith(b'"resumed":true}\n')


def test_archive_of_a_deleted_session_uploaded_from_the_database_is_not_sent_again(
    tree: SqliteTree, env: dict[str, str]
) -> None:
    assert run_cli(COMMAND, env=env).returncode == 0
    reset, rollover = tree.ids["reset"], tree.ids["rollover"]
    copy = f"{reset}.jsonl.deleted.{STAMP}.zst"
    (tree.sessions_dir / copy).write_bytes(zstandard.ZstdCompressor().compress(tree.expected_uploads[f"{reset}.jsonl"]))
    longer = f"{rollover}.jsonl.deleted.{STAMP}"
    (tree.sessions_dir / longer).write_bytes(tree.expected_uploads[f"{rollover}.jsonl"] + b'{"type":"message"}\n')
    connection = sqlite3.connect(tree.database, isolation_level=None)
    connection.execute("DELETE FROM transcript_events WHERE session_id IN (?, ?)", (reset, rollover))
    connection.close()
    result = run_cli(COMMAND, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counts"]["uploaded"] == 1
    assert set(inbox(env)) == set(tree.expected_uploads) | {longer}, "the copy is not sent, the longer one is"
    assert str(markers(env)["main"][copy]["response"]).startswith(f"a copy of {reset}.jsonl")
    (tree.sessions_dir / longer).unlink()
    copy_of_imported = f"{tree.ids['imported']}.jsonl.deleted.{STAMP}"
    (tree.sessions_dir / copy_of_imported).write_bytes(tree.expected_uploads[f"{tree.ids['imported']}.jsonl"])
    alone = run_cli(COMMAND, "--json", env=env)
    assert json.loads(alone.stdout)["counts"]["uploaded"] == 0, "a copy alone is marked, and the mark is kept"
    assert markers(env)["main"][copy_of_imported]["status"] == "uploaded"


def test_oversize_and_non_utf8_generations_are_rejected_locally(env: dict[str, str], nexus: NexusDouble) -> None:
    database = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "bad" / "agent" / "openclaw-agent.sqlite"
    connection = create_database(database)
    huge, latin = new_session_id(), new_session_id()
    add_generation(connection, huge, transcript_lines(transcript(huge, pad_to=LIMIT_BYTES + 10)), key="a", ended=True)
    add_generation(connection, latin, ['{"type":"session"}'], key="b", ended=True)
    connection.execute(
        "UPDATE transcript_events SET event_json = CAST(X'7B2263616CE9227D' AS TEXT) WHERE session_id = ?", (latin,)
    )
    connection.close()
    (database.parent.parent / "sessions").mkdir()
    result = run_cli(COMMAND, "--agent", "bad", env=http_env(env, nexus))
    assert result.returncode == 0, result.stderr
    assert f"bad/{huge}.jsonl: rejected: larger than the limit of {LIMIT_BYTES} bytes" in result.stderr
    assert f"bad/{latin}.jsonl: rejected: not UTF-8 text (invalid byte at offset 5)" in result.stderr
    assert nexus.posts() == []


def test_dry_run_lists_generations_and_changes_nothing(tree: SqliteTree, env: dict[str, str]) -> None:
    result = run_cli(COMMAND, "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    *lines, total = result.stdout.splitlines()
    assert total == f"dry run: {len(lines)} item(s) would be handled; nothing was changed"
    listed = {line.split()[2].split("/", 1)[1] for line in lines}
    assert listed == set(tree.expected_uploads)
    assert f"{tree.ids['reset']}.jsonl (" in result.stdout and "events, generation)" in result.stdout
    assert not Path(env["NEXUS_STATE_DIR"]).exists()


def test_agent_of_the_sqlite_era_without_a_sessions_directory(env: dict[str, str], tmp_path: Path) -> None:
    database = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "solo" / "agent" / "openclaw-agent.sqlite"
    connection = create_database(database)
    session_id = new_session_id()
    add_generation(connection, session_id, transcript_lines(transcript(session_id)), key="k", ended=True)
    connection.close()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"agents": {"solo": {}}}))
    result = run_cli(COMMAND, "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert inbox(env, "solo") == {f"{session_id}.jsonl": transcript(session_id)}


# --- migration from JSONL files: never a session twice ------------------------------------


def migrate_to_sqlite(tree: Tree, *, resumed: str) -> Path:
    """What OpenClaw's first SQLite start does: import every plain transcript (and here the
    reset archive too) into the agent database, keyed as in sessions.json, and move the plain
    files into the import archive. ``resumed`` got one more event after its upload."""
    database = tree.root / "agents" / "main" / "agent" / "openclaw-agent.sqlite"
    connection = create_database(database)
    index = json.loads((tree.sessions_dir / "sessions.json").read_text())
    current = {Path(entry.get("sessionFile", "")).name[:36] or entry["sessionId"]: key for key, entry in index.items()}
    archive = tree.sessions_dir / "session-sqlite-import-archive"
    archive.mkdir()
    imported: set[str] = set()
    for path in sorted(tree.sessions_dir.iterdir()):
        name = path.name
        if name.endswith(".jsonl.lock"):
            path.unlink()
        if not name.endswith(".jsonl") or ".trajectory" in name or ".checkpoint." in name:
            continue
        session_id = name[:36]
        if session_id not in imported:  # a topic transcript goes with its session here
            imported.add(session_id)
            lines = transcript_lines(path.read_bytes())
            if session_id == resumed:
                lines.append('{"type":"message","resumed":"after the upload"}')
            key = current.get(session_id, f"hook:{session_id}")
            add_generation(connection, session_id, lines, key=key, current=session_id in current)
        path.rename(archive / name)
    for path in tree.sessions_dir.glob("*.jsonl.reset.*"):
        add_generation(connection, path.name[:36], transcript_lines(path.read_bytes()), key="old", ended=True)
    connection.close()
    return database


def test_an_agent_moving_from_jsonl_to_sqlite_never_uploads_a_session_twice(
    tmp_path: Path, clean_env: dict[str, str], nexus: NexusDouble
) -> None:
    tree = build_realistic(tmp_path / "openclaw")
    environment = http_env(clean_env, nexus, OPENCLAW_STATE_DIR=str(tree.root), NEXUS_STATE_DIR=str(tmp_path / "s"))
    assert run_cli(COMMAND, env=environment).returncode == 0
    first = {request.body["fileName"] for request in nexus.posts()}  # type: ignore[index]
    assert first == set(tree.expected_uploads)
    orphan = next(name for name in first if name.endswith(".jsonl") and "-topic-" not in name)
    waiting = [name for name in tree.held_back if name.endswith(".jsonl") and "-topic-" not in name]
    database = migrate_to_sqlite(tree, resumed=orphan[:36])
    before = snapshot(tree.root)
    nexus.stored.clear()  # so a second copy of anything would be stored, not answered 409
    result = run_cli(COMMAND, "-v", env=environment)
    assert result.returncode == 0, result.stderr
    second = [request.body["fileName"] for request in nexus.posts()[len(first) :]]  # type: ignore[index]
    index = json.loads((tree.sessions_dir / "sessions.json").read_text())
    live = {entry["sessionId"] for entry in index.values()} | {
        Path(entry["sessionFile"]).name[:36] for entry in index.values() if "sessionFile" in entry
    }
    never_uploaded = {name for name in waiting if name[:36] not in live}  # held back by a lock or grace
    assert sorted(second) == sorted(never_uploaded | {orphan}), "only new sessions, and the resumed one"
    # The reset archive and the forum topic, imported as generations of their sessions:
    assert "2 session(s) uploaded as JSONL files before the move to SQLite" in result.stderr
    assert f"main/{orphan} changed after it was uploaded (a " in result.stderr
    assert snapshot(tree.root) == before
    assert nexus.stored[("main", orphan)] == generation_content(database, orphan[:36])
    assert run_cli(COMMAND, env=environment).returncode == 0
    assert len(nexus.posts()) == len(first) + len(second), "and the next run sends nothing"


# --- schema drift -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "warning", "uploaded"),
    [
        (
            SQLITE_SCHEMA.replace("  ended_at INTEGER,\n", ""),
            "no column session_windows.ended_at; a generation counts as complete once no session key uses it",
            {"old"},
        ),
        (
            SQLITE_SCHEMA.replace("current_session_id", "head_session_id"),
            "no column session_nodes.current_session_id; only generations whose window has ended count as complete",
            {"done"},
        ),
    ],
)
def test_a_missing_completion_signal_is_named_and_the_other_one_still_works(
    env: dict[str, str], tmp_path: Path, schema: str, warning: str, uploaded: set[str]
) -> None:
    database = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "drift" / "agent" / "openclaw-agent.sqlite"
    (database.parent.parent / "sessions").mkdir(parents=True)
    connection = create_database(database, schema)
    ids = {name: new_session_id() for name in ("old", "live", "done")}
    has_ended = "ended_at" in schema
    nodes = "current_session_id" if "current_session_id" in schema else "head_session_id"
    for name, session_id in ids.items():
        columns = "session_id, session_key, created_at, updated_at" + (", ended_at" if has_ended else "")
        values = (session_id, name, 0, 0) + ((1 if name == "done" else None,) if has_ended else ())
        connection.execute(f"INSERT INTO session_windows ({columns}) VALUES ({', '.join('?' * len(values))})", values)
        append_events(connection, session_id, transcript_lines(transcript(session_id)))
    for key in ("live", "done"):
        connection.execute(
            f"INSERT INTO session_nodes (session_key, {nodes}, entry_json, updated_at) VALUES (?, ?, '{{}}', 0)",
            (key, ids[key]),
        )
    connection.close()
    result = run_cli(COMMAND, "--agent", "drift", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and warning in result.stderr and "Traceback" not in result.stderr
    assert set(inbox(env, "drift")) == {f"{ids[name]}.jsonl" for name in uploaded}


def test_unreadable_transcript_table_is_an_error_and_the_jsonl_part_still_runs(
    tree: SqliteTree, env: dict[str, str], tmp_path: Path
) -> None:
    tree.database.unlink()
    create_database(tree.database, SQLITE_SCHEMA.replace("event_json", "payload_json")).close()
    result = run_cli(COMMAND, env=env)
    assert_clean_failure(result, 1)
    assert "no column transcript_events.event_json; its transcripts cannot be read" in result.stderr
    assert set(inbox(env)) == {name for name in tree.expected_uploads if ".deleted." in name}


def test_database_of_a_release_before_sqlite_sessions_is_ignored_quietly(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    tree = build_realistic(tmp_path / "openclaw")
    database = tree.root / "agents" / "main" / "agent" / "openclaw-agent.sqlite"
    create_database(database, "CREATE TABLE auth_profiles (id TEXT PRIMARY KEY, data TEXT);").close()
    environment = {**clean_env, "OPENCLAW_STATE_DIR": str(tree.root), "NEXUS_STATE_DIR": str(tmp_path / "state")}
    result = run_cli(COMMAND, env=environment)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert inbox(environment) == tree.expected_uploads


def test_a_corrupt_database_is_one_clear_error(tree: SqliteTree, env: dict[str, str]) -> None:
    tree.database.write_bytes(b"this is not a database" * 100)
    result = run_cli(COMMAND, env=env)
    assert_clean_failure(result, 1)
    assert f"agent main: cannot read {tree.database}: file is not a database" in result.stderr
    assert set(inbox(env)) == {name for name in tree.expected_uploads if ".deleted." in name}


# --- writers in other processes -----------------------------------------------------------


def test_locked_database_is_retried_then_skipped_to_the_next_run_with_exit_75(
    tree: SqliteTree, env: dict[str, str], writers: list[Writer]
) -> None:
    writers.append(Writer(tree.database, "exclusive"))
    files = side_files(tree.database)
    result = run_cli(COMMAND, env=env)
    assert_clean_failure(result, 75)
    assert "database is locked" in result.stderr and "skipped until the next run" in result.stderr
    assert set(inbox(env)) == {name for name in tree.expected_uploads if ".deleted." in name}
    assert side_files(tree.database) == files, "a failed attempt leaves nothing behind"
    writers[0].stop()
    assert run_cli(COMMAND, env=env).returncode == 0
    assert inbox(env) == tree.expected_uploads


@pytest.mark.parametrize("mode", ["busy", "reopening"])
def test_uploads_while_another_process_writes_in_wal_mode(
    tree: SqliteTree, env: dict[str, str], writers: list[Writer], nexus: NexusDouble, mode: str
) -> None:
    environment = http_env(env, nexus)
    writer = Writer(tree.database, mode)
    writers.append(writer)
    for _ in range(4):
        result = run_cli(COMMAND, env=environment)
        # A writer that keeps reopening the database can make a read fail for this run (exit
        # 1, retried next run); one that keeps its connection, as the Gateway does, cannot.
        assert result.returncode in ((0,) if mode == "busy" else (0, 1)), result.stderr
        assert "Traceback" not in result.stderr
        time.sleep(0.2)
    writes = int(writer.stop())
    assert writes > 20, "the writer kept writing during the runs"
    result = run_cli(COMMAND, "--json", env=environment)
    assert result.returncode == 0, result.stderr
    connection = sqlite3.connect(tree.database)
    (current,) = connection.execute(
        "SELECT current_session_id FROM session_nodes WHERE session_key = 'agent:main:main'"
    )
    ended = {row[0] for row in connection.execute("SELECT session_id FROM session_windows")} - {current[0]}
    connection.close()
    assert len(ended) > len(tree.expected_uploads), "generations rolled over while uploads ran"
    for session_id in ended - {tree.ids["ended_current"]} - {tree.ids[name] for name in ("moved_only",)}:
        assert nexus.stored[("main", f"{session_id}.jsonl")] == generation_content(tree.database, session_id), (
            session_id
        )
    assert ("main", f"{current[0]}.jsonl") not in nexus.stored, "the live generation waits"
    posted = [request.body["fileName"] for request in nexus.posts()]  # type: ignore[index]
    assert len(posted) == len(set(posted)), "each generation was sent once"
