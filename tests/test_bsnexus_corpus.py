"""The bad-input corpus of ``bsnexus-worker`` (``tests/corpus/bsnexus-worker.jsonl``): Redis
messages, server answers and settings. Each case ends with its documented exit code, a clear
one-line message, and nothing lost: a bad message becomes a failure result and is acknowledged
at once (never a crash loop), a bad answer saves nothing, a bad setting runs nothing.

Generator specs in ``input``: a field value ``{"deep": N}`` is JSON nested N deep (``"inside":
"prompt"`` puts it inside ``{"prompt": ...}``), ``{"hex": "..."}`` raw bytes, ``{"digits": N}``
a whole number N digits long.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from nexus_jobs.core.exits import word_of
from tests.bsnexus_backend import REGISTER, BackendDouble, WorkerSetup, results
from tests.conftest import assert_clean_failure
from tests.corpus import cases, deep_json
from tests.redis_server import RedisServer

CASES = cases("bsnexus-worker")
SECRET = "S3cr3t-pa55"


def _expand(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "deep" in value:
        nested = deep_json(value["deep"])
        return '{"prompt": ' + nested + "}" if value.get("inside") == "prompt" else nested
    if "hex" in value:
        return bytes.fromhex(value["hex"])
    if "digits" in value:
        return "9" * value["digits"]
    raise ValueError(f"unknown generator {value}")


def _kind(row: dict[str, Any]) -> str:
    return str(row["kind"])


@pytest.mark.parametrize("row", [case for case in CASES if _kind(case.values[0]) == "message"])
def test_bad_messages_become_failure_results_at_once(
    row: dict[str, Any], worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    stream = row["input"].get("stream", "tasks:queue")
    client.xadd(stream, {key: _expand(value) for key, value in row["input"]["fields"].items()})
    result = worker_setup.cli("run", "--max-tasks", "1", "--duration", "30")
    assert result.returncode == row["exit"], result.stderr
    assert "Traceback" not in result.stderr
    (published,) = results(client)
    assert published.get("success", published.get("passed")) == "false"
    assert row["message"] in published["error_message"], published["error_message"]
    assert published["delivery_count"] == "1"  # failed and acknowledged on its first delivery
    group = "workers" if stream == "tasks:queue" else "reviewers"
    assert client.xpending(stream, group)["pending"] == 0
    assert worker_setup.claude_calls() == []
    if published["type"] == "qa":  # the backend reads only `feedback` from a failed review
        assert row["message"] in published["feedback"]


@pytest.mark.parametrize("row", [case for case in CASES if _kind(case.values[0]) == "answer"])
def test_bad_server_answers_save_nothing(
    row: dict[str, Any], worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer
) -> None:
    answer = row["input"]
    body = _expand(answer["body"])
    body = body.encode() if isinstance(body, str) else body
    bsnexus_backend.fail(REGISTER, answer["status"], body, times=None, headers=answer.get("headers"))
    result = worker_setup.cli("register", "--url", bsnexus_backend.url, "--token", "glrt-corpus-token", "--json")
    assert_clean_failure(result, row["exit"])
    assert row["message"] in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    summary = json.loads(result.stdout)  # --json: one object, whatever happened
    assert (summary["exitCode"], summary["outcome"]) == (row["exit"], word_of(row["exit"]))
    assert not worker_setup.env_file.exists() or "BSNEXUS_WORKER_ID" not in worker_setup.saved()
    assert "glrt-corpus-token" not in result.stderr


def _setting_cases() -> list[Any]:
    rows = []
    for case in CASES:
        row = case.values[0]
        if _kind(row) != "setting":
            continue
        rows.append(case)
    return rows


@pytest.mark.parametrize("row", _setting_cases())
def test_bad_settings_run_nothing(
    row: dict[str, Any], worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    client.xadd("tasks:queue", {"task_id": "s-1", "worker_prompt": '{"prompt": "x"}'})
    env = {key: _expand(value) for key, value in row["input"]["env"].items()}
    result = worker_setup.cli(row["input"]["command"], "--max-tasks", "1", "--debug", **env)
    assert_clean_failure(result, row["exit"])
    assert row["message"] in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert results(client) == [] and worker_setup.claude_calls() == []
    assert bsnexus_backend.requests_to("POST /api/v1/workers/" + worker_setup.saved()["BSNEXUS_WORKER_ID"]) == []
