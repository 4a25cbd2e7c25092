"""P6 companion: kill -9 mqtt-job-worker at random moments of its cycle and check that no
build job is lost, none runs twice at the same time, and no step's process outlives its
worker's successor.

Each job's one step records its shell's pid, starts a background child (as builds do), works
for about a second and records its end. Before it starts it looks for live processes of
earlier attempts of the same job: finding one is a concurrent run. Workers are started one
after another against one mosquitto; each of the first ``--kills`` is killed with SIGKILL
after a random delay (before, during or after the step); then workers run until the queue is
empty.

Run: .venv/bin/python -m bench.p6_kill_experiment [--jobs 10] [--kills 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from bench.p6_mqtt_cycle import publish_pointer  # noqa: E402
from tests.mosquitto_server import MosquittoServer, ResultListener  # noqa: E402

WORKER = Path(sys.executable).parent / "mqtt-job-worker"

STEP = (
    "for p in $(cat pids 2>/dev/null); do "
    "s=$(cut -d')' -f2 /proc/$p/stat 2>/dev/null | cut -c2); "
    'if [ -n "$s" ] && [ "$s" != Z ]; then echo "CONCURRENT $p" >> runs.log; fi; done; '
    'echo "start $$" >> runs.log; echo $$ >> pids; '
    "sleep 1000 & echo $! >> pids; "
    "i=0; while [ $i -lt 20 ]; do sleep 0.05; i=$((i+1)); done; "
    'echo "end $$" >> runs.log'
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="p6-kill-"))
    with MosquittoServer(scratch / "broker") as server:
        data = scratch / "data"
        data.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "WORKER_ID", "JOBS_ROOT"))}
        env.update(MQTT_URL=server.url, JOBS_ROOT=str(data), WORKER_ID="kill-worker", HOME=str(scratch))
        env["NEXUS_STATE_DIR"] = str(scratch / "state")
        subprocess.run([str(WORKER), "--wait-timeout", "0.1"], env=env, check=True)
        results = ResultListener(server)
        names = [f"job_{n}" for n in range(args.jobs)]
        for name in names:
            (data / name).mkdir()
            (data / name / "job.json").write_text(json.dumps({"steps": [STEP]}))
            publish_pointer(server, {"id": name, "workDir": str(data / name)})
        orphan_checks = []
        for _ in range(args.kills):
            worker = subprocess.Popen([str(WORKER), "--wait-timeout", "5"], env=env, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.05, 1.6))
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            # The step's shell must die with its worker (PR_SET_PDEATHSIG).
            shells = [
                int(line.split()[1])
                for name in names
                for line in _lines(data / name / "runs.log")
                if line.startswith("start ")
            ]
            deadline = time.monotonic() + 2
            while any(alive(pid) for pid in shells) and time.monotonic() < deadline:
                time.sleep(0.02)
            orphan_checks.append(sum(alive(pid) for pid in shells))
        starts = 0
        while True:
            completed = subprocess.run(
                [str(WORKER), "--wait-timeout", "1.5", "--json"], env=env, capture_output=True, text=True
            )
            starts += 1
            if json.loads(completed.stdout)["details"]["cycle"] == "no-job" or starts > 5 * args.jobs:
                break
        time.sleep(0.5)  # the listener's last messages
        lost, twice_concurrent, attempts, ends, leftovers = [], 0, 0, 0, 0
        for name in names:
            log = _lines(data / name / "runs.log")
            attempts += sum(line.startswith("start ") for line in log)
            job_ends = sum(line.startswith("end ") for line in log)
            ends += job_ends
            twice_concurrent += sum(line.startswith("CONCURRENT") for line in log)
            if not results.results.get(name) or results.results[name][-1]["status"] != "success":
                lost.append(name)
            leftovers += sum(alive(int(pid)) for pid in _lines(data / name / "pids"))
        print(f"kill -9 experiment: {args.jobs} jobs, {args.kills} workers killed at random moments")
        print(f"  jobs without a success result: {len(lost)} {lost}")
        print(f"  step attempts: {attempts}; steps that ran to their end: {ends} (jobs {args.jobs})")
        print(f"  concurrent runs of one job seen by a step: {twice_concurrent}")
        print(f"  step shells alive 2 s after their worker was killed: {sum(orphan_checks)}")
        print(f"  step processes alive at the end: {leftovers}")
        results.client.loop_stop()
    return 0 if not lost and not twice_concurrent and not leftovers and not sum(orphan_checks) else 1


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


if __name__ == "__main__":
    sys.exit(main())
