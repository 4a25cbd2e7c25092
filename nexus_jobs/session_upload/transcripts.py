"""An agent's transcripts, whatever OpenClaw's storage era: the JSONL files of its sessions
directory (:mod:`openclaw`), the generations of its SQLite database and the files OpenClaw
moved aside when it imported them (:mod:`openclaw_sqlite`); and reading one, checked the way
the server would check it (at most the size limit, UTF-8) before it is sent.
"""

from __future__ import annotations

import codecs
import logging
from dataclasses import dataclass, field
from typing import Any

from ..cli import frame as cli
from ..core import state
from ..nexus.sessions import REJECTED, Outcome, Upload
from ..openclaw import database as openclaw_sqlite
from ..openclaw import files as openclaw
from ..openclaw.agents import Agent
from . import markers as upload_markers
from .markers import Found

READ_CHUNK_BYTES = 1 << 20
# A file we could not read: counted as failed and retried, but says nothing about the backend.
UNREADABLE = "unreadable"

log = logging.getLogger("nexus_jobs")


@dataclass
class DatabasePart:
    found: bool = False
    complete: list[openclaw_sqlite.Generation | openclaw.Transcript] = field(default_factory=list)
    # Marker keys of everything listed; None when something could not be listed (no pruning).
    present: set[str] | None = field(default_factory=set)
    markers_changed: bool = False


def scan_database(
    agent: Agent,
    agent_markers: dict[str, dict[str, Any]],
    *,
    retry_rejected: bool,
    summary: cli.RunSummary,
    dry_run: bool,
) -> DatabasePart:
    """The agent's SQLite storage: complete generations of its database, and the transcripts
    OpenClaw moved aside when it imported them (uploaded once, unless the database holds
    their session: its generation is the whole transcript, uploaded when complete)."""
    part = DatabasePart()
    counts = summary.counts
    where = f"agent {agent.agent_id}"
    covered: set[str] | None = set()  # <sessionId>.jsonl of what the database holds; None: cannot tell
    try:
        found = openclaw_sqlite.scan(
            agent_id=agent.agent_id,
            database=openclaw_sqlite.database_path(agent.sessions_dir),
            markers=agent_markers,
            retry_rejected=retry_rejected,
            sizes_uploaded_as_files=openclaw_sqlite.uploaded_file_sizes(agent_markers),
        )
    except openclaw_sqlite.DatabaseBusy as error:
        log.warning("%s: %s; its database is skipped until the next run", where, error)
        summary.details.setdefault("databasesBusy", []).append(agent.agent_id)
        part.found, part.present = True, None
        return part
    except openclaw_sqlite.DatabaseUnreadable as error:
        summary.failures.append(f"{where}: cannot read {error}")
        log.error("%s", summary.failures[-1])
        part.found, part.present = True, None
        return part
    for problem in found.problems:
        (log.warning if found.usable else log.error)("%s: %s", where, problem)
        if not found.usable:
            summary.failures.append(f"{where}: {problem}")
    part.found = found.found
    if not found.usable:
        part.present = covered = None
    else:
        covered = found.present
        assert part.present is not None
        part.present |= found.present
    counts["waiting"] += found.live + found.undecided
    counts["unchanged"] += found.unchanged + len(found.adopted)
    part.complete.extend(found.complete)
    if found.adopted and not dry_run:
        openclaw_sqlite.adopt(found.adopted, agent_markers, at=state.isoformat(state.now_utc()))
        part.markers_changed = True
        log.info("%s: %d session(s) uploaded as JSONL files before the move to SQLite", where, len(found.adopted))
    if covered is None:
        return part
    done = upload_markers.done_check(agent_markers, retry_rejected=retry_rejected)
    in_database = covered

    def is_covered(session_id: str, name: str) -> bool:
        if session_id + openclaw.TRANSCRIPT_SUFFIX in in_database:
            return True
        return agent_markers.get(name, {}).get("status") == "uploaded"

    for directory in dict.fromkeys(openclaw_sqlite.import_archive_dirs(agent.sessions_dir)):
        try:
            moved = openclaw.scan_moved(
                agent_id=agent.agent_id, directory=directory, is_done=done, is_covered=is_covered
            )
        except OSError as error:
            summary.failures.append(f"{where}: cannot list {directory}: {error.strerror}")
            log.error("%s", summary.failures[-1])
            part.present = None
            continue
        counts["unchanged"] += moved.unchanged
        part.complete.extend(moved.complete)
        if part.present is not None:
            part.present |= moved.present
    return part


def read_transcript(transcript: Found, *, max_bytes: int) -> Upload | Outcome:
    """The file's bytes (a ``.zst`` archive decompressed) or the generation's events, checked
    the way the server would check them: at most ``max_bytes``, UTF-8. A failed check is a
    local rejection."""
    content = _read(transcript, limit=max_bytes + 1)
    if isinstance(content, Outcome):
        return content
    if len(content) > max_bytes:
        return Outcome(REJECTED, f"larger than the limit of {max_bytes} bytes; not sent")
    problem = _utf8_problem(content)
    if problem:
        return Outcome(REJECTED, problem)
    import hashlib  # imported here: loading OpenSSL costs a not-due run ms

    return Upload(
        agent_id=transcript.agent_id,
        session_id=transcript.session_id,
        file_name=transcript.upload_name,
        archive_reason=transcript.archive_reason,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
    )


def _read(transcript: Found, *, limit: int) -> bytes | Outcome:
    if isinstance(transcript, openclaw_sqlite.Generation):
        try:
            return openclaw_sqlite.read_generation(transcript, limit=limit)
        except (openclaw_sqlite.DatabaseBusy, openclaw_sqlite.DatabaseUnreadable) as error:
            return Outcome(UNREADABLE, f"cannot read it: {error} (will retry next run)")
        except ValueError as error:
            return Outcome(REJECTED, str(error))
    if transcript.is_symlink:
        return Outcome(REJECTED, "is a symbolic link; not followed (transcripts are regular files)")
    if not transcript.is_regular:
        return Outcome(REJECTED, "not a regular file")
    try:
        return openclaw.read_bytes(transcript, limit=limit)
    except OSError as error:
        return Outcome(UNREADABLE, f"cannot read it: {error.strerror} (will retry next run)")
    except ValueError as error:
        return Outcome(REJECTED, str(error))


def _utf8_problem(content: bytes) -> str | None:
    # Checked in chunks so a large transcript never exists as one big str.
    decoder = codecs.getincrementaldecoder("utf-8")()
    for start in range(0, len(content), READ_CHUNK_BYTES):
        try:
            decoder.decode(content[start : start + READ_CHUNK_BYTES], final=start + READ_CHUNK_BYTES >= len(content))
        except UnicodeDecodeError as error:
            return f"not UTF-8 text (invalid byte at offset {start + error.start}); not sent"
    return None
