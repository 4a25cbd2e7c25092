"""``nexus-jobs status | run-due | check-config``, driven as a user would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import filelock
import pytest

from tests.conftest import assert_clean_failure, free_port, run_cli, script, wait_until
from tests.nexus_webhooks_double import API_KEY, HOOKS_TOKEN, GatewayDouble, NexusWebhooksDouble


class Install:
    """A config file with one agent and the given jobs, its state dir and environment."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.root = tmp_path
        self.state_dir = tmp_path / "state"
        self.workspace = tmp_path / "workspace"
        self.workspace.mkdir()
        (tmp_path / "openclaw" / "agents" / "main" / "sessions").mkdir(parents=True)
        self.config = tmp_path / "config.json"
        self.env = {**env, "NEXUS_API_KEY": API_KEY, "NEXUS_RETRIES": "0", "OPENCLAW_HOOKS_TOKEN": HOOKS_TOKEN}

    def write(self, jobs: list[dict[str, Any]], *, endpoint: str | None = None, **extra: Any) -> None:
        document: dict[str, Any] = {
            "agents": {"main": {"workspace": str(self.workspace), "sessionsDir": str(self.sessions)}},
            "stateDir": str(self.state_dir),
            "jobs": jobs,
            **extra,
        }
        if endpoint is not None:
            document["nexus"] = {"endpoint": endpoint}
        self.config.write_text(json.dumps(document))

    @property
    def sessions(self) -> Path:
        return self.root / "openclaw" / "agents" / "main" / "sessions"

    def jobs(self, *args: str) -> Any:
        return run_cli("nexus-jobs", *args, "--config", str(self.config), env=self.env)

    def record(self, job_id: str) -> dict[str, Any]:
        return json.loads((self.state_dir / f"{job_id}.json").read_text())

    def age_last_success(self, job_id: str, minutes: float) -> None:
        """Inject time: pretend the last successful start was ``minutes`` ago."""
        path = self.state_dir / f"{job_id}.json"
        record = json.loads(path.read_text())
        moment = datetime.now(timezone.utc) - timedelta(minutes=minutes)
        record["lastSuccessStartedAt"] = moment.isoformat(timespec="milliseconds")
        path.write_text(json.dumps(record))

    def pending(self, *item_ids: str) -> None:
        folder = self.state_dir / "nexus-store" / "webhook" / "pending" / "main"
        folder.mkdir(parents=True, exist_ok=True)
        for item_id in item_ids:
            (folder / f"{item_id}.json").write_text(json.dumps({"id": item_id, "source": "test", "payload": {}}))


def webhook_job(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": job_id, "type": "webhook_pull", **fields}


@pytest.fixture
def install(tmp_path: Path, clean_env: dict[str, str]) -> Install:
    return Install(tmp_path, clean_env)


@pytest.fixture
def held_lock(install: Install) -> Iterator[Any]:
    locks: list[filelock.FileLock] = []

    def hold(job_id: str) -> None:
        install.state_dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(install.state_dir / f"{job_id}.lock"))
        lock.acquire()
        locks.append(lock)

    yield hold
    for lock in locks:
        lock.release()


# ---------------------------------------------------------------- status


def test_status_of_a_fresh_install_shows_the_default_job(clean_env: dict[str, str]) -> None:
    result = run_cli("nexus-jobs", "status", env=clean_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "config: none found (defaults)"
    assert lines[2].split()[:2] == ["JOB", "EVERY"]
    assert lines[3].split()[0] == "session-upload" and "never run" in lines[3] and "now" in lines[3]
    assert all(len(line) <= 80 for line in lines[2:])  # paths above the table are as long as they are
    document = json.loads(run_cli("nexus-jobs", "status", "--json", env=clean_env).stdout)
    assert (document["outcome"], document["exitCode"], document["counts"]["jobs"]) == ("success", 0, 1)
    (job,) = document["details"]["jobs"]
    assert job["job"] == "session-upload" and job["lastRun"] is None and job["due"] is True
    assert job["lockHeld"] is False and job["deadLetters"] == 0


def status_rows(result: Any) -> dict[str, str]:
    return {line.split()[0]: line for line in result.stdout.splitlines()[3:] if line and not line.startswith(" ")}


def test_status_after_success_failure_and_with_a_held_lock(
    install: Install, held_lock: Any, nexus_webhooks: NexusWebhooksDouble
) -> None:
    install.write(
        [
            webhook_job("local", intervalMinutes=30),
            webhook_job("remote", intervalMinutes=5, config={"agents": ["main"]}),
            webhook_job("off", enabled=False),
        ]
    )
    install.pending("a1", "a2")
    assert (
        run_cli("nexus-webhook-pull", "--config", str(install.config), "--job-id", "local", env=install.env).returncode
        == 0
    )
    # "remote" talks to an unreachable Nexus: a failure.
    document = json.loads(install.config.read_text())
    document["nexus"] = {"endpoint": f"http://127.0.0.1:{free_port()}"}
    install.config.write_text(json.dumps(document))
    failed = run_cli("nexus-webhook-pull", "--config", str(install.config), "--job-id", "remote", env=install.env)
    assert failed.returncode == 69
    held_lock("off")

    # Like systemctl is-failed: a job whose last run failed makes status fail (exit 3).
    result = install.jobs("status")
    assert result.returncode == 3, result.stderr
    assert all(len(line) <= 80 for line in result.stdout.splitlines()[2:]), result.stdout
    rows = status_rows(result)
    assert "success" in rows["local"] and "30m" in rows["local"]
    assert "local: last run: acknowledged 2, delivered 2" in result.stdout, result.stdout
    assert "local: in total: delivered 2" in result.stdout
    assert "unavailable (69)" in rows["remote"] and "now" in rows["remote"]
    assert "disabled" in rows["off"] and "running" in rows["off"]
    assert "remote: " in result.stdout and "connection refused" in result.stdout

    document = json.loads(install.jobs("status", "--json").stdout)
    assert (document["exitCode"], document["outcome"], document["counts"]["failed"]) == (3, "failed", 1)
    jobs = {job["job"]: job for job in document["details"]["jobs"]}
    local = jobs["local"]
    assert local["lastResult"] == "success" and local["due"] is False and local["nextDue"] is not None
    assert local["counts"]["delivered"] == 2 and local["standing"]["delivered"] == 2
    assert jobs["remote"]["lastExitCode"] == 69 and jobs["remote"]["due"] is True
    assert jobs["remote"]["consecutiveFailures"] == 1
    assert jobs["off"]["lockHeld"] is True and jobs["off"]["enabled"] is False
    assert jobs["off"]["lastResult"] == "running"
    assert API_KEY not in result.stdout + result.stderr
    # One job's view: only that job, exit code of that job alone.
    only = install.jobs("status", "--job", "local")
    assert only.returncode == 0 and "remote" not in only.stdout and "runs: 1" in only.stdout


def test_status_shows_a_run_in_progress_as_running_never_the_previous_result(install: Install, held_lock: Any) -> None:
    install.write([webhook_job("wh")])
    install.pending("a1")
    assert run_cli("nexus-webhook-pull", "--config", str(install.config), env=install.env).returncode == 0
    record = install.record("wh")
    # A run has started (its start is recorded, its lock held) and not finished.
    record["lastStartedAt"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    (install.state_dir / "wh.json").write_text(json.dumps(record))
    held_lock("wh")
    result = install.jobs("status")
    assert "running" in status_rows(result)["wh"] and "success" not in status_rows(result)["wh"]
    assert result.returncode == 0


def test_status_shows_a_run_that_never_recorded_its_end_as_killed(install: Install) -> None:
    install.write([webhook_job("wh")])
    install.state_dir.mkdir()
    started = datetime.now(timezone.utc)
    (install.state_dir / "wh.json").write_text(
        json.dumps(
            {
                "version": 1,
                "lastStartedAt": started.isoformat(),
                "lastFinishedAt": (started - timedelta(hours=1)).isoformat(),
                "lastOutcome": "success",
                "lastExitCode": 0,
            }
        )
    )
    result = install.jobs("status")
    assert "killed" in status_rows(result)["wh"] and result.returncode == 3


def test_status_lists_the_files_that_need_the_operator(install: Install) -> None:
    install.write([{"id": "up", "type": "session_upload"}])
    install.state_dir.mkdir()
    reason = "the server refused it as too large (413): " + "limit is 10,485,760 bytes " * 3
    files = {
        "rejected": [{"name": "main/big.jsonl", "reason": reason}],
        "conflicts": [{"name": "main/x.jsonl", "reason": "the server holds different content"}],
    }
    record = {"version": 1, "lastStartedAt": "2026-01-01T00:00:00+00:00", "lastFinishedAt": "2026-01-01T00:01:00+00:00"}
    record.update(lastOutcome="partial", lastExitCode=1, files=files, standing={"uploaded": 3, "rejected": 1})
    (install.state_dir / "up.json").write_text(json.dumps(record))
    overview = install.jobs("status")
    assert "up: in total: uploaded 3, rejected 1" in overview.stdout
    assert "nexus-jobs status --job up --files all" in overview.stdout
    listed = install.jobs("status", "--job", "up", "--files", "rejected")
    assert "rejected: main/big.jsonl: the server refused it as too large" in listed.stdout
    assert "main/x.jsonl" not in listed.stdout
    assert all(len(line) <= 80 for line in listed.stdout.splitlines()), listed.stdout
    both = install.jobs("status", "--job", "up", "--files", "all")
    assert "main/x.jsonl" in both.stdout and "2 file(s)" in both.stdout
    assert_clean_failure(install.jobs("status", "--files", "all"), 2)
    assert_clean_failure(install.jobs("status", "--job", "nope"), 2)


def test_status_shows_dead_letters(install: Install) -> None:
    fail = [sys.executable, "-c", "import sys; sys.exit(1)"]
    install.write([webhook_job("wh", config={"delivery": ["command"], "command": fail, "maxDeliveryAttempts": 1})])
    install.pending("doomed")
    assert run_cli("nexus-webhook-pull", "--config", str(install.config), env=install.env).returncode == 1
    (job,) = json.loads(install.jobs("status", "--json").stdout)["details"]["jobs"]
    assert job["deadLetters"] == 1 and job["lastResult"] == "partial"


# ---------------------------------------------------------------- run-due


def test_run_due_honours_enabled_and_interval_across_invocations(install: Install) -> None:
    install.write(
        [
            webhook_job("hourly", intervalMinutes=60),
            webhook_job("always"),
            webhook_job("disabled", enabled=False),
        ]
    )
    install.pending("i1")
    first = install.jobs("run-due")
    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")
    assert install.record("hourly")["runs"] == 1 and install.record("always")["runs"] == 1
    assert not (install.state_dir / "disabled.json").exists()
    assert list((install.workspace / "inbox" / "webhooks").iterdir())  # the item was delivered

    second = json.loads(install.jobs("run-due", "--json").stdout)
    ran = {job["job"]: job["ran"] for job in second["details"]["jobs"]}
    assert ran == {"hourly": False, "always": True, "disabled": False}
    outcomes = {job["job"]: job["outcome"] for job in second["details"]["jobs"]}
    assert outcomes == {"hourly": "not-due", "always": "success", "disabled": "disabled"}
    assert {job["job"]: job["counts"] for job in second["details"]["jobs"]}["always"]["delivered"] == 0
    assert install.record("hourly")["runs"] == 1 and install.record("always")["runs"] == 2

    # Not due well inside the interval; due within the tolerance before it (a tenth of it).
    install.age_last_success("hourly", 53)
    assert install.jobs("run-due").returncode == 0
    assert install.record("hourly")["runs"] == 1
    install.age_last_success("hourly", 59)
    assert install.jobs("run-due").returncode == 0
    assert install.record("hourly")["runs"] == 2 and install.record("always")["runs"] == 4
    assert not (install.state_dir / "disabled.json").exists()


def test_run_due_exit_code_is_the_worst_job_result(install: Install, held_lock: Any) -> None:
    fail = [sys.executable, "-c", "import sys; sys.exit(1)"]
    install.write(
        [
            webhook_job("bad", config={"delivery": ["command"], "command": fail}),
            webhook_job("good"),
            webhook_job("busy"),
        ]
    )
    install.pending("x")
    held_lock("busy")
    result = install.jobs("run-due", "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout.splitlines()[-1])
    codes = {job["job"]: job["exitCode"] for job in document["details"]["jobs"]}
    assert codes == {"bad": 1, "good": 0, "busy": 75}
    assert document["counts"] == {"jobs": 3, "ran": 3, "failed": 2, "wouldRun": 0}
    assert document["exitCode"] == 1 and "Traceback" not in result.stderr


def test_run_due_dry_run_runs_nothing(install: Install) -> None:
    install.write([webhook_job("wh")])
    result = install.jobs("run-due", "--dry-run", "-v")
    assert result.returncode == 0 and "wh: due" in result.stderr
    assert result.stdout.splitlines() == [
        "would run nexus-webhook-pull for job wh",
        "dry run: 1 job(s) would run; nothing was changed",
    ]
    document = json.loads(install.jobs("run-due", "--dry-run", "--json").stdout)
    assert document["dryRun"] is True and document["planned"] == ["would run nexus-webhook-pull for job wh"]
    assert not (install.state_dir / "wh.json").exists()


# ---------------------------------------------------------------- check-config


def check_lines(result: Any) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition("  ")
        lines.setdefault(status.strip(), []).append(rest.strip())
    return lines


def test_check_config_all_good_is_read_only(
    install: Install, nexus_webhooks: NexusWebhooksDouble, gateway: GatewayDouble
) -> None:
    options = {"delivery": ["inbox", "hook", "command"], "gatewayUrl": gateway.url, "command": [sys.executable]}
    install.write(
        [webhook_job("wh", config=options, pingUrl="http://127.0.0.1:9/ping-check-uuid")],
        endpoint=nexus_webhooks.url,
    )
    nexus_webhooks.add("main", {"id": "keep-me", "source": "s", "payload": {}})
    result = install.jobs("check-config", "--debug")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = check_lines(result)
    assert "FAIL" not in lines, result.stdout
    assert any(line.startswith("nexus backend: Nexus webhook API") for line in lines["ok"])
    assert any("OpenClaw Gateway" in line for line in lines["ok"])
    assert any("not contacted" in line for line in lines["ok"])
    # Read-only: GETs only, the pending item is still there, no state directory created.
    assert {r.method for r in nexus_webhooks.requests} == {"GET"}
    assert gateway.made("POST", "/hooks/agent") == [] and nexus_webhooks.pending["main"]
    assert not install.state_dir.exists()
    assert API_KEY not in result.stdout + result.stderr and HOOKS_TOKEN not in result.stdout + result.stderr


def test_check_config_reports_every_failure_one_line_each(install: Install) -> None:
    options = {
        "delivery": ["hook", "command"],
        "command": ["no-such-program-xyz"],
        "gatewayUrl": f"http://127.0.0.1:{free_port()}",
    }
    install.write(
        [webhook_job("wh", config=options), webhook_job("bad", config={"pageSize": 0})],
        endpoint=f"http://127.0.0.1:{free_port()}",
    )
    result = install.jobs("check-config")
    assert result.returncode == 78, result.stdout + result.stderr  # the worst: a config error
    failures = check_lines(result)["FAIL"]
    assert any(line.startswith("job bad:") and "pageSize" in line for line in failures)
    assert any("no-such-program-xyz" in line for line in failures)
    assert any("OpenClaw Gateway" in line and "connection refused" in line for line in failures)
    assert any(line.startswith("nexus backend:") and "connection refused" in line for line in failures)
    assert "Traceback" not in result.stderr


def test_check_config_backend_failures_set_the_exit_code(install: Install, nexus_webhooks: NexusWebhooksDouble) -> None:
    install.write([webhook_job("wh")], endpoint=nexus_webhooks.url)
    install.env["NEXUS_API_KEY"] = "wrong-key-for-check"
    result = install.jobs("check-config")
    assert result.returncode == 77 and "wrong-key-for-check" not in result.stdout + result.stderr
    assert any("refused the API key" in line for line in check_lines(result)["FAIL"])
    install.write([webhook_job("wh")], endpoint=f"http://127.0.0.1:{free_port()}")
    assert install.jobs("check-config").returncode == 69
    del install.env["NEXUS_API_KEY"]
    install.write([webhook_job("wh")], endpoint=nexus_webhooks.url)
    result = install.jobs("check-config", "--json")
    assert result.returncode == 78
    document = json.loads(result.stdout)
    assert document["details"]["ok"] is False and document["outcome"] == "config"
    assert any(c["status"] == "FAIL" and "NEXUS_API_KEY" in c["detail"] for c in document["details"]["checks"])


def test_check_config_state_dir_and_agents(install: Install) -> None:
    (install.root / "state-file").write_text("")
    install.write([webhook_job("wh")], stateDir=str(install.root / "state-file"))
    install.env["OPENCLAW_STATE_DIR"] = str(install.root / "nowhere")
    result = install.jobs("check-config")
    assert result.returncode == 78
    assert any(
        line.startswith("state directory:") and "not a directory" in line for line in check_lines(result)["FAIL"]
    )
    document = json.loads(install.config.read_text())
    del document["agents"]
    document["stateDir"] = str(install.state_dir)
    install.config.write_text(json.dumps(document))
    result = install.jobs("check-config")
    assert result.returncode == 78
    assert any(line.startswith("agents: none configured") for line in check_lines(result)["FAIL"])


def test_check_config_malformed_config_is_one_fail_line(install: Install) -> None:
    install.config.write_text('{"jobs": [}')
    result = install.jobs("check-config")
    assert result.returncode == 78 and "Traceback" not in result.stderr
    assert check_lines(result) == {
        "FAIL": [f"config: {install.config}: line 1 column 11: invalid JSON: Expecting value"]
    }


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        ([], 2, "required: COMMAND"),
        (["frobnicate"], 2, "invalid choice"),
        (["status", "--bogus"], 2, "unrecognized arguments"),
        (["status", "--config", "/nonexistent/config.json"], 78, "config file not found"),
        (["run-due", "--config", "/nonexistent/config.json"], 78, "config file not found"),
    ],
)
def test_bad_input_is_a_clean_failure(clean_env: dict[str, str], args: list[str], code: int, words: str) -> None:
    result = run_cli("nexus-jobs", *args, env=clean_env)
    assert_clean_failure(result, code)
    assert words in result.stderr


def test_malformed_config_status_and_run_due(install: Install) -> None:
    install.config.write_text('{"jobs": [{"id": "x", "type": "mystery"}]}')
    for command in ("status", "run-due"):
        result = install.jobs(command)
        assert_clean_failure(result, 78)
        assert "jobs[0].type" in result.stderr


def test_check_config_without_a_webhook_job_only_heads_the_sessions_api(install: Install, nexus: Any) -> None:
    install.write([{"id": "up", "type": "session_upload", "config": {"graceMinutes": 5}}], endpoint=nexus.url)
    install.env["NEXUS_API_KEY"] = nexus.api_key
    result = install.jobs("check-config")
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(line.startswith("nexus backend: Nexus sessions API") for line in check_lines(result)["ok"])
    assert [(r.method, r.path) for r in nexus.requests] == [("HEAD", "/sessions")]
    install.env["NEXUS_API_KEY"] = "not-the-key-123"
    result = install.jobs("check-config")
    assert result.returncode == 77 and "not-the-key-123" not in result.stdout + result.stderr


def test_check_config_fails_on_an_endpoint_that_answers_404(
    install: Install, nexus_webhooks: NexusWebhooksDouble
) -> None:
    # A server that has no /sessions route: the endpoint's path is wrong.
    install.write([{"id": "up", "type": "session_upload"}], endpoint=nexus_webhooks.url + "/wrong")
    result = install.jobs("check-config")
    assert result.returncode == 78, result.stdout + result.stderr
    (line,) = [line for line in check_lines(result)["FAIL"] if line.startswith("nexus backend:")]
    assert "answered 404" in line and "nexus.endpoint must be the API base URL" in line
    assert nexus_webhooks.url + "/wrong/sessions" in line and API_KEY not in result.stdout


def test_check_config_reaches_the_worker_backends(
    install: Install, redis_server: Any, mosquitto: Any, gateway: GatewayDouble
) -> None:
    install.write([webhook_job("wh")])
    install.env.update(
        BSNEXUS_SERVER_URL=gateway.url,
        BSNEXUS_REDIS_URL=redis_server.url,
        MQTT_URL=f"mqtt://worker:s3cret-broker-pw@127.0.0.1:{mosquitto.port}",
    )
    result = install.jobs("check-config")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = check_lines(result)
    assert any(line.startswith("bsnexus server: BSNexus backend at") for line in lines["ok"])
    assert any(line.startswith("bsnexus redis: Redis at") and "PING" in line for line in lines["ok"])
    assert any(line.startswith("mqtt broker:") for line in lines["ok"])
    assert "s3cret-broker-pw" not in result.stdout + result.stderr
    assert gateway.made("POST", "/hooks/agent") == []


def test_check_config_unreachable_worker_backends_fail_with_69(install: Install) -> None:
    install.write([webhook_job("wh")])
    install.env.update(
        BSNEXUS_SERVER_URL=f"http://127.0.0.1:{free_port()}",
        BSNEXUS_REDIS_URL=f"redis://127.0.0.1:{free_port()}",
        MQTT_URL=f"mqtt://127.0.0.1:{free_port()}",
    )
    result = install.jobs("check-config")
    assert result.returncode == 69, result.stdout + result.stderr
    failed = check_lines(result)["FAIL"]
    assert {line.split(":")[0] for line in failed} == {"bsnexus server", "bsnexus redis", "mqtt broker"}
    assert "Traceback" not in result.stdout + result.stderr


def test_check_config_warns_about_an_api_key_in_the_file_and_state_left_beside_it(install: Install) -> None:
    document: dict[str, Any] = {"nexus": {"endpoint": "file:///tmp/nexus-store-check", "apiKey": "in-the-file-key-123"}}
    document["jobs"] = [webhook_job("wh")]
    install.config.write_text(json.dumps(document))
    old = install.root / "state"  # the old default, beside the config file
    old.mkdir()
    (old / "wh.json").write_text(json.dumps({"version": 1, "runs": 1}))
    result = install.jobs("check-config")
    warnings = check_lines(result).get("warn", [])
    assert any("nexus.apiKey: the API key is in the config file" in line for line in warnings), result.stdout
    assert any("holds state of an earlier release; the next run moves it" in line for line in warnings)
    assert "in-the-file-key-123" not in result.stdout + result.stderr
    assert (old / "wh.json").exists(), "check-config moves nothing"


@pytest.mark.slow
def test_run_due_stopped_by_sigterm_stops_its_job_and_records_both_as_interrupted(install: Install) -> None:
    started = install.root / "started"
    command = ["sh", "-c", f"cat >/dev/null; touch {started}; sleep 30"]
    install.write([webhook_job("pull", config={"delivery": ["command"], "command": command})], endpoint="embedded")
    install.pending("slow-item")
    process = subprocess.Popen(
        [script("nexus-jobs"), "run-due", "--config", str(install.config), "--json"],
        env=install.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(started.exists, what="the job's delivery command to start")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    summary = json.loads(stdout)
    assert (summary["type"], summary["outcome"], summary["exitCode"]) == ("run-due", "interrupted", 143)
    assert install.record("pull")["lastOutcome"] == "interrupted", "the job heard the stop too"
