"""P3 (docs/benchmarks.md): start-up of a run that is not due, versus ``python3 -c pass`` on the same
interpreter. Bar: within 3x.

Run: .venv/bin/python -m bench.p3_startup [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.common import BIN, env_for, fmt_ratio, median, report, timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-p3-") as scratch_name:
        scratch = Path(scratch_name)
        (scratch / "openclaw" / "agents" / "main" / "sessions").mkdir(parents=True)
        config = scratch / "config.json"
        config.write_text(
            json.dumps({"jobs": [{"id": "session-upload", "type": "session_upload", "intervalMinutes": 60}]})
        )
        env = env_for(OPENCLAW_STATE_DIR=str(scratch / "openclaw"), NEXUS_JOBS_CONFIG=str(config))
        command = [str(BIN / "nexus-session-upload")]
        timed(command, env=env)  # the run that makes the next ones not due
        ours, bare = [], []
        for _ in range(args.runs):
            ours.append(timed(command, env=env))
            bare.append(timed([sys.executable, "-c", "pass"], env=env))
    ratio = median(ours) / median(bare)
    report(
        f"P3 not-due start-up, medians of {args.runs} runs",
        [
            ("nexus-session-upload (not due)", f"{median(ours) * 1000:.1f} ms"),
            ("python -c pass", f"{median(bare) * 1000:.1f} ms"),
            ("ratio (bar <= 3x)", fmt_ratio(ratio)),
        ],
    )
    return 0 if ratio <= 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
