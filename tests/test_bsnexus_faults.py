"""bsnexus-worker under faults: killed workers, poison messages, two workers on one group,
refused heartbeats, a backend that forgets, expires and restarts, Redis restarting, and rounds
of kill -9."""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import time
from collections import Counter
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
    stderr_of,
)
from tests.conftest import assert_clean_failure, free_port, wait_until
from tests.redis_server import RedisServer


def _second(setup: WorkerSetup, name: str) -> WorkerSetup:
    return dataclasses.replace(setup, env_file=setup.env_file.with_name(f"{name}.env"))


def _executor_died_with_its_worker(setup: WorkerSetup) -> None:
    """PR_SET_PDEATHSIG: the executor of a worker killed with SIGKILL does not run on."""
    pid = int(Path(str(setup.claude_log) + ".slept").read_text())
    wait_until(lambda: _gone(pid), what=f"the executor {pid} to die with its worker")


def _gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_killed_worker_task_is_claimed_by_another_after_visibility_timeout(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    other = _second(worker_setup, "other")
    bsnexus_backend.worker_ttl_seconds = 1.0  # the registry forgets a silent worker in 1 s, not 90 s
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    other.register(bsnexus_backend.url, redis_server.url)
    survivor_id = other.saved()["BSNEXUS_WORKER_ID"]
    victim_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    client = redis_server.client()
    add_task(client, task_id="k-1", repo_path=str(tmp_path / "repo"), worker_prompt=prompt_json("@sleep-first"))
    victim = worker_setup.start()
    wait_until(lambda: Path(str(worker_setup.claude_log) + ".slept").exists(), what="the task to start")
    victim.kill()
    finish(victim)
    _executor_died_with_its_worker(worker_setup)
    assert results(client) == []
    wait_until(lambda: not bsnexus_backend.alive(victim_id), what="the registry to forget the killed worker")
    code = other.cli("run", "--max-tasks", "1", "--duration", "20").returncode
    assert code == 0  # the run has ended: its result is in the stream or nowhere
    (published,) = results(client)
    assert published["task_id"] == "k-1" and published["success"] == "true"
    assert published["worker_id"] == survivor_id and published["delivery_count"] == "2"
    assert client.xpending("tasks:queue", "workers")["pending"] == 0


def test_restarted_worker_kills_what_its_predecessor_left_then_takes_its_own_pending_entry_first(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    prompt = prompt_json("@spawn @sleep-first")  # the executor starts a process of its own, then hangs
    add_task(client, task_id="o-1", repo_path=str(tmp_path / "repo"), worker_prompt=prompt)
    add_task(client, task_id="o-2", repo_path=str(tmp_path / "repo"), worker_prompt=prompt_json("next"))
    victim = worker_setup.start(BSNEXUS_VISIBILITY_TIMEOUT_SECONDS="600")
    wait_until(lambda: Path(str(worker_setup.claude_log) + ".slept").exists(), what="the task to start")
    grandchild = int(Path(str(worker_setup.claude_log) + ".grandchild").read_text())
    victim.kill()
    finish(victim)
    _executor_died_with_its_worker(worker_setup)
    assert not _gone(grandchild)  # no parent-death signal of its own: left in the recorded group
    result = worker_setup.cli("run", "--max-tasks", "2", BSNEXUS_VISIBILITY_TIMEOUT_SECONDS="600")
    assert result.returncode == 0, result.stderr
    assert "killed 1 process(es) a previous run" in result.stderr
    assert _gone(grandchild)
    assert [fields["task_id"] for fields in results(client)] == ["o-1", "o-2"]
    assert results(client)[0]["delivery_count"] == "2"


def test_poison_message_is_dead_lettered_after_n_deliveries(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    client.xgroup_create("tasks:queue", "workers", id="0", mkstream=True)
    message_id = add_task(client, task_id="p-1", repo_path=str(tmp_path / "r"), worker_prompt=prompt_json("x"))
    # Earlier workers took it and died, twice: Redis counts every delivery.
    client.xreadgroup("workers", "ghost-1", {"tasks:queue": ">"}, count=1)
    client.xclaim("tasks:queue", "workers", "ghost-2", 0, [message_id])
    result = worker_setup.cli("run", "--max-tasks", "1", "--duration", "20", BSNEXUS_MAX_DELIVERIES="2")
    assert result.returncode == 0, result.stderr
    (failed,) = results(client)
    assert failed["task_id"] == "p-1" and failed["success"] == "false"
    assert "poison message: delivered 3 times (more than 2)" in failed["error_message"]
    (letter,) = client.xrange("tasks:dead-letter")
    assert letter[1]["task_id"] == "p-1" and letter[1]["source_message_id"] == message_id
    assert letter[1]["source_stream"] == "tasks:queue" and letter[1]["delivery_count"] == "3"
    assert client.xpending("tasks:queue", "workers")["pending"] == 0
    assert worker_setup.claude_calls() == []
    assert json.loads(worker_setup.cli("status", "--json").stdout)["details"]["deadLetters"] == 1


def test_two_workers_share_a_thousand_tasks_without_duplicates(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer
) -> None:
    other = _second(worker_setup, "other")
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    other.register(bsnexus_backend.url, redis_server.url)
    settings = {"BSNEXUS_EXECUTOR_TYPE": "command", "BSNEXUS_COMMAND": "true"}
    workers = [worker_setup.start(**settings), other.start(**settings)]
    ids = [setup.saved()["BSNEXUS_WORKER_ID"] for setup in (worker_setup, other)]
    wait_until(lambda: all(bsnexus_backend.heartbeats(worker_id) for worker_id in ids), what="both workers")
    client = redis_server.client()
    with client.pipeline(transaction=False) as pipe:
        for number in range(1000):
            pipe.xadd("tasks:queue", {"task_id": f"n-{number}", "worker_prompt": prompt_json("noop")})
        pipe.execute()
    wait_until(lambda: client.xlen("tasks:results") >= 1000, deadline_seconds=60, what="1,000 results")
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        code, _out, err = finish(worker)
        assert code == 0, err
    published = results(client)
    assert len(published) == 1000
    assert Counter(fields["task_id"] for fields in published) == Counter(f"n-{number}" for number in range(1000))
    assert all(fields["success"] == "true" for fields in published)
    shares = Counter(fields["worker_id"] for fields in published)
    assert set(shares) == set(ids), shares
    assert client.xpending("tasks:queue", "workers")["pending"] == 0


def test_token_expired_without_registration_token_exits_77_after_the_task(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url, "--registration-token-elsewhere")
    worker_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    client = redis_server.client()
    add_task(client, task_id="h-1", repo_path=str(tmp_path / "repo"), worker_prompt=prompt_json("@sleep=1.5"))
    worker = worker_setup.start()
    wait_until(lambda: worker_setup.claude_calls(), what="the task to start")
    bsnexus_backend.expire_token(worker_id)  # 24 h later: heartbeats get 401 "Invalid token"
    code, _out, err = finish(worker)
    assert code == 77, err
    assert "Invalid token" in err and "run `bsnexus-worker register` again" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    (done,) = results(client)
    assert done["task_id"] == "h-1" and done["success"] == "true"  # the running task was finished

    bsnexus_backend.forget(worker_id)  # and 90 s later the registry entry is gone too
    gone = worker_setup.cli("run", "--duration", "5")
    assert_clean_failure(gone, 77)
    assert "does not list it" in gone.stderr
    assert worker_setup.claude_calls()[1:] == []


def test_register_once_run_anytime(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer
) -> None:
    """A gap longer than the registry's TTL, a token expired after "24 h", a backend restart and
    a lost database, with the registration token only in the .env file register wrote."""
    bsnexus_backend.worker_ttl_seconds = 0.5
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    worker_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    wait_until(lambda: not bsnexus_backend.alive(worker_id), what="the registry to forget the worker")

    worker = worker_setup.start()  # no token in the environment: only in the .env file
    wait_until(lambda: bsnexus_backend.heartbeats(worker_id) >= 1, what="heartbeats after re-registering")
    assert bsnexus_backend.requests_to(REGISTER)[-1].json()["worker_id"] == worker_id
    assert len(bsnexus_backend.requests_to(REGISTER)) == 2 and worker_setup.saved()["BSNEXUS_WORKER_ID"] == worker_id

    bsnexus_backend.expire_token(worker_id)  # "24 h" of running
    wait_until(lambda: len(bsnexus_backend.requests_to(REGISTER)) == 3, what="re-registration on 401")
    beats = bsnexus_backend.heartbeats(worker_id)
    wait_until(lambda: bsnexus_backend.heartbeats(worker_id) >= beats + 2, what="heartbeats with the new token")

    bsnexus_backend.reset("*", times=None)  # the backend restarts: connections fail meanwhile
    wait_until(lambda: "heartbeat failed" in stderr_of(worker), what="the outage to be reported")
    wait_until(lambda: not bsnexus_backend.alive(worker_id), what="the registry entry to lapse meanwhile")
    bsnexus_backend.heal()
    wait_until(lambda: "answers heartbeats again" in stderr_of(worker), what="the recovery to be reported")
    wait_until(lambda: bsnexus_backend.alive(worker_id), what="re-registration after the 404")
    worker.send_signal(signal.SIGTERM)
    code, _out, err = finish(worker)
    assert code == 0, err
    assert err.count("heartbeat failed") == 1 and err.count("answers heartbeats again") == 1  # one line each
    assert "Retrying" not in err and "Traceback" not in err
    assert bsnexus_backend.requests_to(f"DELETE /api/v1/workers/{worker_id}")  # deregistered at the stop
    assert not bsnexus_backend.alive(worker_id)
    token = worker_setup.saved()["BSNEXUS_WORKER_TOKEN"]
    assert token == bsnexus_backend.token_of(worker_id) or not bsnexus_backend.alive(worker_id)
    assert token not in err and REGISTRATION_TOKEN not in err

    bsnexus_backend.lose_database()
    lost = worker_setup.cli("run", "--duration", "5")
    assert_clean_failure(lost, 75)
    assert "registered as" in lost.stderr and "start the worker again" in lost.stderr
    new_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    assert new_id != worker_id and new_id in bsnexus_backend.rows
    again = worker_setup.cli("run", "--duration", "0.5")
    assert again.returncode == 0, again.stderr


def test_backend_down_at_start_tasks_go_on_and_heartbeats_resume(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    worker_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    bsnexus_backend.reset("*", times=None)
    client = redis_server.client()
    worker = worker_setup.start(BSNEXUS_HTTP_RETRIES="3")
    add_task(client, task_id="d-1", repo_path=str(tmp_path / "repo"), worker_prompt=prompt_json("x"))
    wait_until(lambda: results(client), what="the result while the backend is down")
    wait_until(lambda: "heartbeat failed" in stderr_of(worker), what="the heartbeat failure to be reported")
    assert "connection reset" in stderr_of(worker)
    bsnexus_backend.heal()
    wait_until(lambda: bsnexus_backend.heartbeats(worker_id) >= 1, what="heartbeats to resume")
    worker.send_signal(signal.SIGTERM)
    code, _out, err = finish(worker)
    assert code == 0, err
    assert err.count("heartbeat failed") == 1 and "answers heartbeats again" in err
    assert "Retrying" not in err  # urllib3's per-attempt warnings stay out of the log
    assert results(client)[0]["success"] == "true"


def test_redis_restart_while_running_and_redis_down(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    repo = str(tmp_path / "repo")
    worker = worker_setup.start()
    add_task(client, task_id="r-1", repo_path=repo, worker_prompt=prompt_json("@sleep=1"))
    wait_until(lambda: worker_setup.claude_calls(), what="the task to start")
    redis_server.restart(down_seconds=1.5)  # the result is due while Redis is down
    wait_until(lambda: results(client), deadline_seconds=20, what="the result after the restart")
    add_task(client, task_id="r-2", repo_path=repo, worker_prompt=prompt_json("after"))
    wait_until(lambda: len(results(client)) == 2, deadline_seconds=20, what="a task added after the restart")
    worker.send_signal(signal.SIGTERM)
    code, _out, err = finish(worker)
    assert code == 0, err
    assert [(fields["task_id"], fields["success"]) for fields in results(client)] == [("r-1", "true"), ("r-2", "true")]
    assert "Redis is unreachable" in err and "reachable again" in err
    assert client.xpending("tasks:queue", "workers")["pending"] == 0

    dead = worker_setup.cli("run", "--duration", "1", BSNEXUS_REDIS_URL=f"redis://127.0.0.1:{free_port()}")
    assert_clean_failure(dead, 69)
    assert "Redis" in dead.stderr and "Traceback" not in dead.stderr


def test_redis_refusals_are_clear_and_keep_the_password_secret(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    client = redis_server.client()
    client.set("tasks:queue", "not a stream")
    wrong_type = worker_setup.cli("run", "--duration", "5")
    assert_clean_failure(wrong_type, 78)
    assert "Redis refused to read tasks" in wrong_type.stderr and "WRONGTYPE" in wrong_type.stderr
    client.delete("tasks:queue")

    client.config_set("requirepass", "right-pa55word")
    no_password = worker_setup.cli("run", "--duration", "5")
    assert_clean_failure(no_password, 77)
    assert "BSNEXUS_REDIS_URL" in no_password.stderr
    wrong_url = f"redis://:wrong-pa55word@127.0.0.1:{redis_server.port}"
    wrong = worker_setup.cli("run", "--duration", "5", "--debug", BSNEXUS_REDIS_URL=wrong_url)
    assert_clean_failure(wrong, 77)
    assert "wrong-pa55word" not in wrong.stderr
    status = worker_setup.cli("status", BSNEXUS_REDIS_URL=wrong_url)
    assert_clean_failure(status, 77)
    assert "wrong-pa55word" not in status.stdout + status.stderr
    assert "redis://:***@127.0.0.1" in status.stdout


def test_unregister_refuses_while_the_worker_runs(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    worker = worker_setup.start("--duration", "10")
    wait_until(lambda: worker_setup.state_dir.is_dir() and list(worker_setup.state_dir.glob("*.json")), what="start")
    busy = worker_setup.cli("unregister")
    assert_clean_failure(busy, 75)
    assert "stop it before" in busy.stderr
    worker.send_signal(signal.SIGINT)
    code, _out, err = finish(worker)
    assert code == 0, err
    assert worker_setup.cli("unregister").returncode == 0


def test_register_again_while_running_the_worker_adopts_the_new_token(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer
) -> None:
    worker_setup.register(bsnexus_backend.url, redis_server.url)
    worker_id = worker_setup.saved()["BSNEXUS_WORKER_ID"]
    worker = worker_setup.start()
    wait_until(lambda: bsnexus_backend.heartbeats(worker_id) >= 1, what="the first heartbeat")
    worker_setup.register(bsnexus_backend.url, redis_server.url)  # the server issues a new token
    new_token = worker_setup.saved()["BSNEXUS_WORKER_TOKEN"]
    assert bsnexus_backend.token_of(worker_id) == new_token
    beats = bsnexus_backend.heartbeats(worker_id)
    wait_until(lambda: bsnexus_backend.heartbeats(worker_id) >= beats + 2, what="heartbeats with the new token")
    assert worker.poll() is None  # still running
    worker.send_signal(signal.SIGTERM)
    code, _out, err = finish(worker)
    assert code == 0, err
    assert "using the token saved since" in err and new_token not in err


KILL_ROUNDS = 12
EXECUTOR_SCRIPT = """
import os, pathlib, sys, time
task, log = sys.argv[1], pathlib.Path(os.environ["KILL_LOG"])
sys.stdin.read()

def alive(pid):
    try:
        return "State:\\tZ" not in pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False

pid_file = log.with_name(task + ".pid")
if pid_file.exists() and alive(int(pid_file.read_text())):
    with log.open("a") as handle:
        handle.write(f"concurrent {task}\\n")
pid_file.write_text(str(os.getpid()))
with log.open("a") as handle:
    handle.write(f"start {task}\\n")
time.sleep(1.0)
with log.open("a") as handle:
    handle.write(f"end {task}\\n")
"""


def _logged(log: Path, line: str) -> bool:
    return line in log.read_text()


def test_kill_9_rounds_lose_nothing_and_never_run_a_task_twice_at_once(
    worker_setup: WorkerSetup, bsnexus_backend: BackendDouble, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Workers killed with SIGKILL mid-task, round after round, each restarted at once: every
    task ends with a result, and no task ever runs while its previous run is still alive."""
    import random
    import sys

    worker_setup.register(bsnexus_backend.url, redis_server.url)
    script = tmp_path / "executor.py"
    script.write_text(EXECUTOR_SCRIPT)
    log = tmp_path / "executions.log"
    log.touch()
    settings = {
        "BSNEXUS_EXECUTOR_TYPE": "command",
        "BSNEXUS_COMMAND": f"{sys.executable} {script} {{task_id}}",
        "KILL_LOG": str(log),
        "BSNEXUS_VISIBILITY_TIMEOUT_SECONDS": "600",
    }
    client = redis_server.client()
    chooser = random.Random(11)
    for number in range(KILL_ROUNDS):
        add_task(client, task_id=f"k-{number}", worker_prompt=prompt_json("work"))
        worker = worker_setup.start(**settings)
        started = f"start k-{number}\n"
        wait_until(functools.partial(_logged, log, started), deadline_seconds=30, what=started.strip())
        time.sleep(chooser.uniform(0.0, 1.2))  # anywhere in the task, or just after it
        worker.kill()
        finish(worker)
    survivor = worker_setup.start(**settings)
    names = {f"k-{number}" for number in range(KILL_ROUNDS)}
    wait_until(lambda: names <= {r["task_id"] for r in results(client)}, deadline_seconds=60, what="every result")
    survivor.send_signal(signal.SIGTERM)
    code, _out, err = finish(survivor)
    assert code == 0, err
    lines = log.read_text().splitlines()
    starts = Counter(line.split()[1] for line in lines if line.startswith("start "))
    published = Counter(r["task_id"] for r in results(client))
    print(
        f"\nkill -9 rounds: {KILL_ROUNDS}; executions {sum(starts.values())} for {len(names)} tasks "
        f"(re-run after a kill: {sum(count - 1 for count in starts.values())}); results {sum(published.values())} "
        f"(duplicates {sum(count - 1 for count in published.values())}); concurrent runs "
        f"{sum(1 for line in lines if line.startswith('concurrent'))}; lost {len(names - set(published))}"
    )
    assert [line for line in lines if line.startswith("concurrent")] == []
    assert set(published) == names  # nothing lost
    assert client.xpending("tasks:queue", "workers")["pending"] == 0
