"""P2 (SPEC 9): a run with nothing new over 50,000 already-uploaded transcripts, in both of
OpenClaw's storage eras, each against a bare baseline of the same data (all timed as whole
processes). Bars: within 3x of the baseline, and under 1 s.

- JSONL files: 50,000 archives in a sessions directory; baseline: a bare ``os.scandir`` +
  ``stat`` walk of that directory.
- SQLite: 50,000 complete generations in an agent database (WAL mode, 4 events each) beside a
  sessions directory; baseline: a bare ``SELECT session_id`` of every event row through
  ``sqlite3`` plus the ``os.scandir`` + ``stat`` walk of the sessions directory.

Run: .venv/bin/python -m bench.p2_nothing_new [--count 50000] [--runs 7] [--storage jsonl|sqlite|both]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.common import BIN, STAMP, env_for, fmt_ratio, median, receiver, report, timed

WALK = "import os, sys\nfor entry in os.scandir(sys.argv[1]):\n    entry.stat(follow_symlinks=False)\n"
SELECT_AND_WALK = (
    "import os, sqlite3, sys\n"
    "connection = sqlite3.connect(f'file:{sys.argv[2]}?mode=ro&immutable=1', uri=True)\n"
    "for row in connection.execute('SELECT session_id FROM transcript_events'):\n"
    "    pass\n"
    "for entry in os.scandir(sys.argv[1]):\n"
    "    entry.stat(follow_symlinks=False)\n"
)
EVENTS_PER_GENERATION = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--storage", choices=("jsonl", "sqlite", "both"), default="both")
    args = parser.parse_args()
    passed = True
    for storage in ("jsonl", "sqlite"):
        if args.storage in (storage, "both"):
            passed &= measure(storage, count=args.count, runs=args.runs)
    return 0 if passed else 1


def measure(storage: str, *, count: int, runs: int) -> bool:
    with tempfile.TemporaryDirectory(prefix=f"nexus-bench-p2-{storage}-") as scratch_name:
        scratch = Path(scratch_name)
        agent = scratch / "openclaw" / "agents" / "bench"
        sessions = agent / "sessions"
        sessions.mkdir(parents=True)
        if storage == "jsonl":
            make_jsonl_tree(sessions, count)
            baseline_name = "bare scandir + stat walk"
            baseline = [sys.executable, "-c", WALK, str(sessions)]
        else:
            database = agent / "agent" / "openclaw-agent.sqlite"
            make_database(database, count)
            baseline_name = "bare SELECT session_id of every event row + scandir/stat walk of sessions/"
            baseline = [sys.executable, "-c", SELECT_AND_WALK, str(sessions), str(database)]
        state_dir = scratch / "state"
        command = [str(BIN / "nexus-session-upload"), "--agent", "bench", "--state-dir", str(state_dir)]
        with receiver(0.0) as url:
            env = env_for(OPENCLAW_STATE_DIR=str(scratch / "openclaw"), NEXUS_ENDPOINT=url, NEXUS_API_KEY="bench-key")
            first = timed(command, env=env)
            print(f"first run uploaded {count} transcripts ({storage}) in {first:.1f} s")
            markers = sum(path.stat().st_size for path in state_dir.glob("session-upload.markers*.json"))
            ours, bare = [], []
            for _ in range(runs):
                ours.append(timed(command, env=env))
                bare.append(timed(baseline))
    ratio = median(ours) / median(bare)
    unit = "sessions in SQLite" if storage == "sqlite" else "transcript files"
    report(
        f"P2 nothing-new run over {count} marked {unit}, medians of {runs} runs",
        [
            ("markers files", f"{markers / 1e6:.1f} MB"),
            ("nexus-session-upload (nothing new)", f"{median(ours) * 1000:.0f} ms  (bar < 1000 ms)"),
            (f"baseline: {baseline_name}", f"{median(bare) * 1000:.0f} ms"),
            ("ratio (bar <= 3x)", fmt_ratio(ratio)),
        ],
    )
    return ratio <= 3 and median(ours) < 1


def make_jsonl_tree(sessions: Path, count: int) -> None:
    for number in range(count):
        session_id = f"{number:08x}-0000-4000-8000-000000000000"
        (sessions / f"{session_id}.jsonl.reset.{STAMP}").write_bytes(
            b'{"type":"session","version":3,"id":"%s"}\n' % session_id.encode()
        )


def make_database(database: Path, count: int, *, events_per_session: int = EVENTS_PER_GENERATION) -> None:
    """``count`` sessions of one session key, all but the last replaced (so complete: each is
    one segment), with the tables and columns OpenClaw's agent database declares."""
    from tests.openclaw_tree import SQLITE_SCHEMA, create_database

    connection = create_database(database, SQLITE_SCHEMA)
    ids = [f"{number:08x}-0000-4000-8000-000000000000" for number in range(count)]
    connection.execute("BEGIN")
    connection.executemany(
        "INSERT INTO session_windows (session_id, session_key, reason, created_at, updated_at, ended_at)"
        " VALUES (?, 'agent:bench:main', 'reset', 0, 0, 1)",
        ((session_id,) for session_id in ids),
    )
    connection.executemany(
        "INSERT INTO transcript_events (session_id, seq, event_json, created_at) VALUES (?, ?, ?, 0)",
        ((session_id, seq, _event(session_id, seq)) for session_id in ids for seq in range(events_per_session)),
    )
    connection.execute(
        "INSERT INTO session_nodes (session_key, current_session_id, entry_json, updated_at)"
        " VALUES ('agent:bench:main', 'ffffffff-0000-4000-8000-000000000000', '{}', 0)"
    )
    connection.execute("COMMIT")
    connection.close()


def _event(session_id: str, seq: int) -> str:
    if seq == 0:
        return json.dumps({"type": "session", "version": 4, "id": session_id})
    role = "user" if seq % 2 else "assistant"
    return json.dumps({"type": "message", "id": f"m{seq}", "message": {"role": role, "content": "ok " * 20}})


if __name__ == "__main__":
    raise SystemExit(main())
