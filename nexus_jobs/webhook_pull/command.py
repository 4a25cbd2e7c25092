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
import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli import frame as cli
from ..core import config, http, state
from ..core.config import Option
from ..core.errors import AuthError, BackendUnavailable, ConfigError
from ..core.exits import Exit
from ..core.secrets import register_secret
from ..nexus import settings as nexus_settings
from ..nexus.webhooks import WebhookStore, open_store, safe_name
from ..openclaw.agents import resolve_agents as agents_of
from .ledger import Ledger

PROG = "nexus-webhook-pull"
JOB_TYPE = "webhook_pull"
DEFAULT_JOB_ID = "webhook-pull"
DELIVERY_MODES = ("inbox", "hook", "command")
HOOK_TIMEOUT_SECONDS = 30.0

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
    state_dir = config.resolve_state_dir(flag=args.state_dir, loaded=loaded)
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
    backend_failed = False
    for agent_id in settings.agents:
        try:
            pull_agent(agent_id, settings=settings, store=store, ledger=ledger, summary=summary)
        except BackendUnavailable as error:
            backend_failed = True
            summary.failures.append(str(error))
        finally:
            ledger.save()
    summary.standing = ledger.standing()
    if backend_failed:
        summary.exit_code = Exit.UNAVAILABLE
    elif summary.counts["failed"] or summary.counts["deadLettered"]:
        summary.exit_code = Exit.PARTIAL
    summary.message = _message(summary, settings)
    return summary


def pull_agent(
    agent_id: str, *, settings: Settings, store: WebhookStore, ledger: Ledger, summary: cli.RunSummary
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
                    handled = handle_item(item, agent_id=group_agent, settings=settings, ledger=ledger, summary=summary)
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


def handle_item(item: Any, *, agent_id: str, settings: Settings, ledger: Ledger, summary: cli.RunSummary) -> str | None:
    """Deliver one item (or dead-letter it); return its id when it may be acknowledged."""
    item_id = item.get("id") if isinstance(item, dict) else None
    if not isinstance(item_id, str) or not item_id.strip():
        if ledger.note_malformed(item) and not settings.dry_run:
            ledger.dead_letter(item, agent_id=agent_id, reason="malformed item: " + _malformed_reason(item))
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
        deliver(item, agent_id=agent_id, settings=settings, ledger=ledger)
    except DeliveryFailed as error:
        attempts = ledger.failed(item_id, str(error))
        if attempts >= settings.options["maxDeliveryAttempts"]:
            ledger.dead_letter(item, agent_id=agent_id, reason=f"{attempts} failed deliveries; last: {error}")
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


class DeliveryFailed(Exception):
    """One delivery mode failed for one item; retried next run."""


def deliver(item: dict[str, Any], *, agent_id: str, settings: Settings, ledger: Ledger) -> None:
    """Every configured mode in order. Modes already done in an earlier run are skipped, so a
    command that succeeded is not run again because the hook after it failed."""
    options = settings.options
    inbox_file = inbox_path(item, workspace=settings.agents[agent_id], inbox_dir=options["inboxDir"])
    for mode in options["delivery"]:
        if ledger.mode_done(item["id"], mode):
            continue
        if mode == "inbox":
            if not settings.agents[agent_id].is_dir():
                raise DeliveryFailed(f"workspace {settings.agents[agent_id]} of agent {agent_id} does not exist")
            write_inbox_file(inbox_file, item)
        elif mode == "hook":
            post_hook(
                settings.gateway,
                item,
                agent_id=agent_id,
                options=options,
                inbox_file=inbox_file if "inbox" in options["delivery"] else None,
            )
        else:
            run_command(
                item, agent_id=agent_id, options=options, inbox_file=inbox_file, workspace=settings.agents[agent_id]
            )
        ledger.mode_succeeded(item["id"], mode)


def inbox_path(item: dict[str, Any], *, workspace: Path, inbox_dir: str) -> Path:
    source = item.get("source") if isinstance(item.get("source"), str) and item.get("source") else "unknown"
    return workspace / inbox_dir / f"{safe_name(str(source))}_{safe_name(item['id'])}.json"


def write_inbox_file(path: Path, item: dict[str, Any]) -> None:
    """Pretty JSON, written atomically: an agent never sees a half-written item."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        state.write_bytes_atomic(path, (json.dumps(item, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    except OSError as error:
        raise DeliveryFailed(f"inbox {path.parent}: {error.strerror or error}") from None


def post_hook(
    session: Any, item: dict[str, Any], *, agent_id: str, options: dict[str, Any], inbox_file: Path | None
) -> None:
    """``POST /hooks/agent`` of the OpenClaw Gateway; 200/202 is success, 503 or a network
    error is transient (retried next run), 401/403 stops the run."""
    import requests

    source, received = item.get("source", "unknown"), item.get("receivedAt", "unknown time")
    if inbox_file is not None:
        message = f"New webhook item from {source} (id {item['id']}, received {received}), saved to {inbox_file}."
    else:
        message = f"New webhook item from {source} (id {item['id']}, received {received}):\n" + json.dumps(
            item, indent=2, ensure_ascii=False
        )
    try:
        response = session.post(
            options["gatewayUrl"].rstrip("/") + "/hooks/agent",
            json={"message": message, "name": "Nexus", "agentId": agent_id, "deliver": False},
            headers={"Authorization": f"Bearer {options['hooksToken']}", "Idempotency-Key": item["id"]},
            timeout=(http.CONNECT_TIMEOUT_SECONDS, HOOK_TIMEOUT_SECONDS),
            allow_redirects=False,
        )
    except requests.RequestException as error:
        raise DeliveryFailed(f"Gateway hook: {http.describe_error(error)}") from None
    response.close()
    if response.status_code in (401, 403):
        raise AuthError(
            f"the OpenClaw Gateway refused the hooks token ({response.status_code}); check OPENCLAW_HOOKS_TOKEN"
        )
    if response.status_code not in (200, 202):
        raise DeliveryFailed(f"Gateway hook answered {response.status_code}")


def run_command(
    item: dict[str, Any], *, agent_id: str, options: dict[str, Any], inbox_file: Path, workspace: Path
) -> None:
    """The configured argv with the item JSON on stdin; exit 0 is success. A timeout kills the
    whole process group, so no grandchild outlives the run."""
    fields = {
        "{agentId}": agent_id,
        "{id}": item["id"],
        "{source}": str(item.get("source", "unknown")),
        "{file}": str(inbox_file),
    }
    argv = []
    for argument in options["command"]:
        for placeholder, value in fields.items():
            argument = argument.replace(placeholder, value)
        argv.append(argument)
    environment = {**os.environ, "NEXUS_WEBHOOK_ID": item["id"], "NEXUS_WEBHOOK_AGENT_ID": agent_id}
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=workspace if workspace.is_dir() else None,
            env=environment,
            start_new_session=True,
        )
    except OSError as error:
        raise DeliveryFailed(f"command {argv[0]!r}: {error.strerror or error}") from None
    try:
        _, errors = process.communicate(
            json.dumps(item, ensure_ascii=False).encode("utf-8"), timeout=options["commandTimeoutSeconds"]
        )
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise DeliveryFailed(f"command timed out after {options['commandTimeoutSeconds']:g}s") from None
    if process.returncode != 0:
        last = errors.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise DeliveryFailed(f"command exited with {process.returncode}" + (f": {last[0][:200]}" if last[0] else ""))


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
    return "no string 'id'"
