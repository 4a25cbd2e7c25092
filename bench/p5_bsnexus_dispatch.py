"""P5: BSNexus dispatch, no-op tasks per second through real Redis.

Worker: bsnexus-worker's own loop (``worker.Worker.work``: intake order with its own pending
entries, the claim from dead consumers and XREADGROUP over both task streams, parsing, the result fields,
XADD to ``tasks:results`` then XACK, counters) with an executor that does nothing, run
in-process so the figure measures dispatch and not process start-up. Baseline: a bare
redis-py loop of XREADGROUP (count 1) + XADD + XACK on one stream. Both drain the same
number of tasks queued beforehand on one redis-server started here on a free loopback port,
interleaved over several repetitions; medians are compared. Bar: worker >= 50% of baseline.

Run: .venv/bin/python -m bench.p5_bsnexus_dispatch [--tasks 5000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nexus_jobs.bsnexus import record, streams, worker  # noqa: E402
from nexus_jobs.bsnexus import settings as worker_settings  # noqa: E402
from nexus_jobs.bsnexus.executors import Executor, ExecutorOutcome, Request, ShouldAbort  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

TARGET_RATIO = 0.5
PROMPT = json.dumps({"prompt": "do nothing"})


class NoopExecutor(Executor):
    name = "noop"

    def execute(self, request: Request, *, should_abort: ShouldAbort) -> ExecutorOutcome:
        return ExecutorOutcome(True, "ok")


def make_settings(redis_url: str, state_dir: Path, tasks: int) -> worker_settings.Settings:
    values: dict[str, Any] = {option.path: option.default for option in worker_settings.OPTIONS}
    values.update(
        server_url="http://127.0.0.1:9",
        redis_url=redis_url,
        executor_type="noop",
        worker_id="bench-worker",
        worker_token="unused",
        max_tasks=tasks,
        poll_seconds=0.5,
    )
    return worker_settings.Settings(**values, env_file=state_dir / ".env", state_dir=state_dir)


def fill(client: Any, stream: str, count: int) -> None:
    with client.pipeline(transaction=False) as pipe:
        for number in range(count):
            pipe.xadd(stream, {"task_id": f"task-{number}", "worker_prompt": PROMPT})
        pipe.execute()


def reset(client: Any) -> None:
    client.flushall()


def run_worker(redis_url: str, state_dir: Path, count: int) -> float:
    client = streams.connect(redis_url, poll_seconds=0.5)
    reset(client)
    fill(client, "tasks:queue", count)
    settings = make_settings(redis_url, state_dir, count)
    stop = worker.Stop(grace_seconds=0)
    tally = record.Tally(settings=settings, worker_id=settings.worker_id)
    started = time.perf_counter()
    summary = worker.Worker(
        settings=settings, executor=NoopExecutor(settings), client=client, stop=stop, tally=tally
    ).work()
    elapsed = time.perf_counter() - started
    assert summary.done == count, summary
    assert client.xlen("tasks:results") == count
    assert client.xpending("tasks:queue", "workers")["pending"] == 0
    client.close()
    return count / elapsed


def run_baseline(redis_url: str, count: int) -> float:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    reset(client)
    fill(client, "tasks:queue", count)
    client.xgroup_create("tasks:queue", "workers", id="0")
    started = time.perf_counter()
    done = 0
    while done < count:
        reply: Any = client.xreadgroup("workers", "baseline", {"tasks:queue": ">"}, count=1, block=500)
        for _stream, entries in reply or []:
            for message_id, fields in entries:
                client.xadd(
                    "tasks:results",
                    {"task_id": fields["task_id"], "worker_id": "baseline", "type": "execution", "success": "true"},
                )
                client.xack("tasks:queue", "workers", message_id)
                done += 1
    elapsed = time.perf_counter() - started
    assert client.xlen("tasks:results") == count
    client.close()
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per repetition")
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p5-") as scratch:
        server = RedisServer(Path(scratch) / "redis", persistent=False)
        server.start()
        try:
            state_dir = Path(scratch) / "state"
            state_dir.mkdir()
            run_worker(server.url, state_dir, 200)  # warm-up: imports, connections
            run_baseline(server.url, 200)
            worker_rates, baseline_rates = [], []
            for run in range(args.runs):
                # Interleaved, alternating who goes first, so drift on a noisy machine hits both.
                order = ("worker", "baseline") if run % 2 == 0 else ("baseline", "worker")
                for side in order:
                    if side == "worker":
                        worker_rates.append(run_worker(server.url, state_dir, args.tasks))
                    else:
                        baseline_rates.append(run_baseline(server.url, args.tasks))
                print(
                    f"run {run + 1}: worker {worker_rates[-1]:,.0f} tasks/s, "
                    f"baseline {baseline_rates[-1]:,.0f} tasks/s",
                    flush=True,
                )
        finally:
            server.stop()
    worker_median = statistics.median(worker_rates)
    baseline_median = statistics.median(baseline_rates)
    ratio = worker_median / baseline_median
    print(f"P5 BSNexus dispatch ({args.tasks} no-op tasks x {args.runs} runs, redis-server on loopback)")
    print(f"  bsnexus-worker loop:            median {worker_median:,.0f} tasks/s")
    print(f"  bare XREADGROUP+XADD+XACK loop: median {baseline_median:,.0f} tasks/s")
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"  ratio worker/baseline: {ratio:.0%} (target >= {TARGET_RATIO:.0%}): {verdict}")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
