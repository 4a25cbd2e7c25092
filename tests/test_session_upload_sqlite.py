"""nexus-session-upload on agents of OpenClaw's SQLite era (per-agent WAL database), driven as
a user drives it: databases built with the documented schema and drifted variants, writers in
other processes, the embedded store and the local HTTP double of Nexus."""

from __future__ import annotations

import hashlib
import json
import shutil
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
    OLD_MS,
    SQLITE_SCHEMA,
    SessionWriter,
    SqliteTree,
    add_session,
    append,
    build_realistic,
    build_sqlite,
    create_database,
    delete_session,
    new_session_id,
    session_with_an_untimed_boundary,
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
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{writes % 1000:03d}Z"
    if writes % 7 == 0:
        event = {"type": "reset", "id": f"{writes:08x}", "parentId": None, "timestamp": stamp, "reason": "new"}
    else:
        event = {"type": "message", "id": str(uuid.uuid4()), "text": "x" * (writes % 50) * 40}
    connection.execute(
        "INSERT INTO transcript_events (session_id, seq, event_json, created_at) VALUES (?, ?, ?, 0)",
        (current, last + 1, json.dumps(event)))
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
    # The embedded store, asked for by name (with no endpoint at all, runs that store say so).
    clean_env.update(
        OPENCLAW_STATE_DIR=str(tree.root), NEXUS_STATE_DIR=str(tmp_path / "state"), NEXUS_ENDPOINT="embedded"
    )
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


def event_lines(database: Path, session_id: str) -> list[bytes]:
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute(
            "SELECT CAST(event_json AS BLOB), event_zstd FROM transcript_events WHERE session_id = ? ORDER BY seq",
            (session_id,),
        ).fetchall()
    finally:
        connection.close()
    return [event or zstandard.ZstdDecompressor().decompress(blob) for event, blob in rows]


def event_ids(transcripts: list[bytes]) -> list[str]:
    """The ids of every event sent (header lines excluded), as often as they were sent."""
    ids = []
    for content in transcripts:
        lines = content.splitlines()
        assert json.loads(lines[0])["type"] == "session"
        ids += [json.loads(line)["id"] for line in lines[1:]]
    return ids


def side_files(database: Path) -> list[str]:
    return sorted(path.name for path in database.parent.iterdir() if path.name != database.name)


# --- what is complete, and nothing under OpenClaw's directory changes ----------------------


def test_complete_segments_of_every_source_are_sent_and_openclaw_is_untouched(
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
    counts = json.loads(again.stdout)["counts"]
    assert counts["uploaded"] == 0 and counts["waiting"] == 2, counts
    main = tree.writers["main"]
    segment = markers(env)["main"][next(name for name in tree.expected_uploads if ".jsonl.reset." in name
                                        and name.startswith(main.session_id))]  # fmt: skip
    assert {"session", "first", "last", "sha256", "status"} <= set(segment)
    assert segment["status"] == "uploaded" and segment["session"] == main.session_id


def test_a_live_segment_waits_whatever_its_window_says_until_a_boundary_closes_it(
    tree: SqliteTree, env: dict[str, str]
) -> None:
    assert run_cli(COMMAND, env=env).returncode == 0
    main = tree.writers["main"]
    connection = sqlite3.connect(tree.database, isolation_level=None)
    # OpenClaw marks the window done and ended after every turn: it says nothing of the session.
    connection.execute("UPDATE session_windows SET status = 'done', ended_at = 1 WHERE session_id = ?",
                       (main.session_id,))  # fmt: skip
    assert run_cli(COMMAND, env=env).returncode == 0
    assert set(inbox(env)) == set(tree.expected_uploads)
    count = len(main.lines)
    start = count - 2  # the live segment: the last turn's two events
    name = main.boundary("new")
    append(connection, main, count)
    connection.close()
    assert run_cli(COMMAND, env=env).returncode == 0
    assert inbox(env)[name] == main.segment_bytes(start, len(main.lines))
    assert sorted(set(inbox(env)) - set(tree.expected_uploads)) == [name]


def test_a_session_no_key_uses_completes_once_quiet_for_the_grace_period(tree: SqliteTree, env: dict[str, str]) -> None:
    writer = SessionWriter(new_session_id(), start_ms=time.time_ns() // 1_000_000 - 10_000)
    writer.turn("just now")
    connection = sqlite3.connect(tree.database, isolation_level=None)
    add_session(connection, writer, key="agent:main:replaced-now", current=False)
    connection.execute(
        "UPDATE transcript_events SET created_at = ? WHERE session_id = ?", (writer.last_ms, writer.session_id)
    )
    connection.close()
    for _ in range(2):  # the second run finds the database unchanged and repeats the first's findings
        waiting = run_cli(COMMAND, "--json", "--grace-minutes", "10", env=env)
        assert json.loads(waiting.stdout)["counts"]["waiting"] == 3, waiting.stderr
        assert not [name for name in inbox(env) if name.startswith(writer.session_id)]
    assert run_cli(COMMAND, "--grace-minutes", "0", env=env).returncode == 0
    (name,) = [name for name in inbox(env) if name.startswith(writer.session_id)]
    assert inbox(env)[name] == writer.segment_bytes(1, len(writer.lines)) and ".jsonl.ended." in name


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


# --- the Nexus contract; each event once ---------------------------------------------------


def test_http_upload_of_segments_sends_the_contract(tree: SqliteTree, env: dict[str, str], nexus: NexusDouble) -> None:
    result = run_cli(COMMAND, env=http_env(env, nexus))
    assert result.returncode == 0, result.stderr
    posts = nexus.posts()
    assert {request.body["fileName"] for request in posts} == set(tree.expected_uploads)  # type: ignore[index]
    for request in posts:
        body = request.body
        assert body is not None
        content = tree.expected_uploads[body["fileName"]]
        assert body["transcript"].encode() == content and body["agentId"] == "main"
        assert body["archiveReason"] == body["fileName"].split(".jsonl.")[1].split(".")[0]
        assert json.loads(content.splitlines()[0])["id"] == body["sessionId"]
        assert body["sha256"] == hashlib.sha256(content).hexdigest() and body["bytes"] == len(content)
    long_id = tree.writers["long"].session_id
    assert [p.status for p in posts if p.body and p.body["sessionId"] == long_id] == [400], "not a UUID: rejected"
    assert run_cli(COMMAND, env=http_env(env, nexus)).returncode == 0
    assert len(nexus.posts()) == len(posts), "a second run uploads nothing"


def test_deleting_a_session_after_an_upload_sends_only_what_was_not_sent(tree: SqliteTree, env: dict[str, str]) -> None:
    assert run_cli(COMMAND, env=env).returncode == 0
    main = tree.writers["main"]
    connection = sqlite3.connect(tree.database, isolation_level=None)
    deleted = delete_session(connection, main, tree.sessions_dir, key="agent:main:main")
    connection.close()
    result = run_cli(COMMAND, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counts"]["uploaded"] == 1
    assert inbox(env)[deleted] == tree.live[main.session_id]
    ids = event_ids(list(inbox(env).values()))
    assert len(ids) == len(set(ids)), "no event twice"
    assert {json.loads(line)["id"] for line in main.lines[1:]} <= set(ids), "every event of the session once"
    third = run_cli(COMMAND, "--json", env=env)
    assert json.loads(third.stdout)["counts"]["uploaded"] == 0


def test_a_cold_session_brought_back_by_a_later_turn_repeats_nothing(tree: SqliteTree, env: dict[str, str]) -> None:
    assert run_cli(COMMAND, env=env).returncode == 0
    cold = tree.writers["cold"]
    count = len(cold.lines)
    cold.turn("after restore")
    name = cold.boundary("reset")
    connection = sqlite3.connect(tree.database, isolation_level=None)
    connection.execute("DELETE FROM session_transcript_cold_archives WHERE session_id = ?", (cold.session_id,))
    append(connection, cold, 0)  # the old rows come back, the new ones follow
    connection.execute("INSERT INTO session_nodes VALUES ('agent:main:cold', ?, '{}', 0)", (cold.session_id,))
    connection.close()
    assert run_cli(COMMAND, env=env).returncode == 0
    assert inbox(env)[name] == cold.segment_bytes(count, len(cold.lines)), "only the events after the sent ones"
    ids = event_ids(list(inbox(env).values()))
    assert len(ids) == len(set(ids))


def test_a_server_keeping_one_transcript_per_session_id_makes_the_second_segment_a_conflict(
    tree: SqliteTree, env: dict[str, str], nexus: NexusDouble
) -> None:
    nexus.keeps_one_per_session = True
    nexus.send_sha256_in_409 = False
    environment = http_env(env, nexus)
    result = run_cli(COMMAND, "--json", env=environment)
    assert_clean_failure(result, 1)
    summary = json.loads(result.stdout)
    assert summary["counts"]["conflicts"] == 3 and summary["outcome"] == "partial"  # main, deleted, table_only
    assert "conflict: the server answered 409 without sha256" in result.stderr
    conflicts = [name for name, marker in markers(env)["main"].items() if marker.get("status") == "conflict"]
    assert len(conflicts) == 3
    record = json.loads((Path(env["NEXUS_STATE_DIR"]) / "session-upload.json").read_text())
    assert record["standing"]["conflicts"] == 3


def test_switching_the_destination_makes_every_complete_segment_due_there(
    tree: SqliteTree, env: dict[str, str], nexus: NexusDouble
) -> None:
    assert run_cli(COMMAND, env=env).returncode == 0, "into the embedded store first"
    result = run_cli(COMMAND, "--json", env=http_env(env, nexus))
    assert result.returncode == 0, result.stderr
    sent = {request.body["fileName"] for request in nexus.posts() if request.body}
    assert sent == set(tree.expected_uploads)
    document = json.loads((Path(env["NEXUS_STATE_DIR"]) / "session-upload.markers.json").read_text())
    assert len(document["destinations"]) == 2


def test_markers_of_the_layout_before_destinations_are_kept(tree: SqliteTree, env: dict[str, str]) -> None:
    assert run_cli(COMMAND, env=env).returncode == 0
    path = Path(env["NEXUS_STATE_DIR"]) / "session-upload.markers.json"
    document = json.loads(path.read_text())
    (destination,) = document["destinations"].values()
    path.write_text(json.dumps({"version": 1, "agents": destination["agents"]}))
    result = run_cli(COMMAND, "--json", env=env)
    assert json.loads(result.stdout)["counts"]["uploaded"] == 0, result.stderr
    assert "destinations" in json.loads(path.read_text()) and "agents" not in json.loads(path.read_text())


def test_oversize_non_utf8_and_headless_sessions_are_rejected_locally(env: dict[str, str], nexus: NexusDouble) -> None:
    database = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "bad" / "agent" / "openclaw-agent.sqlite"
    connection = create_database(database)
    huge, latin, headless = (SessionWriter(new_session_id()) for _ in range(3))
    huge.turn("huge", reply_bytes=LIMIT_BYTES)
    latin.turn("latin")
    headless.turn("no header")
    for writer in (huge, latin, headless):
        add_session(connection, writer, key=f"k{writer.session_id}", current=False,
                    lines=writer.lines[1:] if writer is headless else None)  # fmt: skip
    connection.execute("UPDATE transcript_events SET event_json = CAST(X'7B2263616CE9227D' AS TEXT) "
                       "WHERE session_id = ? AND seq = 1", (latin.session_id,))  # fmt: skip
    connection.close()
    result = run_cli(COMMAND, "--agent", "bad", env=http_env(env, nexus))
    assert result.returncode == 0, result.stderr
    assert f"bad/{huge.session_id}.jsonl.ended." in result.stderr and f"larger than the limit of {LIMIT_BYTES}" in (
        result.stderr
    )
    assert "not UTF-8 text (invalid byte at offset" in result.stderr
    assert f"session {headless.session_id}: its first line is not a session header" in result.stderr
    assert nexus.posts() == []
    again = run_cli(COMMAND, "--agent", "bad", env=http_env(env, nexus))
    assert again.returncode == 0 and again.stderr == "", "rejected once, not every run"


def test_dry_run_lists_segments_and_changes_nothing(tree: SqliteTree, env: dict[str, str]) -> None:
    result = run_cli(COMMAND, "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    *lines, total = result.stdout.splitlines()
    assert total == f"dry run: {len(lines)} item(s) would be handled; nothing was changed"
    listed = {line.split()[2].split("/", 1)[1] for line in lines}
    assert listed == set(tree.expected_uploads)
    assert "events, segment ended by reset)" in result.stdout
    assert not Path(env["NEXUS_STATE_DIR"]).exists()


def test_agent_of_the_sqlite_era_without_a_sessions_directory(env: dict[str, str], tmp_path: Path) -> None:
    database = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "solo" / "agent" / "openclaw-agent.sqlite"
    connection = create_database(database)
    writer = SessionWriter(new_session_id())
    writer.turn("solo")
    name = writer.boundary("reset")
    writer.turn("live")
    add_session(connection, writer, key="agent:solo:main")
    connection.close()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"agents": {"solo": {}}}))
    result = run_cli(COMMAND, "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert inbox(env, "solo") == {name: writer.segment_bytes(1, 4)}


# --- migration from JSONL files: never an event twice -------------------------------------


def test_an_agent_moving_from_jsonl_to_sqlite_never_sends_an_event_twice(
    tmp_path: Path, clean_env: dict[str, str], nexus: NexusDouble
) -> None:
    """What ``openclaw doctor --fix`` does: live and orphan JSONL transcripts are imported byte
    for byte (an orphan under a new current key ``agent:main:recovered:<id>``), their files
    moved to ``session-sqlite-import-archive/<key>.<id>.jsonl.imported-<ms>``; archives stay."""
    tree = build_realistic(tmp_path / "openclaw")
    environment = http_env(clean_env, nexus, OPENCLAW_STATE_DIR=str(tree.root), NEXUS_STATE_DIR=str(tmp_path / "s"))
    assert run_cli(COMMAND, env=environment).returncode == 0
    first = len(nexus.posts())
    orphan = next(name for name in tree.expected_uploads if name.endswith(".jsonl") and "-topic-" not in name)
    database = tree.root / "agents" / "main" / "agent" / "openclaw-agent.sqlite"
    connection = create_database(database)
    moved = tree.root / "agents" / "main" / "session-sqlite-import-archive"
    moved.mkdir()
    writer = SessionWriter(orphan[:36])
    writer.lines = transcript_lines_of(tree.sessions_dir / orphan)
    add_session(connection, writer, key=f"agent:main:recovered:{writer.session_id}")
    for path in list(tree.sessions_dir.glob("*.jsonl")):
        path.rename(moved / f"agent_main_x.{path.name}.imported-1796063411711")
    # Resumed after the move: a reset closes the imported history and one more turn.
    count = len(writer.lines)
    name = writer.boundary("reset")
    writer.turn("after the move")
    append(connection, writer, count)
    connection.close()
    nexus.stored.clear()  # so a second copy of anything would be stored, not answered 409
    result = run_cli(COMMAND, env=environment)
    assert result.returncode == 0, result.stderr
    second = [request.body for request in nexus.posts()[first:] if request.body]
    assert [body["fileName"] for body in second] == [name], "only the boundary the import did not hold"
    assert second[0]["transcript"].encode() == writer.segment_bytes(count, count + 1)
    assert run_cli(COMMAND, env=environment).returncode == 0
    assert len(nexus.posts()) == first + 1, "and the next run sends nothing"


def transcript_lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


# --- schema drift, broken databases -------------------------------------------------------


def test_a_database_of_another_schema_version_is_read_with_one_warning_when_it_has_the_columns(
    tree: SqliteTree, env: dict[str, str]
) -> None:
    connection = sqlite3.connect(tree.database, isolation_level=None)
    connection.execute("PRAGMA user_version = 24")
    connection.close()
    result = run_cli(COMMAND, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "schema version 24, not one this release was checked against" in (
        result.stderr
    )
    assert inbox(env) == tree.expected_uploads


def test_a_database_without_the_columns_needed_is_an_error_and_the_rest_still_runs(
    tree: SqliteTree, env: dict[str, str]
) -> None:
    tree.database.unlink()
    create_database(tree.database, SQLITE_SCHEMA.replace("event_json", "payload_json").replace("= 23", "= 30")).close()
    result = run_cli(COMMAND, env=env)
    assert_clean_failure(result, 1)
    assert "schema version 30 has no transcript_events.event_json; its transcripts cannot be read" in result.stderr
    assert inbox(env) == {}, "its archives wait with it: nothing tells which of their events were sent"


def test_database_of_a_release_before_sqlite_sessions_is_ignored_quietly(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    tree = build_realistic(tmp_path / "openclaw")
    database = tree.root / "agents" / "main" / "agent" / "openclaw-agent.sqlite"
    create_database(database, "CREATE TABLE auth_profiles (id TEXT PRIMARY KEY, data TEXT);").close()
    environment = {**clean_env, "OPENCLAW_STATE_DIR": str(tree.root), "NEXUS_STATE_DIR": str(tmp_path / "state")}
    environment["NEXUS_ENDPOINT"] = "embedded"
    result = run_cli(COMMAND, env=environment)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert inbox(environment) == tree.expected_uploads


def test_a_corrupt_database_is_one_clear_error(tree: SqliteTree, env: dict[str, str]) -> None:
    tree.database.write_bytes(b"this is not a database" * 100)
    result = run_cli(COMMAND, env=env)
    assert_clean_failure(result, 1)
    assert f"agent main: cannot read {tree.database}: file is not a database" in result.stderr
    assert inbox(env) == {}


def test_an_archive_that_does_not_decompress_is_read_from_the_table_or_rejected_alone(
    tree: SqliteTree, env: dict[str, str]
) -> None:
    (archive,) = tree.sessions_dir.glob("*.deleted.*.zst")
    archive.write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage" * 10)
    assert run_cli(COMMAND, env=env).returncode == 0
    assert inbox(env) == tree.expected_uploads, "the table holds the same archive"
    (Path(env["NEXUS_STATE_DIR"]) / "session-upload.markers.json").unlink()
    shutil.rmtree(Path(env["NEXUS_STATE_DIR"]) / "nexus-store")
    connection = sqlite3.connect(tree.database, isolation_level=None)
    connection.execute("UPDATE session_transcript_archives SET archive_blob = X'DEADBEEF'")
    connection.close()
    result = run_cli(COMMAND, env=env)
    assert result.returncode == 0, result.stderr
    assert f"main/{archive.name}: rejected: archive {archive.name}: not a valid zstd archive" in result.stderr
    gone = (tree.writers["deleted"].session_id, tree.writers["table_only"].session_id)
    assert set(inbox(env)) == {name for name in tree.expected_uploads if not name.startswith(gone)}


def test_a_boundary_without_a_timestamp_names_its_segment_by_the_boundary_id(
    env: dict[str, str], tmp_path: Path
) -> None:
    database = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "t" / "agent" / "openclaw-agent.sqlite"
    connection = create_database(database)
    writer, name = session_with_an_untimed_boundary()
    add_session(connection, writer, key="agent:t:main")
    connection.close()
    result = run_cli(COMMAND, "--agent", "t", env=env)
    assert result.returncode == 0, result.stderr
    assert set(inbox(env, "t")) == {name}


# --- writers in other processes -----------------------------------------------------------


def test_locked_database_is_retried_then_skipped_to_the_next_run_with_exit_75(
    tree: SqliteTree, env: dict[str, str], writers: list[Writer]
) -> None:
    writers.append(Writer(tree.database, "exclusive"))
    files = side_files(tree.database)
    result = run_cli(COMMAND, env=env)
    assert_clean_failure(result, 75)
    assert "database is locked" in result.stderr and "skipped until the next run" in result.stderr
    assert inbox(env) == {}
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
    runs = 0
    while runs < 4 or (len(nexus.posts()) < len(tree.expected_uploads) + 2 and runs < 20):
        result = run_cli(COMMAND, env=environment)
        # A writer that keeps reopening the database can make a read fail for this run (exit
        # 1, retried next run); one that keeps its connection, as the Gateway does, cannot.
        assert result.returncode in ((0,) if mode == "busy" else (0, 1)), result.stderr
        assert "Traceback" not in result.stderr
        runs += 1
    writes = int(writer.stop())
    assert writes > 20, "the writer kept writing during the runs"
    result = run_cli(COMMAND, "--json", env=environment)
    assert result.returncode == 0, result.stderr
    lines = event_lines(tree.database, tree.writers["main"].session_id)
    ends = [index for index, line in enumerate(lines) if json.loads(line)["type"] == "reset"]
    complete = {json.loads(line)["id"] for line in lines[1 : ends[-1] + 1]}
    sent = event_ids([content for (agent, name), content in nexus.stored.items()
                      if name.startswith(tree.writers["main"].session_id)])  # fmt: skip
    assert len(sent) == len(set(sent)), "each event once"
    assert set(sent) == complete, "every event of a complete segment, nothing of the live one"


def test_a_generation_an_earlier_release_uploaded_whole_is_not_sent_again(
    tree: SqliteTree, env: dict[str, str]
) -> None:
    """Markers of the layout before destinations, holding a generation marker (the whole
    session as ``<id>.jsonl``, by rows and last seq), as the release before segments wrote them."""
    replaced = tree.writers["replaced"]
    state_dir = Path(env["NEXUS_STATE_DIR"])
    state_dir.mkdir()
    generation = {"rows": len(replaced.lines), "lastSeq": len(replaced.lines) - 1, "status": "uploaded"}
    document = {"version": 1, "agents": {"main": {f"{replaced.session_id}.jsonl": generation}}}
    (state_dir / "session-upload.markers.json").write_text(json.dumps(document))
    result = run_cli(COMMAND, env=env)
    assert result.returncode == 0, result.stderr
    assert set(inbox(env)) == {name for name in tree.expected_uploads if not name.startswith(replaced.session_id)}
    marker = markers(env)["main"][f"{replaced.session_id}.jsonl"]
    assert (
        marker["first"] == json.loads(replaced.lines[1])["id"]
        and marker["last"] == json.loads(replaced.lines[-1])["id"]
    )


def test_a_settled_unchanged_session_is_counted_by_its_key_without_reading_its_events(tmp_path: Path) -> None:
    from nexus_jobs.openclaw import database as openclaw_db

    path = tmp_path / "agent" / "openclaw-agent.sqlite"
    path.parent.mkdir()
    connection = create_database(path)
    ids = [new_session_id() for _ in range(3)]
    with connection:
        connection.executemany(
            "INSERT INTO transcript_events (session_id, seq, event_json, created_at) VALUES (?, ?, '{}', ?)",
            [(session_id, seq, OLD_MS + seq) for session_id in ids for seq in range(4)],
        )
    # A statement reading an event column is seen here.
    read: list[str] = []

    def authorizer(action: int, table: str | None, column: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_READ and table == "transcript_events" and column in ("created_at", "event_json"):
            read.append(column)
        return sqlite3.SQLITE_OK

    connection = _authorized(connection, authorizer)
    everything = openclaw_db._scan(connection, path, {session_id: (4, 3) for session_id in ids})
    assert read == [], "with every session settled and unchanged, no event column is read"
    assert [session.rows for session in everything.sessions] == [4, 4, 4]
    settled = {ids[0]: (4, 3), ids[1]: (3, 2)}  # the second changed since it was settled
    found = openclaw_db._scan(connection, path, settled)
    by_id = {session.session_id: session for session in found.sessions}
    assert set(by_id) == set(ids) and all(session.rows == 4 and session.last_seq == 3 for session in by_id.values())
    assert by_id[ids[0]].last_event_ms == 0, "a settled, unchanged session's last event is not looked up"
    assert by_id[ids[1]].last_event_ms == by_id[ids[2]].last_event_ms == OLD_MS + 3
    connection.close()


def _authorized(connection: sqlite3.Connection, authorizer: object) -> sqlite3.Connection:
    connection.set_authorizer(authorizer)  # type: ignore[arg-type]
    return connection
