"""bsnexus-worker run: the round trip through real Redis Streams with the fake ``claude``,
bad input, executors, stopping, and secrets."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.bsnexus_backend import (
    REGISTER,
    REGISTRATION_TOKEN,
    BackendDouble,
    WorkerSetup,
    add_task,
    finish,
    prompt_json,
    results,
)
from tests.conftest import assert_clean_failure, wait_until
from tests.redis_server import RedisServer

EXECUTION_FIELDS = {
    "task_id",
    "worker_id",
    "type",
    "success",
    "output_path",
    "error_message",
    "commit_hash",
    "branch_name",
}
QA_FIELDS = {"task_id", "worker_id", "type", "passed", "feedback", "error_message"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_round_trip_execution_and_qa(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    worker_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    client = redis_server.client()
    repo = tmp_path / "projects" / "app"
    add_task(
        client,
        task_id="t-1",
        title="Add a greeting",
        repo_path=str(repo),
        branch_name="task/t-1",
        worker_prompt=prompt_json("write hello.txt"),
    )
    add_task(
        client,
        task_id="t-2",
        repo_path=str(repo),
        branch_name="task/t-2",
        worker_prompt=prompt_json("second try"),
        retry_feedback="the file was empty",
        retry_count="2",
    )
    add_task(client, stream="tasks:qa", task_id="t-1", repo_path=str(repo), qa_prompt=prompt_json("check t-1"))
    add_task(client, stream="tasks:qa", task_id="t-2", repo_path=str(repo), qa_prompt=prompt_json("check @reject"))
    result = worker_setup.cli("run", "--max-tasks", "4", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # quiet on success
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"tasks": 4, "done": 3, "failed": 1, "unpublished": 0}
    assert (summary["type"], summary["outcome"], summary["job"]) == (
        "bsnexus-run",
        "success",
        f"bsnexus-worker-{worker_id}",
    )
    assert "--max-tasks 4" in summary["details"]["stopReason"] and summary["details"]["workerId"] == worker_id

    published = {(fields["type"], fields["task_id"]): fields for fields in results(client)}
    assert len(published) == 4
    first = published[("execution", "t-1")]
    assert set(first) >= EXECUTION_FIELDS
    assert first["success"] == "true" and first["worker_id"] == worker_id and first["error_message"] == ""
    assert first["branch_name"] == "task/t-1"
    assert first["commit_hash"] == _git(repo, "rev-parse", "task/t-1")
    assert _git(repo, "log", "-1", "--format=%s", "task/t-1") == "feat(task-t-1): Add a greeting"
    assert "work-" in _git(repo, "show", "--name-only", "--format=", "task/t-1")
    second = published[("execution", "t-2")]
    assert second["success"] == "true" and second["commit_hash"] == _git(repo, "rev-parse", "task/t-2")
    assert second["commit_hash"] != first["commit_hash"]
    passed = published[("qa", "t-1")]
    assert set(passed) >= QA_FIELDS and passed["passed"] == "true" and "looks right" in passed["feedback"]
    rejected = published[("qa", "t-2")]
    assert rejected["passed"] == "false" and "do not pass" in rejected["feedback"] and rejected["error_message"] == ""

    calls = worker_setup.claude_calls()
    assert len(calls) == 4
    for call in calls:
        assert call["argv"][1:] == ["--print", "--dangerously-skip-permissions"]
        assert call["cwd"] == str(repo)
    retried = next(call for call in calls if "second try" in call["prompt"])
    assert retried["prompt"].startswith("PREVIOUS ATTEMPT FAILED (attempt 2).")
    assert "the file was empty" in retried["prompt"]
    assert any("Start with PASS or FAIL" in call["prompt"] for call in calls)
    for stream, group in (("tasks:queue", "workers"), ("tasks:qa", "reviewers")):
        assert client.xpending(stream, group)["pending"] == 0
    assert bsnexus_backend.heartbeats(worker_id) >= 1
    assert bsnexus_backend.requests_to(f"DELETE /api/v1/workers/{worker_id}")  # deregistered at the stop
    assert not bsnexus_backend.alive(worker_id)

    status = worker_setup.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    facts = json.loads(status.stdout)["details"]
    assert facts["workerId"] == worker_id and facts["serverUrl"] == bsnexus_backend.url
    assert facts["tasksDone"] == 3 and facts["tasksFailed"] == 1 and facts["running"] is False
    assert facts["lastHeartbeatAt"] and facts["pending"] == {"tasks:queue/workers": 0, "tasks:qa/reviewers": 0}
    assert facts["deadLetters"] == 0
    text = worker_setup.cli("status")
    assert "tasks done:     3" in text.stdout and "last heartbeat:" in text.stdout


def test_bad_tasks_become_failure_results(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    repo = str(tmp_path / "repo")
    bad = [
        ({"worker_prompt": prompt_json("x")}, "no task_id"),
        ({"task_id": "b-2", "repo_path": repo}, "no worker_prompt"),
        ({"task_id": "b-3", "repo_path": repo, "worker_prompt": "just do it"}, "not JSON"),
        ({"task_id": "b-4", "repo_path": repo, "worker_prompt": '{"text": 1}'}, 'no "prompt"'),
        ({"task_id": "b-5", "repo_path": "relative/dir", "worker_prompt": prompt_json("x")}, "absolute"),
        ({"task_id": "b-6", "worker_prompt": prompt_json("x")}, "no repo_path"),
        ({"task_id": "b-7", "repo_path": repo, "worker_prompt": prompt_json("@fail")}, "exited with code 3"),
        (
            {"task_id": "b-8", "repo_path": repo, "executor_type": "gpt-cli", "worker_prompt": prompt_json("x")},
            "executor 'gpt-cli'",
        ),
        ({"task_id": "b-9", "repo_path": repo, "branch_name": "bad name", "worker_prompt": prompt_json("x")}, "branch"),
        ({"task_id": "b-10", "type": "revert", "repo_path": repo}, "revert needs"),
    ]
    for fields, _reason in bad:
        add_task(client, **fields)
    client.xadd("tasks:queue", {"task_id": b"b-11\xff\xfe", "worker_prompt": b"\xc3\x28 not utf-8"})
    add_task(client, stream="tasks:qa", task_id="q-1", qa_prompt="[1, 2]")
    add_task(client, task_id="ok-1", repo_path=repo, worker_prompt=prompt_json("fine"))
    result = worker_setup.cli("run", "--max-tasks", str(len(bad) + 3))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    published = results(client)
    assert len(published) == len(bad) + 3
    executions = [fields for fields in published if fields["type"] == "execution"]
    for (_fields, reason), fields in zip(bad, executions[: len(bad)], strict=True):
        assert fields["success"] == "false", fields
        assert reason in fields["error_message"], (reason, fields["error_message"])
    garbled = executions[len(bad)]
    assert garbled["success"] == "false" and garbled["task_id"].startswith("b-11")
    assert "not JSON" in garbled["error_message"]
    qa = next(fields for fields in published if fields["type"] == "qa")
    assert qa["passed"] == "false" and "qa_prompt" in qa["error_message"]
    ok = next(fields for fields in published if fields["task_id"] == "ok-1")
    # No branch_name: as the original, nothing is committed and the work tree is left as it is.
    assert ok["success"] == "true" and ok["commit_hash"] == "" and ok["branch_name"] == ""
    assert _git(Path(repo), "log", "--format=%s") == "chore: initialize repository"
    assert _git(Path(repo), "status", "--porcelain").startswith("?? work-")
    assert len(result.stderr.strip().splitlines()) >= len(bad)  # each failure is said once, on one line


def test_missing_claude_binary_and_command_executor(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    repo = str(tmp_path / "repo")
    add_task(client, task_id="m-1", repo_path=repo, worker_prompt=prompt_json("x"))
    missing = worker_setup.cli("run", "--max-tasks", "1", BSNEXUS_CLAUDE_BINARY="claude-not-installed")
    assert missing.returncode == 0, missing.stderr
    assert "not on PATH" in missing.stderr
    (failed,) = results(client)
    assert failed["success"] == "false" and "'claude-not-installed' was not found" in failed["error_message"]

    agent = tmp_path / "agent.py"
    agent.write_text(
        "import sys, pathlib\n"
        "prompt = sys.stdin.read()\n"
        "pathlib.Path('answer.txt').write_text(sys.argv[1] + ':' + prompt)\n"
        "print('PASS, fine' if sys.argv[2] == 'qa' else 'wrote it')\n"
    )
    add_task(client, task_id="c-1", repo_path=repo, branch_name="feature", worker_prompt=prompt_json("make it"))
    add_task(client, stream="tasks:qa", task_id="c-1", repo_path=repo, qa_prompt=prompt_json("review it"))
    command = worker_setup.cli(
        "run",
        "--max-tasks",
        "2",
        BSNEXUS_EXECUTOR_TYPE="command",
        BSNEXUS_COMMAND=f"{os.sys.executable} {agent} {{task_id}} {{kind}}",  # type: ignore[attr-defined]
    )
    assert command.returncode == 0, command.stderr
    executed, reviewed = results(client)[1:]
    assert executed["success"] == "true" and executed["branch_name"] == "feature"
    assert _git(Path(repo), "show", "feature:answer.txt").startswith("c-1:make it")
    assert reviewed["type"] == "qa" and reviewed["passed"] == "true"


def test_timeout_kills_the_process_group(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    add_task(client, task_id="slow", repo_path=str(tmp_path / "repo"), worker_prompt=prompt_json("@spawn @sleep=30"))
    started = time.monotonic()
    result = worker_setup.cli("run", "--max-tasks", "1", BSNEXUS_TASK_TIMEOUT_SECONDS="0.5")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    (failed,) = results(client)
    assert failed["success"] == "false" and "timed out after 0.5 s" in failed["error_message"]
    (call,) = worker_setup.claude_calls()
    grandchild = int(Path(str(worker_setup.claude_log) + ".grandchild").read_text())
    for pid in (call["pid"], grandchild):  # the whole process group is gone
        wait_until(functools.partial(_gone, pid), what=f"process {pid} to be killed")


def _gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_sigterm_lets_the_task_finish_within_grace_then_kills(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    repo = str(tmp_path / "repo")
    add_task(client, task_id="short", repo_path=repo, worker_prompt=prompt_json("@sleep=1"))
    worker = worker_setup.start()
    wait_until(lambda: worker_setup.claude_calls(), what="the task to start")
    worker.send_signal(signal.SIGTERM)
    code, _out, err = finish(worker)
    assert code == 0, err
    (done,) = results(client)
    assert done["success"] == "true", done  # finished within the grace period

    add_task(client, task_id="long", repo_path=repo, worker_prompt=prompt_json("@ignore-term @sleep=60"))
    add_task(client, task_id="never", repo_path=repo, worker_prompt=prompt_json("x"))
    worker = worker_setup.start(BSNEXUS_GRACE_SECONDS="0.5")
    wait_until(lambda: len(worker_setup.claude_calls()) == 2, what="the long task to start")
    worker.send_signal(signal.SIGTERM)
    code, _out, err = finish(worker)
    assert code == 0, err
    killed = results(client)[1]
    assert killed["task_id"] == "long" and killed["success"] == "false"
    assert "grace period" in killed["error_message"] and "SIGTERM" in killed["error_message"]
    assert len(results(client)) == 2  # intake stopped: "never" was not taken
    assert client.xpending("tasks:queue", "workers")["pending"] == 0
    assert client.xlen("tasks:queue") == 3


def test_duration_stops_intake_and_second_run_exits_75(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    started = time.monotonic()
    worker = worker_setup.start("--duration", "3")
    wait_until(lambda: worker_setup.state_dir.is_dir() and list(worker_setup.state_dir.glob("*.json")), what="start")
    second = worker_setup.cli("run", "--duration", "1", "-v")
    assert_clean_failure(second, 75)
    assert "already running" in second.stderr
    quiet = worker_setup.cli("run", "--duration", "1")
    assert quiet.returncode == 75 and quiet.stderr == ""  # a skipped overlapping run is quiet
    assert json.loads(worker_setup.cli("status", "--json").stdout)["details"]["running"] is True
    code, _out, err = finish(worker)
    assert code == 0, err
    assert 2.5 < time.monotonic() - started < 15


def test_tokens_never_reach_logs_results_or_process_arguments(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    token = worker_setup.saved()["BSNEXUS_WORKER_TOKEN"]
    client = redis_server.client()
    add_task(client, task_id="s-1", repo_path=str(tmp_path / "repo"), worker_prompt=prompt_json("@sleep=1"))
    add_task(client, task_id="s-2", repo_path=str(tmp_path / "repo"), worker_prompt=prompt_json("@fail"))
    # The operator's environment carries the tokens too (systemd EnvironmentFile=).
    worker = worker_setup.start(
        "--max-tasks",
        "2",
        "--debug",
        "-v",
        "--json",
        BSNEXUS_REGISTRATION_TOKEN=REGISTRATION_TOKEN,
        BSNEXUS_WORKER_TOKEN=token,
    )
    wait_until(lambda: worker_setup.claude_calls(), what="the task to start")
    child = worker_setup.claude_calls()[0]["pid"]
    command_lines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in (worker.pid, child)]
    code, out, err = finish(worker)
    assert code == 0, err
    status = worker_setup.cli("status", "--json", "--debug")
    everything = "\n".join(
        [out, err, status.stdout, status.stderr, json.dumps(results(client)), *(c.decode() for c in command_lines)]
    )
    for call in worker_setup.claude_calls():
        everything += json.dumps(call["argv"]) + json.dumps(call["env"])
    assert "task s-1" in err  # the debug log was written
    assert token not in everything and REGISTRATION_TOKEN not in everything


def test_long_task_keeps_its_entry_and_heartbeats_go_on(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    import dataclasses

    other = dataclasses.replace(worker_setup, env_file=worker_setup.env_file.with_name("other.env"))
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    other.register(bsnexus_backend.url, redis_server.url)
    worker_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    client = redis_server.client()
    fast = {"BSNEXUS_VISIBILITY_TIMEOUT_SECONDS": "0.4"}
    busy = worker_setup.start(**fast)
    add_task(client, task_id="long", repo_path=str(tmp_path / "repo"), worker_prompt=prompt_json("@sleep=2.5"))
    wait_until(lambda: worker_setup.claude_calls(), what="the long task to start")
    beats_at_start = bsnexus_backend.heartbeats(worker_id)
    idle = other.start(**fast)  # would claim the entry if it went idle for 0.4 s
    wait_until(lambda: results(client), deadline_seconds=20, what="the long task's result")
    assert bsnexus_backend.heartbeats(worker_id) >= beats_at_start + 5  # every 0.2 s during the task
    for worker in (busy, idle):
        worker.send_signal(signal.SIGTERM)
        code, _out, err = finish(worker)
        assert code == 0, err
    assert len(worker_setup.claude_calls()) == 1
    (published,) = results(client)
    assert published["worker_id"] == worker_id and published["delivery_count"] == "1"


def test_second_signal_kills_the_task_at_once(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    add_task(client, task_id="stuck", repo_path=str(tmp_path / "repo"), worker_prompt=prompt_json("@sleep=60"))
    worker = worker_setup.start(BSNEXUS_GRACE_SECONDS="120")
    wait_until(lambda: worker_setup.claude_calls(), what="the task to start")
    started = time.monotonic()
    worker.send_signal(signal.SIGINT)
    time.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    code, _out, err = finish(worker)
    assert code == 0, err
    assert time.monotonic() - started < 10
    (killed,) = results(client)
    assert killed["success"] == "false" and "second signal" in killed["error_message"]
    assert client.xpending("tasks:queue", "workers")["pending"] == 0


def test_revert_message_reverts_the_commit(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    repo = tmp_path / "repo"
    add_task(client, task_id="v-1", repo_path=str(repo), branch_name="task/v", worker_prompt=prompt_json("x"))
    assert worker_setup.cli("run", "--max-tasks", "1").returncode == 0
    (done,) = results(client)
    files_before = _git(repo, "ls-tree", "--name-only", "task/v")
    assert "work-" in files_before
    add_task(
        client, type="revert", task_id="v-1", repo_path=str(repo), branch_name="task/v", commit_hash=done["commit_hash"]
    )
    result = worker_setup.cli("run", "--max-tasks", "1")
    assert result.returncode == 0, result.stderr
    assert len(results(client)) == 1  # BSNexus expects no result for a revert
    assert "work-" not in _git(repo, "ls-tree", "--name-only", "task/v")
    assert _git(repo, "log", "-1", "--format=%s", "task/v").startswith("Revert")
    assert client.xpending("tasks:queue", "workers")["pending"] == 0


def test_executors_plug_in_through_the_entry_point_group(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    (plugins / "shout_executor-1.0.dist-info").mkdir(parents=True)
    (plugins / "shout_executor-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: shout-executor\nVersion: 1.0\n"
    )
    (plugins / "shout_executor-1.0.dist-info" / "entry_points.txt").write_text(
        "[nexus_jobs.bsnexus_executors]\nshout = shout_executor:ShoutExecutor\n"
    )
    (plugins / "shout_executor.py").write_text(
        "from nexus_jobs.bsnexus.executors import Executor, ExecutorOutcome\n"
        "class ShoutExecutor(Executor):\n"
        "    name = 'shout'\n"
        "    def execute(self, request, *, should_abort):\n"
        "        return ExecutorOutcome(True, request.prompt.upper())\n"
    )
    worker_setup.register(bsnexus_backend.url, redis_server.url, "--executor", "shout", PYTHONPATH=str(plugins))
    client = redis_server.client()
    add_task(client, task_id="e-1", worker_prompt=prompt_json("quiet words"))
    result = worker_setup.cli("run", "--max-tasks", "1", PYTHONPATH=str(plugins))
    assert result.returncode == 0, result.stderr
    (published,) = results(client)
    assert published["success"] == "true" and published["output"] == "QUIET WORDS"
    assert bsnexus_backend.requests_to(REGISTER)[0].json()["executor_type"] == "shout"
    missing = worker_setup.cli("run", "--max-tasks", "1")  # the plug-in is not installed here
    assert_clean_failure(missing, 78)
    assert "unknown executor 'shout'" in missing.stderr


def test_duration_expiry_mid_task_kills_it_after_the_grace_period(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    add_task(client, task_id="late", repo_path=str(tmp_path / "repo"), worker_prompt=prompt_json("@sleep=30"))
    started = time.monotonic()
    result = worker_setup.cli("run", "--duration", "0.5", BSNEXUS_GRACE_SECONDS="0.3")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    (killed,) = results(client)
    assert killed["success"] == "false" and "--duration of 0.5 s reached" in killed["error_message"]
    assert "0.3 s grace period" in killed["error_message"]


def test_corrupt_state_file_is_moved_aside(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    worker_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    worker_setup.state_dir.mkdir()
    record = worker_setup.state_dir / f"bsnexus-worker-{worker_id}.json"
    record.write_text('{"tasksDone": 4')
    assert json.loads(worker_setup.cli("status", "--json").stdout)["details"]["tasksDone"] == 0
    add_task(redis_server.client(), task_id="c-1", repo_path=str(tmp_path / "repo"), worker_prompt=prompt_json("x"))
    result = worker_setup.cli("run", "--max-tasks", "1")
    assert result.returncode == 0, result.stderr
    assert "was corrupt" in result.stderr and "Traceback" not in result.stderr
    assert list(worker_setup.state_dir.glob("*.corrupt-*"))
    assert json.loads(worker_setup.cli("status", "--json").stdout)["details"]["tasksDone"] == 1
