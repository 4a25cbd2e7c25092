"""``nexus-webhook-pull`` against the local Nexus and Gateway doubles, driven as a user would."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import corpus
from tests.conftest import assert_clean_failure, run_cli, wait_until
from tests.nexus_webhooks_double import API_KEY, HOOKS_TOKEN, GatewayDouble, NexusWebhooksDouble

PROG = "nexus-webhook-pull"


def item(item_id: str, source: str = "putio", **payload: Any) -> dict[str, Any]:
    return {"id": item_id, "source": source, "receivedAt": "2026-02-06T12:00:00Z", "payload": payload or {"n": 1}}


class Setup:
    """A config file with agents and one webhook_pull job, a state dir and an environment."""

    def __init__(
        self,
        tmp_path: Path,
        env: dict[str, str],
        *,
        endpoint: str | None,
        agents: tuple[str, ...],
        job_config: dict[str, Any],
    ) -> None:
        self.root = tmp_path
        self.state_dir = tmp_path / "state"
        self.workspaces = {agent: tmp_path / f"workspace-{agent}" for agent in agents}
        for workspace in self.workspaces.values():
            workspace.mkdir()
        document: dict[str, Any] = {
            "agents": {agent: {"workspace": str(path)} for agent, path in self.workspaces.items()},
            "stateDir": str(self.state_dir),
            "jobs": [{"id": "webhook-pull", "type": "webhook_pull", "config": job_config}],
        }
        if endpoint is not None:
            document["nexus"] = {"endpoint": endpoint}
        self.config = tmp_path / "config.json"
        self.config.write_text(json.dumps(document))
        self.env = {**env, "NEXUS_API_KEY": API_KEY, "NEXUS_RETRIES": "0", "OPENCLAW_HOOKS_TOKEN": HOOKS_TOKEN}

    def run(self, *args: str) -> Any:
        return run_cli(PROG, "--config", str(self.config), *args, env=self.env)

    def inbox(self, agent: str = "main") -> dict[str, Any]:
        folder = self.workspaces[agent] / "inbox" / "webhooks"
        return {path.name: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}

    def dead_letters(self) -> list[dict[str, Any]]:
        path = self.state_dir / "webhook-pull.dead-letters.json"
        return json.loads(path.read_text())["items"] if path.exists() else []

    def record(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "webhook-pull.json").read_text())


@pytest.fixture
def make(tmp_path: Path, clean_env: dict[str, str]) -> Any:
    def factory(*, endpoint: str | None, agents: tuple[str, ...] = ("main",), **job_config: Any) -> Setup:
        return Setup(tmp_path, clean_env, endpoint=endpoint, agents=agents, job_config=job_config)

    return factory


def assert_quiet_success(result: Any) -> None:
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_empty_queue_is_a_quiet_success(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url)
    assert_quiet_success(setup.run())
    assert len(nexus_webhooks.made("GET", "/webhook/pending")) == 1
    assert nexus_webhooks.made("DELETE", "/webhook/items") == []
    assert setup.record()["lastOutcome"] == "success"


def test_one_agent_items_land_in_the_inbox_and_are_acknowledged(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url)
    first, second = item("2026-02-06T12:00:00_abc123"), item("2026-02-06T12:01:00_def456", size=3)
    nexus_webhooks.add("main", first, second)
    assert_quiet_success(setup.run())
    inbox = setup.inbox()
    assert inbox == {"putio_2026-02-06T12-00-00_abc123.json": first, "putio_2026-02-06T12-01-00_def456.json": second}
    text = (setup.workspaces["main"] / "inbox/webhooks/putio_2026-02-06T12-00-00_abc123.json").read_text()
    assert text.startswith("{\n  "), "pretty JSON"
    request = nexus_webhooks.made("GET", "/webhook/pending")[0]
    assert request.query["agentId"] == ["main"] and request.headers["x-functions-key"] == API_KEY
    assert sorted(nexus_webhooks.acknowledged) == [first["id"], second["id"]]
    assert nexus_webhooks.made("DELETE", "/webhook/items")[0].headers["x-functions-key"] == API_KEY
    assert nexus_webhooks.pending["main"] == []


def test_many_agents_and_sources(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url, agents=("main", "ops", "idle"))
    nexus_webhooks.add("main", item("m1", "putio"), item("m2", "github"), item("m3", "stripe"))
    nexus_webhooks.add("ops", item("o1", "github"))
    result = setup.run("--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["delivered"] == 4 and summary["counts"]["acknowledged"] == 4
    assert sorted(setup.inbox("main")) == ["github_m2.json", "putio_m1.json", "stripe_m3.json"]
    assert sorted(setup.inbox("ops")) == ["github_o1.json"]
    assert not (setup.workspaces["idle"] / "inbox").exists()
    asked = sorted(r.query["agentId"][0] for r in nexus_webhooks.made("GET", "/webhook/pending"))
    assert asked == ["idle", "main", "main", "ops", "ops"]


def test_pages_until_empty_and_stops_at_the_per_run_maximum(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url, pageSize=2, maxItemsPerRun=5)
    nexus_webhooks.add("main", *(item(f"id-{n:02d}") for n in range(7)))
    assert_quiet_success(setup.run())
    limits = [r.query["limit"] for r in nexus_webhooks.made("GET", "/webhook/pending")]
    assert limits == [["2"], ["2"], ["1"]]  # the last page asks only for what the maximum leaves
    assert sorted(setup.inbox()) == [f"putio_id-{n:02d}.json" for n in range(5)]
    assert len(nexus_webhooks.pending["main"]) == 2
    assert_quiet_success(setup.run())
    assert len(setup.inbox()) == 7 and nexus_webhooks.pending["main"] == []
    assert len(nexus_webhooks.made("GET", "/webhook/pending")) == 3 + 2  # a page of 2, then an empty one


def test_get_failing_exits_69_and_delivers_nothing(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url)
    nexus_webhooks.add("main", item("a"))
    nexus_webhooks.fail("GET /webhook/pending", 500, b'{"error": "database down"}', times=None)
    result = setup.run()
    assert_clean_failure(result, 69)
    assert "500" in result.stderr and "database down" in result.stderr
    assert not (setup.workspaces["main"] / "inbox").exists()
    assert setup.record()["lastExitCode"] == 69


def test_get_unreachable_exits_69(make: Any, tmp_path: Path) -> None:
    from tests.conftest import free_port

    setup = make(endpoint=f"http://127.0.0.1:{free_port()}")
    result = setup.run()
    assert_clean_failure(result, 69)
    assert "connection refused" in result.stderr


def test_delete_failing_next_run_acknowledges_again_without_a_second_delivery(
    make: Any, nexus_webhooks: NexusWebhooksDouble, gateway: GatewayDouble
) -> None:
    setup = make(endpoint=nexus_webhooks.url, delivery=["inbox", "hook"], gatewayUrl=gateway.url)
    nexus_webhooks.add("main", item("x:1"), item("x:2"))
    nexus_webhooks.fail("DELETE /webhook/items", 500, times=1)
    result = setup.run()
    assert_clean_failure(result, 69)
    assert len(gateway.hooks()) == 2 and len(setup.inbox()) == 2
    assert nexus_webhooks.acknowledged == [] and len(nexus_webhooks.pending["main"]) == 2
    for path in (setup.workspaces["main"] / "inbox" / "webhooks").glob("*.json"):
        path.unlink()  # the agent processed them
    result = setup.run("--json")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)["counts"]
    assert counts["alreadyDelivered"] == 2 and counts["delivered"] == 0 and counts["acknowledged"] == 2
    assert len(gateway.hooks()) == 2, "no second delivery"
    assert setup.inbox() == {}
    assert sorted(nexus_webhooks.acknowledged) == ["x:1", "x:2"] and nexus_webhooks.pending["main"] == []


def test_partial_delivery_failures_acknowledge_only_what_was_delivered(
    make: Any, nexus_webhooks: NexusWebhooksDouble, tmp_path: Path
) -> None:
    refuse = "import sys, json; sys.exit(3 if json.load(sys.stdin)['payload'].get('bad') else 0)"
    setup = make(endpoint=nexus_webhooks.url, delivery=["command"], command=[sys.executable, "-c", refuse])
    nexus_webhooks.add("main", item("good-1"), item("bad-1", bad=True), item("good-2"))
    result = setup.run("--json")
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["delivered"] == 2 and summary["counts"]["failed"] == 1
    assert any("bad-1" in line and "exited with 3" in line for line in summary["failures"])
    assert sorted(nexus_webhooks.acknowledged) == ["good-1", "good-2"]
    assert [i["id"] for i in nexus_webhooks.pending["main"]] == ["bad-1"]
    assert "Traceback" not in result.stderr and "bad-1" in result.stderr


@pytest.mark.parametrize(
    ("body", "what"),
    [(b"<html>oops</html>", "not JSON"), (b"[1, 2]", "a list"), (b'{"main": "nope"}', "not a list")],
)
def test_malformed_response_bodies_are_a_clean_69(
    make: Any, nexus_webhooks: NexusWebhooksDouble, body: bytes, what: str
) -> None:
    setup = make(endpoint=nexus_webhooks.url)
    nexus_webhooks.fail("GET /webhook/pending", 200, body, times=None)
    result = setup.run()
    assert_clean_failure(result, 69)
    assert what in result.stderr


def test_malformed_items_are_dead_lettered_once_and_never_crash(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url)
    nexus_webhooks.add("main", 42, "text", {"source": "putio"}, {"id": ""}, item("ok"))
    result = setup.run()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "malformed" in result.stderr
    assert list(setup.inbox()) == ["putio_ok.json"]
    letters = setup.dead_letters()
    assert [letter["item"] for letter in letters] == [42, "text", {"source": "putio"}, {"id": ""}]
    assert all(letter["reason"].startswith("malformed item") for letter in letters)
    assert nexus_webhooks.acknowledged == ["ok"]
    # Served again (they have no id to acknowledge): not dead-lettered a second time.
    assert_quiet_success(setup.run())
    assert len(setup.dead_letters()) == 4


def test_wrong_api_key_exits_77_without_showing_the_key(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url)
    setup.env["NEXUS_API_KEY"] = "wrong-key-abcdef"
    nexus_webhooks.add("main", item("a"))
    result = setup.run("--debug", "--json")
    assert_clean_failure(result, 77)
    assert "NEXUS_API_KEY" in result.stderr
    assert "wrong-key-abcdef" not in result.stderr + result.stdout
    assert json.loads(result.stdout)["exitCode"] == 77


def test_query_auth_mode_sends_code_parameter(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url)
    setup.env["NEXUS_AUTH_MODE"] = "query"
    nexus_webhooks.add("main", item("q"))
    result = setup.run("--debug", "--json")
    assert result.returncode == 0, result.stderr
    assert "code=***" in result.stderr, "urllib3's debug log shows the query, redacted"
    assert API_KEY not in result.stderr + result.stdout
    get = nexus_webhooks.made("GET", "/webhook/pending")[0]
    assert get.query["code"] == [API_KEY] and "x-functions-key" not in get.headers
    assert nexus_webhooks.acknowledged == ["q"]


def test_hook_delivery_headers_body_and_idempotency_key(
    make: Any, nexus_webhooks: NexusWebhooksDouble, gateway: GatewayDouble
) -> None:
    setup = make(endpoint=nexus_webhooks.url, delivery=["inbox", "hook"], gatewayUrl=gateway.url)
    nexus_webhooks.add("main", item("2026-02-06T12:00:00_abc123"))
    result = setup.run("--debug")
    assert result.returncode == 0, result.stderr
    (hook,) = gateway.hooks()
    assert hook.headers["Authorization"] == f"Bearer {HOOKS_TOKEN}"
    assert hook.headers["Idempotency-Key"] == "2026-02-06T12:00:00_abc123"
    body = hook.json()
    assert {k: body[k] for k in ("name", "agentId", "deliver")} == {
        "name": "Nexus",
        "agentId": "main",
        "deliver": False,
    }
    assert "2026-02-06T12:00:00_abc123" in body["message"] and "putio" in body["message"]
    assert "putio_2026-02-06T12-00-00_abc123.json" in body["message"]
    assert nexus_webhooks.acknowledged == ["2026-02-06T12:00:00_abc123"]
    assert HOOKS_TOKEN not in result.stderr and API_KEY not in result.stderr


def test_hook_only_delivery_carries_the_item(
    make: Any, nexus_webhooks: NexusWebhooksDouble, gateway: GatewayDouble
) -> None:
    setup = make(endpoint=nexus_webhooks.url, delivery=["hook"], gatewayUrl=gateway.url)
    nexus_webhooks.add("main", item("h1", secretless="payload-marker"))
    assert_quiet_success(setup.run())
    assert "payload-marker" in gateway.hooks()[0].json()["message"]
    assert not (setup.workspaces["main"] / "inbox").exists()


def test_hook_503_is_transient_then_delivered(
    make: Any, nexus_webhooks: NexusWebhooksDouble, gateway: GatewayDouble
) -> None:
    setup = make(endpoint=nexus_webhooks.url, delivery=["hook"], gatewayUrl=gateway.url, hookRetries=0)
    nexus_webhooks.add("main", item("t1"))
    gateway.fail("POST /hooks/agent", 503, times=None)
    result = setup.run()
    assert result.returncode == 1 and "503" in result.stderr and "Traceback" not in result.stderr
    assert nexus_webhooks.acknowledged == []
    gateway.heal()
    assert_quiet_success(setup.run())
    assert nexus_webhooks.acknowledged == ["t1"]
    assert [r.headers["Idempotency-Key"] for r in gateway.made("POST", "/hooks/agent")] == ["t1", "t1"]


def test_hook_gateway_down_is_transient(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    from tests.conftest import free_port

    setup = make(
        endpoint=nexus_webhooks.url, delivery=["hook"], gatewayUrl=f"http://127.0.0.1:{free_port()}", hookRetries=0
    )
    nexus_webhooks.add("main", item("t2"))
    result = setup.run()
    assert result.returncode == 1 and "connection refused" in result.stderr
    assert nexus_webhooks.acknowledged == []


def test_hook_token_refused_exits_77(make: Any, nexus_webhooks: NexusWebhooksDouble, gateway: GatewayDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url, delivery=["hook"], gatewayUrl=gateway.url)
    setup.env["OPENCLAW_HOOKS_TOKEN"] = "not-the-token-xyz"
    nexus_webhooks.add("main", item("t3"))
    result = setup.run("--debug")
    assert_clean_failure(result, 77)
    assert "OPENCLAW_HOOKS_TOKEN" in result.stderr and "not-the-token-xyz" not in result.stderr
    assert nexus_webhooks.acknowledged == []


def test_command_delivery_gets_the_item_on_stdin(
    make: Any, nexus_webhooks: NexusWebhooksDouble, tmp_path: Path
) -> None:
    out = tmp_path / "received"
    out.mkdir()
    copy = "import sys; open(sys.argv[1] + '/' + sys.argv[2] + '.json', 'w').write(sys.stdin.read())"
    setup = make(
        endpoint=nexus_webhooks.url,
        delivery=["command"],
        command=[sys.executable, "-c", copy, str(out), "{agentId}-{source}"],
    )
    sent = item("c1", "github", action="opened")
    nexus_webhooks.add("main", sent)
    assert_quiet_success(setup.run())
    assert json.loads((out / "main-github.json").read_text()) == sent
    assert nexus_webhooks.acknowledged == ["c1"]


def test_failing_command_dead_letters_after_n_runs(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    fail = "import sys; sys.stderr.write('agent is busy\\n'); sys.exit(4)"
    setup = make(
        endpoint=nexus_webhooks.url, delivery=["command"], command=[sys.executable, "-c", fail], maxDeliveryAttempts=3
    )
    nexus_webhooks.add("main", item("d1"))
    for attempt in (1, 2):
        result = setup.run()
        assert result.returncode == 1 and f"({attempt}/3)" in result.stderr and "agent is busy" in result.stderr
        assert nexus_webhooks.acknowledged == [] and setup.dead_letters() == []
    result = setup.run("--json")
    assert result.returncode == 1 and "dead-lettered" in result.stderr
    (letter,) = setup.dead_letters()
    assert letter["item"]["id"] == "d1" and "3 failed deliveries" in letter["reason"]
    assert "agent is busy" in letter["reason"]
    assert nexus_webhooks.acknowledged == ["d1"]
    assert setup.record()["standing"]["deadLetters"] == 1
    assert_quiet_success(setup.run())


def test_dry_run_changes_nothing(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url)
    nexus_webhooks.add("main", item("dry"))
    result = setup.run("--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dryRun"] is True
    assert not (setup.workspaces["main"] / "inbox").exists()
    assert nexus_webhooks.made("DELETE", "/webhook/items") == [] and not setup.state_dir.exists()


def test_embedded_store_serves_pending_items_from_a_folder(make: Any) -> None:
    setup = make(endpoint=None)
    pending = setup.state_dir / "nexus-store" / "webhook" / "pending" / "main"
    pending.mkdir(parents=True)
    (pending / "2026-02-06T12-00-00_abc.json").write_text(json.dumps(item("2026-02-06T12:00:00_abc")))
    (pending / "broken.json").write_text("{not json")
    result = setup.run("-v")
    assert result.returncode == 1, result.stderr  # the broken file was dead-lettered
    assert list(setup.inbox()) == ["putio_2026-02-06T12-00-00_abc.json"]
    assert sorted(p.name for p in pending.iterdir()) == ["broken.json"]
    assert "unreadable file broken.json" in json.dumps(setup.dead_letters())


def test_file_endpoint_uses_that_folder(make: Any, tmp_path: Path) -> None:
    store = tmp_path / "store"
    setup = make(endpoint=f"file://{store}")
    pending = store / "webhook" / "pending" / "main"
    pending.mkdir(parents=True)
    (pending / "one.json").write_text(json.dumps(item("one")))
    assert_quiet_success(setup.run())
    assert list(setup.inbox()) == ["putio_one.json"] and list(pending.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "config_text", "code", "words"),
    [
        (["--no-such-flag"], None, 2, "unrecognized arguments"),
        (["--max-items", "lots"], None, 78, "--max-items"),
        ([], '{"jobs": [', 78, "line 1 column"),
        ([], '{"jobs": [{"id": "w", "type": "webhook_pull", "config": {"delivery": ["fax"]}}]}', 78, "'fax'"),
        ([], '{"jobs": [{"id": "w", "type": "webhook_pull", "config": {"pageSize": 0}}]}', 78, "pageSize"),
        ([], '{"jobs": [{"id": "w", "type": "webhook_pull", "config": {"delivery": ["command"]}}]}', 78, "command"),
        ([], '{"jobs": [{"id": "w", "type": "webhook_pull", "config": {"colour": 1}}]}', 78, "colour"),
    ],
)
def test_bad_input_is_one_clear_line(
    make: Any, args: list[str], config_text: str | None, code: int, words: str
) -> None:
    setup = make(endpoint=None)
    if config_text is not None:
        setup.config.write_text(config_text)
    result = setup.run(*args)
    assert_clean_failure(result, code)
    assert words in result.stderr
    # argparse's usage synopsis may precede a flag error; the error itself is one line.
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) <= 3, result.stderr


def test_state_is_pruned_after_the_retention_period(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url)
    setup.state_dir.mkdir()
    old, recent = "2020-01-01T00:00:00.000+00:00", "2999-01-01T00:00:00.000+00:00"
    ledger = {
        "version": 1,
        "handled": {
            "old-acked": {"agentId": "main", "outcome": "delivered", "at": old, "acknowledgedAt": old},
            "old-unconfirmed": {"agentId": "main", "outcome": "delivered", "at": old},
            "recent": {"agentId": "main", "outcome": "delivered", "at": recent, "acknowledgedAt": recent},
        },
        "attempts": {"old-try": {"count": 1, "lastAt": old}, "recent-try": {"count": 1, "lastAt": recent}},
        "malformed": {"f" * 64: old},
    }
    path = setup.state_dir / "webhook-pull.delivered.json"
    path.write_text(json.dumps(ledger))
    nexus_webhooks.add("main", item("recent"))
    assert_quiet_success(setup.run())
    kept = json.loads(path.read_text())
    assert sorted(kept["handled"]) == ["recent"] and sorted(kept["attempts"]) == ["recent-try"]
    assert kept["malformed"] == {}
    assert nexus_webhooks.acknowledged == ["recent"], "a remembered id is acknowledged again"
    assert not (setup.workspaces["main"] / "inbox").exists(), "... and not delivered a second time"


# --- the bad-input corpus and the delivery command's children ---------------------------------


def _answer_bytes(spec: dict[str, Any]) -> bytes:
    if "raw" in spec:
        return str(spec["raw"]).encode()
    if "hex" in spec:
        return bytes.fromhex(spec["hex"])
    deep = spec["deep"]
    return (deep["before"] + corpus.deep_json(deep["depth"]) + deep["after"]).encode()


@pytest.mark.parametrize("row", corpus.cases(PROG))
def test_bad_input_corpus(
    row: dict[str, Any], make: Any, nexus_webhooks: NexusWebhooksDouble, gateway: GatewayDouble
) -> None:
    """Every case: the documented exit code and a clear line, no traceback, nothing lost (the
    bad item delivered or dead-lettered, or still pending), and the item behind it delivered."""
    delivery = row.get("delivery", ["inbox"])
    options: dict[str, Any] = {"delivery": delivery, "gatewayUrl": gateway.url}
    if "command" in delivery:
        options["command"] = row.get("command", ["sh", "-c", "cat > /dev/null"])
    if "maxDeliveryAttempts" in row:
        options["maxDeliveryAttempts"] = row["maxDeliveryAttempts"]
    setup = make(endpoint=None if "embedded" in row else nexus_webhooks.url, **options)
    if "embedded" in row:
        pending = setup.state_dir / "nexus-store" / "webhook" / "pending" / "main"
        pending.mkdir(parents=True)
        for name, spec in row["embedded"].items():
            (pending / name).write_bytes(_answer_bytes(spec))
        (pending / "later-1.json").write_text(json.dumps(item("later-1")))
    else:
        if "answer" in row:
            nexus_webhooks.fail("GET /webhook/pending", 200, _answer_bytes(row["answer"]), times=1)
        nexus_webhooks.add("main", *row.get("items", []), item("later-1"))

    result = setup.run()
    assert result.returncode == row["exit"], result.stderr
    assert "Traceback" not in result.stderr and row["message"] in result.stderr, result.stderr
    if row["check"] == "nothing-lost":
        assert nexus_webhooks.acknowledged == [] and not (setup.workspaces["main"] / "inbox").exists()
        result = setup.run()  # the backend answers properly again
        assert result.returncode == 0, result.stderr
    if "inbox" in delivery:
        assert "putio_later-1.json" in setup.inbox()
    if "embedded" not in row:
        assert "later-1" in nexus_webhooks.acknowledged
        for acknowledged in row.get("acknowledged", []):
            assert acknowledged in nexus_webhooks.acknowledged
    if row["check"] == "dead-lettered":
        assert len(setup.dead_letters()) == 1
    if "idempotencyKey" in row:
        assert gateway.hooks()[0].headers["Idempotency-Key"] == row["idempotencyKey"]
    if row["check"] == "redacted":
        stored = "".join(path.read_text() for path in setup.state_dir.glob("webhook-pull*.json"))
        assert "exited with 3" in stored and "***" in stored
        assert API_KEY not in stored + result.stderr and HOOKS_TOKEN not in stored + result.stderr


def test_the_delivery_command_sees_no_secret(make: Any, nexus_webhooks: NexusWebhooksDouble, tmp_path: Path) -> None:
    seen = tmp_path / "env.txt"
    setup = make(
        endpoint=nexus_webhooks.url, delivery=["command"], command=["sh", "-c", f"cat > /dev/null; env > {seen}"]
    )
    setup.env.update(BSNEXUS_WORKER_TOKEN="worker-token-1234", MQTT_URL="mqtt://u:mqtt-pass-1234@broker", KEPT="yes")
    nexus_webhooks.add("main", item("env-1"))
    assert_quiet_success(setup.run())
    text = seen.read_text()
    assert API_KEY not in text and HOOKS_TOKEN not in text and "1234" not in text
    assert "KEPT=yes" in text and "NEXUS_WEBHOOK_ID=env-1" in text and "NEXUS_WEBHOOK_AGENT_ID=main" in text


def test_a_command_timeout_kills_what_it_started(
    make: Any, nexus_webhooks: NexusWebhooksDouble, tmp_path: Path
) -> None:
    pid_file = tmp_path / "background.pid"
    script = f"cat > /dev/null; sleep 1000 & echo $! > {pid_file}; wait"
    setup = make(
        endpoint=nexus_webhooks.url, delivery=["command"], command=["sh", "-c", script], commandTimeoutSeconds=1
    )
    nexus_webhooks.add("main", item("slow-1"))
    result = setup.run()
    assert result.returncode == 1 and "timed out after 1s" in result.stderr, result.stderr
    background = int(pid_file.read_text())
    wait_until(
        lambda: not Path(f"/proc/{background}").exists() or _zombie(background), what="the command's child to die"
    )


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_backend_down_is_asked_once_not_once_per_agent(make: Any, nexus_webhooks: NexusWebhooksDouble) -> None:
    setup = make(endpoint=nexus_webhooks.url, agents=("a1", "a2", "a3", "a4", "a5"))
    nexus_webhooks.fail("GET /webhook/pending", 503, b'{"error": "down"}', times=None)
    result = setup.run()
    assert_clean_failure(result, 69)
    assert "4 other agent(s) not asked this run" in result.stderr
    assert len(nexus_webhooks.made("GET", "/webhook/pending")) == 1
