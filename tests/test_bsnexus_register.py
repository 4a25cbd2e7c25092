"""bsnexus-worker register / status / unregister against the local backend double, and bad
command-line input."""

from __future__ import annotations

import dataclasses
import json
import stat
import time
from typing import Any

from dotenv import dotenv_values

from nexus_jobs.cli.summary import COMMON_KEYS
from nexus_jobs.core.exits import word_of
from tests.bsnexus_backend import REGISTER, REGISTRATION_TOKEN, BackendDouble, TokenRow, WorkerSetup
from tests.conftest import assert_clean_failure, free_port
from tests.redis_server import RedisServer

REDIS_URL = "redis://127.0.0.1:1"  # never contacted by register


def test_register_saves_credentials_privately_and_reregister_keeps_identity(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble
) -> None:
    first = worker_setup.register(bsnexus_backend.url, REDIS_URL, "--name", "build-box", "--executor", "command")
    saved = worker_setup.saved()
    worker_id, token = saved["BSNEXUS_WORKER_ID"], saved["BSNEXUS_WORKER_TOKEN"]
    assert worker_id in bsnexus_backend.rows
    assert token == bsnexus_backend.token_of(worker_id)
    assert saved["BSNEXUS_SERVER_URL"] == bsnexus_backend.url
    assert saved["BSNEXUS_REDIS_URL"] == REDIS_URL
    assert saved["BSNEXUS_EXECUTOR_TYPE"] == "command"
    assert saved["BSNEXUS_WORKER_NAME"] == "build-box"
    assert saved["BSNEXUS_TASKS_QUEUE"] == "tasks:queue" and saved["BSNEXUS_REVIEWERS_GROUP"] == "reviewers"
    assert stat.S_IMODE(worker_setup.env_file.stat().st_mode) == 0o600
    assert worker_id in first.stdout and token not in first.stdout + first.stderr
    sent = bsnexus_backend.requests_to(REGISTER)[0].json()
    assert sent["name"] == "build-box" and sent["executor_type"] == "command" and sent["platform"]
    assert sent["capabilities"]["native"] is True and sent["registration_token"] == REGISTRATION_TOKEN
    assert "worker_id" not in sent

    assert saved["BSNEXUS_REGISTRATION_TOKEN"] == REGISTRATION_TOKEN  # for `run` to re-register with
    # Lines the operator keeps in the same file survive, an interval of theirs too.
    worker_setup.env_file.write_text(
        worker_setup.env_file.read_text() + "OTHER_SETTING=kept\nBSNEXUS_HEARTBEAT_INTERVAL=12\n"
    )
    again = worker_setup.register(bsnexus_backend.url, REDIS_URL, "--name", "build-box", "--json")
    summary = json.loads(again.stdout)
    assert (summary["job"], summary["type"], summary["outcome"]) == (
        f"bsnexus-worker-{worker_id}",
        "bsnexus-register",
        "success",
    )
    assert summary["details"] == {
        "workerId": worker_id,
        "reusedIdentity": True,
        "serverUrl": bsnexus_backend.url,
        "envFile": str(worker_setup.env_file),
    }
    resent = bsnexus_backend.requests_to(REGISTER)[1].json()
    assert resent["worker_id"] == worker_id and resent["worker_token"] == token
    saved = worker_setup.saved()
    assert saved["BSNEXUS_WORKER_ID"] == worker_id
    assert saved["BSNEXUS_WORKER_TOKEN"] == bsnexus_backend.token_of(worker_id) != token
    assert saved["OTHER_SETTING"] == "kept" and saved["BSNEXUS_HEARTBEAT_INTERVAL"] == "12"
    keys = [line.split("=", 1)[0] for line in worker_setup.env_file.read_text().splitlines() if line.strip()]
    assert len(keys) == len(set(keys)), keys
    assert stat.S_IMODE(worker_setup.env_file.stat().st_mode) == 0o600
    assert len(bsnexus_backend.rows) == 1


def test_registration_token_elsewhere_is_not_saved_and_a_url_password_is_never_shown(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble
) -> None:
    worker_setup.register(bsnexus_backend.url, REDIS_URL)
    assert "BSNEXUS_REGISTRATION_TOKEN" in worker_setup.saved()
    worker_setup.register(bsnexus_backend.url, REDIS_URL, "--registration-token-elsewhere")
    assert "BSNEXUS_REGISTRATION_TOKEN" not in worker_setup.saved()  # removed, not only left unwritten
    assert "BSNEXUS_WORKER_ID" in worker_setup.saved()

    secret_url = bsnexus_backend.url.replace("http://", "http://admin:S3cr3t-pa55@")
    for extra in ((), ("--json",), ("-v", "--debug")):
        shown = worker_setup.register(secret_url, REDIS_URL, *extra)
        assert "S3cr3t-pa55" not in shown.stdout + shown.stderr
    down = secret_url.replace(str(bsnexus_backend.url.rsplit(":", 1)[1]), str(free_port()))
    refused = worker_setup.cli("register", "--url", down, "--token", REGISTRATION_TOKEN, "--json", "--debug")
    assert_clean_failure(refused, 69)
    assert "S3cr3t-pa55" not in refused.stdout + refused.stderr
    assert "admin:***@" in refused.stderr


def test_register_token_from_environment_and_default_env_file(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble
) -> None:
    from tests.conftest import run_cli

    env = {**worker_setup.env, "BSNEXUS_REGISTRATION_TOKEN": REGISTRATION_TOKEN}
    result = run_cli("bsnexus-worker", "register", "--url", bsnexus_backend.url, env=env)
    assert result.returncode == 0, result.stderr
    default_file = worker_setup.env_file.parent / "home" / ".config" / "nexus-jobs" / ".env"
    assert default_file.exists() and "BSNEXUS_WORKER_ID=" in default_file.read_text()
    assert stat.S_IMODE(default_file.stat().st_mode) == 0o600
    # Register once, run anytime: the registration token is kept for re-registering.
    assert dotenv_values(default_file)["BSNEXUS_REGISTRATION_TOKEN"] == REGISTRATION_TOKEN
    status = run_cli("bsnexus-worker", "status", "--json", env=env)
    # Redis (default localhost:6379 is not ours) may be unreachable; the identity is still shown.
    assert json.loads(status.stdout)["details"]["workerId"] in bsnexus_backend.rows


def test_register_refusals_are_one_clear_line(worker_setup: WorkerSetup, bsnexus_backend: BackendDouble) -> None:
    refused = worker_setup.cli("register", "--url", bsnexus_backend.url, "--token", "glrt-wrong1234")
    assert_clean_failure(refused, 77)
    assert "Invalid registration token" in refused.stderr and "glrt-wrong1234" not in refused.stderr
    bsnexus_backend.registration_tokens["glrt-revoked99"] = TokenRow(revoked=True)
    revoked = worker_setup.cli("register", "--url", bsnexus_backend.url, "--token", "glrt-revoked99")
    assert_clean_failure(revoked, 77)
    assert "Registration token has been revoked" in revoked.stderr and "glrt-revoked99" not in revoked.stderr

    too_long = {"detail": [{"loc": ["body", "name"], "msg": "String too long", "type": "string_too_long"}]}
    bsnexus_backend.fail(REGISTER, 422, json.dumps(too_long).encode())
    invalid = worker_setup.cli("register", "--url", bsnexus_backend.url, "--token", REGISTRATION_TOKEN)
    assert_clean_failure(invalid, 78)
    assert "HTTP 422" in invalid.stderr and "name: String too long" in invalid.stderr

    wrong_url = worker_setup.cli("register", "--url", bsnexus_backend.url + "/nope", "--token", REGISTRATION_TOKEN)
    assert_clean_failure(wrong_url, 78)
    assert "404" in wrong_url.stderr and "--url" in wrong_url.stderr

    slow_down = json.dumps({"detail": "Too many requests. Please retry later."}).encode()
    bsnexus_backend.fail(REGISTER, 429, slow_down, headers={"Retry-After": "1"})
    started = time.monotonic()
    waited = worker_setup.cli(
        "register", "--url", bsnexus_backend.url, "--token", REGISTRATION_TOKEN, BSNEXUS_HTTP_RETRIES="2"
    )
    assert waited.returncode == 0, waited.stderr
    assert time.monotonic() - started >= 0.9  # Retry-After was honoured

    bsnexus_backend.fail(REGISTER, 429, slow_down, headers={"Retry-After": "1"})
    bsnexus_backend.fail(REGISTER, 429, slow_down, headers={"Retry-After": "7"})
    limited = worker_setup.cli(
        "register", "--url", bsnexus_backend.url, "--token", REGISTRATION_TOKEN, BSNEXUS_HTTP_RETRIES="1"
    )
    assert_clean_failure(limited, 75)
    assert "429" in limited.stderr and "try again in 7 seconds" in limited.stderr

    nobody = worker_setup.cli("register", "--url", f"http://127.0.0.1:{free_port()}", "--token", REGISTRATION_TOKEN)
    assert_clean_failure(nobody, 69)
    assert "connection refused" in nobody.stderr


def test_reregister_after_expiry_keeps_the_id_and_after_a_database_loss_registers_anew(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble
) -> None:
    worker_setup.register(bsnexus_backend.url, REDIS_URL)
    old_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    bsnexus_backend.forget(old_id)  # 90 s without a heartbeat: only the Redis entry goes
    worker_setup.register(bsnexus_backend.url, REDIS_URL)
    assert worker_setup.saved()["BSNEXUS_WORKER_ID"] == old_id and bsnexus_backend.alive(old_id)
    bsnexus_backend.lose_database()  # the server lost it for good
    again = worker_setup.register(bsnexus_backend.url, REDIS_URL, "-v")
    new_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    assert new_id != old_id and new_id in bsnexus_backend.rows
    assert "does not know worker" in again.stderr


def test_unregister_deletes_on_server_and_forgets_identity(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble
) -> None:
    worker_setup.register(bsnexus_backend.url, REDIS_URL)
    worker_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    token = worker_setup.saved()["BSNEXUS_WORKER_TOKEN"]
    result = worker_setup.cli("unregister", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["details"]["unregistered"] is True and token not in result.stdout
    assert not bsnexus_backend.alive(worker_id) and worker_id in bsnexus_backend.rows  # listed as offline
    delete = bsnexus_backend.requests_to("DELETE /api/v1/workers/")[0]
    assert delete.path == f"/api/v1/workers/{worker_id}" and "Authorization" not in delete.headers
    saved = worker_setup.saved()
    assert "BSNEXUS_WORKER_ID" not in saved and "BSNEXUS_WORKER_TOKEN" not in saved
    assert saved["BSNEXUS_SERVER_URL"] == bsnexus_backend.url
    assert_clean_failure(worker_setup.cli("unregister"), 78)
    assert_clean_failure(worker_setup.cli("run"), 78)


def test_unregister_with_server_down_needs_force(worker_setup: WorkerSetup, bsnexus_backend: BackendDouble) -> None:
    worker_setup.register(bsnexus_backend.url, REDIS_URL)
    down = f"http://127.0.0.1:{free_port()}"
    refused = worker_setup.cli("unregister", BSNEXUS_SERVER_URL=down)
    assert_clean_failure(refused, 69)
    assert "--force" in refused.stderr
    assert "BSNEXUS_WORKER_ID" in worker_setup.saved()
    forced = worker_setup.cli("unregister", "--force", BSNEXUS_SERVER_URL=down)
    assert forced.returncode == 0, forced.stderr
    assert "BSNEXUS_WORKER_ID" not in worker_setup.saved()


def test_bad_command_line_input(worker_setup: WorkerSetup, bsnexus_backend: BackendDouble) -> None:
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


def test_json_is_the_common_object_of_every_subcommand_on_success_and_failure(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer
) -> None:
    """``--json`` prints the keys every command prints; what is particular goes under ``details``."""

    def one_object(subcommand: str, *args: str, exit_code: int, setup: WorkerSetup = worker_setup) -> dict[str, Any]:
        result = setup.cli(subcommand, *args, "--json")
        assert result.returncode == exit_code, result.stderr
        assert "Traceback" not in result.stderr
        (line,) = result.stdout.splitlines()
        document = json.loads(line)
        assert tuple(document) == COMMON_KEYS
        assert (document["type"], document["exitCode"]) == (f"bsnexus-{subcommand}", exit_code)
        assert document["outcome"] == word_of(exit_code) and document["dryRun"] is False
        assert document["startedAt"] and document["durationSeconds"] >= 0
        assert (exit_code == 0) == (document["message"] not in result.stderr)  # a failure's line is the message
        assert REGISTRATION_TOKEN not in result.stdout
        return document

    worker_setup.env_file.write_text("")
    for subcommand in ("run", "status", "unregister"):  # no identity yet
        unknown = one_object(subcommand, exit_code=78)
        assert unknown["job"] is None and "register" in unknown["message"]
    no_token = one_object("register", "--url", bsnexus_backend.url, exit_code=2)
    assert no_token["job"] is None and "token" in no_token["message"]

    registered = one_object(
        "register",
        "--url",
        bsnexus_backend.url,
        "--token",
        REGISTRATION_TOKEN,
        "--redis-url",
        redis_server.url,
        exit_code=0,
    )
    worker_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    job = f"bsnexus-worker-{worker_id}"
    assert (registered["job"], registered["details"]["workerId"], registered["details"]["reusedIdentity"]) == (
        job,
        worker_id,
        False,
    )

    ran = one_object("run", "--duration", "0.5", exit_code=0)
    assert (ran["job"], ran["counts"]) == (job, {"tasks": 0, "done": 0, "failed": 0, "unpublished": 0})
    assert "--duration" in ran["details"]["stopReason"] and ran["details"]["workerId"] == worker_id

    shown = one_object("status", exit_code=0)
    assert (shown["job"], shown["details"]["running"], shown["details"]["deadLetters"]) == (job, False, 0)
    down = f"redis://127.0.0.1:{free_port()}"
    redis_down = dataclasses.replace(worker_setup, env={**worker_setup.env, "BSNEXUS_REDIS_URL": down})
    blind = one_object("status", exit_code=69, setup=redis_down)
    assert (blind["job"], blind["details"]["pending"], blind["details"]["workerId"]) == (job, None, worker_id)

    gone = one_object("unregister", exit_code=0)
    assert (gone["job"], gone["details"]["unregistered"]) == (job, True)
