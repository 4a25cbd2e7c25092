"""P2 (SPEC 9): a run with nothing new over 50,000 already-uploaded transcripts, versus a bare
``os.scandir`` + ``stat`` walk of the same tree (both timed as whole processes).
Bars: within 3x of the walk, and under 1 s.

Run: .venv/bin/python -m bench.p2_nothing_new [--count 50000] [--runs 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import BIN, STAMP, env_for, fmt_ratio, median, receiver, report, timed

WALK = "import os, sys\nfor entry in os.scandir(sys.argv[1]):\n    entry.stat(follow_symlinks=False)\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-p2-") as scratch_name:
        scratch = Path(scratch_name)
        sessions = scratch / "openclaw" / "agents" / "bench" / "sessions"
        sessions.mkdir(parents=True)
        for number in range(args.count):
            session_id = f"{number:08x}-0000-4000-8000-000000000000"
            (sessions / f"{session_id}.jsonl.reset.{STAMP}").write_bytes(
                b'{"type":"session","version":3,"id":"%s"}\n' % session_id.encode()
            )
        state_dir = scratch / "state"
        command = [str(BIN / "nexus-session-upload"), "--agent", "bench", "--state-dir", str(state_dir)]
        with receiver(0.0) as url:
            env = env_for(OPENCLAW_STATE_DIR=str(scratch / "openclaw"), NEXUS_ENDPOINT=url, NEXUS_API_KEY="bench-key")
            first = timed(command, env=env)
            print(f"first run uploaded {args.count} transcripts in {first:.1f} s")
            markers = (state_dir / "session-upload.markers.json").stat().st_size
            ours, walk = [], []
            for _ in range(args.runs):
                ours.append(timed(command, env=env))
                walk.append(timed([sys.executable, "-c", WALK, str(sessions)]))
    ratio = median(ours) / median(walk)
    report(
        f"P2 nothing-new run over {args.count} marked transcripts, medians of {args.runs} runs",
        [
            ("markers file", f"{markers / 1e6:.1f} MB"),
            ("nexus-session-upload (nothing new)", f"{median(ours) * 1000:.0f} ms  (bar < 1000 ms)"),
            ("bare scandir + stat walk", f"{median(walk) * 1000:.0f} ms"),
            ("ratio (bar <= 3x)", fmt_ratio(ratio)),
        ],
    )
    return 0 if ratio <= 3 and median(ours) < 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
