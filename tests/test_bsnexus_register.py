"""bsnexus-worker register / status / unregister against the local backend double, and bad
command-line input."""

from __future__ import annotations

import json
import stat
import time

from tests.bsnexus_backend import REGISTRATION_TOKEN, Backend, WorkerSetup
from tests.conftest import assert_clean_failure, free_port

REDIS_URL = "redis://127.0.0.1:1"  # never contacted by register


def test_register_saves_credentials_privately_and_reregister_keeps_identity(
    worker_setup: WorkerSetup, bsnexus_backend: Backend
) -> None:
    first = worker_setup.register(bsnexus_backend.url, REDIS_URL, "--name", "build-box", "--executor", "command")
    saved = worker_setup.saved()
    worker_id, token = saved["BSNEXUS_WORKER_ID"], saved["BSNEXUS_WORKER_TOKEN"]
    assert worker_id in bsnexus_backend.state.workers
    assert token == bsnexus_backend.state.workers[worker_id].token
    assert saved["BSNEXUS_SERVER_URL"] == bsnexus_backend.url
    assert saved["BSNEXUS_REDIS_URL"] == REDIS_URL
    assert saved["BSNEXUS_EXECUTOR_TYPE"] == "command"
    assert saved["BSNEXUS_WORKER_NAME"] == "build-box"
    assert saved["BSNEXUS_TASKS_QUEUE"] == "tasks:queue" and saved["BSNEXUS_REVIEWERS_GROUP"] == "reviewers"
    assert stat.S_IMODE(worker_setup.env_file.stat().st_mode) == 0o600
    assert worker_id in first.stdout and token not in first.stdout + first.stderr
    sent = bsnexus_backend.state.requests_to("register")[0].body
    assert sent["name"] == "build-box" and sent["executor_type"] == "command" and sent["platform"]
    assert sent["capabilities"]["native"] is True and sent["registration_token"] == REGISTRATION_TOKEN
    assert "worker_id" not in sent

    # An unrelated line the operator keeps in the same file survives.
    worker_setup.env_file.write_text(worker_setup.env_file.read_text() + "OTHER_SETTING=kept\n")
    again = worker_setup.register(bsnexus_backend.url, REDIS_URL, "--name", "build-box", "--json")
    summary = json.loads(again.stdout)
    assert summary == {
        "workerId": worker_id,
        "reusedIdentity": True,
        "serverUrl": bsnexus_backend.url,
        "envFile": str(worker_setup.env_file),
    }
    resent = bsnexus_backend.state.requests_to("register")[1].body
    assert resent["worker_id"] == worker_id and resent["worker_token"] == token
    saved = worker_setup.saved()
    assert saved["BSNEXUS_WORKER_ID"] == worker_id
    assert saved["BSNEXUS_WORKER_TOKEN"] == bsnexus_backend.state.workers[worker_id].token != token
    assert saved["OTHER_SETTING"] == "kept"
    keys = [line.split("=", 1)[0] for line in worker_setup.env_file.read_text().splitlines() if line.strip()]
    assert len(keys) == len(set(keys)), keys
    assert stat.S_IMODE(worker_setup.env_file.stat().st_mode) == 0o600
    assert len(bsnexus_backend.state.workers) == 1


def test_register_token_from_environment_and_default_env_file(
    worker_setup: WorkerSetup, bsnexus_backend: Backend
) -> None:
    from tests.conftest import run_cli

    env = {**worker_setup.env, "BSNEXUS_REGISTRATION_TOKEN": REGISTRATION_TOKEN}
    result = run_cli("bsnexus-worker", "register", "--url", bsnexus_backend.url, env=env)
    assert result.returncode == 0, result.stderr
    default_file = worker_setup.env_file.parent / "home" / ".config" / "nexus-jobs" / ".env"
    assert default_file.exists() and "BSNEXUS_WORKER_ID=" in default_file.read_text()
    assert stat.S_IMODE(default_file.stat().st_mode) == 0o600
    assert REGISTRATION_TOKEN not in default_file.read_text()  # the registration token is not kept
    status = run_cli("bsnexus-worker", "status", "--json", env=env)
    # Redis (default localhost:6379 is not ours) may be unreachable; the identity is still shown.
    assert json.loads(status.stdout)["workerId"] in bsnexus_backend.state.workers


def test_register_refusals_are_one_clear_line(worker_setup: WorkerSetup, bsnexus_backend: Backend) -> None:
    state = bsnexus_backend.state
    state.script("register", (401, {"detail": "Registration token revoked"}))
    refused = worker_setup.cli("register", "--url", bsnexus_backend.url, "--token", "glrt-wrong1234")
    assert_clean_failure(refused, 77)
    assert "revoked or expired" in refused.stderr and "glrt-wrong1234" not in refused.stderr

    state.script(
        "register", (422, {"detail": [{"loc": ["body", "name"], "msg": "String too long", "type": "string_too_long"}]})
    )
    invalid = worker_setup.cli("register", "--url", bsnexus_backend.url, "--token", REGISTRATION_TOKEN)
    assert_clean_failure(invalid, 78)
    assert "HTTP 422" in invalid.stderr and "name: String too long" in invalid.stderr

    wrong_url = worker_setup.cli("register", "--url", bsnexus_backend.url + "/nope", "--token", REGISTRATION_TOKEN)
    assert_clean_failure(wrong_url, 78)
    assert "404" in wrong_url.stderr and "--url" in wrong_url.stderr

    state.script("register", (429, {"detail": "slow down"}, {"Retry-After": "1"}))
    started = time.monotonic()
    waited = worker_setup.cli(
        "register", "--url", bsnexus_backend.url, "--token", REGISTRATION_TOKEN, BSNEXUS_HTTP_RETRIES="2"
    )
    assert waited.returncode == 0, waited.stderr
    assert time.monotonic() - started >= 0.9  # Retry-After was honoured

    state.script(
        "register",
        (429, {"detail": "slow down"}, {"Retry-After": "1"}),
        (429, {"detail": "slow down"}, {"Retry-After": "7"}),
    )
    limited = worker_setup.cli(
        "register", "--url", bsnexus_backend.url, "--token", REGISTRATION_TOKEN, BSNEXUS_HTTP_RETRIES="1"
    )
    assert_clean_failure(limited, 75)
    assert "429" in limited.stderr and "try again in 7 seconds" in limited.stderr

    nobody = worker_setup.cli("register", "--url", f"http://127.0.0.1:{free_port()}", "--token", REGISTRATION_TOKEN)
    assert_clean_failure(nobody, 69)
    assert "connection refused" in nobody.stderr


def test_reregister_of_a_forgotten_worker_registers_anew(worker_setup: WorkerSetup, bsnexus_backend: Backend) -> None:
    worker_setup.register(bsnexus_backend.url, REDIS_URL)
    old_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    bsnexus_backend.state.workers.clear()  # the server lost it
    again = worker_setup.register(bsnexus_backend.url, REDIS_URL, "-v")
    new_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    assert new_id != old_id and new_id in bsnexus_backend.state.workers
    assert "does not know worker" in again.stderr


def test_unregister_deletes_on_server_and_forgets_identity(worker_setup: WorkerSetup, bsnexus_backend: Backend) -> None:
    worker_setup.register(bsnexus_backend.url, REDIS_URL)
    worker_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    token = worker_setup.saved()["BSNEXUS_WORKER_TOKEN"]
    result = worker_setup.cli("unregister", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["unregistered"] is True and token not in result.stdout
    assert worker_id not in bsnexus_backend.state.workers
    delete = bsnexus_backend.state.requests_to("deregister")[0]
    assert delete.path == f"/api/v1/workers/{worker_id}" and delete.headers["Authorization"] == f"Bearer {token}"
    saved = worker_setup.saved()
    assert "BSNEXUS_WORKER_ID" not in saved and "BSNEXUS_WORKER_TOKEN" not in saved
    assert saved["BSNEXUS_SERVER_URL"] == bsnexus_backend.url
    assert_clean_failure(worker_setup.cli("unregister"), 78)
    assert_clean_failure(worker_setup.cli("run"), 78)


def test_unregister_with_server_down_needs_force(worker_setup: WorkerSetup, bsnexus_backend: Backend) -> None:
    worker_setup.register(bsnexus_backend.url, REDIS_URL)
    down = f"http://127.0.0.1:{free_port()}"
    refused = worker_setup.cli("unregister", BSNEXUS_SERVER_URL=down)
    assert_clean_failure(refused, 69)
    assert "--force" in refused.stderr
    assert "BSNEXUS_WORKER_ID" in worker_setup.saved()
    forced = worker_setup.cli("unregister", "--force", BSNEXUS_SERVER_URL=down)
    assert forced.returncode == 0, forced.stderr
    assert "BSNEXUS_WORKER_ID" not in worker_setup.saved()


def test_bad_command_line_input(worker_setup: WorkerSetup, bsnexus_backend: Backend) -> None:
    from tests.conftest import run_cli

    assert_clean_failure(run_cli("bsnexus-worker", env=worker_setup.env), 2)
    assert_clean_failure(run_cli("bsnexus-worker", "launch", env=worker_setup.env), 2)
    assert_clean_failure(worker_setup.cli("run", "--bogus"), 2)
    no_token = worker_setup.cli("register", "--url", bsnexus_backend.url)
    assert_clean_failure(no_token, 2)
    assert "BSNEXUS_REGISTRATION_TOKEN" in no_token.stderr
    no_url = worker_setup.cli("register", "--token", REGISTRATION_TOKEN)
    assert_clean_failure(no_url, 2)
    bad_url = worker_setup.cli("register", "--url", "ftp://example", "--token", REGISTRATION_TOKEN)
    assert_clean_failure(bad_url, 78)
    bad_redis = worker_setup.cli(
        "register", "--url", bsnexus_backend.url, "--token", REGISTRATION_TOKEN, "--redis-url", "localhost:6379"
    )
    assert_clean_failure(bad_redis, 78)
    bad_port = worker_setup.cli(
        "register", "--url", bsnexus_backend.url, "--token", REGISTRATION_TOKEN, "--redis-url", "redis://:pw@h:port"
    )
    assert_clean_failure(bad_port, 78)
    assert "Port could not be cast" in bad_port.stderr and ":pw@" not in bad_port.stderr
    missing_file = run_cli("bsnexus-worker", "run", "--env-file", "/nonexistent/x.env", env=worker_setup.env)
    assert_clean_failure(missing_file, 78)
    unregistered = worker_setup.cli("status")
    assert_clean_failure(unregistered, 78)
    worker_setup.env_file.write_text("")
    assert "register" in worker_setup.cli("run").stderr
    worker_setup.register(bsnexus_backend.url, REDIS_URL)
    bad_duration = worker_setup.cli("run", "--duration", "soon")
    assert_clean_failure(bad_duration, 78)
    assert "--duration" in bad_duration.stderr
    negative = worker_setup.cli("run", "--max-tasks", "-3")
    assert_clean_failure(negative, 78)
    bad_setting = worker_setup.cli("run", BSNEXUS_VISIBILITY_TIMEOUT_SECONDS="fast")
    assert_clean_failure(bad_setting, 78)
    assert "BSNEXUS_VISIBILITY_TIMEOUT_SECONDS" in bad_setting.stderr
    unknown = worker_setup.cli("run", BSNEXUS_EXECUTOR_TYPE="telepathy")
    assert_clean_failure(unknown, 78)
    assert "telepathy" in unknown.stderr and "claude-code" in unknown.stderr
    no_command = worker_setup.cli("run", BSNEXUS_EXECUTOR_TYPE="command")
    assert_clean_failure(no_command, 78)
    bad_template = worker_setup.cli("run", BSNEXUS_EXECUTOR_TYPE="command", BSNEXUS_COMMAND="agent {nope}")
    assert_clean_failure(bad_template, 78)
    assert "{nope}" in bad_template.stderr or "'nope'" in bad_template.stderr
