"""``nexus-session-upload``: the console script. Its options, described once, and its
settings; the run itself is :func:`nexus_jobs.session_upload.work.upload_all`, loaded only
when the job is due.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from ..cli import frame as cli
from ..core import config, statedir
from ..core.errors import UsageError
from ..nexus import settings as nexus_settings
from ..openclaw.agents import resolve_agents as agents_of
from .settings import JOB_TYPE, Settings

PROG = "nexus-session-upload"
DEFAULT_JOB_ID = "session-upload"
SERVER_LIMIT_BYTES = 10_485_760

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


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(prog=PROG, parser=build_parser(), run=run, argv=argv)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser(PROG, "Upload every completed OpenClaw session transcript to Nexus, once.")
    cli.add_options(parser, (*nexus_settings.OPTIONS, *OPTIONS))
    parser.add_argument("--agent", action="append", metavar="ID", help="only this agent (repeatable)")
    parser.add_argument("--retry-rejected", action="store_true", help="try rejected and conflicting files again")
    parser.add_argument(
        "--file", metavar="NAME", help="send this one file of the --agent again (its marker is forgotten), if complete"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    loaded = config.load(config_flag=args.config, env_file_flag=args.env_file)
    job = config.select_job(loaded, job_type=JOB_TYPE, job_id=args.job_id, default_id=DEFAULT_JOB_ID)
    settings = load_settings(loaded, job, args)
    return cli.run_scheduled(job=job, state_dir=settings.state_dir, args=args, work=lambda: _work(settings, args))


def _work(settings: Settings, args: argparse.Namespace) -> cli.RunSummary:
    # Imported here: a run that is not due never loads the scan, the markers or the upload.
    from .work import upload_all

    return upload_all(settings, dry_run=args.dry_run)


def load_settings(loaded: config.LoadedConfig, job: config.JobEntry, args: argparse.Namespace) -> Settings:
    flags = vars(args)
    nexus, own = config.gather(
        lambda: nexus_settings.resolve(loaded, flags),
        lambda: config.resolve(
            OPTIONS, loaded=loaded, section=job.config, section_path=f"{job.key_path}.config", flags=flags
        ),
    )
    state_dir = statedir.resolve_state_dir(flag=args.state_dir, loaded=loaded)
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
    if args.file is not None and (len(args.agent or []) != 1 or not args.file or "/" in args.file):
        raise UsageError("--file NAME needs one --agent ID, and NAME a file name of its sessions directory")
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
        only_file=args.file,
    )
