"""The cron conventions of the frame (``cli.run_scheduled`` and ``cli.main``): the due check
and its tolerance, one ``--json`` object for every outcome, signals recorded as
``interrupted``, the metrics file, state that cannot be written.

The fast tests call the frame in the pytest process with an injected clock; the signal
tests run a real upload as a process and stop it while a request is in flight.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from nexus_jobs.cli import frame as cli
from nexus_jobs.cli.summary import COMMON_KEYS, RunSummary
from nexus_jobs.core import state
from nexus_jobs.core.config import JobEntry
from nexus_jobs.core.errors import CannotCreate, LockHeld, StorageError
from nexus_jobs.core.exits import Exit
from nexus_jobs.session_upload import command as session_upload
from nexus_jobs.webhook_pull import command as webhook_pull
from tests.conftest import script, wait_until
from tests.nexus_double import NexusDouble
from tests.openclaw_tree import build_realistic
from tests.test_session_upload import markers as read_markers


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
        monkeypatch.setattr(state, "now_utc", lambda: self.now)
        monkeypatch.delenv(cli.TRIGGERED_AT_ENV, raising=False)


def flags(**values: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"force": False, "dry_run": False, "json": False, **values})


@pytest.mark.inprocess
@pytest.mark.parametrize("interval_minutes", [1, 5, 60])
@pytest.mark.parametrize("start_delay_seconds", [0.0, 0.9, 4.0])
def test_a_job_triggered_exactly_every_interval_runs_at_every_trigger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval_minutes: int, start_delay_seconds: float
) -> None:
    clock = Clock(monkeypatch)
    job = JobEntry(job_id="every", job_type="webhook_pull", interval_minutes=interval_minutes)
    first = clock.now
    ran = []

    def work() -> RunSummary:
        ran.append(clock.now)
        return RunSummary("every", "webhook_pull")

    for trigger in range(16):
        # The start is recorded a moment after the trigger, by a varying amount.
        delay = start_delay_seconds * (trigger % 3) / 2
        clock.now = first + timedelta(minutes=interval_minutes * trigger, seconds=delay)
        assert cli.run_scheduled(job=job, state_dir=tmp_path, args=flags(), work=work) == Exit.OK
    assert len(ran) == 16
    # Between two triggers it is not due: the tolerance is a tenth of the interval.
    clock.now += timedelta(minutes=interval_minutes / 2)
    cli.run_scheduled(job=job, state_dir=tmp_path, args=flags(), work=work)
    assert len(ran) == 16


@pytest.mark.inprocess
def test_run_due_passes_its_trigger_time_so_a_job_behind_a_slow_one_stays_on_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    job = JobEntry(job_id="second", job_type="webhook_pull", interval_minutes=5)
    runs = []

    def work() -> RunSummary:
        runs.append(clock.now)
        return RunSummary("second", "webhook_pull")

    for trigger in range(4):
        triggered = clock.now.replace(minute=0) + timedelta(minutes=5 * trigger)
        monkeypatch.setenv(cli.TRIGGERED_AT_ENV, state.isoformat(triggered))
        clock.now = triggered + timedelta(minutes=3)  # a first job took three minutes
        cli.run_scheduled(job=job, state_dir=tmp_path, args=flags(), work=work)
    assert len(runs) == 4


@pytest.mark.inprocess
def test_json_is_one_object_with_the_same_keys_for_every_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("NEXUS_ENDPOINT", "NEXUS_API_KEY", "NEXUS_STATE_DIR", "NEXUS_JOBS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "oc" / "agents" / "main" / "sessions").mkdir(parents=True)
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(tmp_path / "oc"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"jobs": [{"id": "pull", "type": "webhook_pull", "intervalMinutes": 60}]}))
    common = ["--config", str(config), "--state-dir", str(tmp_path / "state"), "--json"]
    seen = {}
    for label, argv in (
        ("success", common),
        ("not-due", common),
        ("dry run", [*common, "--dry-run", "--force"]),
        ("usage", [*common, "--bogus"]),
        ("config", [*common, "--max-items", "NaN"]),
    ):
        try:
            code = webhook_pull.main(argv)
        except SystemExit as exit_:
            code = int(str(exit_.code))
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert len(lines) == 1, (label, out)
        document = json.loads(lines[0])
        assert tuple(document) == COMMON_KEYS, label
        assert document["exitCode"] == code, label
        seen[label] = document["outcome"]
    assert seen == {
        "success": "success",
        "not-due": "not-due",
        "dry run": "success",
        "usage": "usage",
        "config": "config",
    }
    with state.job_lock(tmp_path / "state", "pull"):
        assert webhook_pull.main([*common, "--force"]) == Exit.TEMPFAIL
    document = json.loads(capsys.readouterr().out)
    assert (document["outcome"], document["job"]) == ("busy", "pull")


@pytest.mark.inprocess
def test_session_upload_dry_run_lists_inside_the_json_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = build_realistic(tmp_path / "openclaw")
    for name in ("NEXUS_ENDPOINT", "NEXUS_API_KEY", "NEXUS_JOBS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(tree.root))
    code = session_upload.main(["--state-dir", str(tmp_path / "state"), "--dry-run", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0 and document["dryRun"] is True
    assert len(document["planned"]) == len(tree.expected_uploads) == document["counts"]["wouldUpload"]
    assert all(line.startswith("would upload ") for line in document["planned"])


def _returning(summary: RunSummary) -> Callable[[], RunSummary]:
    return lambda: summary


@pytest.mark.inprocess
def test_metrics_file_holds_every_job_and_is_replaced_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Clock(monkeypatch)
    metrics = tmp_path / "textfile" / "nexus_jobs.prom"
    metrics.parent.mkdir()
    for job_id, code in (("a", Exit.OK), ("b", Exit.PARTIAL), ("a", Exit.OK)):
        job = JobEntry(job_id=job_id, job_type="webhook_pull", metrics_file=str(metrics))
        summary = RunSummary(job_id, "webhook_pull", exit_code=code, counts={"done": 2})
        cli.run_scheduled(job=job, state_dir=tmp_path / "state", args=flags(), work=_returning(summary))
    text = metrics.read_text()
    assert 'nexus_jobs_runs_total{job="a"} 2' in text and 'nexus_jobs_runs_total{job="b"} 1' in text
    assert 'nexus_jobs_last_exit_code{job="b"} 1' in text
    assert 'nexus_jobs_last_run_items{job="a",kind="done"} 2' in text
    noon = datetime(2026, 3, 1, 12, tzinfo=timezone.utc).timestamp()
    assert f'nexus_jobs_last_success_timestamp_seconds{{job="a"}} {noon!r}' in text
    assert 'last_success_timestamp_seconds{job="b"}' not in text
    assert text.count("# TYPE nexus_jobs_runs_total counter") == 1
    assert metrics.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in metrics.parent.iterdir()) == ["nexus_jobs.prom", "nexus_jobs.prom.lock"]


@pytest.mark.inprocess
def test_a_run_record_of_the_wrong_shape_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "job.json").write_text(json.dumps({"version": 1, "runs": "many"}))
    job = JobEntry(job_id="job", job_type="webhook_pull")
    assert cli.run_scheduled(job=job, state_dir=tmp_path, args=flags(), work=lambda: RunSummary("job", "x")) == 0
    assert json.loads((tmp_path / "job.json").read_text())["runs"] == 1
    assert [p.name.split("-")[0] for p in tmp_path.glob("job.json.corrupt-*")] == ["job.json.corrupt"]
    assert any("runs is not a whole number" in r.getMessage() for r in caplog.records)


@pytest.mark.inprocess
def test_a_lock_path_that_is_a_directory_or_an_unwritable_state_dir_are_73(tmp_path: Path) -> None:
    job = JobEntry(job_id="job", job_type="webhook_pull")
    (tmp_path / "job.lock").mkdir()
    with pytest.raises(CannotCreate, match=r"job\.lock") as caught:
        cli.run_scheduled(job=job, state_dir=tmp_path, args=flags(), work=lambda: RunSummary("job", "x"))
    assert caught.value.exit_code == 73 and not isinstance(caught.value, LockHeld)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(CannotCreate, match="not writable"):
            cli.run_scheduled(job=job, state_dir=locked, args=flags(), work=lambda: RunSummary("job", "x"))


def test_a_file_size_limit_is_a_storage_error_74_with_the_path(tmp_path: Path) -> None:
    # ulimit -f in a child process: a state write past the limit fails with EFBIG.
    code = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from nexus_jobs.core import state\n"
        "from nexus_jobs.core.errors import StorageError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "try:\n"
        f"    state.write_json_atomic(Path({str(tmp_path / 'big.json')!r}), {{'x': 'y' * 5000}})\n"
        "except StorageError as error:\n"
        "    print(error.exit_code, error)\n"
    )
    result = subprocess.run([script("python"), "-c", code], capture_output=True, text=True, check=False)
    assert result.stdout.startswith("74 state file ") and "big.json" in result.stdout, result.stdout + result.stderr
    assert not (tmp_path / "big.json").exists() and not list(tmp_path.glob(".big.*.tmp"))
    assert StorageError.exit_code == 74


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_a_stopped_upload_keeps_its_work_and_is_recorded_as_interrupted(
    tmp_path: Path, clean_env: dict[str, str], nexus: NexusDouble, signum: int, code: int, name: str
) -> None:
    tree = build_realistic(tmp_path / "openclaw")
    state_dir = tmp_path / "state"
    env = {
        **clean_env,
        "OPENCLAW_STATE_DIR": str(tree.root),
        "NEXUS_STATE_DIR": str(state_dir),
        "NEXUS_ENDPOINT": nexus.url,
        "NEXUS_API_KEY": nexus.api_key,
    }
    nexus.delay_seconds = 0.5  # each upload takes a while: there is always one in flight
    process = subprocess.Popen(
        [script("nexus-session-upload"), "--concurrency", "1"], env=env, stderr=subprocess.PIPE, text=True
    )
    # Three answers sent: the first has long been recorded by the job when the signal comes.
    wait_until(lambda: len(nexus.posts()) >= 3, what="three uploads answered")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    assert stderr.splitlines() == [f"nexus-session-upload: interrupted by {name}; the work done so far is saved"]
    record = json.loads((state_dir / "session-upload.json").read_text())
    assert (record["lastOutcome"], record["lastExitCode"]) == ("interrupted", code)
    assert "lastSuccessStartedAt" not in record
    markers = read_markers(env)["main"]
    kept = {name.removesuffix(".zst") for name in markers}  # markers name the file, uploads its content
    assert kept, "the answers received before the signal were saved"
    before = len(nexus.posts())
    # The next run sends only what was not recorded, and finishes; nothing is lost.
    nexus.delay_seconds = 0
    assert subprocess.run([script("nexus-session-upload")], env=env, check=False).returncode == 0
    again = [request.body["fileName"] for request in nexus.posts()[before:] if request.body]
    assert not set(again) & set(kept) and set(again) | set(kept) == set(tree.expected_uploads)


def _run_on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``argv`` with stderr on a pseudo-terminal (as an operator at a shell); its output."""
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, env={**env, "COLUMNS": "100"}, stdin=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return process.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_progress_bar_on_a_terminal_shows_bytes_rate_errors_and_ends_with_one_line(
    tmp_path: Path, clean_env: dict[str, str], verbose: bool
) -> None:
    tree = build_realistic(tmp_path / "openclaw")
    env = {**clean_env, "OPENCLAW_STATE_DIR": str(tree.root), "NEXUS_STATE_DIR": str(tmp_path / "state")}
    env["NEXUS_ENDPOINT"] = "embedded"
    code, output = _run_on_a_terminal([script("nexus-session-upload"), *(["-v"] if verbose else [])], env)
    assert code == 0, output
    total = len(tree.expected_uploads)
    assert "uploading: " in output and " files |" in output and "left, " in output and "error(s)" in output
    lines = [line for line in output.replace("\r", "\n").splitlines() if line.strip()]
    last = lines[-1 if not verbose else -2]
    assert last.startswith(f"uploading: {total}/{total} files, ") and "B in " in last and "0 error(s)" in last
    if verbose:
        assert lines[-1].startswith("nexus-session-upload: uploaded"), output


@pytest.mark.inprocess
def test_human_bytes() -> None:
    from nexus_jobs.cli.progress import human_bytes

    assert [human_bytes(n) for n in (0, 999, 1000, 2_500_000, 3e12)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "2.5 MB",
        "3000.0 GB",
    ]
