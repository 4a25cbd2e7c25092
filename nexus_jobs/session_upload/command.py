"""``nexus-session-upload``: upload every completed OpenClaw session transcript to Nexus once.

One run: load settings -> for each agent, find its transcripts (:mod:`transcripts`: the JSONL
files and the SQLite database, either or both) -> skip what the markers say is done
(:mod:`upload_markers`) -> read, check and upload the rest concurrently over keep-alive
connections (:mod:`nexus_sessions`) -> record a marker per answer, saved in checkpoints ->
prune markers of files long gone -> summary and exit code.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..cli import frame as cli
from ..core import config, state
from ..core.errors import AuthError, UsageError
from ..core.exits import Exit
from ..nexus import sessions as nexus_sessions
from ..nexus import settings as nexus_settings
from ..nexus.sessions import ALREADY_STORED, CONFLICT, FAILED, REFUSED, REJECTED, STORED, Outcome
from ..nexus.settings import NexusSettings
from ..openclaw import files as openclaw
from ..openclaw.agents import Agent
from ..openclaw.agents import resolve_agents as agents_of
from . import markers as upload_markers
from . import transcripts
from .markers import Found

if TYPE_CHECKING:
    import concurrent.futures

PROG = "nexus-session-upload"
JOB_TYPE = "session_upload"
DEFAULT_JOB_ID = "session-upload"
SERVER_LIMIT_BYTES = 10_485_760
MARKERS_NAME = "markers"

log = logging.getLogger("nexus_jobs")

OPTIONS = (
    config.Option("agents", list, [], "agent ids to upload (default: every configured or discovered agent)"),
    config.Option(
        "graceMinutes",
        float,
        10.0,
        "an orphan transcript must be unmodified this long before it counts as complete",
        flag="--grace-minutes",
        minimum=0,
    ),
    config.Option(
        "concurrency",
        int,
        8,
        "uploads in flight at once, over that many keep-alive connections",
        flag="--concurrency",
        minimum=1,
        maximum=64,
    ),
    config.Option(
        "maxTranscriptBytes",
        int,
        SERVER_LIMIT_BYTES,
        "larger transcripts are not sent but marked rejected (the server's limit)",
        minimum=1,
    ),
    config.Option(
        "retentionDays",
        float,
        30.0,
        "markers of files that no longer exist are forgotten after this many days",
        minimum=0,
    ),
)


@dataclass(frozen=True)
class Settings:
    job_id: str
    state_dir: Path
    agents: tuple[Agent, ...]
    endpoint: str
    nexus: NexusSettings
    grace_seconds: float
    concurrency: int
    max_bytes: int
    retention_seconds: float
    retry_rejected: bool
    store_root: Path | None
    show_progress: bool


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(prog=PROG, parser=build_parser(), run=run, argv=argv)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser(PROG, "Upload every completed OpenClaw session transcript to Nexus, once.")
    cli.add_options(parser, (*nexus_settings.OPTIONS, *OPTIONS))
    parser.add_argument("--agent", action="append", metavar="ID", help="only this agent (repeatable)")
    parser.add_argument("--retry-rejected", action="store_true", help="try rejected and conflicting files again")
    return parser


def run(args: argparse.Namespace) -> int:
    loaded = config.load(config_flag=args.config, env_file_flag=args.env_file)
    job = config.select_job(loaded, job_type=JOB_TYPE, job_id=args.job_id, default_id=DEFAULT_JOB_ID)
    settings = load_settings(loaded, job, args)
    return cli.run_scheduled(
        job=job, state_dir=settings.state_dir, args=args, work=lambda: upload_all(settings, dry_run=args.dry_run)
    )


def load_settings(loaded: config.LoadedConfig, job: config.JobEntry, args: argparse.Namespace) -> Settings:
    flags = vars(args)
    nexus, own = config.gather(
        lambda: nexus_settings.resolve(loaded, flags),
        lambda: config.resolve(
            OPTIONS, loaded=loaded, section=job.config, section_path=f"{job.key_path}.config", flags=flags
        ),
    )
    state_dir = config.resolve_state_dir(flag=args.state_dir, loaded=loaded)
    agents = agents_of(loaded)
    wanted = list(args.agent or own["agents"])
    if wanted:
        known = {agent.agent_id: agent for agent in agents}
        unknown = [agent_id for agent_id in wanted if agent_id not in known]
        if unknown:
            raise UsageError(
                f"unknown agent {', '.join(map(repr, unknown))} (known: {', '.join(known) or 'none found'})"
            )
        agents = [known[agent_id] for agent_id in dict.fromkeys(wanted)]
    endpoint = nexus.endpoint
    return Settings(
        job_id=job.job_id,
        state_dir=state_dir,
        agents=tuple(agents),
        endpoint=endpoint,
        nexus=nexus,
        grace_seconds=own["graceMinutes"] * 60,
        concurrency=own["concurrency"],
        max_bytes=min(own["maxTranscriptBytes"], SERVER_LIMIT_BYTES) if endpoint else own["maxTranscriptBytes"],
        retention_seconds=own["retentionDays"] * 86400,
        retry_rejected=args.retry_rejected,
        store_root=nexus.store_root(state_dir),
        show_progress=not (args.json or args.debug),
    )


def upload_all(settings: Settings, *, dry_run: bool) -> cli.RunSummary:
    summary = cli.RunSummary(settings.job_id, JOB_TYPE)
    counts = summary.counts
    for key in ("uploaded", "alreadyStored", "reuploaded", "rejected", "conflicts", "failed", "unchanged", "waiting"):
        counts[key] = 0
    markers_path = state.data_path(settings.state_dir, settings.job_id, MARKERS_NAME)
    document = state.read_json(
        markers_path,
        repair=not dry_run,
        consequence="transcripts already on the server will be offered again and recognised there (409)",
    ) or {"agents": {}}
    markers: dict[str, dict[str, dict[str, Any]]] = document.setdefault("agents", {})
    checkpoints = state.Checkpointer(markers_path)

    todo: list[tuple[Found, dict[str, Any] | None]] = []
    now_ns = time.time_ns()
    for agent in settings.agents:
        agent_markers = markers.setdefault(agent.agent_id, {})
        database = transcripts.scan_database(
            agent, agent_markers, retry_rejected=settings.retry_rejected, summary=summary, dry_run=dry_run
        )
        if database.markers_changed:
            checkpoints.pending_changes += 1
        todo.extend((item, agent_markers.get(item.name)) for item in database.complete)
        try:
            found = openclaw.scan(
                agent_id=agent.agent_id,
                sessions_dir=agent.sessions_dir,
                grace_seconds=settings.grace_seconds,
                now_ns=now_ns,
                is_done=upload_markers.done_check(agent_markers, retry_rejected=settings.retry_rejected),
            )
        except FileNotFoundError as error:
            if not database.found:
                summary.failures.append(f"agent {agent.agent_id}: cannot list {agent.sessions_dir}: {error.strerror}")
                log.error("%s", summary.failures[-1])
                continue
            found = openclaw.Scan()  # an agent of the SQLite era may have no sessions directory at all
        except OSError as error:
            summary.failures.append(f"agent {agent.agent_id}: cannot list {agent.sessions_dir}: {error.strerror}")
            log.error("%s", summary.failures[-1])
            continue
        if found.index_problem:
            log.warning(
                "agent %s: %s in %s; %d plain transcript(s) wait until it is readable (archives still upload)",
                agent.agent_id,
                found.index_problem,
                agent.sessions_dir,
                found.without_index,
            )
        counts["waiting"] += found.live + found.locked + found.in_grace + found.without_index
        counts["unchanged"] += found.unchanged
        if database.found and found.complete:
            copies = upload_markers.copies_of_generations(found.complete, agent_markers, dry_run=dry_run)
            counts["unchanged"] += len(copies)
            if copies:
                found.complete = [transcript for transcript in found.complete if transcript.name not in copies]
                checkpoints.pending_changes += 1
        if (
            not dry_run
            and database.present is not None
            and upload_markers.prune(
                agent_markers, present=found.present | database.present, retention_seconds=settings.retention_seconds
            )
        ):
            checkpoints.pending_changes += 1
        todo.extend((transcript, agent_markers.get(transcript.name)) for transcript in found.complete)

    if dry_run:
        for transcript, marker in todo:
            why = "changed since upload" if marker else transcript.origin
            summary.would(f"would upload {transcript.agent_id}/{transcript.name} ({transcript.extent}, {why})")
        counts["wouldUpload"] = len(todo)
    else:
        try:
            _upload(
                todo, settings=settings, summary=summary, markers=markers, document=document, checkpoints=checkpoints
            )
        finally:
            checkpoints.flush(document)
    summary.standing = upload_markers.standing(markers)
    summary.details["store"] = _store_description(settings)
    _finish(summary, counts)
    if summary.exit_code == Exit.OK and summary.details.get("databasesBusy"):
        summary.exit_code = Exit.TEMPFAIL  # nothing failed; a busy database is read next run
    return summary


def _upload(
    todo: list[tuple[Found, dict[str, Any] | None]],
    *,
    settings: Settings,
    summary: cli.RunSummary,
    markers: dict[str, dict[str, dict[str, Any]]],
    document: dict[str, Any],
    checkpoints: state.Checkpointer,
) -> None:
    """Read and upload ``todo`` with ``concurrency`` threads, recording each answer as it
    arrives. Stops early when the key is refused (exit 77) or the backend keeps failing."""
    if not todo:
        return
    import concurrent.futures  # imported here: a run with nothing to upload never needs it

    store = _open_store(settings)
    failures_in_a_row = 0
    give_up_after = max(3, settings.concurrency)
    bar = cli.progress(total=len(todo), description="uploading", enabled=settings.show_progress)
    pending = iter(todo)
    in_flight: dict[concurrent.futures.Future[Sent], tuple[Found, dict[str, Any] | None]] = {}
    refused: Outcome | None = None
    answered = 0  # answers from the backend, whatever they said
    with concurrent.futures.ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
        try:
            while True:
                stop = refused is not None or failures_in_a_row >= give_up_after
                while not stop and len(in_flight) < settings.concurrency * 2:
                    item = next(pending, None)
                    if item is None:
                        break
                    in_flight[pool.submit(_send, item[0], store=store, settings=settings)] = item
                if not in_flight:
                    break
                done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    transcript, marker = in_flight.pop(future)
                    sent = future.result()
                    outcome = sent.outcome
                    bar.update(nbytes=sent.size or 0, failed=outcome.kind in (FAILED, REJECTED, CONFLICT))
                    _record(sent, transcript, marker, markers=markers, summary=summary)
                    if outcome.kind == REFUSED:
                        refused = outcome
                    failures_in_a_row = failures_in_a_row + 1 if outcome.kind == FAILED else 0
                    answered += outcome.kind not in (FAILED, transcripts.UNREADABLE)
                    checkpoints.changed(document)
        finally:
            bar.close()
            store.close()
    left = sum(1 for _ in pending)
    if refused is not None:
        raise AuthError(f"{refused.detail}; stopped ({left} transcript(s) left for the next run)")
    if failures_in_a_row >= give_up_after or (failures_in_a_row and not answered):
        summary.exit_code = Exit.UNAVAILABLE
        summary.failures.append(
            f"backend unavailable: {failures_in_a_row} upload(s) failed in a row and none succeeded since; "
            f"{left + summary.counts['failed']} transcript(s) left for the next run"
        )
        log.error("%s", summary.failures[-1])


def _open_store(settings: Settings) -> nexus_sessions.SessionStore:
    if settings.store_root is not None:
        return nexus_sessions.FileSessionStore(settings.store_root)
    return nexus_sessions.HttpSessionStore(settings.nexus, pool_size=settings.concurrency)


class Sent(NamedTuple):
    """The store's answer, and the sha256 and size of what was sent (None when nothing was)."""

    outcome: Outcome
    sha256: str | None = None
    size: int | None = None


def _send(transcript: Found, *, store: nexus_sessions.SessionStore, settings: Settings) -> Sent:
    prepared = transcripts.read_transcript(transcript, max_bytes=settings.max_bytes)
    if isinstance(prepared, Outcome):
        return Sent(prepared)
    return Sent(store.upload(prepared), prepared.sha256, len(prepared.content))


def _record(
    sent: Sent,
    transcript: Found,
    marker: dict[str, Any] | None,
    *,
    markers: dict[str, dict[str, dict[str, Any]]],
    summary: cli.RunSummary,
) -> None:
    outcome = sent.outcome
    where = f"{transcript.agent_id}/{transcript.name}"
    counts = summary.counts
    if outcome.kind in (STORED, ALREADY_STORED):
        if marker is not None and marker.get("status") == "uploaded":
            counts["reuploaded"] += 1
            log.warning(
                "%s changed after it was uploaded (%s); uploaded again",
                where,
                upload_markers.describe_change(marker, transcript),
            )
        else:
            counts["uploaded" if outcome.kind == STORED else "alreadyStored"] += 1
            log.info("%s: %s", where, outcome.detail)
        status = "uploaded"
    elif outcome.kind == REJECTED:
        counts["rejected"] += 1
        log.warning("%s: rejected: %s (see status; --retry-rejected tries again)", where, outcome.detail)
        status = "rejected"
    elif outcome.kind == CONFLICT:
        counts["conflicts"] += 1
        summary.failures.append(f"{where}: conflict: {outcome.detail}")
        log.error("%s", summary.failures[-1])
        status = "conflict"
    else:
        if outcome.kind in (FAILED, transcripts.UNREADABLE):
            counts["failed"] += 1
            summary.failures.append(f"{where}: upload failed: {outcome.detail}")
            log.error("%s", summary.failures[-1])
        return
    markers.setdefault(transcript.agent_id, {})[transcript.name] = upload_markers.new_marker(
        transcript,
        status=status,
        response=outcome.detail if outcome.http_status is None else f"{outcome.http_status} {outcome.detail}",
        sha256=sent.sha256,
        sent_bytes=sent.size,
    )


def _store_description(settings: Settings) -> str:
    if settings.store_root is not None:
        return str(settings.store_root / "inbox")
    return settings.endpoint


def _finish(summary: cli.RunSummary, counts: dict[str, int]) -> None:
    if summary.exit_code == Exit.OK and summary.failures:
        summary.exit_code = Exit.PARTIAL
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
