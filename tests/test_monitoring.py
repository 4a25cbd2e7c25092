"""Per-job ``pingUrl`` pings (healthchecks style) around a scheduled run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import free_port, run_cli
from tests.nexus_webhooks_double import API_KEY, NexusWebhooksDouble, PingDouble

CHECK_ID = "5f1c7c3e-0a6b-4ad5-9e4c-2a1d7a9f0b11"


def write_config(tmp_path: Path, *, endpoint: str, ping_url: str, interval_minutes: float = 0) -> Path:
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "nexus": {"endpoint": endpoint},
                "agents": {"main": {"workspace": str(workspace)}},
                "stateDir": str(tmp_path / "state"),
                "jobs": [
                    {
                        "id": "webhook-pull",
                        "type": "webhook_pull",
                        "intervalMinutes": interval_minutes,
                        "pingUrl": ping_url,
                    }
                ],
            }
        )
    )
    return path


def pull(config: Path, env: dict[str, str], *args: str) -> Any:
    env = {**env, "NEXUS_API_KEY": API_KEY, "NEXUS_RETRIES": "0"}
    return run_cli("nexus-webhook-pull", "--config", str(config), *args, env=env)


def pings(server: PingDouble) -> list[tuple[str, str]]:
    return [(request.path, request.body.decode()) for request in server.requests]


def test_success_pings_start_then_success_with_the_summary(
    tmp_path: Path, clean_env: dict[str, str], nexus_webhooks: NexusWebhooksDouble, ping_server: PingDouble
) -> None:
    nexus_webhooks.add("main", {"id": "p1", "source": "putio", "payload": {}})
    config = write_config(tmp_path, endpoint=nexus_webhooks.url, ping_url=f"{ping_server.url}/{CHECK_ID}")
    result = pull(config, clean_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    sent = pings(ping_server)
    assert [path for path, _ in sent] == [f"/{CHECK_ID}/start", f"/{CHECK_ID}"]
    assert "success" in sent[1][1] and "delivered 1" in sent[1][1]


def test_failure_pings_fail_with_the_summary_in_the_body(
    tmp_path: Path, clean_env: dict[str, str], nexus_webhooks: NexusWebhooksDouble, ping_server: PingDouble
) -> None:
    nexus_webhooks.fail("GET /webhook/pending", 500, b'{"error": "storage offline"}', times=None)
    config = write_config(tmp_path, endpoint=nexus_webhooks.url, ping_url=f"{ping_server.url}/{CHECK_ID}")
    result = pull(config, clean_env)
    assert result.returncode == 69
    sent = pings(ping_server)
    assert [path for path, _ in sent] == [f"/{CHECK_ID}/start", f"/{CHECK_ID}/fail"]
    assert "unavailable (exit 69)" in sent[1][1] and "storage offline" in sent[1][1]


def test_auth_failure_also_pings_fail(
    tmp_path: Path, clean_env: dict[str, str], nexus_webhooks: NexusWebhooksDouble, ping_server: PingDouble
) -> None:
    config = write_config(tmp_path, endpoint=nexus_webhooks.url, ping_url=f"{ping_server.url}/{CHECK_ID}")
    env = {**clean_env, "NEXUS_RETRIES": "0", "NEXUS_API_KEY": "some-wrong-key"}
    result = run_cli("nexus-webhook-pull", "--config", str(config), env=env)
    assert result.returncode == 77
    assert [path for path, _ in pings(ping_server)] == [f"/{CHECK_ID}/start", f"/{CHECK_ID}/fail"]
    assert "auth (exit 77)" in pings(ping_server)[1][1]


def test_ping_server_down_does_not_fail_the_job(
    tmp_path: Path, clean_env: dict[str, str], nexus_webhooks: NexusWebhooksDouble
) -> None:
    config = write_config(tmp_path, endpoint=nexus_webhooks.url, ping_url=f"http://127.0.0.1:{free_port()}/{CHECK_ID}")
    result = pull(config, clean_env, "--debug")
    assert result.returncode == 0, result.stderr
    assert "could not ping the monitor" in result.stderr and "Traceback" not in result.stderr
    assert CHECK_ID not in result.stderr, "the ping URL is a secret"
    record = json.loads((tmp_path / "state" / "webhook-pull.json").read_text())
    assert record["lastOutcome"] == "success"


def test_ping_refused_by_the_monitor_does_not_fail_the_job(
    tmp_path: Path, clean_env: dict[str, str], nexus_webhooks: NexusWebhooksDouble, ping_server: PingDouble
) -> None:
    ping_server.fail(f"POST /{CHECK_ID}/start", 404, times=None)
    config = write_config(tmp_path, endpoint=nexus_webhooks.url, ping_url=f"{ping_server.url}/{CHECK_ID}")
    result = pull(config, clean_env)
    assert result.returncode == 0
    assert "refused the start ping (HTTP 404)" in result.stderr
    assert [path for path, _ in pings(ping_server)] == [f"/{CHECK_ID}/start", f"/{CHECK_ID}"]


def test_not_due_and_dry_runs_do_not_ping(
    tmp_path: Path, clean_env: dict[str, str], nexus_webhooks: NexusWebhooksDouble, ping_server: PingDouble
) -> None:
    config = write_config(
        tmp_path, endpoint=nexus_webhooks.url, ping_url=f"{ping_server.url}/{CHECK_ID}", interval_minutes=60
    )
    assert pull(config, clean_env).returncode == 0
    assert len(ping_server.requests) == 2
    assert pull(config, clean_env).returncode == 0  # not due
    assert pull(config, clean_env, "--dry-run", "--force").returncode == 0
    assert len(ping_server.requests) == 2
