"""``nexus-jobs check-config``: one line per check, read-only. The config file and each job's
options; the environment file; the state directory; the agents; every backend the jobs use
(Nexus, the OpenClaw Gateway, the BSNexus server and its Redis, the MQTT broker), contacted
only with requests that change nothing; never a ``pingUrl`` (any request would count as a
ping). The exit code is the worst failure: 78 config, 77 refused credentials, 69 unreachable.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli import frame as cli
from ..cli.summary import result_object
from ..core import config, statedir
from ..core.config import JobEntry
from ..core.errors import ConfigError, JobError
from ..core.exits import Exit, worst
from ..core.secrets import redact
from ..nexus import settings as nexus_settings
from ..nexus.settings import EMBEDDED, NexusSettings
from ..openclaw.agents import openclaw_state_dir
from ..openclaw.agents import resolve_agents as agents_of
from ..openclaw.database import database_path


@dataclass(frozen=True)
class Check:
    status: str  # "ok", "warn" (worth a look, not a failure) or "FAIL"
    name: str
    detail: str
    exit_code: int = Exit.OK


def check_config(args: argparse.Namespace) -> int:
    checks = list(_all_checks(args))
    failed = [check for check in checks if check.status == "FAIL"]
    code = worst([check.exit_code for check in failed]) if failed else Exit.OK
    if args.json:
        rows = [{"status": c.status, "check": c.name, "detail": c.detail} for c in checks]
        counts = {word: sum(c.status == word for c in checks) for word in ("ok", "warn", "FAIL")}
        cli.print_json(
            result_object(
                job=None,
                job_type="check-config",
                exit_code=code,
                counts=counts,
                failures=[f"{c.name}: {c.detail}" for c in failed],
                details={"ok": not failed, "checks": rows},
            )
        )
    else:
        for check in checks:
            print(redact(f"{check.status:<4}  {check.name}: {check.detail}"))
    return code


def _all_checks(args: argparse.Namespace) -> Any:
    try:
        loaded = config.load(config_flag=args.config, env_file_flag=args.env_file)
    except ConfigError as error:
        for problem in error.problems:
            yield Check("FAIL", "config", problem, Exit.CONFIG)
        return
    entries = config.scheduled_jobs(loaded)
    yield Check(
        "ok",
        "config",
        f"{loaded.path} ({len(config.job_entries(loaded))} job(s))"
        if loaded.path
        else "no config file found; defaults apply (default job: session-upload)",
    )
    yield _check_env_file(loaded)
    nexus: NexusSettings | None = None
    try:
        nexus = nexus_settings.resolve(loaded, {})
    except ConfigError as error:
        for problem in error.problems:
            yield Check("FAIL", "nexus settings", problem, Exit.CONFIG)
    if nexus_settings.api_key_in_config_file(loaded):
        yield Check(
            "warn",
            "nexus settings",
            f"{loaded.where('nexus.apiKey')}: the API key is in the config file; move it to NEXUS_API_KEY in "
            f"the environment or the .env file (mode 600)",
        )
    job_options: dict[str, dict[str, Any]] = {}
    for entry in entries:
        try:
            job_options[entry.job_id] = _job_options(loaded, entry)
            state_of = "enabled" if entry.enabled else "disabled"
            every = f"every {entry.interval_minutes:g} min" if entry.interval_minutes else "every run"
            yield Check("ok", f"job {entry.job_id}", f"{entry.job_type}, {state_of}, {every}; options valid")
        except ConfigError as error:
            for problem in error.problems:
                yield Check("FAIL", f"job {entry.job_id}", problem, Exit.CONFIG)
    try:
        state_dir = statedir.resolve_state_dir(flag=args.state_dir, loaded=loaded, adopt_old_state=False)
        yield _check_state_dir(state_dir)
        old = statedir.old_state_dir(loaded)
        if old is not None and state_dir == statedir.default_state_dir(loaded):
            yield Check("warn", "state directory", f"{old} holds state of an earlier release; the next run moves it")
    except ConfigError as error:
        yield Check("FAIL", "state directory", str(error), Exit.CONFIG)
        return
    yield from _check_agents(loaded, entries)
    if nexus is not None:
        yield _check_nexus(nexus, loaded=loaded, state_dir=state_dir, entries=entries)
    yield from _check_worker_backends(loaded.env)
    for entry in entries:
        options = job_options.get(entry.job_id)
        if entry.job_type == "webhook_pull" and options is not None:
            yield from _check_delivery(entry, options)
        if entry.ping_url:
            # A GET would count as a ping at healthchecks.io: only the form is checked.
            yield Check("ok", f"job {entry.job_id} pingUrl", "set (not contacted: any request would count as a ping)")


def _job_options(loaded: config.LoadedConfig, entry: JobEntry) -> dict[str, Any]:
    if entry.job_type == "webhook_pull":
        from ..webhook_pull import command as webhook_pull

        return webhook_pull.resolve_job_options(loaded, entry, {})
    from ..session_upload import command as session_upload

    where = f"{entry.key_path}.config" if entry.key_path else "config"
    return config.resolve(session_upload.OPTIONS, loaded=loaded, section=entry.config, section_path=where, flags={})


def _check_env_file(loaded: config.LoadedConfig) -> Check:
    path = loaded.env_file
    if path is None or not path.exists():
        return Check("ok", "env file", f"none at {path}; settings come from the environment")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return Check("warn", "env file", f"{path} is readable by other users (mode {mode:o}); run chmod 600 on it")
    return Check("ok", "env file", f"{path} (mode {mode:o})")


def _check_state_dir(state_dir: Path) -> Check:
    if state_dir.is_dir():
        if not os.access(state_dir, os.W_OK | os.X_OK):
            return Check("FAIL", "state directory", f"{state_dir} is not writable by this user", Exit.CONFIG)
        mode = state_dir.stat().st_mode & 0o777
        if mode & 0o077:
            return Check("warn", "state directory", f"{state_dir} is open to other users (mode {mode:o}); chmod 700")
        return Check("ok", "state directory", f"{state_dir} (writable, mode {mode:o})")
    if state_dir.exists():
        return Check("FAIL", "state directory", f"{state_dir} exists but is not a directory", Exit.CONFIG)
    parent = state_dir
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return Check("ok", "state directory", f"{state_dir} does not exist yet; the first run creates it")
    return Check("FAIL", "state directory", f"{state_dir} does not exist and {parent} is not writable", Exit.CONFIG)


def _check_agents(loaded: config.LoadedConfig, entries: list[JobEntry]) -> Any:
    agents = agents_of(loaded)
    if not agents:
        where = openclaw_state_dir(loaded) / "agents"
        yield Check("FAIL", "agents", f"none configured and none found under {where}", Exit.CONFIG)
        return
    types = {entry.job_type for entry in entries}
    for agent in agents:
        missing = []
        # An agent of OpenClaw's SQLite era may have only its database (docs/openclaw.md).
        has_sessions = agent.sessions_dir.is_dir() or database_path(agent.sessions_dir).is_file()
        if "session_upload" in types and not has_sessions:
            missing.append(f"sessions folder {agent.sessions_dir}")
        if "webhook_pull" in types and not agent.workspace.is_dir():
            missing.append(f"workspace {agent.workspace}")
        if missing:
            yield Check("warn", f"agent {agent.agent_id}", "missing " + " and ".join(missing))
        else:
            yield Check("ok", f"agent {agent.agent_id}", f"sessions {agent.sessions_dir}, workspace {agent.workspace}")


def _check_nexus(
    nexus: NexusSettings, *, loaded: config.LoadedConfig, state_dir: Path, entries: list[JobEntry]
) -> Check:
    from ..nexus import sessions as nexus_sessions
    from ..nexus import webhooks as nexus_webhooks

    try:
        local_root = nexus.store_root(state_dir)
    except ConfigError as error:
        return Check("FAIL", "nexus backend", str(error), Exit.CONFIG)
    if local_root is None and not nexus.api_key:
        return Check("FAIL", "nexus backend", f"{nexus.endpoint} needs an API key: set NEXUS_API_KEY", Exit.CONFIG)
    # A check must answer quickly and change nothing: a short timeout and no retries.
    probing = dataclasses.replace(nexus, timeout_seconds=min(nexus.timeout_seconds, 15.0), retries=0)
    store: nexus_webhooks.WebhookStore | nexus_sessions.HttpSessionStore
    if local_root is None and all(entry.job_type != "webhook_pull" for entry in entries):
        # Without a webhook job the backend may serve only POST /sessions.
        store = nexus_sessions.HttpSessionStore(probing, pool_size=1)
        agent_id = ""
    else:
        store = nexus_webhooks.open_store(probing, local_root=local_root)
        agents = agents_of(loaded)
        agent_id = agents[0].agent_id if agents else "main"
    try:
        # A read-only request proves reachability and the key at once.
        described = store.probe(agent_id)
        if nexus.implicit_store:
            return Check(
                "warn",
                "nexus backend",
                f"no endpoint is configured, so transcripts go to the {described}; set NEXUS_ENDPOINT to "
                f"send them to Nexus, or nexus.endpoint {EMBEDDED!r} if the embedded store is what you want",
            )
        return Check("ok", "nexus backend", described)
    except JobError as error:
        return Check("FAIL", "nexus backend", str(error), error.exit_code)
    finally:
        store.close()


def _check_delivery(entry: JobEntry, options: dict[str, Any]) -> Any:
    name = f"job {entry.job_id} delivery"
    if "hook" in options["delivery"]:
        yield _check_gateway(name, options["gatewayUrl"])
    if "command" in options["delivery"]:
        program = options["command"][0]
        found = shutil.which(program)
        if found:
            yield Check("ok", name, f"command {program} found at {found}")
        else:
            yield Check("FAIL", name, f"command {program!r} not found or not executable", Exit.CONFIG)


def _check_gateway(name: str, gateway_url: str, *, what: str = "OpenClaw Gateway") -> Check:
    import requests

    from ..core import http

    session = http.make_session(retries=0)
    try:
        # Any HTTP answer proves the Gateway listens; nothing is posted.
        response = session.get(gateway_url.rstrip("/") + "/", timeout=(5.0, 10.0), allow_redirects=False)
        response.close()
        return Check("ok", name, f"{what} at {gateway_url} answers (HTTP {response.status_code})")
    except requests.RequestException as error:
        detail = f"{what} at {gateway_url}: {http.describe_error(error)}"
        return Check("FAIL", name, detail, Exit.UNAVAILABLE)
    finally:
        session.close()


def _check_worker_backends(env: Mapping[str, str]) -> Any:
    """The backends of the long-running workers, when their settings are present: the BSNexus
    server and its Redis (saved by ``bsnexus-worker register``) and the MQTT broker. Read-only:
    an HTTP GET, a Redis PING, a TCP connection that sends nothing."""
    if env.get("BSNEXUS_SERVER_URL"):
        yield _check_gateway("bsnexus server", env["BSNEXUS_SERVER_URL"], what="BSNexus backend")
    if env.get("BSNEXUS_REDIS_URL"):
        yield _check_redis(env["BSNEXUS_REDIS_URL"])
    if env.get("MQTT_URL"):
        yield _check_broker(env["MQTT_URL"])


def _check_redis(url: str) -> Check:
    import redis

    shown = _without_credentials(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        client.ping()
        client.close()
    except redis.AuthenticationError:
        return Check("FAIL", "bsnexus redis", f"Redis at {shown} refused the password", Exit.NOPERM)
    except (redis.RedisError, ValueError) as error:
        return Check("FAIL", "bsnexus redis", f"Redis at {shown}: {str(error).splitlines()[0][:120]}", Exit.UNAVAILABLE)
    return Check("ok", "bsnexus redis", f"Redis at {shown} answers PING")


def _check_broker(url: str) -> Check:
    import socket
    from urllib.parse import urlsplit

    shown = _without_credentials(url)
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("expected mqtt://host[:port] or mqtts://host[:port]")
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError as error:
        return Check("FAIL", "mqtt broker", f"MQTT_URL {shown}: {error}", Exit.CONFIG)
    try:
        with socket.create_connection((parts.hostname, port), timeout=5):
            pass
    except OSError as error:
        return Check("FAIL", "mqtt broker", f"{shown}: {error.strerror or error}", Exit.UNAVAILABLE)
    return Check("ok", "mqtt broker", f"{shown} accepts connections")


def _without_credentials(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    return scheme + separator + rest.rpartition("@")[2] if separator else url
