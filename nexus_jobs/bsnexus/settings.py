"""Every setting of ``bsnexus-worker``, described once as an :class:`~nexus_jobs.config.Option`.

BSNexus settings live in the environment and in the ``.env`` file that ``register`` writes
(the config file has no section for them); flags beat both.
"""

from __future__ import annotations

import argparse
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import config, statedir
from ..core.errors import ConfigError
from ..core.secrets import register_secret

Option = config.Option

SERVER_URL = Option("server_url", str, "", "BSNexus backend URL", flag="--url", env="BSNEXUS_SERVER_URL")
REDIS_URL = Option("redis_url", str, "redis://localhost:6379", "Redis URL", flag="--redis-url", env="BSNEXUS_REDIS_URL")
EXECUTOR_TYPE = Option(
    "executor_type", str, "claude-code", "executor that runs tasks", flag="--executor", env="BSNEXUS_EXECUTOR_TYPE"
)
WORKER_NAME = Option(
    "worker_name",
    str,
    "",
    "worker display name (default: worker-<os>-<host>)",
    flag="--name",
    env="BSNEXUS_WORKER_NAME",
)
REGISTRATION_TOKEN = Option(
    "registration_token", str, "", "registration token from the admin UI", env="BSNEXUS_REGISTRATION_TOKEN", secret=True
)
REGISTRATION_TOKEN_ELSEWHERE = Option(
    "registration_token_elsewhere",
    bool,
    False,
    "the registration token reaches `run` another way (environment, secret store): register does not "
    "save it in the .env file",
    flag="--registration-token-elsewhere",
    env="BSNEXUS_REGISTRATION_TOKEN_ELSEWHERE",
)
WORKER_ID = Option("worker_id", str, "", "worker id (saved by register)", env="BSNEXUS_WORKER_ID")
WORKER_TOKEN = Option(
    "worker_token", str, "", "worker auth token (saved by register)", env="BSNEXUS_WORKER_TOKEN", secret=True
)
DURATION = Option(
    "duration_seconds",
    float,
    0.0,
    "stop taking tasks after this many seconds (0: run until stopped)",
    flag="--duration",
    env="BSNEXUS_DURATION",
    minimum=0,
    maximum=31_536_000,
)
MAX_TASKS = Option(
    "max_tasks",
    int,
    0,
    "stop after this many tasks (0: no limit)",
    flag="--max-tasks",
    env="BSNEXUS_MAX_TASKS",
    minimum=0,
    maximum=1_000_000_000,
)

TUNING = (
    Option(
        "heartbeat_interval_seconds",
        float,
        30.0,
        "seconds between heartbeats",
        env="BSNEXUS_HEARTBEAT_INTERVAL",
        minimum=0.05,
        maximum=3600,
    ),
    Option(
        "visibility_timeout_seconds",
        float,
        300.0,
        "a task pending this long on a consumer the backend has forgotten (its worker:{id} hash gone) is "
        "claimed by another worker; a live consumer's tasks are never claimed",
        env="BSNEXUS_VISIBILITY_TIMEOUT_SECONDS",
        minimum=0.05,
        maximum=604_800,
    ),
    Option(
        "max_deliveries",
        int,
        5,
        "a task delivered more often than this is a poison message: failed and dead-lettered",
        env="BSNEXUS_MAX_DELIVERIES",
        minimum=1,
        maximum=1000,
    ),
    Option(
        "task_timeout_seconds",
        float,
        3600.0,
        "an executor running longer is killed (its whole process group)",
        env="BSNEXUS_TASK_TIMEOUT_SECONDS",
        minimum=0.05,
        maximum=604_800,
    ),
    Option(
        "grace_seconds",
        float,
        60.0,
        "after SIGTERM/SIGINT or --duration, how long the running task may still take",
        env="BSNEXUS_GRACE_SECONDS",
        minimum=0,
        maximum=86_400,
    ),
    Option(
        "poll_seconds",
        float,
        2.0,
        "how long one read waits for new tasks",
        env="BSNEXUS_POLL_SECONDS",
        minimum=0.01,
        maximum=60,
    ),
    Option(
        "reconnect_max_seconds",
        float,
        30.0,
        "longest wait between reconnection attempts to Redis or the server",
        env="BSNEXUS_RECONNECT_MAX_SECONDS",
        minimum=0.05,
        maximum=3600,
    ),
    Option(
        "http_retries", int, 4, "retries of a transient HTTP failure", env="BSNEXUS_HTTP_RETRIES", minimum=0, maximum=10
    ),
    Option(
        "http_timeout_seconds",
        float,
        30.0,
        "read timeout of one HTTP request",
        env="BSNEXUS_HTTP_TIMEOUT_SECONDS",
        minimum=0.1,
        maximum=600,
    ),
    Option(
        "command",
        str,
        "",
        "argv template of the command executor; placeholders {task_id} {kind} {repo_path} {branch_name}",
        env="BSNEXUS_COMMAND",
    ),
    Option("claude_binary", str, "claude", "the Claude Code CLI", env="BSNEXUS_CLAUDE_BINARY"),
    Option(
        "dead_letter_stream",
        str,
        "tasks:dead-letter",
        "stream that keeps a copy of every poison message",
        env="BSNEXUS_DEAD_LETTER_STREAM",
    ),
    Option("tasks_queue", str, "tasks:queue", "stream of execution tasks", env="BSNEXUS_TASKS_QUEUE"),
    Option("tasks_results", str, "tasks:results", "stream of results", env="BSNEXUS_TASKS_RESULTS"),
    Option("tasks_qa", str, "tasks:qa", "stream of QA reviews", env="BSNEXUS_TASKS_QA"),
    Option("workers_group", str, "workers", "consumer group of execution tasks", env="BSNEXUS_WORKERS_GROUP"),
    Option("reviewers_group", str, "reviewers", "consumer group of QA reviews", env="BSNEXUS_REVIEWERS_GROUP"),
)

OPTIONS = (
    SERVER_URL,
    REDIS_URL,
    EXECUTOR_TYPE,
    WORKER_NAME,
    REGISTRATION_TOKEN,
    REGISTRATION_TOKEN_ELSEWHERE,
    WORKER_ID,
    WORKER_TOKEN,
    DURATION,
    MAX_TASKS,
    *TUNING,
)
REGISTER_FLAGS = (SERVER_URL, REDIS_URL, EXECUTOR_TYPE, WORKER_NAME, REGISTRATION_TOKEN_ELSEWHERE)
RUN_FLAGS = (DURATION, MAX_TASKS)


@dataclass(frozen=True)
class Settings:
    server_url: str
    redis_url: str
    executor_type: str
    worker_name: str
    registration_token: str
    registration_token_elsewhere: bool
    worker_id: str
    worker_token: str
    duration_seconds: float
    max_tasks: int
    heartbeat_interval_seconds: float
    visibility_timeout_seconds: float
    max_deliveries: int
    task_timeout_seconds: float
    grace_seconds: float
    poll_seconds: float
    reconnect_max_seconds: float
    http_retries: int
    http_timeout_seconds: float
    command: str
    claude_binary: str
    dead_letter_stream: str
    tasks_queue: str
    tasks_results: str
    tasks_qa: str
    workers_group: str
    reviewers_group: str
    env_file: Path
    state_dir: Path

    @property
    def job_id(self) -> str:
        """The state file name and lock of this worker identity."""
        return "bsnexus-worker-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.worker_id or "unregistered")


def load(args: argparse.Namespace, loaded: config.LoadedConfig, *, token_flag: str | None = None) -> Settings:
    """Resolve every option (flag > environment and ``.env`` > default) and check the URLs."""
    flags = {key: value for key, value in vars(args).items() if value is not None}
    values = config.resolve(OPTIONS, loaded=loaded, section={}, section_path="", flags=flags)
    if token_flag:
        values["registration_token"] = token_flag
    for secret in ("registration_token", "worker_token"):
        register_secret(values[secret])
    register_secret(_password_of(values["redis_url"]))
    register_secret(_password_of(values["server_url"]))  # http://user:PASS@host
    problems = _identity_problems(values)
    server_problem = _server_url_problem(values["server_url"]) if values["server_url"] else ""
    if server_problem:
        problems.append(f"--url / BSNEXUS_SERVER_URL: {server_problem}, got {safe_url(values['server_url'])!r}")
    redis_problem = _redis_url_problem(values["redis_url"])
    if redis_problem:
        problems.append(f"--redis-url / BSNEXUS_REDIS_URL: {redis_problem}, got {safe_url(values['redis_url'])!r}")
    if problems:
        raise ConfigError(problems)
    values["server_url"] = values["server_url"].rstrip("/")
    assert loaded.env_file is not None
    state_dir = statedir.resolve_state_dir(flag=getattr(args, "state_dir", None), loaded=loaded)
    return Settings(**values, env_file=loaded.env_file, state_dir=state_dir)


def _identity_problems(values: dict[str, Any]) -> list[str]:
    """Tokens travel in HTTP headers and JSON (ASCII only); the backend issues uuid4 ids."""
    problems = []
    for option in (REGISTRATION_TOKEN, WORKER_TOKEN):
        token = values[option.path]
        if token and not (token.isascii() and token.isprintable() and " " not in token):
            problems.append(f"{option.env}: a token is printable ASCII without spaces; this one is not")
    worker_id = values["worker_id"]
    if worker_id:
        try:
            canonical = str(uuid.UUID(worker_id))
        except ValueError:
            canonical = ""
        if canonical != worker_id:
            problems.append(
                f"BSNEXUS_WORKER_ID: expected the lower-case UUID the server issued, got {worker_id[:80]!r}"
            )
    return problems


def _server_url_problem(url: str) -> str:
    from urllib.parse import urlsplit

    if not url.startswith(("http://", "https://")):
        return "expected an http(s):// URL"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        return str(error).rstrip(".")
    if not parts.hostname:
        return "the URL names no host"
    if not url.isascii() or any(character.isspace() for character in url):
        return "a URL is ASCII without spaces"
    return ""


def _redis_url_problem(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return "expected a redis://, rediss:// or unix:// URL"
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError as error:
        return str(error).rstrip(".")
    return ""


def _password_of(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None


def safe_url(url: str) -> str:
    """``url`` with any password replaced, for messages."""
    password = _password_of(url)
    return url.replace(":" + password + "@", ":***@") if password else url
