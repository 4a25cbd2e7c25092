"""Settings of ``mqtt-job-worker``, each described once as an :class:`Option`. The worker is
set up by its environment (Docker, systemd) and flags; secrets come from the environment only."""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..core import config, statedir
from ..core.config import Option
from ..core.errors import ConfigError
from ..core.secrets import redact, register_secret

PROG = "mqtt-job-worker"

OPTIONS = (
    Option(
        "mqtt.url",
        str,
        "mqtt://localhost:1883",
        "broker: mqtt://host[:port], or mqtts://host[:port] for TLS; user:pass@ only in the environment",
        flag="--mqtt-url",
        env="MQTT_URL",
    ),
    Option(
        "mqtt.username", str, "", "broker user name (instead of the URL's)", flag="--mqtt-username", env="MQTT_USERNAME"
    ),
    Option("mqtt.password", str, "", "broker password (instead of the URL's)", env="MQTT_PASSWORD", secret=True),
    Option(
        "mqtt.caFile",
        str,
        "",
        "CA certificates for mqtts:// (empty: the system's)",
        flag="--mqtt-ca-file",
        env="MQTT_CA_FILE",
    ),
    Option(
        "workerId",
        str,
        "",
        "MQTT client id, the key of the persistent session: stable across restarts, unique per worker "
        "(empty: mqtt-job-worker-<host name>)",
        flag="--worker-id",
        env="WORKER_ID",
    ),
    Option(
        "jobsRoot",
        str,
        "/data",
        "the shared mount; every workDir must be inside it",
        flag="--jobs-root",
        env="JOBS_ROOT",
    ),
    Option(
        "mqtt.pendingTopic",
        str,
        "jobs/pending",
        "topic of the job pointers",
        flag="--pending-topic",
        env="MQTT_PENDING_TOPIC",
    ),
    Option(
        "mqtt.resultTopic",
        str,
        "jobs/results/{id}",
        "topic of the results; {id} is the job id",
        flag="--result-topic",
        env="MQTT_RESULT_TOPIC",
    ),
    Option(
        "mqtt.sharedGroup",
        str,
        "",
        "subscribe as $share/<group>/<pending topic> so several workers share one queue",
        flag="--shared-group",
        env="MQTT_SHARED_GROUP",
    ),
    Option(
        "mqtt.sessionExpirySeconds",
        int,
        7 * 86400,
        "how long the broker keeps the session (and queued pointers) of a stopped worker",
        flag="--session-expiry",
        env="MQTT_SESSION_EXPIRY_SECONDS",
        minimum=60,
        maximum=4294967295,
    ),
    Option(
        "waitTimeoutSeconds",
        float,
        0.0,
        "exit 0 when no job came within this many seconds (0: wait for ever)",
        flag="--wait-timeout",
        env="MQTT_WAIT_TIMEOUT_SECONDS",
        minimum=0,
    ),
    Option(
        "connectTimeoutSeconds",
        float,
        10.0,
        "keep trying to reach the broker this long before exiting 69",
        flag="--connect-timeout",
        env="MQTT_CONNECT_TIMEOUT_SECONDS",
        minimum=0.1,
        maximum=3600,
    ),
    Option(
        "jobTimeoutSeconds",
        float,
        3600.0,
        "time limit of a job whose job.json sets no timeout",
        flag="--job-timeout",
        env="JOB_TIMEOUT_SECONDS",
        minimum=1,
        maximum=7 * 86400,
    ),
    Option(
        "jobLogMaxBytes",
        int,
        100 * 1024 * 1024,
        "at most this much of the steps' output goes into job.log per run; a marker line says what was cut",
        flag="--job-log-max-bytes",
        env="JOB_LOG_MAX_BYTES",
        minimum=4096,
        maximum=2**50,
    ),
)


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    tls: bool
    ca_file: str | None
    username: str | None
    password: str | None
    worker_id: str
    jobs_root: Path
    subscribe_topic: str
    result_topic: str
    session_expiry_seconds: int
    wait_timeout_seconds: float
    connect_timeout_seconds: float
    job_timeout_seconds: float
    job_log_max_bytes: int
    state_dir: Path  # local to this worker: the record of its running step

    @property
    def broker(self) -> str:
        """The broker as it may be shown: never with credentials."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def __repr__(self) -> str:  # the password must not show up in a debug log
        return f"Settings(broker={self.broker!r}, worker_id={self.worker_id!r})"


def load_settings(args: argparse.Namespace) -> Settings:
    """Every setting, checked; all problems reported together (exit 78)."""
    loaded = config.load(config_flag=args.config, env_file_flag=args.env_file)
    values = config.resolve(OPTIONS, loaded=loaded, section={}, section_path="", flags=vars(args), strict=False)
    problems: list[str] = []
    url_origin = "--mqtt-url" if getattr(args, "mqtt_url", None) else "MQTT_URL"
    host, port, tls, url_user, url_password = _parse_broker_url(
        values["mqtt.url"], origin=url_origin, problems=problems
    )
    password = values["mqtt.password"] or url_password
    register_secret(password)
    username = values["mqtt.username"] or url_user
    if password and not username:
        problems.append("MQTT_PASSWORD is set but no user name (MQTT_USERNAME or user:pass@ in MQTT_URL)")
    ca_file = values["mqtt.caFile"] or None
    if ca_file and not Path(ca_file).is_file():
        problems.append(f"MQTT_CA_FILE: {ca_file} is not a file")
    worker_id = values["workerId"] or default_worker_id()
    if len(worker_id) > 128 or not worker_id.isprintable() or any(ch.isspace() for ch in worker_id):
        problems.append(f"WORKER_ID: expected at most 128 printable characters without spaces, got {worker_id!r:.60}")
    jobs_root = Path(values["jobsRoot"]).expanduser().absolute()
    if not jobs_root.is_dir():
        problems.append(f"JOBS_ROOT: {jobs_root} is not a directory (mount the shared drive there or set JOBS_ROOT)")
    subscribe_topic = _subscribe_topic(values["mqtt.pendingTopic"], values["mqtt.sharedGroup"], problems)
    result_topic = values["mqtt.resultTopic"]
    if "{id}" not in result_topic or any(ch in result_topic for ch in "+#\0"):
        problems.append(f"MQTT_RESULT_TOPIC: expected a topic containing {{id}} and no wildcards, got {result_topic!r}")
    if problems:
        raise ConfigError([redact(problem) for problem in problems])
    return Settings(
        host=host,
        port=port,
        tls=tls,
        ca_file=ca_file,
        username=username or None,
        password=password or None,
        worker_id=worker_id,
        jobs_root=jobs_root,
        subscribe_topic=subscribe_topic,
        result_topic=result_topic,
        session_expiry_seconds=values["mqtt.sessionExpirySeconds"],
        wait_timeout_seconds=values["waitTimeoutSeconds"],
        connect_timeout_seconds=values["connectTimeoutSeconds"],
        job_timeout_seconds=values["jobTimeoutSeconds"],
        job_log_max_bytes=values["jobLogMaxBytes"],
        state_dir=statedir.resolve_state_dir(flag=getattr(args, "state_dir", None), loaded=loaded),
    )


def _parse_broker_url(url: str, *, origin: str, problems: list[str]) -> tuple[str, int, bool, str, str]:
    expected = "expected mqtt://host[:port] or mqtts://host[:port]"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        problems.append(f"{origin}: {expected} (the port is not a number from 1 to 65535)")
        return "", 0, False, "", ""
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    register_secret(parts.password)
    register_secret(password)
    shown = f"{parts.scheme}://{parts.hostname or ''}{f':{port}' if port else ''}{parts.path}"
    if origin.startswith("--") and (user or password):
        problems.append(
            f"{origin}: credentials do not belong in process arguments: use MQTT_USERNAME and "
            "MQTT_PASSWORD (or MQTT_URL) in the environment"
        )
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        problems.append(f"{origin}: {expected}, got {shown!r}")
        return "", 0, False, "", ""
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls, user, password


def _subscribe_topic(topic: str, group: str, problems: list[str]) -> str:
    if not topic or "\0" in topic or topic.startswith("$share/"):
        problems.append(f"MQTT_PENDING_TOPIC: expected a topic (use MQTT_SHARED_GROUP to share it), got {topic!r}")
    if not group:
        return topic
    if not all(ch.isalnum() or ch in "-_." for ch in group):
        problems.append(f"MQTT_SHARED_GROUP: expected letters, digits, '-', '_' or '.', got {group!r}")
    return f"$share/{group}/{topic}"


def default_worker_id() -> str:
    """Stable for a host (or a container with a fixed hostname), different between hosts:
    one fixed default would make two workers take over each other's session."""
    host = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in socket.gethostname()) or "localhost"
    return f"{PROG}-{host}"[:128]
