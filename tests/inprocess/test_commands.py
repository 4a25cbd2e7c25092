"""Every console script through its ``main(argv)``, in process: the outcomes an operator
sees (exit codes, one-line errors, what lands where) without starting a process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexus_jobs.bsnexus import command as bsnexus_worker
from nexus_jobs.control import command as nexus_jobs
from nexus_jobs.mqtt_worker import command as mqtt_job_worker
from nexus_jobs.session_upload import command as session_upload
from nexus_jobs.webhook_pull import command as webhook_pull
from tests.inprocess.conftest import Ran, Runner
from tests.openclaw_tree import build_realistic

pytestmark = pytest.mark.inprocess

EVERY_MAIN = [session_upload.main, webhook_pull.main, nexus_jobs.main, bsnexus_worker.main, mqtt_job_worker.main]


def one_clean_line(ran: Ran, exit_code: int, *fragments: str) -> None:
    assert ran.returncode == exit_code, (ran.returncode, ran.stdout, ran.stderr)
    assert "Traceback" not in ran.stderr
    assert ran.stderr.strip(), "a failure says what went wrong"
    for fragment in fragments:
        assert fragment in ran.stderr


@pytest.mark.parametrize("main", EVERY_MAIN, ids=lambda main: main.__module__.split(".")[1])
def test_version_and_help_exit_0_and_a_bad_flag_exits_2(run_main: Runner, main: object) -> None:
    assert run_main(main, "--version").returncode == 0  # type: ignore[arg-type]
    helped = run_main(main, "--help")  # type: ignore[arg-type]
    assert helped.returncode == 0 and "usage:" in helped.stdout
    assert run_main(main, "--no-such-flag").returncode == 2  # type: ignore[arg-type]


def upload_setup(run_main: Runner, *, interval_minutes: float = 0) -> tuple[Path, dict[str, bytes], Path]:
    """An OpenClaw tree, a config with one upload job into a file:// store, and the store's inbox."""
    root = run_main.home / "openclaw"
    tree = build_realistic(root)
    store = run_main.home / "store"
    job = {"id": "session-upload", "type": "session_upload", "intervalMinutes": interval_minutes}
    config = run_main.home / "config.json"
    config.write_text(json.dumps({"nexus": {"endpoint": store.as_uri()}, "jobs": [job]}))
    run_main.setenv(OPENCLAW_STATE_DIR=str(root), NEXUS_STATE_DIR=str(run_main.home / "state"))
    return config, tree.expected_uploads, store / "inbox" / "main"


def test_session_upload_stores_every_completed_transcript_once(run_main: Runner) -> None:
    config, expected, inbox = upload_setup(run_main)
    first = run_main(session_upload.main, "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert {path.name: path.read_bytes() for path in inbox.iterdir()} == expected
    again = run_main(session_upload.main, "--config", str(config), "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["job"], summary["exitCode"], summary["outcome"]) == ("session-upload", 0, "success")
    assert summary["counts"].get("uploaded", 0) == 0, "nothing is sent twice"


def test_session_upload_dry_run_changes_nothing(run_main: Runner) -> None:
    config, expected, inbox = upload_setup(run_main)
    ran = run_main(session_upload.main, "--config", str(config), "--dry-run")
    assert ran.returncode == 0, ran.stderr
    assert not inbox.exists()
    assert all(name in ran.stdout for name in expected), "the dry run lists what it would upload"


def test_a_job_that_is_not_due_exits_0_at_once(run_main: Runner) -> None:
    config, expected, inbox = upload_setup(run_main, interval_minutes=60)
    assert run_main(session_upload.main, "--config", str(config)).returncode == 0
    late = run_main.home / "openclaw" / "agents" / "main" / "sessions" / f"{'0' * 8}-late.jsonl.reset.x"
    late.write_bytes(b'{"type":"session","id":"late"}\n')
    assert run_main(session_upload.main, "--config", str(config)).returncode == 0
    assert len(list(inbox.iterdir())) == len(expected), "not due: nothing more was uploaded"


def test_config_problems_are_reported_together_with_file_and_key(run_main: Runner) -> None:
    config = run_main.home / "config.json"
    config.write_text(json.dumps({"jobs": [{"id": "x", "type": "nope", "colour": 1}], "extra": True}))
    for main in (session_upload.main, webhook_pull.main):
        ran = run_main(main, "--config", str(config))
        one_clean_line(ran, 78, str(config), "jobs[0].type", "jobs[0].colour", "extra")


def test_invalid_json_names_line_and_column(run_main: Runner) -> None:
    config = run_main.home / "config.json"
    config.write_text('{\n  "jobs": [,]\n}\n')
    one_clean_line(run_main(nexus_jobs.main, "status", "--config", str(config)), 78, "line 2 column")


def test_webhook_pull_delivers_from_the_embedded_store_to_the_inbox(run_main: Runner) -> None:
    workspace = run_main.home / "workspace"
    workspace.mkdir()
    store = run_main.home / "store"
    pending = store / "webhook" / "pending" / "main"
    pending.mkdir(parents=True)
    item = {"id": "2026-02-06T12:00:00_abc", "source": "putio", "receivedAt": "2026-02-06T12:00:00Z", "payload": {}}
    (pending / "one.json").write_text(json.dumps(item))
    config = run_main.home / "config.json"
    config.write_text(
        json.dumps({"nexus": {"endpoint": store.as_uri()}, "agents": {"main": {"workspace": str(workspace)}}})
    )
    run_main.setenv(NEXUS_STATE_DIR=str(run_main.home / "state"))
    ran = run_main(webhook_pull.main, "--config", str(config))
    assert ran.returncode == 0, ran.stderr
    delivered = list((workspace / "inbox" / "webhooks").iterdir())
    assert len(delivered) == 1 and json.loads(delivered[0].read_text())["id"] == item["id"]
    assert not list(pending.iterdir()), "a delivered item is acknowledged"


def test_nexus_jobs_status_shows_the_default_job_without_a_config(run_main: Runner) -> None:
    run_main.setenv(NEXUS_STATE_DIR=str(run_main.home / "state"))
    ran = run_main(nexus_jobs.main, "status")
    assert ran.returncode == 0, ran.stderr
    assert "session-upload" in ran.stdout


def test_bsnexus_worker_without_an_identity_says_to_register(run_main: Runner) -> None:
    run_main.setenv(NEXUS_STATE_DIR=str(run_main.home / "state"))
    for subcommand in ("run", "status"):
        ran = run_main(bsnexus_worker.main, subcommand)
        one_clean_line(ran, 78, "register")


def test_mqtt_job_worker_refuses_a_bad_broker_url(run_main: Runner) -> None:
    run_main.setenv(MQTT_URL="ftp://example.invalid", JOBS_ROOT=str(run_main.home))
    one_clean_line(run_main(mqtt_job_worker.main), 78, "MQTT_URL")


def test_an_embedded_store_nobody_asked_for_is_named_on_every_run_that_stores_there(run_main: Runner) -> None:
    root = run_main.home / "openclaw"
    expected = build_realistic(root).expected_uploads
    state_dir = run_main.home / "state"
    run_main.setenv(OPENCLAW_STATE_DIR=str(root), NEXUS_STATE_DIR=str(state_dir))
    first = run_main(session_upload.main)
    assert first.returncode == 0
    assert f"no Nexus endpoint is configured: {len(expected)} transcript(s) went to the embedded store" in first.stderr
    assert "NEXUS_ENDPOINT" in first.stderr and len(first.stderr.splitlines()) == 1
    assert run_main(session_upload.main).stderr == "", "a run that stores nothing stays quiet"
    checked = run_main(nexus_jobs.main, "check-config")
    assert any(line.startswith("warn") and "no endpoint is configured" in line for line in checked.stdout.splitlines())


def test_the_embedded_store_asked_for_by_name_is_quiet(run_main: Runner) -> None:
    root = run_main.home / "openclaw"
    expected = build_realistic(root).expected_uploads
    config = run_main.home / "config.json"
    config.write_text(json.dumps({"nexus": {"endpoint": "embedded"}}))
    run_main.setenv(OPENCLAW_STATE_DIR=str(root), NEXUS_STATE_DIR=str(run_main.home / "state"))
    ran = run_main(session_upload.main, "--config", str(config))
    assert (ran.returncode, ran.stderr) == (0, "")
    inbox = run_main.home / "state" / "nexus-store" / "inbox" / "main"
    assert {path.name for path in inbox.iterdir()} == set(expected)


def test_a_fifo_where_a_state_file_or_the_env_file_belongs_is_refused_at_once(run_main: Runner) -> None:
    import os

    state_dir = run_main.home / "state"
    state_dir.mkdir()
    os.mkfifo(state_dir / "session-upload.json")
    run_main.setenv(NEXUS_STATE_DIR=str(state_dir), NEXUS_ENDPOINT="embedded")
    one_clean_line(run_main(session_upload.main, "--force"), 74, "session-upload.json", "not a regular file")
    os.mkfifo(run_main.home / "fifo.env")
    one_clean_line(run_main(webhook_pull.main, "--env-file", str(run_main.home / "fifo.env")), 78, "fifo.env")


def test_a_relative_xdg_state_home_is_ignored_never_the_current_directory(run_main: Runner) -> None:
    root = run_main.home / "openclaw"
    build_realistic(root)
    run_main.setenv(XDG_STATE_HOME="relative", OPENCLAW_STATE_DIR=str(root), NEXUS_ENDPOINT="embedded")
    ran = run_main(session_upload.main, "--json")
    assert ran.returncode == 0, ran.stderr
    assert not (run_main.home / "relative").exists()
    assert (run_main.home / ".local" / "state" / "nexus-jobs" / "nexus-store").is_dir()
