"""The shared configuration module: discovery, precedence, validation, agents, state dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nexus_jobs.core import config, statedir
from nexus_jobs.core.errors import ConfigError
from nexus_jobs.nexus import settings as nexus_settings
from nexus_jobs.openclaw import agents as openclaw_agents
from nexus_jobs.session_upload import command as session_upload

pytestmark = pytest.mark.inprocess

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.chdir(tmp_path)
    user = write(home / ".config" / "nexus-jobs" / "config.json", {})
    environ = {"HOME": str(home)}
    assert config.discover_config_path(None, environ) == user
    local = write(tmp_path / "config.json", {})
    assert config.discover_config_path(None, environ) == local
    named = write(tmp_path / "named.json", {})
    assert config.discover_config_path(None, {**environ, config.CONFIG_ENV_VAR: str(named)}) == named
    flagged = write(tmp_path / "flag.json", {})
    assert config.discover_config_path(str(flagged), {**environ, config.CONFIG_ENV_VAR: str(named)}) == flagged
    with pytest.raises(ConfigError, match="config file not found"):
        config.discover_config_path(None, {**environ, config.CONFIG_ENV_VAR: str(tmp_path / "missing.json")})


def test_precedence_flag_env_dotenv_file_default(tmp_path: Path) -> None:
    path = write(tmp_path / "config.json", {"nexus": {"endpoint": "https://from-file", "retries": 2}})
    (tmp_path / ".env").write_text("NEXUS_ENDPOINT=https://from-dotenv\nNEXUS_TIMEOUT_SECONDS=5\n")
    options = nexus_settings.OPTIONS

    def resolve(environ: dict[str, str], flags: dict[str, object]) -> dict[str, object]:
        loaded = config.load(config_flag=str(path), environ=environ)
        return config.resolve(options, loaded=loaded, section=loaded.data, section_path="", flags=flags, strict=False)

    values = resolve({}, {})
    assert values["nexus.endpoint"] == "https://from-dotenv" and values["nexus.timeoutSeconds"] == 5.0
    assert values["nexus.retries"] == 2 and values["nexus.authMode"] == "header"
    values = resolve({"NEXUS_ENDPOINT": "https://from-env"}, {})
    assert values["nexus.endpoint"] == "https://from-env"
    values = resolve({"NEXUS_ENDPOINT": "https://from-env"}, {"endpoint": "https://from-flag"})
    assert values["nexus.endpoint"] == "https://from-flag"


def test_dotenv_is_read_but_not_exported(tmp_path: Path) -> None:
    path = write(tmp_path / "config.json", {})
    (tmp_path / ".env").write_text("NEXUS_API_KEY=from-dotenv-only\n")
    loaded = config.load(config_flag=str(path), environ={})
    assert loaded.env["NEXUS_API_KEY"] == "from-dotenv-only"
    assert "NEXUS_API_KEY" not in os.environ


def test_every_problem_is_reported_with_file_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config.json",
        {
            "nexus": [],
            "agents": {"a": {"workspace": 1, "colour": "x"}},
            "jobs": [{"id": "x y", "type": "t", "extra": 1}],
        },
    )
    with pytest.raises(ConfigError) as caught:
        config.load(config_flag=str(path), environ={})
    problems = caught.value.problems
    assert all(line.startswith(str(path)) for line in problems)
    joined = "\n".join(problems)
    for fragment in (
        "nexus: expected an object",
        "agents.a.workspace",
        "agents.a.colour: unknown key",
        "jobs[0].extra: unknown key",
        "jobs[0].id",
        "jobs[0].type",
    ):
        assert fragment in joined
    assert len(problems) == 6


def test_duplicate_job_ids_and_job_selection(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config.json", {"jobs": [{"id": "a", "type": "session_upload"}, {"id": "a", "type": "webhook_pull"}]}
    )
    with pytest.raises(ConfigError, match="duplicate job id"):
        config.load(config_flag=str(path), environ={})
    path = write(
        tmp_path / "config.json",
        {
            "jobs": [
                {"id": "pull", "type": "webhook_pull"},
                {"id": "up", "type": "session_upload", "intervalMinutes": 30},
            ]
        },
    )
    loaded = config.load(config_flag=str(path), environ={})
    job = config.select_job(loaded, job_type="session_upload", job_id=None, default_id="session-upload")
    assert (job.job_id, job.interval_minutes, job.key_path) == ("up", 30.0, "jobs[1]")
    with pytest.raises(ConfigError, match="has type 'webhook_pull'"):
        config.select_job(loaded, job_type="session_upload", job_id="pull", default_id="session-upload")
    with pytest.raises(ConfigError, match="no job with id 'nope'"):
        config.select_job(loaded, job_type="session_upload", job_id="nope", default_id="session-upload")


def test_state_dir_order(tmp_path: Path) -> None:
    path = write(tmp_path / "etc" / "config.json", {"stateDir": "relative-state"})
    loaded = config.load(config_flag=str(path), environ={"HOME": str(tmp_path)})
    assert statedir.resolve_state_dir(flag=None, loaded=loaded) == tmp_path / "etc" / "relative-state"
    assert statedir.resolve_state_dir(flag="/x/flag", loaded=loaded) == Path("/x/flag")
    bare = write(tmp_path / "etc2" / "config.json", {})
    loaded = config.load(
        config_flag=str(bare), environ={"HOME": str(tmp_path), "STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}
    )
    assert statedir.resolve_state_dir(flag=None, loaded=loaded) == Path("/var/lib/a")
    # Never beside the config file: adding a config must not move the state (docs/operating.md).
    loaded = config.load(config_flag=str(bare), environ={"HOME": str(tmp_path)})
    assert statedir.resolve_state_dir(flag=None, loaded=loaded) == tmp_path / ".local" / "state" / "nexus-jobs"
    nothing = config.LoadedConfig(path=None, data={}, env={"HOME": str(tmp_path)})
    assert statedir.resolve_state_dir(flag=None, loaded=nothing) == tmp_path / ".local" / "state" / "nexus-jobs"


def test_flag_and_environment_state_dirs_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "demo" / "config.json", {})
    loaded = config.load(config_flag=str(path), environ={"HOME": str(tmp_path)})
    assert statedir.resolve_state_dir(flag="demo/state", loaded=loaded) == tmp_path / "demo" / "state"


def test_state_of_the_old_default_beside_the_config_is_moved_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "etc" / "config.json", {})
    old = tmp_path / "etc" / "state"
    write(old / "session-upload.json", {"version": 1, "runs": 3})
    write(old / "session-upload.markers.json", {"version": 1, "agents": {}})
    loaded = config.load(config_flag=str(path), environ={"HOME": str(tmp_path)})
    assert statedir.resolve_state_dir(flag=None, loaded=loaded, adopt_old_state=False) != old
    assert old.is_dir(), "check-config looks without moving anything"
    new = statedir.resolve_state_dir(flag=None, loaded=loaded)
    assert sorted(p.name for p in new.iterdir()) == ["session-upload.json", "session-upload.markers.json"]
    assert json.loads((new / "session-upload.json").read_text())["runs"] == 3
    assert not old.exists()
    moved = [r.getMessage() for r in caplog.records if "moved the state" in r.getMessage()]
    assert len(moved) == 1 and str(old) in moved[0] and str(new) in moved[0]
    caplog.clear()
    assert statedir.resolve_state_dir(flag=None, loaded=loaded) == new
    assert not caplog.records


def test_old_state_that_cannot_be_moved_is_a_config_error_naming_both_paths(tmp_path: Path) -> None:
    path = write(tmp_path / "etc" / "config.json", {})
    write(tmp_path / "etc" / "state" / "job.json", {"version": 1})
    blocker = tmp_path / "home-file"
    blocker.write_text("")
    loaded = config.load(config_flag=str(path), environ={"HOME": str(tmp_path), "XDG_STATE_HOME": str(blocker)})
    with pytest.raises(ConfigError, match=r"cannot move it to .*--state-dir"):
        statedir.resolve_state_dir(flag=None, loaded=loaded)
    assert (tmp_path / "etc" / "state" / "job.json").is_file()


def test_agents_are_discovered_when_not_listed(tmp_path: Path) -> None:
    for agent in ("main", "ops"):
        (tmp_path / "oc" / "agents" / agent / "sessions").mkdir(parents=True)
    (tmp_path / "oc" / "agents" / "no-sessions").mkdir()
    database_only = tmp_path / "oc" / "agents" / "sqlite-era" / "agent"
    database_only.mkdir(parents=True)
    (database_only / openclaw_agents.DATABASE_NAME).write_bytes(b"")
    loaded = config.LoadedConfig(path=None, data={}, env={"OPENCLAW_STATE_DIR": str(tmp_path / "oc")})
    agents = openclaw_agents.resolve_agents(loaded)
    assert [(a.agent_id, a.workspace.name) for a in agents] == [
        ("main", "workspace"),
        ("ops", "workspace-ops"),
        ("sqlite-era", "workspace-sqlite-era"),
    ]


def test_local_store_root() -> None:
    state_dir = Path("/s")
    assert nexus_settings.local_store_root("", state_dir=state_dir) == Path("/s/nexus-store")
    assert nexus_settings.local_store_root("file:///srv/store", state_dir=state_dir) == Path("/srv/store")
    assert nexus_settings.local_store_root("https://x/api", state_dir=state_dir) is None
    with pytest.raises(ConfigError):
        nexus_settings.local_store_root("file://host/share", state_dir=state_dir)


def test_shipped_example_config_is_valid() -> None:
    loaded = config.load(config_flag=str(ROOT / "config.example.json"), environ={})
    job = config.select_job(loaded, job_type="session_upload", job_id=None, default_id="session-upload")
    values = config.resolve(
        session_upload.OPTIONS, loaded=loaded, section=job.config, section_path="jobs[0].config", flags={}
    )
    assert values["graceMinutes"] == 10
