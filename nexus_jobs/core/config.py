"""Configuration: the JSON config file, ``.env``, the environment and command-line flags.

Every option is described once, as an :class:`Option`; defaults, validation, ``--help`` and
``check-config`` all come from that description. Precedence: flag > environment (a real
variable beats the same name in ``.env``) > config file > default.

Problems are collected and reported together, each naming the file and the key path.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .options import Option as Option  # re-exported: jobs describe their options as config.Option
from .options import coerce
from .options import show as _show
from .options import unknown_key as unknown_key
from .state import read_regular_file

CONFIG_ENV_VAR = "NEXUS_JOBS_CONFIG"
ENV_FILE_ENV_VAR = "NEXUS_JOBS_ENV_FILE"

TOP_LEVEL_KEYS = ("nexus", "agents", "jobs", "stateDir", "openclawStateDir", "metricsFile")
METRICS_FILE_ENV_VAR = "NEXUS_JOBS_METRICS_FILE"
AGENT_KEYS = ("workspace", "sessionsDir")
JOB_ENTRY_KEYS = ("id", "type", "enabled", "intervalMinutes", "pingUrl", "config")
# Job types that may appear in ``jobs[]``, with the console script that runs each.
JOB_TYPES = {"session_upload": "nexus-session-upload", "webhook_pull": "nexus-webhook-pull"}

# A job entry's own schedule (``jobs[].intervalMinutes``): at most a year.
INTERVAL = Option(
    "intervalMinutes", float, 0.0, "run at most this often, in minutes (0: every run)", minimum=0, maximum=525_600
)


@dataclass(frozen=True)
class LoadedConfig:
    """The config file in use (if any), its parsed contents, and the environment."""

    path: Path | None
    data: Mapping[str, Any]
    env: Mapping[str, str]
    env_file: Path | None = None

    def where(self, key_path: str) -> str:
        return f"{self.path or 'config'}: {key_path}" if key_path else str(self.path or "config")


@dataclass(frozen=True)
class JobEntry:
    """One entry of ``jobs[]`` (or the default entry when the file has none for a type)."""

    job_id: str
    job_type: str
    enabled: bool = True
    interval_minutes: float = 0.0
    ping_url: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    key_path: str = ""
    # node_exporter textfile (config metricsFile, $NEXUS_JOBS_METRICS_FILE); None: no metrics.
    metrics_file: str | None = None


def discover_config_path(flag: str | None, environ: Mapping[str, str]) -> Path | None:
    """The config file in use: ``--config``, ``$NEXUS_JOBS_CONFIG``, ``./config.json``,
    ``~/.config/nexus-jobs/config.json``, ``/etc/nexus-jobs/config.json``. A path that was
    named explicitly must exist; the searched places may all be missing."""
    for named, origin in ((flag, "--config"), (environ.get(CONFIG_ENV_VAR), CONFIG_ENV_VAR)):
        if named:
            path = Path(named).expanduser()
            if not path.is_file():
                raise ConfigError(f"{path}: config file not found (named by {origin})")
            return path.absolute()
    home = Path(environ.get("HOME", str(Path.home())))
    config_home = Path(xdg_base(environ, "XDG_CONFIG_HOME") or home / ".config")
    for candidate in (
        Path("config.json"),
        config_home / "nexus-jobs" / "config.json",
        Path("/etc/nexus-jobs/config.json"),
    ):
        if candidate.is_file():
            return candidate.absolute()
    return None


def discover_env_file(flag: str | None, environ: Mapping[str, str], config_path: Path | None) -> Path:
    """The ``.env`` file: ``--env-file``, ``$NEXUS_JOBS_ENV_FILE``, the ``.env`` beside the
    config file in use, else ``~/.config/nexus-jobs/.env``. It need not exist."""
    named = flag or environ.get(ENV_FILE_ENV_VAR)
    if named:
        return Path(named).expanduser().absolute()
    if config_path is not None:
        return config_path.parent / ".env"
    home = Path(environ.get("HOME", str(Path.home())))
    return Path(xdg_base(environ, "XDG_CONFIG_HOME") or home / ".config") / "nexus-jobs" / ".env"


def load(
    *,
    config_flag: str | None = None,
    env_file_flag: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Find, read and structurally validate the config file, and merge ``.env`` under the
    environment. Raises :class:`ConfigError` listing every problem found."""
    environ = os.environ if environ is None else environ
    path = discover_config_path(config_flag, environ)
    data: Mapping[str, Any] = {}
    if path is not None:
        data = _parse_file(path)
    env_file = discover_env_file(env_file_flag, environ, path)
    env = dict(_read_env_file(env_file, named=bool(env_file_flag)))
    env.update(environ)
    loaded = LoadedConfig(path=path, data=data, env=env, env_file=env_file)
    problems = validate_structure(loaded)
    if problems:
        raise ConfigError(problems)
    return loaded


def _parse_file(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file: {error.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: line {error.lineno} column {error.colno}: invalid JSON: {error.msg}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid config: JSON nested too deeply") from None
    except ValueError as error:  # an integer of thousands of digits
        raise ConfigError(f"{path}: invalid JSON: {str(error).split(';')[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level, got {_show(data)}")
    return data


def _read_env_file(path: Path, *, named: bool) -> Mapping[str, str]:
    if not path.exists():
        if named:
            raise ConfigError(f"{path}: env file not found (named by --env-file)")
        return {}
    # Imported here: most runs have no .env file.
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    try:
        text = read_regular_file(path).decode("utf-8")
        # python-dotenv only logs a warning for a line it cannot parse and drops the line;
        # a setting silently missing is a configuration error. The line itself is never
        # shown: it may hold a secret.
        broken = [binding.original.line for binding in parse_stream(io.StringIO(text)) if binding.error]
        if broken:
            lines = ", ".join(str(number) for number in broken[:5])
            raise ConfigError(f"{path}: line {lines}: not a KEY=value line (env file syntax error)")
        values = dotenv_values(stream=io.StringIO(text))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: env file is not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read env file: {error.strerror}") from None
    return {key: value for key, value in values.items() if value is not None}


def validate_structure(loaded: LoadedConfig) -> list[str]:
    """Problems with the shape of the file: unknown keys, wrong types, bad job entries.
    The contents of each job's ``config`` object are checked by the job's own options."""
    data, problems = loaded.data, []
    for key in data:
        if key not in TOP_LEVEL_KEYS and not key.startswith("$"):
            problems.append(f"{loaded.where(key)}: {unknown_key(key, TOP_LEVEL_KEYS)}")
    for key in ("stateDir", "openclawStateDir", "metricsFile"):
        if key in data and not _is_path_text(data[key]):
            problems.append(f"{loaded.where(key)}: expected a path string, got {_show(data[key])}")
    if "nexus" in data and not isinstance(data["nexus"], dict):
        problems.append(f"{loaded.where('nexus')}: expected an object, got {_show(data['nexus'])}")
    agents = data.get("agents", {})
    if not isinstance(agents, dict):
        problems.append(f"{loaded.where('agents')}: expected an object keyed by agent id")
        agents = {}
    for agent_id, agent in agents.items():
        where = loaded.where(f"agents.{agent_id}")
        if not isinstance(agent, dict):
            problems.append(f"{where}: expected an object, got {_show(agent)}")
            continue
        for key, value in agent.items():
            if key not in AGENT_KEYS:
                problems.append(f"{where}.{key}: {unknown_key(key, AGENT_KEYS)}")
            elif not _is_path_text(value):
                problems.append(f"{where}.{key}: expected a path string, got {_show(value)}")
    jobs = data.get("jobs", [])
    if not isinstance(jobs, list):
        problems.append(f"{loaded.where('jobs')}: expected a list of job objects")
        jobs = []
    seen: set[str] = set()
    for index, entry in enumerate(jobs):
        problems.extend(_validate_job_entry(loaded, index, entry, seen))
    return problems


def _validate_job_entry(loaded: LoadedConfig, index: int, entry: Any, seen: set[str]) -> list[str]:
    where = loaded.where(f"jobs[{index}]")
    if not isinstance(entry, dict):
        return [f"{where}: expected an object, got {_show(entry)}"]
    problems = [f"{where}.{key}: {unknown_key(key, JOB_ENTRY_KEYS)}" for key in entry if key not in JOB_ENTRY_KEYS]
    job_id = entry.get("id")
    if not isinstance(job_id, str) or not job_id or not _is_safe_id(job_id):
        problems.append(f"{where}.id: expected a name of letters, digits, '-', '_' or '.', got {_show(job_id)}")
    elif job_id in seen:
        problems.append(f"{where}.id: duplicate job id {job_id!r}")
    else:
        seen.add(job_id)
    if entry.get("type") not in JOB_TYPES:
        problems.append(f"{where}.type: expected one of {', '.join(JOB_TYPES)}, got {_show(entry.get('type'))}")
    if "intervalMinutes" in entry:
        try:
            coerce(INTERVAL, entry["intervalMinutes"], from_text=False)
        except ValueError as error:
            problems.append(f"{where}.intervalMinutes: {error}")
    checks = (
        ("enabled", lambda v: isinstance(v, bool), "true or false"),
        ("pingUrl", lambda v: isinstance(v, str) and v.startswith(("http://", "https://")), "an http(s) URL"),
        ("config", lambda v: isinstance(v, dict), "an object"),
    )
    for key, valid, expected in checks:
        if key in entry and not valid(entry[key]):
            problems.append(f"{where}.{key}: expected {expected}, got {_show(entry[key])}")
    return problems


def _is_safe_id(text: str) -> bool:
    return all(ch.isalnum() or ch in "-_." for ch in text) and not text.startswith(".")


def job_entries(loaded: LoadedConfig) -> list[JobEntry]:
    """Every job of the config file, in file order (assumes :func:`validate_structure` passed)."""
    return [
        JobEntry(
            job_id=entry["id"],
            job_type=entry["type"],
            enabled=entry.get("enabled", True),
            interval_minutes=coerce(INTERVAL, entry.get("intervalMinutes", 0), from_text=False),
            ping_url=entry.get("pingUrl"),
            config=entry.get("config", {}),
            key_path=f"jobs[{index}]",
            metrics_file=metrics_file(loaded),
        )
        for index, entry in enumerate(loaded.data.get("jobs", []))
    ]


def metrics_file(loaded: LoadedConfig) -> str | None:
    """The node_exporter textfile the jobs write their metrics to (opt-in), absolute."""
    named = loaded.env.get(METRICS_FILE_ENV_VAR) or loaded.data.get("metricsFile")
    if not named:
        return None
    base = loaded.path.parent if loaded.path and not loaded.env.get(METRICS_FILE_ENV_VAR) else Path.cwd()
    return str((base / Path(named).expanduser()).absolute())


def scheduled_jobs(loaded: LoadedConfig) -> list[JobEntry]:
    """The jobs ``nexus-jobs`` shows and runs: those of the config file, or the default
    session-upload job when it lists none."""
    return job_entries(loaded) or [
        JobEntry(job_id="session-upload", job_type="session_upload", metrics_file=metrics_file(loaded))
    ]


def select_job(loaded: LoadedConfig, *, job_type: str, job_id: str | None, default_id: str) -> JobEntry:
    """The job a console script runs: the entry named by ``--job-id``, else the first entry
    of its type, else a default entry (so a missing config file still works)."""
    entries = job_entries(loaded)
    if job_id is not None:
        for entry in entries:
            if entry.job_id == job_id:
                if entry.job_type != job_type:
                    raise ConfigError(
                        f"{loaded.where(entry.key_path)}: job {job_id!r} has type {entry.job_type!r}, not {job_type!r}"
                    )
                return entry
        if loaded.path is not None:
            raise ConfigError(f"{loaded.where('jobs')}: no job with id {job_id!r}")
        return JobEntry(job_id=job_id, job_type=job_type, metrics_file=metrics_file(loaded))
    for entry in entries:
        if entry.job_type == job_type:
            return entry
    return JobEntry(job_id=default_id, job_type=job_type, metrics_file=metrics_file(loaded))


def resolve(
    options: Sequence[Option],
    *,
    loaded: LoadedConfig,
    section: Mapping[str, Any],
    section_path: str,
    flags: Mapping[str, Any],
    strict: bool = True,
) -> dict[str, Any]:
    """Values of ``options`` by precedence flag > environment > ``section`` > default,
    keyed by ``Option.path``. With ``strict``, keys in ``section`` that no option describes
    are problems too. Raises :class:`ConfigError` with every problem."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for option in options:
        flag_value = flags.get(option.dest)
        file_value = _lookup(section, option.path)
        try:
            if flag_value is not None:
                origin = option.flag or option.dest
                values[option.path] = coerce(option, flag_value, from_text=isinstance(flag_value, str))
            elif option.env and loaded.env.get(option.env, "") != "":
                origin = f"environment variable {option.env}"
                values[option.path] = coerce(option, loaded.env[option.env], from_text=True)
            elif file_value is not _MISSING:
                origin = loaded.where(_join(section_path, option.path))
                values[option.path] = coerce(option, file_value, from_text=False)
            else:
                values[option.path] = option.default
        except ValueError as error:
            shown = str(error) if not option.secret else f"expected {option.expected()}"
            problems.append(f"{origin}: {shown}")
    if strict:
        known = {option.path.split(".")[0] for option in options}
        nested = {option.path for option in options}
        for key, value in section.items():
            if key not in known:
                problems.append(f"{loaded.where(_join(section_path, key))}: {unknown_key(key, sorted(known))}")
            elif isinstance(value, dict):
                inner_known = sorted(path.split(".", 1)[1] for path in nested if path.startswith(key + "."))
                for inner in value:
                    if f"{key}.{inner}" not in nested:
                        where = loaded.where(_join(section_path, key + "." + inner))
                        problems.append(f"{where}: {unknown_key(inner, inner_known)}")
    if problems:
        raise ConfigError(problems)
    return values


def gather(*steps: Callable[[], Any]) -> list[Any]:
    """The results of ``steps`` (each resolving one section of settings), or one
    :class:`ConfigError` with the problems of every step that failed: the operator sees all
    of them in one report, not one section per attempt."""
    results, problems = [], []
    for step in steps:
        try:
            results.append(step())
        except ConfigError as error:
            problems.extend(error.problems)
    if problems:
        raise ConfigError(problems)
    return results


_MISSING = object()


def _lookup(section: Mapping[str, Any], path: str) -> Any:
    node: Any = section
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def xdg_base(environ: Mapping[str, str], name: str) -> str:
    """An XDG base directory variable, ignored unless absolute (as the XDG spec says): a
    relative one would put files under whatever directory cron started the job in."""
    value = environ.get(name, "")
    return value if os.path.isabs(value) else ""


def _is_path_text(value: Any) -> bool:
    """A string that can name a file (no NUL byte: the system cannot take one)."""
    return isinstance(value, str) and "\0" not in value
