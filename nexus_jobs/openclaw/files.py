"""OpenClaw's transcript files (JSONL storage, releases up to 2026.7.1): which files of an
agent's sessions directory are transcripts, and which of those are complete. In the SQLite
era the same directory holds the archives OpenClaw exports when it deletes a session
(``docs/openclaw.md``).

Read-only by design: nothing here writes, moves or renames anything under OpenClaw's state
directory; OpenClaw relies on its own names. What we have uploaded lives in our state file.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

INDEX_NAME = "sessions.json"
TRANSCRIPT_SUFFIX = ".jsonl"
ZSTD_SUFFIX = ".zst"
TOPIC_SEPARATOR = "-topic-"
# <file>.jsonl.reset.<TS> / <file>.jsonl.deleted.<TS>, newer builds may add .zst
ARCHIVE_REASONS = ("reset", "deleted")


class Transcript(NamedTuple):
    """A complete transcript file, as found by :func:`scan` (a tuple: a scan makes tens of
    thousands of these, and a tuple is several times cheaper to build than a dataclass; what
    can be derived from the name is, so a first run over 200,000 files holds little more than
    their names)."""

    agent_id: str
    directory: str  # one string shared by every transcript of the directory
    name: str
    archive_reason: str | None
    size: int
    mtime_ns: int
    compressed: bool = False
    is_symlink: bool = False
    is_regular: bool = True
    raw_name: str | None = None  # the name on disk when not valid UTF-8 (``name`` is printable)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.raw_name or self.name)

    @property
    def session_id(self) -> str:
        return self.name.partition(TRANSCRIPT_SUFFIX)[0].partition(TOPIC_SEPARATOR)[0]

    @property
    def name_not_utf8(self) -> bool:
        return self.raw_name is not None

    @property
    def upload_name(self) -> str:
        """The file name sent to Nexus: a ``.zst`` archive is sent decompressed, so without
        its ``.zst`` suffix."""
        return self.name[: -len(ZSTD_SUFFIX)] if self.compressed else self.name

    @property
    def origin(self) -> str:
        return self.archive_reason or "orphan"

    @property
    def extent(self) -> str:
        return f"{self.size} bytes"

    def fingerprint(self) -> dict[str, int]:
        """What its marker records to recognise it unchanged without reading it."""
        return {"size": self.size, "mtimeNs": self.mtime_ns}


@dataclass(slots=True, eq=False)
class Scan:
    """What one sessions directory holds: complete transcripts, and why others wait."""

    complete: list[Transcript] = field(default_factory=list)
    present: set[str] = field(default_factory=set)  # when asked for; not the archives known done
    unchanged: int = 0
    archived_seen: int = 0  # archives known done (not even stat-ed)
    live: int = 0
    locked: int = 0
    in_grace: int = 0
    without_index: int = 0
    index_problem: str | None = None


def read_index(sessions_dir: Path) -> tuple[set[str], set[str]] | str:
    """The session ids and transcript file names that ``sessions.json`` references, or a
    reason why it cannot be read. The index is keyed by *session key*
    (``agent:main:main``...); the ids are its values' ``sessionId`` fields."""
    try:
        raw = (sessions_dir / INDEX_NAME).read_bytes()
    except FileNotFoundError:
        return "sessions.json is missing"
    except OSError as error:
        return f"sessions.json cannot be read: {error.strerror}"
    try:
        index = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        return f"sessions.json is not valid JSON ({str(error)[:60]})"
    except RecursionError:
        return "sessions.json is nested too deep to read"
    if not isinstance(index, dict):
        return "sessions.json is not a JSON object"
    session_ids: set[str] = set()
    file_names: set[str] = set()
    for entry in index.values():
        if not isinstance(entry, dict):
            continue
        session_id = entry.get("sessionId")
        if isinstance(session_id, str) and session_id:
            session_ids.add(session_id)
        session_file = entry.get("sessionFile")
        if isinstance(session_file, str) and session_file:
            file_names.add(os.path.basename(session_file))
    return session_ids, file_names


def scan(
    *,
    agent_id: str,
    sessions_dir: Path,
    grace_seconds: float,
    now_ns: int,
    is_done: Callable[[str, int, int], bool] = lambda name, size, mtime_ns: False,
    archived: Container[str] = frozenset(),
    list_present: bool = False,
) -> Scan:
    """Classify the direct children of ``sessions_dir`` (raises ``OSError`` when it cannot
    be listed). Files for which ``is_done(name, size, mtime_ns)`` holds (uploaded already,
    unchanged) are only counted; so are archives in ``archived`` (done: an archive is never
    written again), without a ``stat``. With ``list_present``, the names of the others are
    collected in ``present``.

    Complete: every ``.reset.<TS>``/``.deleted.<TS>`` archive; a plain ``.jsonl`` whose
    session id (and file name) the index does not reference, with no ``.lock`` sibling, not
    modified for the grace period. Without a readable index no plain file is complete.
    """
    result = Scan()
    directory = os.fspath(sessions_dir)
    locks: set[str] = set()
    plain: list[tuple[os.DirEntry[str], str, str]] = []
    with os.scandir(sessions_dir) as entries:
        for entry in entries:
            name = entry.name if entry.name.isascii() else printable(entry.name)
            # Plain string tests, no regex and no Path objects: a sessions directory may hold
            # 100,000 files, and a run with nothing new must stay close to a bare stat walk.
            stem, dot_jsonl, rest = name.partition(TRANSCRIPT_SUFFIX)
            if not dot_jsonl or ".trajectory" in stem or ".checkpoint." in stem or name.endswith(".tmp"):
                # sessions.json and its .bak files, trajectories, checkpoints, and the
                # <name>.<uuid>.tmp files OpenClaw writes an archive to before it links it.
                continue
            if not rest:
                if not entry.is_dir(follow_symlinks=False):
                    if list_present:
                        result.present.add(name)
                    plain.append((entry, name, stem.partition(TOPIC_SEPARATOR)[0]))
                continue
            if rest == ".lock":
                locks.add(stem + TRANSCRIPT_SUFFIX)
                continue
            if name in archived:
                result.archived_seen += 1
                result.unchanged += 1
                continue
            reason, _, stamp = rest[1:].partition(".")
            if rest[0] != "." or reason not in ARCHIVE_REASONS or not stamp or stamp == ZSTD_SUFFIX[1:]:
                continue
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                continue
            if list_present:
                result.present.add(name)
            if is_done(name, info.st_size, info.st_mtime_ns):
                result.unchanged += 1
            else:
                result.complete.append(_transcript(entry, name, info, agent_id, directory, sys.intern(reason)))
    if plain:
        _classify_plain(
            plain,
            result,
            sessions_dir=sessions_dir,
            locks=locks,
            agent_id=agent_id,
            grace_ns=int(grace_seconds * 1e9),
            now_ns=now_ns,
            is_done=is_done,
        )
    return result


def _classify_plain(
    plain: list[tuple[os.DirEntry[str], str, str]],
    result: Scan,
    *,
    sessions_dir: Path,
    locks: set[str],
    agent_id: str,
    grace_ns: int,
    now_ns: int,
    is_done: Callable[[str, int, int], bool],
) -> None:
    """The plain ``.jsonl`` files of a scan: live (the index names them), locked, unchanged,
    within the grace period, or complete."""
    index = read_index(sessions_dir)
    if isinstance(index, str):
        # Without the index we cannot tell live transcripts from orphans: upload none.
        result.index_problem = index
        result.without_index = len(plain)
        return
    live_ids, live_files = index
    directory = os.fspath(sessions_dir)
    for entry, name, session_id in plain:
        if session_id in live_ids or name in live_files:
            result.live += 1
        elif name in locks:
            result.locked += 1
        else:
            info = entry.stat(follow_symlinks=False)
            if is_done(name, info.st_size, info.st_mtime_ns):
                result.unchanged += 1
            elif now_ns - info.st_mtime_ns < grace_ns:
                result.in_grace += 1
            else:
                result.complete.append(_transcript(entry, name, info, agent_id, directory, None))


def _transcript(
    entry: os.DirEntry[str], name: str, info: os.stat_result, agent_id: str, directory: str, archive_reason: str | None
) -> Transcript:
    return Transcript(
        agent_id,
        directory,
        name,
        archive_reason,
        info.st_size,
        info.st_mtime_ns,
        archive_reason is not None and name.endswith(ZSTD_SUFFIX),
        stat.S_ISLNK(info.st_mode),
        stat.S_ISREG(info.st_mode),
        None if name == entry.name else entry.name,
    )


def printable(name: str) -> str:
    """A file name that is not valid UTF-8 (its bytes arrive as surrogates), with those bytes
    written as ``\\xNN``: what its marker is keyed by and what messages show."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


def read_bytes(transcript: Transcript, *, limit: int) -> bytes:
    """Up to ``limit`` bytes of the transcript, a ``.zst`` archive decompressed. Symbolic
    links are not followed. Raises ``OSError`` when unreadable, ``ValueError`` for a corrupt
    archive."""
    descriptor = os.open(transcript.path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(descriptor, "rb") as handle:
        if not transcript.compressed:
            # Read what the file holds (plus one byte, to notice growth) rather than a
            # limit-sized buffer: concurrent 10 MB allocations would swell the process.
            content = handle.read(min(limit, os.fstat(handle.fileno()).st_size + 1))
            if len(content) < limit and (more := handle.read(limit - len(content))):
                content += more
            return content
        # zstd rarely makes data larger: a compressed file over the limit is over it anyway.
        return decompress_zstd(handle.read(limit + 1), limit=limit)[:limit]


# A zstd block of at most 128 KiB can be stored in a handful of bytes: feeding the decoder
# this much at a time bounds what one step can produce before the limit is checked.
ZSTD_INPUT_STEP_BYTES = 1024


def decompress_zstd(compressed: bytes, *, limit: int) -> bytes:
    """Every frame of ``compressed``, whether or not a frame declares its size (node's zstd
    does not for archives). Stops once more than ``limit`` bytes came out (the result is then
    longer than ``limit``). Raises ``ValueError`` for what is not zstd and for a frame that
    does not end: a truncated archive is never taken for a short transcript."""
    import zstandard  # imported here: only compressed content needs it

    chunks, size, position = [], 0, 0
    decoder, frame_open = zstandard.ZstdDecompressor().decompressobj(), False
    try:
        while position < len(compressed) and size <= limit:
            piece = compressed[position : position + ZSTD_INPUT_STEP_BYTES]
            position += len(piece)
            output = decoder.decompress(piece)
            frame_open = True
            chunks.append(output)
            size += len(output)
            if decoder.eof:  # a frame ended; what follows it is the next frame
                position -= len(decoder.unused_data)
                decoder, frame_open = zstandard.ZstdDecompressor().decompressobj(), False
    except zstandard.ZstdError as error:
        raise ValueError(f"not a valid zstd archive ({error})") from None
    if frame_open and size <= limit:
        raise ValueError("a truncated zstd archive: its last frame does not end")
    return b"".join(chunks)
