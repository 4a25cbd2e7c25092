"""P4 (SPEC 9): peak RSS of nexus-session-upload uploading a 10 MB transcript (bar: under
4x its size + 40 MB), and flat in the number of files (100 versus 10,000 small ones).

Run: .venv/bin/python -m bench.p4_memory [--runs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import BIN, env_for, make_transcripts, median, receiver, report

PEAK = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)
TEN_MB = 10_000_000


def peak_rss_mb(openclaw_dir: Path, state_dir: Path, url: str, agent: str) -> float:
    env = env_for(OPENCLAW_STATE_DIR=str(openclaw_dir), NEXUS_ENDPOINT=url, NEXUS_API_KEY="bench-key")
    command = [str(BIN / "nexus-session-upload"), "--agent", agent, "--state-dir", str(state_dir)]
    output = subprocess.run([sys.executable, "-c", PEAK, *command], env=env, capture_output=True, text=True, check=True)
    return int(output.stdout) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-p4-") as scratch_name:
        scratch = Path(scratch_name)
        agents = scratch / "openclaw" / "agents"
        make_transcripts(agents / "big" / "sessions", [TEN_MB], seed=4)
        make_transcripts(agents / "few" / "sessions", [2000] * 100, seed=5)
        make_transcripts(agents / "many" / "sessions", [2000] * 10_000, seed=6)
        results: dict[str, list[float]] = {"big": [], "few": [], "many": []}
        with receiver(0.0) as url:
            for run in range(args.runs):
                for agent in results:
                    results[agent].append(
                        peak_rss_mb(scratch / "openclaw", scratch / f"state-{agent}-{run}", url, agent)
                    )
    big, few, many = (median(results[agent]) for agent in ("big", "few", "many"))
    bar = 4 * TEN_MB / 2**20 + 40
    report(
        f"P4 peak RSS, medians of {args.runs} runs",
        [
            ("one 10 MB transcript", f"{big:.1f} MB  (bar < {bar:.1f} MB, {big / bar * 100:.0f}% of it)"),
            ("100 small transcripts", f"{few:.1f} MB"),
            ("10,000 small transcripts", f"{many:.1f} MB  ({many / few:.2f}x of 100 files)"),
        ],
    )
    return 0 if big < bar else 1


if __name__ == "__main__":
    raise SystemExit(main())
