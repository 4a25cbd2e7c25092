"""The shared state module: atomic private files, corrupt files moved aside, locks, checkpoints."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_jobs.core import state
from nexus_jobs.core.errors import ConfigError, LockHeld


def test_atomic_write_is_private_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    state.write_json_atomic(path, {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"version": state.STATE_VERSION, "a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"], "no temporary file is left behind"


def test_corrupt_file_is_moved_aside_only_when_repairing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "job.json"
    path.write_text("{torn")
    assert state.read_json(path, repair=False) is None and path.exists()
    assert state.read_json(path, repair=True, consequence="it starts afresh") is None
    assert not path.exists()
    aside = list(tmp_path.glob("job.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{torn"
    assert "it starts afresh" in caplog.text


def test_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text('{"version": 2}')
    with pytest.raises(ConfigError, match="newer nexus-jobs"):
        state.read_json(path, repair=True)
    assert path.read_text() == '{"version": 2}'


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import filelock, sys, time\n"
            f"lock = filelock.FileLock({str(tmp_path / 'job.lock')!r}); lock.acquire()\n"
            "print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match="already running"), state.job_lock(tmp_path, "job"):
            pass
        assert state.lock_is_held(tmp_path, "job")
    finally:
        holder.kill()
        holder.wait()
    assert not state.lock_is_held(tmp_path, "job")
    with state.job_lock(tmp_path, "job"):
        pass


def test_stale_temporary_files_are_removed_under_the_lock(tmp_path: Path) -> None:
    stale = tmp_path / ".job.markers.abc123.tmp"
    stale.write_text("half written")
    other = tmp_path / ".other-job.abc.tmp"
    other.write_text("not ours")
    with state.job_lock(tmp_path, "job"):
        assert not stale.exists() and other.exists()


def test_checkpointer_batches_writes(tmp_path: Path) -> None:
    path = tmp_path / "job.markers.json"
    checkpoints = state.Checkpointer(path, interval_seconds=3600, every_items=10)
    document: dict[str, object] = {"items": []}
    for number in range(25):
        document["items"] = list(range(number + 1))
        checkpoints.changed(document)
    assert checkpoints.saves == 2 and json.loads(path.read_text())["items"] == list(range(20))
    checkpoints.flush(document)
    assert checkpoints.saves == 3 and json.loads(path.read_text())["items"] == list(range(25))
    checkpoints.flush(document)
    assert checkpoints.saves == 3, "nothing pending: no write"
