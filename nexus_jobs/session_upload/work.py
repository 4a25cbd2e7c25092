"""One run of ``nexus-session-upload`` (:func:`upload_all`): scan -> upload, or list in a dry
run -> summary. The scan finds, per agent, what is complete and not done for this destination
(:mod:`transcripts`: JSONL files, and segments of the SQLite era in :mod:`sqlite_era`;
:mod:`markers`); the upload (:mod:`upload`) reads, checks and sends it concurrently,
recording a marker per answer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..cli import frame as cli
from ..core import state
from ..core.errors import UsageError
from ..core.exits import Exit
from ..nexus import settings as nexus_settings
from ..openclaw.agents import Agent
from . import markers as upload_markers
from . import transcripts, upload
from .settings import JOB_TYPE, Settings

MARKERS_NAME = "markers"
PRUNE_INTERVAL_SECONDS = 86400.0

log = logging.getLogger("nexus_jobs")


def upload_all(settings: Settings, *, dry_run: bool) -> cli.RunSummary:
    """One run: scan every agent, upload what is due (or list it), summarise."""
    summary = cli.RunSummary(settings.job_id, JOB_TYPE)
    for key in ("uploaded", "alreadyStored", "reuploaded", "rejected", "conflicts", "failed", "unchanged", "waiting"):
        summary.counts[key] = 0
    markers_path = state.data_path(settings.state_dir, settings.job_id, MARKERS_NAME)
    document = (
        state.read_json(
            markers_path,
            repair=not dry_run,
            consequence="transcripts already on the server will be offered again and recognised there (409)",
            shape=upload_markers.shape_problem,
        )
        or {}
    )
    markers = upload_markers.of_destination(
        document, destination(settings), state_dir=settings.state_dir, job_id=settings.job_id
    )
    checkpoints = upload_markers.Checkpointer(markers_path, markers)
    prune = not dry_run and _prune_due(document, destination(settings), settings.retention_seconds)
    checkpoints.pending_changes += (markers.converting or prune) and not dry_run
    if settings.only_file is not None:
        checkpoints.pending_changes += _forget(settings, markers) and not dry_run
    entry = document["destinations"][destination(settings)]
    if dry_run:
        summary.counts["wouldUpload"] = 0
    try:
        # One agent at a time: a run holds one agent's list of what is due, not every agent's.
        for agent in settings.agents:
            plan = _scan(settings, markers, agent, summary=summary, prune=prune)
            checkpoints.pending_changes += plan.markers_changed and not dry_run
            if dry_run:
                _list(plan, markers, summary)
                continue
            upload.send_all(
                plan, settings=settings, summary=summary, markers=markers, document=document, checkpoints=checkpoints
            )
            if summary.exit_code == Exit.UNAVAILABLE:
                break  # the backend keeps failing: the other agents' transcripts wait for the next run
    finally:
        if dry_run:
            summary.standing = upload_markers.standing(markers)
        else:
            summary.standing = _standing(entry, markers, checkpoints)
            summary.files = upload_markers.needing_the_operator(markers)
            checkpoints.flush(document)
    summary.details["store"] = _store_description(settings)
    _finish(summary)
    _warn_of_an_implicit_store(settings, summary)
    return summary


def _warn_of_an_implicit_store(settings: Settings, summary: cli.RunSummary) -> None:
    """A run that stored transcripts in an embedded store nobody asked for says so (cron mails
    it): the endpoint may be missing by accident, and nothing reaches Nexus meanwhile."""
    stored = summary.counts.get("uploaded", 0) + summary.counts.get("reuploaded", 0)
    if settings.nexus.implicit_store and stored:
        log.warning(
            "no Nexus endpoint is configured: %d transcript(s) went to the embedded store at %s; set "
            "NEXUS_ENDPOINT (or nexus.endpoint) and they are all sent to Nexus, or set nexus.endpoint to "
            "%r to keep them local and silence this",
            stored,
            settings.store_root,
            nexus_settings.EMBEDDED,
        )


def _standing(
    entry: dict[str, Any], markers: upload_markers.DestinationMarkers, checkpoints: state.Checkpointer
) -> dict[str, int]:
    """How many markers say uploaded, rejected, conflict: counted again only when a marker
    changed in this run (counting 100,000 markers is a fifth of a nothing-new run)."""
    kept = entry.get("standing")
    unchanged = not (checkpoints.saves or checkpoints.pending_changes)
    if unchanged and isinstance(kept, dict) and all(isinstance(value, int) for value in kept.values()):
        return kept
    entry["standing"] = upload_markers.standing(markers)
    checkpoints.pending_changes += 1
    return entry["standing"]


def destination(settings: Settings) -> str:
    """What markers belong to: the endpoint (without credentials or query), or the embedded
    store's directory."""
    if settings.store_root is not None:
        return settings.store_root.absolute().as_uri()
    from urllib.parse import urlsplit

    parts = urlsplit(settings.endpoint)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}"


def _prune_due(document: dict[str, Any], where: str, retention_seconds: float) -> bool:
    """Whether this run forgets markers of what is gone: at most once a tenth of the retention
    period (and a day), as going through every marker is most of a nothing-new run's time."""
    entry = document["destinations"][where]
    now = time.time()
    last = entry.get("prunedAt")
    if isinstance(last, (int, float)) and 0 <= now - last < min(PRUNE_INTERVAL_SECONDS, retention_seconds / 10):
        return False
    entry["prunedAt"] = now
    # A first run has nothing to forget (and need not hold every name it finds to see that).
    return bool(entry["agents"] or entry["archived"])


def _scan(
    settings: Settings,
    markers: upload_markers.DestinationMarkers,
    agent: Agent,
    *,
    summary: cli.RunSummary,
    prune: bool,
) -> upload.Plan:
    plan = upload.Plan()
    agent_markers = markers[agent.agent_id]
    found = transcripts.scan_agent(
        agent,
        agent_markers,
        grace_seconds=settings.grace_seconds,
        now_ns=time.time_ns(),
        retry_rejected=settings.retry_rejected,
        retention_seconds=settings.retention_seconds,
        summary=summary,
        prune=prune,
    )
    agent_markers.shelf.release()
    plan.items = found.items
    if settings.only_file is not None:
        plan.items = [item for item in plan.items if item.name == settings.only_file]
        if not plan.items:
            log.warning("%s/%s is not complete yet; not sent", agent.agent_id, settings.only_file)
    plan.settlements.extend((agent.agent_id, settlement) for settlement in found.settlements)
    plan.markers_changed = found.markers_changed
    return plan


def _list(plan: upload.Plan, markers: upload_markers.DestinationMarkers, summary: cli.RunSummary) -> None:
    """What a dry run would send."""
    for item in plan.items:
        marker = markers[item.agent_id].get(item.name)
        why = "changed since upload" if marker else item.origin
        summary.would(f"would upload {item.agent_id}/{item.name} ({item.extent}, {why})")
    summary.counts["wouldUpload"] += len(plan.items)


def _forget(settings: Settings, markers: upload_markers.DestinationMarkers) -> bool:
    """Forget the marker of ``--file`` (so it is sent again); a name that is neither marked nor
    in the sessions directory is a usage error. True if a marker was forgotten."""
    agent, name = settings.agents[0], settings.only_file
    assert name is not None
    agent_markers = markers[agent.agent_id]
    if name in agent_markers:
        del agent_markers[name]
        return True
    if not (agent.sessions_dir / name).exists():
        raise UsageError(f"--file {name}: no such file in {agent.sessions_dir}, and no marker of it")
    return False


def _store_description(settings: Settings) -> str:
    if settings.store_root is not None:
        return str(settings.store_root / "inbox")
    return settings.endpoint


def _finish(summary: cli.RunSummary) -> None:
    counts = summary.counts
    if summary.exit_code == Exit.OK and summary.failures:
        summary.exit_code = Exit.PARTIAL
    if summary.exit_code == Exit.OK and summary.details.get("databasesBusy"):
        summary.exit_code = Exit.TEMPFAIL  # nothing failed; a busy database is read next run
    sent = counts["uploaded"] + counts["reuploaded"]
    parts = [f"uploaded {sent}" + (f" to {summary.details['store']}" if sent else "")]
    for key, words in (
        ("alreadyStored", "already stored"),
        ("rejected", "rejected"),
        ("conflicts", "conflicts"),
        ("failed", "failed"),
        ("unchanged", "unchanged"),
        ("waiting", "not complete yet"),
    ):
        if counts.get(key):
            parts.append(f"{counts[key]} {words}")
    summary.message = ", ".join(parts)
