"""mqtt-job-worker against a real mosquitto (persistence on), driven as a process the way
Docker or systemd start it: one job per start, nothing lost, nothing run twice."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from nexus_jobs.cli.summary import COMMON_KEYS
from nexus_jobs.core.exits import word_of
from nexus_jobs.mqtt_worker import command as mqtt_job_worker
from tests import corpus
from tests.conftest import assert_clean_failure, free_port, run_cli, script, wait_until
from tests.corpus import deep_json
from tests.mosquitto_server import MosquittoServer, ResultListener, make_tls_files

WORKER = "mqtt-job-worker"


# --- helpers: a controller's side of the contract -------------------------------------


@pytest.fixture
def results(mosquitto: MosquittoServer) -> Iterator[ResultListener]:
    listener = ResultListener(mosquitto)
    yield listener
    listener.close()


@pytest.fixture
def worker_env(clean_env: dict[str, str], mosquitto: MosquittoServer, tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "data"
    root.mkdir()
    return dict(
        clean_env,
        MQTT_URL=mosquitto.url,
        JOBS_ROOT=str(root),
        WORKER_ID=f"test-worker-{uuid.uuid4().hex[:8]}",
        MQTT_CONNECT_TIMEOUT_SECONDS="5",
        MQTT_SESSION_EXPIRY_SECONDS="600",
    )


def publish(
    server: MosquittoServer,
    payload: bytes | dict[str, Any],
    *,
    topic: str = "jobs/pending",
    ca_file: Path | None = None,
) -> None:
    """Publish as a controller must: QoS 1, and wait for the broker's acknowledgement."""
    body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if ca_file is not None:
        client.tls_set(ca_certs=str(ca_file))
    client.connect(server.host, server.port)
    client.loop_start()
    try:
        client.publish(topic, body, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def make_job(root: Path, name: str, steps: list[str] | None = None, **job: Any) -> Path:
    work_dir = root / "active_jobs" / name
    work_dir.mkdir(parents=True)
    if steps is not None:
        (work_dir / "job.json").write_text(json.dumps({"steps": steps, **job}), encoding="utf-8")
    return work_dir


def pointer(name: str, work_dir: Path | str, **extra: Any) -> dict[str, Any]:
    return {"id": name, "workDir": str(work_dir), **extra}


def run_worker(env: dict[str, str], *args: str, wait_seconds: float = 10.0) -> tuple[int, dict[str, Any], str]:
    """One start of the worker: exit code, its --json summary, stderr."""
    completed = run_cli(WORKER, "--json", "--wait-timeout", str(wait_seconds), *args, env=env)
    assert "Traceback" not in completed.stderr, completed.stderr
    summary = json.loads(completed.stdout.strip().splitlines()[-1]) if completed.stdout.strip() else {}
    return completed.returncode, summary, completed.stderr


def register(env: dict[str, str]) -> None:
    """Start the worker once so the broker knows its persistent session and subscription."""
    code, summary, stderr = run_worker(env, wait_seconds=0.2)
    assert (code, summary["details"]["cycle"]) == (0, "no-job"), stderr


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [script(WORKER), "--json", *args],
        env=env,
        cwd=env["HOME"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- the controller flow ----------------------------------------------------------------


def test_controller_flow_success_failure_and_timeout(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    ok = make_job(
        root,
        "job_ok",
        ["echo first", "echo to-stderr >&2; pwd", "echo $GREETING $JOB_ID > made.txt"],
        env={"GREETING": "hi there"},
    )
    failing = make_job(root, "job_fail", ["echo before", "exit 3", "touch never-run"])
    slow = make_job(root, "job_slow", ["sleep 30 & echo $! > child.pid; wait"], timeout=1)
    for name, work_dir in (("job_ok", ok), ("job_fail", failing), ("job_slow", slow)):
        publish(mosquitto, pointer(name, work_dir))

    code, summary, _ = run_worker(worker_env)
    assert (code, summary["details"]["cycle"]) == (0, "ran")
    result = results.wait_for("job_ok")
    assert result == summary["details"]["result"]
    assert {key: result[key] for key in ("id", "status", "logFile", "exitCode", "workerId")} == {
        "id": "job_ok",
        "status": "success",
        "logFile": str(ok / "job.log"),
        "exitCode": 0,
        "workerId": worker_env["WORKER_ID"],
    }
    assert result["startedAt"] <= result["finishedAt"]
    expected = [
        "=== job job_ok started ",
        "=== step 1/3: echo first",
        "first",
        "=== step 1/3 exited with 0 after ",
        "=== step 2/3: echo to-stderr >&2; pwd",
        "to-stderr",
        str(ok),
        "=== step 2/3 exited with 0 after ",
        "=== step 3/3: echo $GREETING $JOB_ID > made.txt",
        "=== step 3/3 exited with 0 after ",
        "=== job finished: 3 steps succeeded",
    ]
    log_lines = (ok / "job.log").read_text().splitlines()
    assert len(log_lines) == len(expected), log_lines
    assert all(line.startswith(start) for line, start in zip(log_lines, expected, strict=True)), log_lines
    assert (ok / "made.txt").read_text() == "hi there job_ok\n"
    assert json.loads((ok / "job.result.json").read_text())["status"] == "success"

    code, summary, _ = run_worker(worker_env)
    result = results.wait_for("job_fail")
    assert (code, result["status"], result["exitCode"]) == (0, "failure", 3)
    assert "step 2/3" in result["error"]
    assert not (failing / "never-run").exists()
    assert "=== step 3/3" not in (failing / "job.log").read_text()

    code, summary, _ = run_worker(worker_env)
    result = results.wait_for("job_slow")
    assert (code, result["status"], result["exitCode"]) == (0, "timeout", 124)
    assert "timed out after 1 s" in result["error"]
    child = int((slow / "child.pid").read_text())
    wait_until(lambda: not _alive(child), deadline_seconds=5, what="the step's background child to be killed")
    assert "process group killed" in (slow / "job.log").read_text()
    # Nothing the controller wrote or the job made was deleted.
    assert {path.name for path in ok.iterdir()} >= {"job.json", "job.log", "made.txt", "job.result.json"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_message_steps_are_used_only_without_job_json(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    bare = make_job(root, "from_message")
    with_file = make_job(root, "from_file", ["echo from-file"])
    publish(mosquitto, pointer("from_message", bare, steps=["echo from-message"]))
    publish(mosquitto, pointer("from_file", with_file, steps=["echo from-message"]))
    run_worker(worker_env)
    run_worker(worker_env)
    assert results.wait_for("from_message")["status"] == results.wait_for("from_file")["status"] == "success"
    assert "from-message" in (bare / "job.log").read_text()
    assert "from-message" not in (with_file / "job.log").read_text()


def test_pointer_published_while_no_worker_runs_waits_for_the_next_start(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    work_dir = make_job(root, "queued", ["echo ran"])
    publish(mosquitto, pointer("queued", work_dir))
    code, summary, _ = run_worker(worker_env)
    assert (code, summary["details"]["result"]["status"]) == (0, "success")
    assert results.wait_for("queued")["id"] == "queued"


def test_one_job_per_start_and_pointers_arriving_meanwhile_stay_queued(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    names = [f"job_{number}" for number in range(4)]
    for name in names:
        publish(mosquitto, pointer(name, make_job(root, name, ["echo ran >> runs.txt"])))
    for done, name in enumerate(names, start=1):
        code, summary, _ = run_worker(worker_env)
        assert (code, summary["details"]["result"]["id"]) == (0, name), "pointers are taken one per start, in order"
        assert sum((root / "active_jobs" / other / "runs.txt").exists() for other in names) == done
    assert run_worker(worker_env, wait_seconds=0.3)[1]["details"]["cycle"] == "no-job"
    for name in names:
        assert (root / "active_jobs" / name / "runs.txt").read_text() == "ran\n"
        assert len(results.results[name]) == 1


def test_pointer_arriving_while_the_worker_is_busy_waits_for_the_next_start(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    busy = make_job(root, "busy", ["echo step-is-running; while [ ! -f release ]; do sleep 0.05; done"])
    later = make_job(root, "later", ["echo ran >> runs.txt"])
    publish(mosquitto, pointer("busy", busy))
    worker = start_worker(worker_env, "--wait-timeout", "10")
    wait_until(lambda: _step_running(busy / "job.log"), what="the first job to start")
    publish(mosquitto, pointer("later", later))
    time.sleep(0.3)
    (busy / "release").touch()
    stdout, stderr = worker.communicate(timeout=20)
    assert (worker.returncode, json.loads(stdout)["details"]["result"]["id"]) == (0, "busy"), stderr
    assert not (later / "job.log").exists(), "one job per start"
    code, summary, _ = run_worker(worker_env)
    assert (code, summary["details"]["result"]["id"]) == (0, "later")
    assert (later / "runs.txt").read_text() == "ran\n"
    assert results.wait_for("later")["status"] == "success"


def test_worker_killed_mid_job_gets_the_job_again_and_finishes_it(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    work_dir = make_job(
        root,
        "killed",
        [
            "echo attempt >> attempts.txt; echo step-is-running; while [ ! -f release ]; do sleep 0.05; done",
            "echo once >> side-effect.txt",
        ],
    )
    publish(mosquitto, pointer("killed", work_dir))
    first = start_worker(worker_env)
    # job.log is written in real time: the step's output is there while it still runs.
    wait_until(lambda: _step_running(work_dir / "job.log"), what="the step's output in job.log")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    assert "killed" not in results.results
    (work_dir / "release").touch()
    code, summary, _ = run_worker(worker_env)
    assert (code, summary["details"]["result"]["status"]) == (0, "success")
    assert results.wait_for("killed")["status"] == "success"
    assert (work_dir / "attempts.txt").read_text() == "attempt\nattempt\n"
    assert (work_dir / "side-effect.txt").read_text() == "once\n"
    log_text = (work_dir / "job.log").read_text()
    assert log_text.count("=== job killed started") == 2
    assert "an earlier run did not finish" in log_text


def _step_running(log_file: Path) -> bool:
    # The step's own output, not the "=== job ... started" header written before it.
    return "\nstep-is-running\n" in _read(log_file)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_finished_job_redelivered_after_a_crash_is_not_run_again(worker_env, mosquitto, results):
    """Killed after the result record was written but before the pointer was acknowledged:
    the next start re-publishes the recorded result instead of running the steps again."""
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    assert mosquitto.process is not None
    # The last step freezes the broker, so the worker is stuck waiting for the acknowledgement
    # of its result when we kill it.
    work_dir = make_job(root, "crashed", ["echo once >> side-effect.txt", f"kill -STOP {mosquitto.process.pid}"])
    publish(mosquitto, pointer("crashed", work_dir))
    first = start_worker(worker_env)
    try:
        wait_until(lambda: (work_dir / "job.result.json").exists(), what="the result record")
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
    finally:
        os.kill(mosquitto.process.pid, signal.SIGCONT)
    code, summary, _ = run_worker(worker_env)
    assert (code, summary["details"]["cycle"]) == (0, "re-published")
    assert summary["details"]["result"]["status"] == "success"
    assert (work_dir / "side-effect.txt").read_text() == "once\n"
    assert results.wait_for("crashed")["status"] == "success"
    assert run_worker(worker_env, wait_seconds=0.3)[1]["details"]["cycle"] == "no-job"


def test_a_job_held_by_another_worker_is_not_run_twice(worker_env, mosquitto, results):
    import filelock

    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    work_dir = make_job(root, "held", ["echo ran >> runs.txt"])
    other_worker = filelock.FileLock(str(work_dir / "job.lock"), timeout=0)
    other_worker.acquire()
    publish(mosquitto, pointer("held", work_dir))
    waiting = start_worker(worker_env, "-v")
    time.sleep(0.8)
    assert waiting.poll() is None and not (work_dir / "job.log").exists()
    # The other worker finishes: it writes its result record and releases the lock.
    recorded = {"id": "held", "status": "success", "logFile": str(work_dir / "job.log"), "exitCode": 0}
    (work_dir / "job.result.json").write_text(json.dumps(recorded))
    other_worker.release()
    stdout, stderr = waiting.communicate(timeout=20)
    assert waiting.returncode == 0, stderr
    assert json.loads(stdout)["details"]["cycle"] == "re-published"
    assert "being run by another worker" in stderr
    assert not (work_dir / "runs.txt").exists()
    assert results.wait_for("held")["status"] == "success"


def test_two_workers_sharing_a_group_run_fifty_jobs_each_exactly_once(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    environments = [dict(worker_env, WORKER_ID=f"shared-{letter}", MQTT_SHARED_GROUP="builders") for letter in "ab"]
    for env in environments:
        register(env)
    names = [f"batch_{number:02d}" for number in range(50)]
    for name in names:
        publish(mosquitto, pointer(name, make_job(root, name, ["echo $JOB_ID >> runs.txt"])))

    def drain(env: dict[str, str]) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            code, summary, stderr = run_worker(env, wait_seconds=1.0)
            assert code == 0, stderr
            if summary["details"]["cycle"] == "no-job":
                return

    threads = [threading.Thread(target=drain, args=(env,)) for env in environments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in names:
        assert (root / "active_jobs" / name / "runs.txt").read_text() == f"{name}\n"
        assert results.wait_for(name)["status"] == "success"
    assert all(len(results.results[name]) == 1 for name in names)
    workers = {results.results[name][0]["workerId"] for name in names}
    assert workers == {"shared-a", "shared-b"}


def test_broker_restart_between_pointer_and_worker_start_loses_nothing(worker_env, mosquitto):
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    work_dir = make_job(root, "survivor", ["echo ran"])
    publish(mosquitto, pointer("survivor", work_dir))
    mosquitto.restart()
    listener = ResultListener(mosquitto)
    try:
        code, summary, _ = run_worker(worker_env)
        assert (code, summary["details"]["result"]["status"]) == (0, "success")
        assert listener.wait_for("survivor")["status"] == "success"
    finally:
        listener.close()


def test_broker_restart_during_a_job_loses_nothing(worker_env, mosquitto):
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    work_dir = make_job(root, "through_restart", ["echo step-is-running; while [ ! -f release ]; do sleep 0.05; done"])
    publish(mosquitto, pointer("through_restart", work_dir))
    worker = start_worker(worker_env, "-v")
    wait_until(lambda: _step_running(work_dir / "job.log"), what="the job to start")
    mosquitto.restart()
    listener = ResultListener(mosquitto)
    try:
        (work_dir / "release").touch()
        stdout, stderr = worker.communicate(timeout=30)
        assert worker.returncode == 0, stderr
        assert json.loads(stdout)["details"]["cycle"] == "ran"
        assert "reconnecting" in stderr
        assert listener.wait_for("through_restart")["status"] == "success"
    finally:
        listener.close()
    assert run_worker(worker_env, wait_seconds=0.3)[1]["details"]["cycle"] == "no-job"
    assert _read(work_dir / "job.log").count("=== job through_restart started") == 1


def test_stop_signal_while_waiting_exits_cleanly(worker_env, mosquitto):
    waiting = start_worker(worker_env, "-v")
    # Connected (so its signal handlers are in place) and waiting for a pointer.
    connected = f"as {worker_env['WORKER_ID']} "
    wait_until(lambda: connected in mosquitto.log_path.read_text(), what="the worker to connect")
    waiting.send_signal(signal.SIGTERM)
    stdout, stderr = waiting.communicate(timeout=10)
    assert waiting.returncode == 143, stderr
    summary = json.loads(stdout)
    assert (summary["details"]["cycle"], summary["exitCode"], summary["outcome"]) == ("stopped", 143, "interrupted")
    assert "Traceback" not in stderr


def test_first_stop_signal_finishes_the_job_and_a_second_leaves_it_queued(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    blocking = ["echo step-is-running; while [ ! -f release ]; do sleep 0.05; done; echo finished >> done.txt"]
    finished = make_job(root, "finished", blocking)
    abandoned = make_job(root, "abandoned", blocking)
    publish(mosquitto, pointer("finished", finished))
    publish(mosquitto, pointer("abandoned", abandoned))

    worker = start_worker(worker_env, "-v")
    wait_until(lambda: _step_running(finished / "job.log"), what="the first job to start")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert worker.poll() is None, "the first signal lets the current job finish"
    (finished / "release").touch()
    stdout, stderr = worker.communicate(timeout=20)
    assert worker.returncode == 143, stderr
    assert json.loads(stdout)["details"]["result"]["status"] == "success"
    assert results.wait_for("finished")["status"] == "success"

    worker = start_worker(worker_env)
    wait_until(lambda: _step_running(abandoned / "job.log"), what="the second job to start")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.send_signal(signal.SIGINT)
    stdout, stderr = worker.communicate(timeout=20)
    assert worker.returncode == 143, "the first signal decides the exit code"
    assert "stays queued" in stderr and "Traceback" not in stderr
    assert not (abandoned / "done.txt").exists() and "abandoned" not in results.results
    (abandoned / "release").touch()
    code, summary, _ = run_worker(worker_env)
    result = summary["details"]["result"]
    assert (code, result["id"], result["status"]) == (0, "abandoned", "success")


def test_topic_overrides(worker_env, mosquitto):
    root = Path(worker_env["JOBS_ROOT"])
    env = dict(worker_env, MQTT_PENDING_TOPIC="factory/queue", MQTT_RESULT_TOPIC="factory/done/{id}/result")
    register(env)
    listener = ResultListener(mosquitto, topic="factory/done/+/result", result_topic="factory/done/{id}/result")
    try:
        publish(mosquitto, pointer("elsewhere", make_job(root, "elsewhere", ["echo wrong queue"])))
        publish(mosquitto, pointer("custom", make_job(root, "custom", ["echo ok"])), topic="factory/queue")
        code, summary, _ = run_worker(env)
        assert (code, summary["details"]["result"]["id"]) == (0, "custom")
        assert listener.wait_for("custom")["status"] == "success"
        assert run_worker(env, wait_seconds=0.3)[1]["details"]["cycle"] == "no-job"
    finally:
        listener.close()


def test_mqtts_with_a_private_certificate_authority(clean_env, tmp_path, mosquitto_factory):
    tls = make_tls_files(tmp_path / "tls")
    server = mosquitto_factory(tls_files=tls)
    root = tmp_path / "data"
    work_dir = make_job(root, "over_tls", ["echo secure"])
    env = dict(clean_env, MQTT_URL=server.url, MQTT_CA_FILE=str(tls.ca_file), JOBS_ROOT=str(root), WORKER_ID="tls")
    register(env)
    publish(server, pointer("over_tls", work_dir), ca_file=tls.ca_file)
    code, summary, _ = run_worker(env)
    assert (code, summary["details"]["broker"], summary["details"]["result"]["status"]) == (0, server.url, "success")
    # Without the CA the broker's certificate is not trusted: unreachable, one line.
    untrusting = {key: value for key, value in env.items() if key != "MQTT_CA_FILE"}
    completed = run_cli(WORKER, "--connect-timeout", "0.5", env=untrusting)
    assert_clean_failure(completed, 69)
    assert "certificate" in completed.stderr.lower()


# --- bad input ---------------------------------------------------------------------------


def prepare(row: dict[str, Any], root: Path) -> bytes:
    """Make what a corpus row's ``setup`` describes under the jobs root and return its
    pointer's bytes. Specs: ``raw`` text, ``hex`` bytes, ``json`` (with {root}, {job},
    {outside} and {pad:N} placeholders), ``deep`` (before + N "[" + N "]" + after)."""
    setup = row.get("setup", {})
    places = {"{root}": str(root), "{outside}": str(root.parent / "outside")}
    if setup.get("outside"):
        outside = root.parent / "outside"
        outside.mkdir(exist_ok=True)
        (outside / "job.json").write_text(json.dumps({"steps": ["touch escaped"]}))
        (outside / "target.log").write_text("untouched\n")
    if setup.get("link"):
        (root / "link").symlink_to(root.parent / "outside")
    if "job" in setup:
        work_dir = make_job(root, setup["job"])
        places["{job}"] = str(work_dir)
        if "jobJson" in setup:
            (work_dir / "job.json").write_text(json.dumps(setup["jobJson"]))
        if "jobText" in setup:
            (work_dir / "job.json").write_text(setup["jobText"])
        if "jobDeep" in setup:
            (work_dir / "job.json").write_text(_deep(setup["jobDeep"]))
        if setup.get("logLink"):
            (work_dir / "job.log").symlink_to(root.parent / "outside" / "target.log")
        if setup.get("logFifo"):
            os.mkfifo(work_dir / "job.log")
        if setup.get("jobFifo"):
            os.mkfifo(work_dir / "job.json")
        if "resultLink" in setup:
            (work_dir / "job.result.json").symlink_to(setup["resultLink"])
        if setup.get("resultFifo"):
            os.mkfifo(work_dir / "job.result.json")
        if setup.get("resultDir"):
            (work_dir / "job.result.json").mkdir()
        if "resultDeep" in setup:
            (work_dir / "job.result.json").write_text(deep_json(setup["resultDeep"]))
    spec = row["pointer"]
    if "raw" in spec:
        return str(spec["raw"]).encode()
    if "hex" in spec:
        return bytes.fromhex(spec["hex"])
    if "deep" in spec:
        return _deep(spec["deep"]).encode()
    text = json.dumps(spec["json"], ensure_ascii=False)
    for placeholder, value in places.items():
        text = text.replace(placeholder, value)
    if "{pad:" in text:
        text = re.sub(r"\{pad:(\d+)\}", lambda match: "x" * int(match.group(1)), text)
    return text.encode()


def _deep(spec: dict[str, Any]) -> str:
    return spec["before"] + deep_json(spec["depth"]) + spec["after"]


@pytest.mark.parametrize("row", corpus.cases(WORKER))
def test_bad_input_corpus(row, worker_env, mosquitto, results):
    """Every case: one clear line, the documented exit code, the controller told when the id
    is known, the pointer acknowledged, and the job behind it runs."""
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    publish(mosquitto, prepare(row, root))
    good = make_job(root, "good_after_bad", ["echo fine"])
    publish(mosquitto, pointer("good_after_bad", good))

    code, summary, stderr = run_worker(worker_env)
    assert code == row["exit"], stderr
    if row["check"] == "runs":
        assert summary["details"]["result"]["status"] == "success", stderr
        assert (root / "active_jobs" / row["setup"]["job"] / "runs.txt").read_text() == "ran\n"
    else:
        assert summary["details"]["cycle"] == "invalid-pointer", stderr
        assert len(stderr.strip().splitlines()) == 1 and row["message"] in stderr, stderr
    if row["check"] == "error-result":
        result = results.wait_for(row["jobId"])
        assert (result["status"], result["exitCode"]) == ("error", None)
        assert row["message"] in result["error"]
    # Nothing ran anywhere, nothing outside the root changed, and the bad pointer was
    # acknowledged: the next start takes the next one.
    assert not list(root.parent.rglob("escaped"))
    if (root.parent / "outside" / "target.log").exists():
        assert (root.parent / "outside" / "target.log").read_text() == "untouched\n"
    code, summary, _ = run_worker(worker_env)
    assert (code, summary["details"]["result"]["id"]) == (0, "good_after_bad")
    results.wait_for("good_after_bad")
    if row["check"] == "dropped":
        assert set(results.results) == {"good_after_bad"}


# --- bad settings, unreachable broker, credentials ------------------------------------------


BAD_SETTINGS = {
    "url scheme": ({"MQTT_URL": "http://127.0.0.1:1883"}, [], "MQTT_URL"),
    "url port": ({"MQTT_URL": "mqtt://127.0.0.1:99999"}, [], "MQTT_URL"),
    "url without host": ({"MQTT_URL": "mqtt://"}, [], "MQTT_URL"),
    "jobs root missing": ({"JOBS_ROOT": "/nonexistent/data"}, [], "JOBS_ROOT"),
    "shared group": ({"MQTT_SHARED_GROUP": "a/b"}, [], "MQTT_SHARED_GROUP"),
    "result topic": ({"MQTT_RESULT_TOPIC": "jobs/results"}, [], "MQTT_RESULT_TOPIC"),
    "wait timeout": ({}, ["--wait-timeout", "soon"], "--wait-timeout"),
    "negative wait timeout": ({}, ["--wait-timeout=-1"], "--wait-timeout"),
    "session expiry": ({"MQTT_SESSION_EXPIRY_SECONDS": "5"}, [], "MQTT_SESSION_EXPIRY_SECONDS"),
    "worker id": ({"WORKER_ID": "has space"}, [], "WORKER_ID"),
    "password without user": ({"MQTT_PASSWORD": "lonely-secret"}, [], "MQTT_PASSWORD"),
    "credentials in a flag": ({}, ["--mqtt-url", "mqtt://user:flag-secret@127.0.0.1:1883"], "--mqtt-url"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_give_one_clear_line_and_exit_78(case, clean_env, tmp_path):
    variables, flags, named = BAD_SETTINGS[case]
    env = {**clean_env, "JOBS_ROOT": str(tmp_path), "MQTT_URL": f"mqtt://127.0.0.1:{free_port()}", **variables}
    completed = run_cli(WORKER, *flags, env=env)
    assert_clean_failure(completed, 78)
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
    assert named in completed.stderr
    assert "secret" not in completed.stderr


def test_worker_id_defaults_to_one_derived_from_the_host_name(worker_env):
    env = {key: value for key, value in worker_env.items() if key != "WORKER_ID"}
    code, summary, _ = run_worker(env, wait_seconds=0.1)
    assert (code, summary["job"]) == (0, f"mqtt-job-worker-{socket.gethostname()}")


def test_usage_error_exits_2(clean_env):
    completed = run_cli(WORKER, "--no-such-flag", env=clean_env)
    assert completed.returncode == 2


@pytest.mark.inprocess
def test_json_is_the_common_object_on_success_and_on_failure(worker_env, monkeypatch, capsys):
    """``--json`` prints the keys every command prints, the cycle's facts under ``details``."""
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(worker_env["HOME"])

    def one_object(*argv: str) -> tuple[int, dict[str, Any]]:
        capsys.readouterr()
        code = mqtt_job_worker.main(["--json", *argv])
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1, lines
        document = json.loads(lines[0])
        assert tuple(document) == COMMON_KEYS
        assert (document["type"], document["exitCode"], document["dryRun"]) == ("mqtt-job-worker", code, False)
        assert document["outcome"] == word_of(code)
        return code, document

    code, waited = one_object("--wait-timeout", "0.1")
    assert (code, waited["job"], waited["message"]) == (0, worker_env["WORKER_ID"], "no job came within 0.1 s")
    assert waited["details"] == {
        "cycle": "no-job",
        "result": None,
        "broker": worker_env["MQTT_URL"],
        "workerId": worker_env["WORKER_ID"],
    }
    assert waited["startedAt"] and waited["durationSeconds"] >= 0

    down = f"mqtt://127.0.0.1:{free_port()}"
    code, unreachable = one_object("--mqtt-url", down, "--connect-timeout", "0.2")
    assert (code, unreachable["outcome"], unreachable["job"]) == (69, "unavailable", worker_env["WORKER_ID"])
    assert "unreachable" in unreachable["message"] and unreachable["details"]["cycle"] is None
    assert unreachable["details"]["broker"] == down

    code, refused = one_object("--mqtt-url", "ftp://example.invalid")
    assert (code, refused["outcome"], refused["job"]) == (78, "config", None)
    assert "MQTT_URL" in refused["message"] or "--mqtt-url" in refused["message"]


def test_unreachable_broker_exits_69(clean_env, tmp_path):
    env = dict(clean_env, JOBS_ROOT=str(tmp_path), MQTT_URL=f"mqtt://127.0.0.1:{free_port()}")
    started = time.monotonic()
    completed = run_cli(WORKER, "--connect-timeout", "0.5", "--json", env=env)
    assert_clean_failure(completed, 69)
    assert "unreachable" in completed.stderr
    assert json.loads(completed.stdout)["exitCode"] == 69
    assert time.monotonic() - started < 10


def test_credentials_never_reach_logs_json_or_steps(clean_env, tmp_path, mosquitto_factory):
    secret = "s3cr3t-Pa55word"
    server = mosquitto_factory(users={"worker": secret, "controller": "ctl-pass"})
    root = tmp_path / "data"
    work_dir = make_job(root, "authed", ["env > env.txt"])
    base = dict(clean_env, JOBS_ROOT=str(root), WORKER_ID="authed-worker", MQTT_CONNECT_TIMEOUT_SECONDS="2")

    wrong = run_cli(WORKER, "-v", "--json", env=dict(base, MQTT_URL=f"mqtt://worker:{secret}x@127.0.0.1:{server.port}"))
    assert_clean_failure(wrong, 77)
    assert secret not in wrong.stderr + wrong.stdout

    in_url = dict(base, MQTT_URL=f"mqtt://worker:{secret}@127.0.0.1:{server.port}")
    separate = dict(base, MQTT_URL=f"mqtt://127.0.0.1:{server.port}", MQTT_USERNAME="worker", MQTT_PASSWORD=secret)
    register(in_url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set("controller", "ctl-pass")
    client.connect(server.host, server.port)
    client.loop_start()
    client.publish("jobs/pending", json.dumps(pointer("authed", work_dir)), qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    completed = run_cli(WORKER, "-v", "--debug", "--json", "--wait-timeout", "5", env=separate)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["details"]["result"]["status"] == "success"
    assert secret not in completed.stdout + completed.stderr
    completed = run_cli(WORKER, "-v", "--debug", "--json", "--wait-timeout", "0.2", env=in_url)
    assert (completed.returncode, json.loads(completed.stdout)["details"]["cycle"]) == (0, "no-job")
    assert secret not in completed.stdout + completed.stderr
    assert secret not in (work_dir / "env.txt").read_text()
    assert "JOB_ID=authed" in (work_dir / "env.txt").read_text()


# --- children: environment, leftovers, job.log cap -----------------------------------------


def test_steps_get_no_secret_of_any_command_but_what_the_job_passes(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    env = dict(
        worker_env,
        NEXUS_API_KEY="nexus-key-1234",
        OPENCLAW_HOOKS_TOKEN="hooks-token-1234",
        BSNEXUS_WORKER_TOKEN="worker-token-1234",
        BSNEXUS_REDIS_URL="redis://:redis-pass-1234@127.0.0.1:6379",
        OPERATOR_SETTING="kept",
    )
    register(env)
    work_dir = make_job(root, "env_job", ["env > env.txt"], env={"FROM_JOB": "passed"})
    publish(mosquitto, pointer("env_job", work_dir))
    code, summary, _ = run_worker(env)
    assert (code, summary["details"]["result"]["status"]) == (0, "success")
    seen = (work_dir / "env.txt").read_text()
    assert "1234" not in seen
    assert "OPERATOR_SETTING=kept" in seen and "FROM_JOB=passed" in seen and "JOB_ID=env_job" in seen


def test_a_daemon_started_by_a_step_serves_the_next_step_and_dies_with_the_job(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    work_dir = make_job(
        root,
        "daemon_job",
        [
            # The daemon writes its own pid once it has left the step's group (setsid may fork).
            "setsid -f sh -c 'echo $$ > daemon.pid; exec sleep 1000' > /dev/null 2>&1; "
            "while [ ! -s daemon.pid ]; do sleep 0.01; done",
            'test "$(cut -d" " -f6 /proc/$(cat daemon.pid)/stat)" = "$(cat daemon.pid)" && echo daemon-up',
        ],
    )
    publish(mosquitto, pointer("daemon_job", work_dir))
    code, summary, _ = run_worker(worker_env)
    assert (code, summary["details"]["result"]["status"]) == (0, "success")
    assert "daemon-up" in (work_dir / "job.log").read_text()
    daemon = int((work_dir / "daemon.pid").read_text())
    wait_until(lambda: not _alive(daemon), deadline_seconds=5, what="the job's daemon to be killed")


def test_job_log_is_capped_with_a_marker_and_the_steps_go_on(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    env = dict(worker_env, JOB_LOG_MAX_BYTES="4096")
    register(env)
    work_dir = make_job(root, "chatty", ["head -c 3000000 /dev/zero | tr '\\0' x; echo", "echo second-step > done.txt"])
    publish(mosquitto, pointer("chatty", work_dir))
    code, summary, _ = run_worker(env)
    assert (code, summary["details"]["result"]["status"]) == (0, "success")
    assert (work_dir / "done.txt").read_text() == "second-step\n"
    log_text = (work_dir / "job.log").read_text()
    assert len(log_text) < 4096 + 2000
    assert "job.log cap of 4096 bytes reached" in log_text
    assert "=== step 2/2 exited with 0" in log_text and "bytes of output discarded" in log_text


def test_a_killed_workers_leftovers_die_before_its_successor_runs_anything(worker_env, mosquitto, results):
    root = Path(worker_env["JOBS_ROOT"])
    register(worker_env)
    step = (
        # A zombie counts as gone: it has ended and waits for its reaper only.
        "if [ -f attempted ]; then s=$(cut -d')' -f2 /proc/$(cat leftover.pid)/stat 2>/dev/null | cut -c2); "
        'if [ -n "$s" ] && [ "$s" != Z ]; then echo alive; else echo gone; fi > seen.txt; exit 0; fi; '
        "touch attempted; "
        "sleep 1000 & echo $! > leftover.pid; echo $$ > shell.pid; echo step-is-running; wait"
    )
    work_dir = make_job(root, "orphaning", [step])
    publish(mosquitto, pointer("orphaning", work_dir))
    first = start_worker(worker_env)
    wait_until(lambda: _step_running(work_dir / "job.log"), what="the step to run")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    shell, leftover = int((work_dir / "shell.pid").read_text()), int((work_dir / "leftover.pid").read_text())
    wait_until(lambda: not _alive(shell), deadline_seconds=5, what="the step's shell to die with its worker")
    code, summary, stderr = run_worker(worker_env, "-v")
    assert (code, summary["details"]["result"]["status"]) == (0, "success"), stderr
    assert "a previous run of this worker left running" in stderr
    assert (work_dir / "seen.txt").read_text() == "gone\n"
    assert not _alive(leftover)
