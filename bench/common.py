"""Shared parts of the benchmarks: sample trees, the receiver process, timing, medians."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STAMP = "2026-06-25T05-19-01.119Z"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def receiver(delay_seconds: float) -> Iterator[str]:
    """The benchmark receiver in its own process (so it never shares our GIL)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "receiver.py"), str(port), str(delay_seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 10
        line = process.stdout.readline()
        if line.strip() != "ready" or time.monotonic() > deadline:
            raise RuntimeError("receiver did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _line_pool(rng: random.Random) -> list[bytes]:
    words = ["the", "build", "failed", 'said "ok"', "path\\to\\file", "café", "naïve", "☕", "🚀", "日本語", "{json}"]
    lines = []
    for number in range(400):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 120)))
        role = "user" if number % 2 else "assistant"
        lines.append(
            (
                json.dumps(
                    {"type": "message", "id": f"m{number}", "message": {"role": role, "content": text}},
                    ensure_ascii=False,
                )
                + "\n"
            ).encode()
        )
    return lines


def lognormal_sizes(count: int, *, total_bytes: int, rng: random.Random, max_bytes: int = 4_000_000) -> list[int]:
    """Sizes with a lognormal spread (most small, a few MB at most) adding up to ~``total_bytes``."""
    raw = [min(rng.lognormvariate(0.0, 1.2), 40.0) for _ in range(count)]
    scale = total_bytes / sum(raw)
    return [max(300, min(max_bytes, int(value * scale))) for value in raw]


def make_transcripts(sessions_dir: Path, sizes: Sequence[int], *, seed: int = 1) -> int:
    """Write one ``.reset`` archive per size (complete at once); return the bytes written."""
    rng = random.Random(seed)
    pool = _line_pool(rng)
    sessions_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for size in sizes:
        session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        parts = [(json.dumps({"type": "session", "version": 3, "id": session_id}) + "\n").encode()]
        length = len(parts[0])
        while length < size:
            line = rng.choice(pool)
            parts.append(line)
            length += len(line)
        content = b"".join(parts)
        (sessions_dir / f"{session_id}.jsonl.reset.{STAMP}").write_bytes(content)
        written += len(content)
    return written


def timed(command: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    elapsed = time.perf_counter() - started
    if check and result.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {result.returncode}: {result.stderr.strip()[:500]}")
    return elapsed


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def env_for(**values: str) -> dict[str, str]:
    # Bytecode is cached as on an installed system: without it every start recompiles.
    skip = ("NEXUS_", "OPENCLAW_", "XDG_", "PYTHONDONTWRITEBYTECODE")
    env = {key: value for key, value in os.environ.items() if not key.startswith(skip)}
    env.update(values)
    return env


def report(title: str, rows: Sequence[tuple[str, str]]) -> None:
    print(f"\n== {title}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


def fmt_ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"
