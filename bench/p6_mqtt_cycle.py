"""P6: the one-shot cycle of mqtt-job-worker versus a bare paho script (bar: within 2x).

Worker cycle, timed as a whole process: start, connect (persistent session), receive the
pointer waiting in the broker, run a job whose one step is ``true``, write job.log and the
result record, publish the result and wait for its acknowledgement, acknowledge the
pointer, exit. Baseline, timed the same way: a Python process that imports paho, connects,
publishes one QoS 1 message, waits for the acknowledgement and disconnects. Both run from
cached bytecode, as installed code does (a warm-up run of each writes the cache first).

Both run against one mosquitto started here on a free loopback port, interleaved, and the
medians are compared. Bar: worker <= 2x baseline.

Run: .venv/bin/python -m bench.p6_mqtt_cycle [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from tests.mosquitto_server import MosquittoServer  # noqa: E402

WORKER = Path(sys.executable).parent / "mqtt-job-worker"
TARGET_RATIO = 2.0

BASELINE = """
import sys
import paho.mqtt.client as mqtt
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-baseline", protocol=mqtt.MQTTv5)
client.connect("127.0.0.1", int(sys.argv[1]))
client.loop_start()
client.publish("bench/baseline", b'{"id": "x", "status": "success"}', qos=1).wait_for_publish(10)
client.disconnect()
client.loop_stop()
"""


def timed(command: list[str], *, env: dict[str, str]) -> float:
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{command[0]} exited with {completed.returncode}: {completed.stderr.strip()}")
    return elapsed


def publish_pointer(server: MosquittoServer, document: dict[str, Any]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(server.host, server.port)
    client.loop_start()
    client.publish("jobs/pending", json.dumps(document), qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each side (default 20)")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="bench-p6-")
    with MosquittoServer(Path(scratch) / "broker") as server:
        root = Path(scratch) / "data"
        root.mkdir()
        env = {
            key: value for key, value in os.environ.items() if not key.startswith(("MQTT_", "WORKER_ID", "JOBS_ROOT"))
        }
        env.update(MQTT_URL=server.url, JOBS_ROOT=str(root), WORKER_ID="bench-worker", HOME=scratch)
        # Both sides run as installed code does: from cached bytecode (kept out of the tree).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(scratch) / "pycache")
        worker = [str(WORKER), "--wait-timeout", "10"]
        timed([str(WORKER), "--wait-timeout", "0.1"], env=env)  # creates the persistent session
        baseline = [sys.executable, "-c", BASELINE, str(server.port)]
        timed(baseline, env=env)  # warm the file cache for both
        worker_seconds: list[float] = []
        baseline_seconds: list[float] = []
        for number in range(args.runs):
            work_dir = root / f"job_{number}"
            work_dir.mkdir()
            (work_dir / "job.json").write_text(json.dumps({"steps": ["true"]}), encoding="utf-8")
            publish_pointer(server, {"id": f"job_{number}", "workDir": str(work_dir)})
            worker_seconds.append(timed(worker, env=env))
            result = json.loads((work_dir / "job.result.json").read_text(encoding="utf-8"))
            assert result["status"] == "success", result
            baseline_seconds.append(timed(baseline, env=env))
    shutil.rmtree(scratch, ignore_errors=True)
    worker_median = statistics.median(worker_seconds)
    baseline_median = statistics.median(baseline_seconds)
    ratio = worker_median / baseline_median
    print(f"P6 mqtt one-shot cycle, {args.runs} runs each (medians):")
    print(f"  mqtt-job-worker cycle         {worker_median * 1000:8.1f} ms")
    print(f"  bare paho connect+publish     {baseline_median * 1000:8.1f} ms")
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"  ratio {ratio:.2f}x (target <= {TARGET_RATIO:g}x): {verdict}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
