"""P1 (docs/benchmarks.md): upload throughput on 2,000 transcripts (~200 MB, lognormal sizes).

(a) to a receiver that waits 30 ms per request: nexus-session-upload with default settings
    versus a naive sequential uploader (new connection, whole-file read per transcript).
    Bar: >= 5x.
(b) to a receiver with no wait: nexus-session-upload versus a raw keep-alive transfer of the
    same bodies (http.client, one connection: read a file, build its body, send it), both
    timed as whole processes. Bar: >= 70%. The transfer of bodies built before the clock
    starts (the network ceiling) is printed for information.

Run: .venv/bin/python -m bench.p1_throughput [--count 2000] [--total-mb 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import (
    BIN,
    ROOT,
    env_for,
    fmt_ratio,
    lognormal_sizes,
    make_transcripts,
    median,
    receiver,
    report,
    timed,
)


def upload_once(url: str, openclaw_dir: Path, scratch: Path, number: int) -> float:
    env = env_for(OPENCLAW_STATE_DIR=str(openclaw_dir), NEXUS_ENDPOINT=url, NEXUS_API_KEY="bench-key")
    return timed(
        [str(BIN / "nexus-session-upload"), "--agent", "bench", "--state-dir", str(scratch / f"state-{number}")],
        env=env,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--total-mb", type=float, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=30)
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-p1-") as scratch_name:
        scratch = Path(scratch_name)
        openclaw_dir = scratch / "openclaw"
        sessions = openclaw_dir / "agents" / "bench" / "sessions"
        sizes = lognormal_sizes(args.count, total_bytes=int(args.total_mb * 1e6), rng=random.Random(42))
        total = make_transcripts(sessions, sizes)
        print(
            f"{args.count} transcripts, {total / 1e6:.1f} MB, "
            f"largest {max(sizes) / 1e6:.2f} MB, median {median(sizes) / 1e3:.1f} kB"
        )
        ours_wait, naive_wait, ours_fast, raw_fast, ceiling = [], [], [], [], []
        run = 0
        with receiver(args.delay_ms / 1000) as url:
            for _ in range(args.runs if args.part != "b" else 0):
                run += 1
                ours_wait.append(upload_once(url, openclaw_dir, scratch, run))
                naive_wait.append(
                    timed([sys.executable, str(ROOT / "bench" / "naive_uploader.py"), url, str(sessions)])
                )
                print(f"  (a) run {run}: ours {ours_wait[-1]:.2f} s, naive {naive_wait[-1]:.2f} s", flush=True)
        with receiver(0.0) as url:
            port = url.rsplit(":", 1)[1]
            for _ in range(args.runs if args.part != "a" else 0):
                run += 1
                ours_fast.append(upload_once(url, openclaw_dir, scratch, run))
                raw = [sys.executable, str(ROOT / "bench" / "raw_transfer.py"), port, str(sessions)]
                raw_fast.append(timed(raw))
                ceiling.append(
                    float(subprocess.run([*raw, "--prebuilt"], capture_output=True, text=True, check=True).stdout)
                )
                print(
                    f"  (b) run {run}: ours {ours_fast[-1]:.2f} s, raw keep-alive {raw_fast[-1]:.2f} s, "
                    f"transfer of prebuilt bodies {ceiling[-1]:.2f} s",
                    flush=True,
                )
    mb = total / 1e6
    rows, passed = [], True
    if ours_wait:
        a_ratio = median(naive_wait) / median(ours_wait)
        passed &= a_ratio >= 5
        rows += [
            (
                f"(a) {args.delay_ms:g} ms receiver: nexus-session-upload",
                f"{median(ours_wait):.2f} s  {mb / median(ours_wait):.1f} MB/s",
            ),
            (
                f"(a) {args.delay_ms:g} ms receiver: naive sequential",
                f"{median(naive_wait):.2f} s  {mb / median(naive_wait):.1f} MB/s",
            ),
            ("(a) speed-up (bar >= 5x)", fmt_ratio(a_ratio)),
        ]
    if ours_fast:
        b_ratio = median(raw_fast) / median(ours_fast)
        passed &= b_ratio >= 0.7
        rows += [
            (
                "(b) no-wait receiver: nexus-session-upload",
                f"{median(ours_fast):.2f} s  {mb / median(ours_fast):.1f} MB/s",
            ),
            ("(b) no-wait receiver: raw keep-alive", f"{median(raw_fast):.2f} s  {mb / median(raw_fast):.1f} MB/s"),
            ("(b) ours / raw (bar >= 70%)", f"{b_ratio * 100:.0f}%"),
            ("(b) transfer of prebuilt bodies alone", f"{median(ceiling):.2f} s  {mb / median(ceiling):.1f} MB/s"),
        ]
    report(f"P1 upload throughput, medians of {args.runs} runs", rows)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
