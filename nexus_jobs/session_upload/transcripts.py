"""An agent's complete transcripts, whatever OpenClaw's storage era (``docs/openclaw.md``):
the JSONL files of its sessions directory (:mod:`openclaw.files`) and, when it has a session
database, the segments of its sessions (:mod:`sqlite_era`), which also take over the archive
files; and reading one, checked the way the server would check it (at most the size limit,
UTF-8) before it is sent.
"""

from __future__ import annotations

import codecs
import logging
import os
from dataclasses import dataclass, field

from ..cli import frame as cli
from ..nexus.sessions import REJECTED, StoreAnswer, Upload
from ..openclaw import database as openclaw_db
from ..openclaw import files as openclaw
from ..openclaw.agents import Agent
from . import markers as upload_markers
from . import quiet, sqlite_era
from .archived import AgentMarkers
from .markers import Item

READ_CHUNK_BYTES = 1 << 20
# A file we could not read: counted as failed and retried, but says nothing about the backend.
UNREADABLE = "unreadable"

log = logging.getLogger("nexus_jobs")


@dataclass
class AgentScan:
    """What one agent has to send, and what to remember once it was sent."""

    items: list[Item] = field(default_factory=list)
    settlements: list[sqlite_era.Settlement] = field(default_factory=list)
    markers_changed: bool = False


def scan_agent(
    agent: Agent,
    agent_markers: AgentMarkers,
    *,
    grace_seconds: float,
    now_ns: int,
    retry_rejected: bool,
    retention_seconds: float,
    summary: cli.RunSummary,
    prune: bool,
) -> AgentScan:
    """List the agent's sessions directory and database; what is complete and not done."""
    result = AgentScan()
    counts = summary.counts
    where = f"agent {agent.agent_id}"
    try:
        files = openclaw.scan(
            agent_id=agent.agent_id,
            sessions_dir=agent.sessions_dir,
            grace_seconds=grace_seconds,
            now_ns=now_ns,
            is_done=upload_markers.done_check(agent_markers, retry_rejected=retry_rejected),
            archived=agent_markers.shelf.done,
            list_present=prune,
        )
    except FileNotFoundError as error:
        files = openclaw.Scan()  # an agent of the SQLite era may have no sessions directory
        missing: FileNotFoundError | None = error
    except OSError as error:
        summary.failures.append(f"{where}: cannot list {agent.sessions_dir}: {error.strerror}")
        log.error("%s", summary.failures[-1])
        return result
    else:
        missing = None
    archives = [item for item in files.complete if item.archive_reason is not None]
    database = sqlite_era.scan(
        agent,
        agent_markers,
        archives=archives,
        grace_seconds=grace_seconds,
        now_ms=now_ns // 1_000_000,
        retry_rejected=retry_rejected,
        summary=summary,
        prune=prune,
    )
    if missing is not None and not database.found:
        summary.failures.append(f"{where}: cannot list {agent.sessions_dir}: {missing.strerror}")
        log.error("%s", summary.failures[-1])
        return result
    if files.index_problem and not database.found:
        log.warning(
            "agent %s: %s in %s; %d plain transcript(s) wait until it is readable (archives still upload)",
            agent.agent_id,
            files.index_problem,
            agent.sessions_dir,
            files.without_index,
        )
    counts["waiting"] += files.live + files.locked + files.in_grace + files.without_index
    counts["unchanged"] += files.unchanged
    # With a session database, archives are cut into segments (sqlite_era); while it cannot
    # be read they wait with it: only the database tells which of their events were sent.
    result.items.extend(item for item in files.complete if not (database.found and item.archive_reason))
    result.items.extend(database.complete)
    result.settlements = database.settlements
    result.markers_changed = database.markers_changed
    if prune and database.sessions is not None:
        result.markers_changed |= _prune(agent, agent_markers, files, database, retention_seconds)
    return result


def _prune(
    agent: Agent,
    agent_markers: AgentMarkers,
    files: openclaw.Scan,
    database: sqlite_era.DatabasePart,
    retention_seconds: float,
) -> bool:
    """Forget markers of what has been gone for the retention period; True when any went."""
    assert database.sessions is not None
    records = {sqlite_era.SESSION_RECORD_PREFIX + session_id for session_id in database.sessions}
    records.add(quiet.QUIET_KEY)
    return upload_markers.prune(
        agent_markers,
        names=files.present | database.archive_names | records,
        gone_archives=_gone_archives(agent, agent_markers, seen=files.archived_seen),
        sessions=database.sessions,
        retention_seconds=retention_seconds,
    )


def _gone_archives(agent: Agent, agent_markers: AgentMarkers, *, seen: int) -> list[str]:
    """The shelved archives no longer in the sessions directory: none when the scan saw as
    many as there are (the usual case: no name is held twice over)."""
    done = agent_markers.shelf.done
    if seen >= len(done):
        return []
    return [name for name in done if not os.path.lexists(os.path.join(agent.sessions_dir, name))]


def read_item(item: Item, *, max_bytes: int) -> Upload | StoreAnswer:
    """The transcript's bytes (a ``.zst`` archive decompressed; a segment with its session's
    header line), checked the way the server would check them: at most ``max_bytes``,
    UTF-8. A failed check is a local rejection."""
    if isinstance(item, openclaw.Transcript) and item.name_not_utf8:
        return StoreAnswer(REJECTED, "its file name is not valid UTF-8 (Nexus takes names as UTF-8 text); not sent")
    content = _read(item, limit=max_bytes + 1)
    if isinstance(content, StoreAnswer):
        return content
    if len(content) > max_bytes:
        return StoreAnswer(REJECTED, f"larger than the limit of {max_bytes} bytes; not sent")
    problem = _utf8_problem(content)
    if problem:
        return StoreAnswer(REJECTED, problem)
    import hashlib  # imported here: loading OpenSSL costs a not-due run ms

    return Upload(
        agent_id=item.agent_id,
        session_id=item.session_id,
        file_name=item.upload_name,
        archive_reason=item.archive_reason,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
    )


def _read(item: Item, *, limit: int) -> bytes | StoreAnswer:
    if isinstance(item, sqlite_era.Segment):
        try:
            return sqlite_era.read_segment(item)
        except (openclaw_db.DatabaseBusy, openclaw_db.DatabaseUnreadable, OSError) as error:
            return StoreAnswer(UNREADABLE, f"cannot read it: {error} (will retry next run)")
        except ValueError as error:
            return StoreAnswer(REJECTED, str(error))
    if item.is_symlink:
        return StoreAnswer(REJECTED, "is a symbolic link; not followed (transcripts are regular files)")
    if not item.is_regular:
        return StoreAnswer(REJECTED, "not a regular file")
    try:
        return openclaw.read_bytes(item, limit=limit)
    except OSError as error:
        return StoreAnswer(UNREADABLE, f"cannot read it: {error.strerror} (will retry next run)")
    except ValueError as error:
        return StoreAnswer(REJECTED, str(error))


def _utf8_problem(content: bytes) -> str | None:
    # Checked in chunks so a large transcript never exists as one big str.
    decoder = codecs.getincrementaldecoder("utf-8")()
    for start in range(0, len(content), READ_CHUNK_BYTES):
        try:
            decoder.decode(content[start : start + READ_CHUNK_BYTES], final=start + READ_CHUNK_BYTES >= len(content))
        except UnicodeDecodeError as error:
            return f"not UTF-8 text (invalid byte at offset {start + error.start}); not sent"
    return None
