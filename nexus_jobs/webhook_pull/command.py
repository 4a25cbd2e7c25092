"""``nexus-webhook-pull``: fetch pending webhook items from Nexus, deliver them to the agents,
acknowledge what was delivered.

One run, per agent: fetch a page of pending items, deliver each (``inbox`` file, OpenClaw
Gateway ``hook``, and/or a ``command``), record the delivered ids in state, then acknowledge
them; repeat until a page brings nothing new or ``maxItemsPerRun`` is reached.

Recording before acknowledging is what makes a lost acknowledgement harmless: an item the
server serves again is acknowledged again, not delivered twice. An item that keeps failing
goes to the dead-letter file after ``maxDeliveryAttempts`` runs and is then acknowledged; a
malformed item is dead-lettered at once. Nothing is dropped without a trace.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli import frame as cli
from ..core import config, http, processes, state, statedir
from ..core.config import Option
from ..core.errors import BackendUnavailable, ConfigError
from ..core.exits import Exit
from ..core.secrets import register_secret
from ..nexus import settings as nexus_settings
from ..nexus.webhooks import WebhookStore, open_store
from ..openclaw.agents import resolve_agents as agents_of
from . import delivery
from .ledger import Ledger

PROG = "nexus-webhook-pull"
JOB_TYPE = "webhook_pull"
DEFAULT_JOB_ID = "webhook-pull"
DELIVERY_MODES = ("inbox", "hook", "command")

log = logging.getLogger("nexus_jobs")

# The options of a webhook_pull entry's "config" object (jobs[].config).
OPTIONS = (
    Option("delivery", list, ["inbox"], "delivery modes, in order: inbox, hook, command", flag="--delivery"),
    Option("agents", list, [], "agents to pull for (default: every configured or discovered agent)"),
    Option("inboxDir", str, "inbox/webhooks", "inbox folder, relative to the agent's workspace"),
    Option(
        "gatewayUrl",
        str,
        "http://127.0.0.1:18789",
        "OpenClaw Gateway base URL for hook delivery",
        flag="--gateway-url",
        env="OPENCLAW_GATEWAY_URL",
    ),
    Option(
        "hooksToken",
        str,
        "",
        "OpenClaw Gateway hooks token; keep it in the environment or .env",
        env="OPENCLAW_HOOKS_TOKEN",
        secret=True,
    ),
    Option("hookRetries", int, 2, "retries of a transient hook failure (503, network) within one run", minimum=0),
    Option("command", list, [], "argv run per item with the item JSON on stdin; {agentId} {id} {source} {file}"),
    Option("commandTimeoutSeconds", float, 300.0, "time limit of one command run, in seconds", minimum=1),
    Option("maxDeliveryAttempts", int, 5, "failed runs before an item is dead-lettered", minimum=1, maximum=1000),
    Option("pageSize", int, 100, "items asked for per request", minimum=1, maximum=1000),
    Option("maxItemsPerRun", int, 1000, "items handled at most per run", flag="--max-items", minimum=1),
)


@dataclass(frozen=True)
class Settings:
    job_id: str
    state_dir: Path
    agents: dict[str, Path]  # agent id -> workspace
    options: dict[str, Any]
    dry_run: bool
    gateway: Any = None  # one requests.Session per run for hook delivery (connection reuse)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.new_parser(PROG, "Fetch pending Nexus webhook items, deliver them to agents, acknowledge them.")
    cli.add_options(parser, (*nexus_settings.OPTIONS, *OPTIONS))
    return cli.main(prog=PROG, parser=parser, run=run, argv=argv)


def run(args: argparse.Namespace) -> int:
    loaded = config.load(config_flag=args.config, env_file_flag=args.env_file)
    job = config.select_job(loaded, job_type=JOB_TYPE, job_id=args.job_id, default_id=DEFAULT_JOB_ID)
    flags = vars(args)
    nexus, options = config.gather(
        lambda: nexus_settings.resolve(loaded, flags), lambda: resolve_job_options(loaded, job, flags)
    )
    register_secret(options["hooksToken"])
    state_dir = statedir.resolve_state_dir(flag=args.state_dir, loaded=loaded)
    settings = Settings(
        job_id=job.job_id,
        state_dir=state_dir,
        agents=select_agents(loaded, options["agents"]),
        options=options,
        dry_run=args.dry_run,
        # The idempotency key makes a retried hook POST safe, so the shared Retry may repeat it.
        gateway=http.make_session(retries=options["hookRetries"], retry_post=True)
        if "hook" in options["delivery"]
        else None,
    )
    store = open_store(nexus, local_root=nexus.store_root(state_dir))
    try:
        return cli.run_scheduled(job=job, state_dir=state_dir, args=args, work=lambda: pull(settings, store))
    finally:
        store.close()
        if settings.gateway is not None:
            settings.gateway.close()


def resolve_job_options(loaded: config.LoadedConfig, job: config.JobEntry, flags: dict[str, Any]) -> dict[str, Any]:
    """The job's options, checked together; also used by ``nexus-jobs check-config``."""
    where = f"{job.key_path}.config" if job.key_path else "config"
    options = config.resolve(OPTIONS, loaded=loaded, section=job.config, section_path=where, flags=flags)
    problems = [
        f"{loaded.where(where + '.delivery')}: expected a list of {', '.join(DELIVERY_MODES)}, got {mode!r}"
        for mode in options["delivery"]
        if mode not in DELIVERY_MODES
    ]
    if not options["delivery"]:
        problems.append(f"{loaded.where(where + '.delivery')}: expected at least one delivery mode")
    if "command" in options["delivery"] and not options["command"]:
        problems.append(f"{loaded.where(where + '.command')}: delivery 'command' needs an argv list here")
    if "hook" in options["delivery"] and not options["hooksToken"]:
        problems.append("delivery 'hook' needs the Gateway hooks token: set OPENCLAW_HOOKS_TOKEN")
    if problems:
        raise ConfigError(problems)
    return options


def select_agents(loaded: config.LoadedConfig, wanted: list[str]) -> dict[str, Path]:
    known = {agent.agent_id: agent.workspace for agent in agents_of(loaded)}
    unknown = [agent_id for agent_id in wanted if agent_id not in known]
    if unknown:
        raise ConfigError(f"{loaded.where('agents')}: no agent {', '.join(map(repr, unknown))} configured or found")
    return {agent_id: known[agent_id] for agent_id in wanted} if wanted else known


# ---------------------------------------------------------------- one run


def pull(settings: Settings, store: WebhookStore) -> cli.RunSummary:
    summary = cli.RunSummary(settings.job_id, JOB_TYPE)
    for key in ("fetched", "delivered", "acknowledged", "alreadyDelivered", "failed", "deadLettered", "skipped"):
        summary.counts[key] = 0
    if not settings.agents:
        summary.message = "no agents configured or found under the OpenClaw state directory; nothing to pull"
        return summary
    ledger = Ledger.load(state_dir=settings.state_dir, job_id=settings.job_id, read_only=settings.dry_run)
    children = children_record(settings)
    backend_failed = False
    for number, agent_id in enumerate(settings.agents):
        try:
            pull_agent(agent_id, settings=settings, store=store, ledger=ledger, summary=summary, children=children)
        except BackendUnavailable as error:
            # The backend is down for all agents alike: asking for the others would only add
            # their retries to the run (docs/webhooks.md).
            backend_failed = True
            untried = len(settings.agents) - number - 1
            summary.failures.append(str(error) + (f"; {untried} other agent(s) not asked this run" if untried else ""))
            break
        finally:
            ledger.save()
    summary.standing = ledger.standing()
    if backend_failed:
        summary.exit_code = Exit.UNAVAILABLE
    elif summary.counts["failed"] or summary.counts["deadLettered"]:
        summary.exit_code = Exit.PARTIAL
    summary.message = _message(summary, settings)
    return summary


def children_record(settings: Settings) -> processes.GroupRecord | None:
    """The record of the running delivery command, in this job's state; a command a killed
    run left behind is killed before this run delivers anything (docs/child-processes.md)."""
    if "command" not in settings.options["delivery"] or settings.dry_run:
        return None
    record = processes.GroupRecord(state.data_path(settings.state_dir, settings.job_id, "children"))
    killed = record.kill_leftovers()
    if killed:
        log.warning("killed %d process(es) a delivery command of an earlier run left running", killed)
    return record


def pull_agent(
    agent_id: str,
    *,
    settings: Settings,
    store: WebhookStore,
    ledger: Ledger,
    summary: cli.RunSummary,
    children: processes.GroupRecord | None = None,
) -> None:
    """Page through one agent's pending items until a page brings nothing new."""
    seen_this_run: set[str] = set()
    while (room := settings.options["maxItemsPerRun"] - summary.counts["fetched"]) > 0:
        grouped = store.fetch_pending(agent_id, limit=min(settings.options["pageSize"], room))
        new = 0
        acknowledge: list[str] = []
        try:
            for group_agent, items in grouped.items():
                if not isinstance(items, list):
                    raise BackendUnavailable(
                        f"Nexus answered the pending items of agent {group_agent!r} with something that is not a list"
                    )
                for item in items:
                    key = _item_key(item)
                    if key in seen_this_run:
                        continue
                    seen_this_run.add(key)
                    new += 1
                    summary.counts["fetched"] += 1
                    if group_agent not in settings.agents:
                        summary.counts["skipped"] += 1
                        log.warning("left an item for agent %r alone: that agent is not configured here", group_agent)
                        continue
                    handled = handle_item(
                        item, agent_id=group_agent, settings=settings, ledger=ledger, summary=summary, children=children
                    )
                    if handled:
                        acknowledge.append(handled)
        finally:
            if not settings.dry_run:
                ledger.save()  # delivered ids are durable before the server forgets them
                if acknowledge:
                    store.acknowledge(acknowledge)
                    ledger.acknowledged(acknowledge)
                    summary.counts["acknowledged"] += len(acknowledge)
        if new == 0 or settings.dry_run:
            return


def handle_item(
    item: Any,
    *,
    agent_id: str,
    settings: Settings,
    ledger: Ledger,
    summary: cli.RunSummary,
    children: processes.GroupRecord | None = None,
) -> str | None:
    """Deliver one item (or dead-letter it); return its id when it may be acknowledged."""
    item_id = item.get("id") if isinstance(item, dict) else None
    if not isinstance(item_id, str) or not item_id.strip() or not _is_unicode(item_id):
        if ledger.note_malformed(item) and not settings.dry_run:
            ledger.dead_letter(_storable(item), agent_id=agent_id, reason="malformed item: " + _malformed_reason(item))
            summary.counts["deadLettered"] += 1
            summary.failures.append(f"agent {agent_id}: malformed item dead-lettered")
        return item_id if isinstance(item_id, str) and item_id else None
    if ledger.is_handled(item_id):
        summary.counts["alreadyDelivered"] += 1
        return item_id
    if settings.dry_run:
        summary.would(f"would deliver {item_id} to agent {agent_id} by {', '.join(settings.options['delivery'])}")
        return None
    try:
        deliver(item, agent_id=agent_id, settings=settings, ledger=ledger, children=children)
    except delivery.DeliveryFailed as error:
        attempts = ledger.failed(item_id, str(error))
        if attempts >= settings.options["maxDeliveryAttempts"]:
            ledger.dead_letter(
                _storable(item), agent_id=agent_id, reason=f"{attempts} failed deliveries; last: {error}"
            )
            summary.counts["deadLettered"] += 1
            summary.failures.append(f"{item_id}: dead-lettered after {attempts} failed deliveries: {error}")
            return item_id
        summary.counts["failed"] += 1
        summary.failures.append(
            f"{item_id}: delivery failed ({attempts}/{settings.options['maxDeliveryAttempts']}): {error}"
        )
        return None
    ledger.delivered(item_id, agent_id=agent_id)
    summary.counts["delivered"] += 1
    log.info("delivered %s to agent %s", item_id, agent_id)
    return item_id


# ---------------------------------------------------------------- delivery


def deliver(
    item: dict[str, Any],
    *,
    agent_id: str,
    settings: Settings,
    ledger: Ledger,
    children: processes.GroupRecord | None = None,
) -> None:
    """Every configured mode in order. Modes already done in an earlier run are skipped, so a
    command that succeeded is not run again because the hook after it failed."""
    options = settings.options
    inbox_file = delivery.inbox_path(item, workspace=settings.agents[agent_id], inbox_dir=options["inboxDir"])
    for mode in options["delivery"]:
        if ledger.mode_done(item["id"], mode):
            continue
        if mode == "inbox":
            if not settings.agents[agent_id].is_dir():
                raise delivery.DeliveryFailed(
                    f"workspace {settings.agents[agent_id]} of agent {agent_id} does not exist"
                )
            delivery.write_inbox_file(inbox_file, item)
        elif mode == "hook":
            delivery.post_hook(
                settings.gateway,
                item,
                agent_id=agent_id,
                options=options,
                inbox_file=inbox_file if "inbox" in options["delivery"] else None,
            )
        else:
            delivery.run_command(
                item,
                agent_id=agent_id,
                options=options,
                inbox_file=inbox_file,
                workspace=settings.agents[agent_id],
                children=children,
            )
        ledger.mode_succeeded(item["id"], mode)


def _is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode (no lone surrogate), so it can be stored as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _storable(item: Any) -> Any:
    """``item`` as it can be kept in a UTF-8 state file: lone surrogates become U+FFFD."""
    text = json.dumps(item, ensure_ascii=False, default=str)
    if _is_unicode(text):
        return item
    return json.loads(re.sub("[\ud800-\udfff]", "\ufffd", text))


def _message(summary: cli.RunSummary, settings: Settings) -> str:
    counts = summary.counts
    if settings.dry_run:
        return f"dry run: {counts['fetched']} pending item(s); nothing delivered or acknowledged"
    text = (
        f"{counts['delivered']} delivered, {counts['acknowledged']} acknowledged, {counts['failed']} failed, "
        f"{counts['deadLettered']} dead-lettered"
    )
    if summary.exit_code == Exit.OK:
        return text if counts["fetched"] else ""
    return text + "; " + "; ".join(summary.failures[:3]) + (" ..." if len(summary.failures) > 3 else "")


def _item_key(item: Any) -> str:
    if isinstance(item, dict) and isinstance(item.get("id"), str):
        return "id:" + item["id"]
    return "raw:" + hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()


def _malformed_reason(item: Any) -> str:
    if not isinstance(item, dict):
        return f"expected an object, got {type(item).__name__}"
    if isinstance(item.get("id"), str) and item["id"].strip():
        return "its id is not valid Unicode (a lone surrogate)"
    return "no string 'id'"
