"""nexus-session-upload against the real OpenClaw (the pinned npm package, see
``tests/openclaw_real.py``): real sessions on two agents (turns, ``/reset``, ``/new``, a long
reply stored zstd-compressed, deletions before and after an upload, a webhook run in a key of
its own, a session left live, more turns after an upload), checked against OpenClaw's own data
by event id.

One Gateway for the module (about 30 s in all, most of it the Gateway's start).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.conftest import run_cli
from tests.nexus_double import NexusDouble
from tests.openclaw_real import OpenClaw, install
from tests.test_session_upload import snapshot

COMMAND = "nexus-session-upload"


@pytest.fixture(scope="module")
def openclaw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenClaw]:
    instance = OpenClaw(tmp_path_factory.mktemp("openclaw"), install())
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


def upload(env: dict[str, str]) -> dict[str, Any]:
    """A run as cron starts it; it must be quiet and succeed."""
    result = run_cli(COMMAND, "--json", "--grace-minutes", "0", env=env, timeout_seconds=120)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def events_of(lines: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.strip()]


def openclaw_view(openclaw: OpenClaw) -> tuple[set[str], set[str]]:
    """From OpenClaw's own data (read after its Gateway stopped): the ids of events in complete
    segments, and of events in live ones. A reset boundary closes its segment; the events after
    the last boundary of a session some key still uses are live; a deleted session's archive
    holds every event it had."""
    complete: set[str] = set()
    live: set[str] = set()
    for agent in ("main", "ops"):
        connection = sqlite3.connect(f"file:{openclaw.database(agent)}?mode=ro&immutable=1", uri=True)
        current = {row[0] for row in connection.execute("SELECT current_session_id FROM session_nodes")}
        # A webhook run's key (agent:<agent>:cron:<uuid>) is never continued: once its run is
        # done, its session is complete though it stays the key's current one.
        current -= {
            session_id
            for session_id, key, status in connection.execute(
                "SELECT session_id, session_key, status FROM session_windows"
            )
            if ":cron:" in key and status == "done"
        }
        sessions: dict[str, list[dict[str, Any]]] = {}
        for session_id, text, compressed in connection.execute(
            "SELECT session_id, event_json, event_zstd FROM transcript_events WHERE seq > 0 ORDER BY session_id, seq"
        ):
            raw = text.encode() if text is not None else zstandard.ZstdDecompressor().decompress(compressed)
            sessions.setdefault(session_id, []).append(json.loads(raw))
        for session_id, events in sessions.items():
            ends = [index for index, event in enumerate(events) if event["type"] == "reset"]
            cut = ends[-1] + 1 if ends and session_id in current else (0 if session_id in current else len(events))
            complete.update(event["id"] for event in events[:cut])
            live.update(event["id"] for event in events[cut:])
        for (blob,) in connection.execute("SELECT archive_blob FROM session_transcript_archives"):
            content = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
            complete.update(event["id"] for event in events_of(content.split(b"\n"))[1:])
        connection.close()
    return complete, live


def received(nexus: NexusDouble) -> Counter[str]:
    """Every event id the receiver got, as often as it got it (headers excluded)."""
    ids: Counter[str] = Counter()
    for post in nexus.posts():
        if post.status == 200 and post.body is not None:
            lines = post.body["transcript"].encode().split(b"\n")
            assert json.loads(lines[0])["type"] == "session", post.body["fileName"]
            ids.update(event["id"] for event in events_of(lines[1:]))
    return ids


def test_every_event_of_every_complete_segment_reaches_nexus_exactly_once_and_nothing_live(
    openclaw: OpenClaw, nexus: NexusDouble, clean_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **clean_env,
        "OPENCLAW_STATE_DIR": str(openclaw.state_dir),
        "NEXUS_STATE_DIR": str(tmp_path / "state"),
        "NEXUS_ENDPOINT": nexus.url,
        "NEXUS_API_KEY": nexus.api_key,
    }
    main, chat, ops, scratch = "agent:main:main", openclaw.new_key("main"), "agent:ops:main", openclaw.new_key("ops")
    openclaw.turn("main", main, "main 1")
    openclaw.turn("main", main, "main 2")
    openclaw.reset("main", main, "reset")
    openclaw.turn("main", main, "main 3, please answer LONG")
    openclaw.reset("main", main, "new")
    openclaw.turn("main", main, "main 4, live")
    openclaw.turn("main", chat, "chat 1")
    openclaw.reset("main", chat, "reset")
    openclaw.turn("main", chat, "chat 2")
    openclaw.turn("ops", ops, "ops 1 LONG")
    openclaw.reset("ops", ops, "new")
    openclaw.turn("ops", ops, "ops 2, live")
    openclaw.turn("ops", scratch, "scratch 1")
    openclaw.delete("ops", scratch)
    openclaw.hook("ops", "a webhook run")
    first = upload(env)
    # More turns after an upload: a new boundary on main; the chat session, one segment of
    # which was sent, is deleted (its archive repeats that segment).
    openclaw.turn("main", main, "main 5")
    openclaw.reset("main", main, "reset")
    openclaw.turn("main", main, "main 6, live")
    openclaw.delete("main", chat)
    second = upload(env)
    openclaw.stop()

    before = snapshot(openclaw.state_dir)
    third = upload(env)
    assert snapshot(openclaw.state_dir) == before, "OpenClaw's tree changed"

    complete, live = openclaw_view(openclaw)
    got = received(nexus)
    assert complete and live
    assert set(got) == complete, (sorted(complete - set(got))[:5], sorted(set(got) - complete)[:5])
    assert [event for event, times in got.items() if times > 1] == []
    assert set(got) & live == set()
    long_replies = [p for p in nexus.posts() if p.body and "[010] This is a long reply" in p.body["transcript"]]
    assert long_replies, "the long reply (stored zstd-compressed) reached Nexus"
    names = [post.body["fileName"] for post in nexus.posts() if post.body]
    assert len(names) == len(set(names))
    assert any(".jsonl.reset." in name for name in names) and any(".jsonl.new." in name for name in names)
    assert any(".jsonl.deleted." in name for name in names) and any(".jsonl.ended." in name for name in names)
    assert third["counts"]["uploaded"] == 0 and first["counts"]["uploaded"] and second["counts"]["uploaded"]
    print(
        f"\nOpenClaw {openclaw.version}: segments sent {len(names)} "
        f"(runs: {first['counts']['uploaded']}, {second['counts']['uploaded']}, {third['counts']['uploaded']}); "
        f"events sent once {sum(1 for times in got.values() if times == 1)}, duplicated "
        f"{sum(1 for times in got.values() if times > 1)}, live sent {len(set(got) & live)} of {len(live)} live"
    )
