"""P7 (issue 13): nexus-session-upload at 20,000 to 200,000 transcripts, so the growth is
visible. Two agents, each with mostly ``.reset``/``.deleted`` archives spread over twelve
months and some orphan ``.jsonl`` files. At each size, timed as whole processes, side by side:

- the first run, uploading every transcript to the no-wait receiver: time and peak RSS
  (bar: peak RSS <= 120 MB at 200,000);
- the nothing-new run after it: time and peak RSS (bar: <= 60 MB), against a bare
  ``os.scandir`` + ``stat`` walk of the same two directories in a process of its own
  (bar: within 1.5x);
- the SQLite era: a database of ``--events`` events over 5,000 sessions; the nothing-new run
  against a bare ``SELECT`` of every event row plus the walk.

``--before DIR`` runs another release's source tree (a checkout's directory holding
``nexus_jobs``) the same way, for a before/after table. ``--seed-markers`` skips the first
run: the markers are written as a release before this layout wrote them (one JSON document),
which the first nothing-new run converts, so large sizes can be compared without an hour of
uploads; the first run is then not measured.

Run: .venv/bin/python -m bench.p7_scale [--sizes 20000,50000,100000,200000] [--runs 5]
     [--before DIR] [--seed-markers] [--skip-sqlite]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import BIN, env_for, fmt_ratio, median, receiver, report
from bench.p2_nothing_new import SELECT_AND_WALK

WALK = (
    "import os, sys\n"
    "for directory in sys.argv[1:]:\n"
    "    for entry in os.scandir(directory):\n"
    "        entry.stat(follow_symlinks=False)\n"
)
# Runs a command, prints its wall time and its peak RSS in KB (of the child alone).
MEASURE = (
    "import resource, subprocess, sys, time\n"
    "started = time.perf_counter()\n"
    "result = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "elapsed = time.perf_counter() - started\n"
    "print(result.returncode, elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.stderr.write(result.stderr[-800:] if result.returncode else '')\n"
)
AGENTS = ("alpha", "beta")
ORPHAN_SHARE = 20  # one transcript in 20 is an orphan .jsonl, the rest archives
OLD_NS = 1_780_000_000 * 10**9  # mtime of every file: long past any grace period


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,50000,100000,200000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", type=Path, help="source tree of the release to compare with")
    parser.add_argument("--seed-markers", action="store_true", help="write old-layout markers instead of a first run")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=5_000)
    args = parser.parse_args()
    passed = True
    for size in (int(text) for text in args.sizes.split(",") if text):
        passed &= measure_files(size, runs=args.runs, before=args.before, seed=args.seed_markers)
    if not args.skip_sqlite:
        passed &= measure_sqlite(args.events, args.sessions, runs=args.runs, before=args.before)
    return 0 if passed else 1


def command_of(before: Path | None) -> tuple[list[str], dict[str, str]]:
    """How to start nexus-session-upload: this checkout's, or the ``before`` tree's."""
    if before is None:
        return [str(BIN / "nexus-session-upload")], {}
    # -P: not this checkout from the current directory; nor through its editable install.
    launch = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in str(f.__module__)]\n"
        "from nexus_jobs.session_upload.command import main; sys.exit(main())"
    )
    return [sys.executable, "-P", "-c", launch], {"PYTHONPATH": str(before.resolve())}


def run_measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``command`` as a process of its own."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *command], env=env, capture_output=True, text=True, check=False
    )
    code, seconds, peak_kb = result.stdout.split()
    if code != "0":
        raise RuntimeError(f"{command[0]} exited {code}: {result.stderr.strip()}")
    return float(seconds), int(peak_kb) / 1024


def measure_files(size: int, *, runs: int, before: Path | None, seed: bool) -> bool:
    with tempfile.TemporaryDirectory(prefix="nexus-bench-p7-") as scratch_name:
        scratch = Path(scratch_name)
        directories = [
            make_agent(scratch / "openclaw" / "agents" / agent / "sessions", size // 2, number)
            for number, agent in enumerate(AGENTS)
        ]
        state_dir = scratch / "state"
        start, extra = command_of(before)
        command = [*start, "--state-dir", str(state_dir), "--concurrency", "8"]
        rows: list[tuple[str, str]] = []
        with receiver(0.0) as url:
            env = env_for(
                OPENCLAW_STATE_DIR=str(scratch / "openclaw"), NEXUS_ENDPOINT=url, NEXUS_API_KEY="bench-key", **extra
            )
            if seed:
                seed_markers(state_dir, url, directories)
                run_measured(command, env)  # converts the seeded markers once
                first_rss = float("nan")
                rows.append(("first run", "not measured (markers seeded in the previous layout, converted)"))
            else:
                first_seconds, first_rss = run_measured(command, env)
                rows.append(
                    (
                        "first run (upload all)",
                        f"{first_seconds:.1f} s, peak RSS {first_rss:.0f} MB  (bar <= 120 MB at 200k)",
                    )
                )
            ours, ours_rss, bare = [], [], []
            for _ in range(runs):
                seconds, peak = run_measured(command, env)
                ours.append(seconds)
                ours_rss.append(peak)
                bare.append(run_measured([sys.executable, "-c", WALK, *map(str, directories)])[0])
        state_bytes = sum(path.stat().st_size for path in state_dir.iterdir() if path.is_file())
    ratio = median(ours) / median(bare)
    rows += [
        ("state files", f"{state_bytes / 1e6:.1f} MB"),
        ("nothing-new run", f"{median(ours) * 1000:.0f} ms, peak RSS {median(ours_rss):.0f} MB  (bar <= 60 MB)"),
        ("bare scandir + stat walk", f"{median(bare) * 1000:.0f} ms"),
        ("ratio (bar <= 1.5x)", fmt_ratio(ratio)),
    ]
    which = "before" if before else "this checkout"
    report(f"P7 {size:,} transcripts over two agents ({which}), medians of {runs} runs", rows)
    first_ok = seed or size < 200_000 or first_rss <= 120
    return ratio <= 1.5 and median(ours_rss) <= 60 and first_ok


def make_agent(sessions: Path, count: int, number: int) -> Path:
    """``count`` transcripts: archives over twelve months (a few compressed names), one in
    ORPHAN_SHARE an orphan; a sessions.json that references one live session."""
    sessions.mkdir(parents=True)
    live = f"{number:02x}ffffff-0000-4000-8000-000000000000"
    (sessions / "sessions.json").write_text(json.dumps({f"agent:{number}:main": {"sessionId": live}}))
    for index in range(count):
        name = transcript_name(number, index)
        path = sessions / name
        path.write_bytes(b'{"type":"session","version":3,"id":"%s"}\n{"type":"message"}\n' % name[:36].encode())
        os.utime(path, ns=(OLD_NS, OLD_NS))
    return sessions


def transcript_name(agent_number: int, index: int) -> str:
    session_id = f"{agent_number:02x}{index:06x}-0000-4000-8000-000000000000"
    if index % ORPHAN_SHARE == 0:
        return f"{session_id}.jsonl"
    month = 1 + index % 12
    reason = "deleted" if index % 3 == 0 else "reset"
    return f"{session_id}.jsonl.{reason}.2026-{month:02d}-{1 + index % 28:02d}T05-19-01.{index % 1000:03d}Z"


def seed_markers(state_dir: Path, url: str, directories: list[Path]) -> None:
    """Markers as the release before per-period files wrote them: one document."""
    import hashlib

    state_dir.mkdir(mode=0o700)
    agents = {}
    for directory in directories:
        markers = {}
        for entry in os.scandir(directory):
            if entry.name == "sessions.json":
                continue
            info = entry.stat()
            digest = hashlib.sha256(Path(entry.path).read_bytes()).hexdigest()
            markers[entry.name] = {
                "size": info.st_size,
                "mtimeNs": info.st_mtime_ns,
                "status": "uploaded",
                "at": "2026-11-30T12:00:00.000+00:00",
                "response": "201 stored",
                "sha256": digest,
            }
        agents[directory.parent.name] = markers
    document = {"version": 1, "destinations": {url: {"agents": agents}}}
    (state_dir / "session-upload.markers.json").write_text(json.dumps(document, separators=(",", ":")))


def measure_sqlite(events: int, sessions: int, *, runs: int, before: Path | None) -> bool:
    from bench.p2_nothing_new import make_database

    with tempfile.TemporaryDirectory(prefix="nexus-bench-p7-sqlite-") as scratch_name:
        scratch = Path(scratch_name)
        agent = scratch / "openclaw" / "agents" / "bench"
        (agent / "sessions").mkdir(parents=True)
        database = agent / "agent" / "openclaw-agent.sqlite"
        make_database(database, sessions, events_per_session=events // sessions)
        start, extra = command_of(before)
        command = [*start, "--agent", "bench", "--state-dir", str(scratch / "state")]
        baseline = [sys.executable, "-c", SELECT_AND_WALK, str(agent / "sessions"), str(database)]
        with receiver(0.0) as url:
            env = env_for(
                OPENCLAW_STATE_DIR=str(scratch / "openclaw"), NEXUS_ENDPOINT=url, NEXUS_API_KEY="bench-key", **extra
            )
            first_seconds, first_rss = run_measured(command, env)
            touch_database(database)  # a write elsewhere: the quiet skip does not apply
            ours, ours_rss, bare = [], [], []
            for _ in range(runs):
                touch_database(database)
                seconds, peak = run_measured(command, env)
                ours.append(seconds)
                ours_rss.append(peak)
                bare.append(run_measured(baseline)[0])
    ratio = median(ours) / median(bare)
    report(
        f"P7 SQLite era: {events:,} events over {sessions:,} sessions "
        f"({'before' if before else 'this checkout'}), medians of {runs} runs",
        [
            ("first run (upload all)", f"{first_seconds:.1f} s, peak RSS {first_rss:.0f} MB"),
            (
                "nothing-new run (database written to)",
                f"{median(ours) * 1000:.0f} ms, peak RSS {median(ours_rss):.0f} MB",
            ),
            ("bare SELECT of every event row + walk", f"{median(bare) * 1000:.0f} ms"),
            ("ratio", fmt_ratio(ratio)),
        ],
    )
    return True


def touch_database(database: Path) -> None:
    """A committed write that changes no session (as OpenClaw's writes to other tables do),
    so every run scans the database rather than repeating the last scan's counts."""
    import sqlite3

    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE IF NOT EXISTS bench_touch (n INTEGER)")
    connection.execute("INSERT INTO bench_touch VALUES (1)")
    connection.commit()
    connection.close()


if __name__ == "__main__":
    raise SystemExit(main())
