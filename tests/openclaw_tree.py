"""Realistic OpenClaw state trees (JSONL storage) for tests, benchmarks and the demo.

Run as a module to create the demo tree: ``python -m tests.openclaw_tree DIR``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

STAMP = "2026-06-25T05-19-01.119Z"
OLD_SECONDS = 3600.0


def new_session_id(rng: random.Random | None = None) -> str:
    if rng is None:
        return str(uuid.uuid4())
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def transcript(session_id: str, *, messages: int = 4, rng: random.Random | None = None, pad_to: int = 0) -> bytes:
    """A transcript as OpenClaw writes it: a session header line, then one JSON object per
    line with quotes, backslashes, non-ASCII text and emoji in it."""
    rng = rng or random.Random(session_id)
    lines = [{"type": "session", "version": 3, "id": session_id, "timestamp": "2026-06-25T05:00:00.000Z"}]
    for number in range(messages):
        role = "user" if number % 2 == 0 else "assistant"
        text = f'Message {number}: "quoted" \\ back\\slash, tab\there, café ☕ 🚀 {rng.random():.6f}'
        lines.append({"type": "message", "id": f"m{number}", "message": {"role": role, "content": text}})
    body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
    if pad_to > len(body):
        filler = {"type": "custom", "data": ""}
        overhead = len(json.dumps(filler).encode()) + 1
        while len(body) < pad_to:
            chunk = min(pad_to - len(body), 64 * 1024)
            filler["data"] = "x" * max(1, chunk - overhead)
            body += (json.dumps(filler) + "\n").encode()
    return body


def make_old(path: Path, seconds: float = OLD_SECONDS) -> None:
    moment = time.time() - seconds
    os.utime(path, (moment, moment), follow_symlinks=False)


@dataclass
class Tree:
    """Names of what :func:`build_realistic` made, by what the uploader must do with them."""

    root: Path
    sessions_dir: Path
    expected_uploads: dict[str, bytes] = field(default_factory=dict)  # upload name -> content
    held_back: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def build_realistic(root: Path, agent_id: str = "main") -> Tree:
    """An agent's sessions directory with every kind of file SPEC 4.1 names."""
    sessions = root / "agents" / agent_id / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    tree = Tree(root=root, sessions_dir=sessions)
    ids = {
        name: new_session_id()
        for name in (
            "live",
            "live_by_file",
            "orphan",
            "locked",
            "fresh",
            "reset",
            "deleted",
            "zst",
            "topic_live",
            "topic_orphan",
        )
    }

    def write(name: str, content: bytes, *, old: bool = True) -> Path:
        path = sessions / name
        path.write_bytes(content)
        if old:
            make_old(path)
        return path

    # Live: referenced by sessionId value under a session key, or by sessionFile only.
    write(f"{ids['live']}.jsonl", transcript(ids["live"]))
    write(f"{ids['live_by_file']}.jsonl", transcript(ids["live_by_file"]))
    write(f"{ids['topic_live']}-topic-42.jsonl", transcript(ids["topic_live"]))
    tree.held_back += [f"{ids['live']}.jsonl", f"{ids['live_by_file']}.jsonl", f"{ids['topic_live']}-topic-42.jsonl"]
    index = {
        "agent:main:main": {"sessionId": ids["live"], "updatedAt": 1766000000000},
        "hook:5f0c": {
            "sessionId": "not-on-disk",
            "updatedAt": 1766000000000,
            "sessionFile": f"/elsewhere/{ids['live_by_file']}.jsonl",
        },
        "agent:main:telegram:topic:42": {"sessionId": ids["topic_live"], "updatedAt": 1766000000000},
    }
    (sessions / "sessions.json").write_text(json.dumps(index, indent=2))
    (sessions / "sessions.json.bak.1766000000000").write_text("{}")
    # Orphans: complete past grace; held back with a .lock or within grace.
    content = transcript(ids["orphan"])
    write(f"{ids['orphan']}.jsonl", content)
    tree.expected_uploads[f"{ids['orphan']}.jsonl"] = content
    write(f"{ids['locked']}.jsonl", transcript(ids["locked"]))
    write(f"{ids['locked']}.jsonl.lock", b"")
    write(f"{ids['fresh']}.jsonl", transcript(ids["fresh"]), old=False)
    tree.held_back += [f"{ids['locked']}.jsonl", f"{ids['fresh']}.jsonl"]
    # Archives: always complete; .zst is sent decompressed under its name without .zst.
    for key, reason in (("reset", "reset"), ("deleted", "deleted")):
        content = transcript(ids[key], messages=6)
        name = f"{ids[key]}.jsonl.{reason}.{STAMP}"
        write(name, content, old=False)
        tree.expected_uploads[name] = content
    content = transcript(ids["zst"], messages=8)
    write(f"{ids['zst']}.jsonl.deleted.{STAMP}.zst", zstandard.ZstdCompressor().compress(content), old=False)
    tree.expected_uploads[f"{ids['zst']}.jsonl.deleted.{STAMP}"] = content
    # A topic transcript whose session is gone: an orphan of its own.
    content = transcript(ids["topic_orphan"], messages=3)
    write(f"{ids['topic_orphan']}-topic-7.jsonl", content)
    tree.expected_uploads[f"{ids['topic_orphan']}-topic-7.jsonl"] = content
    # Not transcripts.
    for name in (
        f"{ids['orphan']}.trajectory.jsonl",
        f"{ids['orphan']}.trajectory-path.json",
        f"{ids['orphan']}.checkpoint.{uuid.uuid4()}.jsonl",
    ):
        write(name, b'{"type":"other"}\n')
        tree.ignored.append(name)
    return tree


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.openclaw_tree DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    trees = [build_realistic(root, agent) for agent in ("main", "ops")]
    for tree in trees:
        print(
            f"sample OpenClaw sessions in {tree.sessions_dir}: {len(tree.expected_uploads)} complete, "
            f"{len(tree.held_back)} live or not complete yet, {len(tree.ignored)} other files"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
