"""The one child-process runner (core.processes), the one environment policy for children
(core.secrets.child_environment) and the one stop-signal helper (core.stopping), against real
processes: groups, grandchildren, daemons that leave the group, a parent killed with SIGKILL."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nexus_jobs.core import processes, secrets
from nexus_jobs.core.config import Option
from nexus_jobs.core.exits import Exit
from nexus_jobs.core.stopping import StopSignals
from tests.conftest import wait_until

OPTION_MODULES = (
    "nexus_jobs.nexus.settings",
    "nexus_jobs.session_upload.command",
    "nexus_jobs.webhook_pull.command",
    "nexus_jobs.bsnexus.settings",
    "nexus_jobs.mqtt_worker.settings",
    "nexus_jobs.cli.frame",
)


def _options_of(module_name: str) -> list[Option]:
    found: list[Option] = []
    for value in vars(importlib.import_module(module_name)).values():
        candidates = value if isinstance(value, (tuple, list)) else (value,)
        found.extend(item for item in candidates if isinstance(item, Option))
    return found


def gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def read_pid(path: Path) -> int:
    return int(str(wait_until(lambda: path.exists() and path.read_text().strip(), what=str(path))))


# --- the environment policy ------------------------------------------------------------


def test_every_secret_option_is_kept_from_children() -> None:
    secret_variables = {
        option.env for module in OPTION_MODULES for option in _options_of(module) if option.secret and option.env
    }
    assert secret_variables == secrets.SECRET_VARIABLES


def test_child_environment_drops_secrets_and_adds_what_the_job_passes() -> None:
    secrets.register_secret("registered-value-1234")
    parent = {
        "PATH": "/usr/bin",
        "NEXUS_API_KEY": "k",
        "OPENCLAW_HOOKS_TOKEN": "t",
        "BSNEXUS_WORKER_TOKEN": "w",
        "BSNEXUS_REGISTRATION_TOKEN": "r",
        "MQTT_PASSWORD": "p",
        "BSNEXUS_REDIS_URL": "redis://:hunter2@db:6379/0",
        "MQTT_URL": "mqtt://user:pw@broker:1883",
        "PLAIN_MQTT_URL": "mqtt://broker:1883",
        "COPY_OF_A_SECRET": "prefix-registered-value-1234",
        "ANTHROPIC_API_KEY": "the executor's own key",
    }
    child = secrets.child_environment({"JOB_VAR": "1", "PATH": "/opt/bin"}, parent=parent)
    assert child == {
        "PATH": "/opt/bin",
        "PLAIN_MQTT_URL": "mqtt://broker:1883",
        "ANTHROPIC_API_KEY": "the executor's own key",
        "JOB_VAR": "1",
    }


def test_a_child_does_not_see_the_secrets_of_its_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_API_KEY", "nexus-key-in-the-environment")
    monkeypatch.setenv("BSNEXUS_REDIS_URL", "rediss://:pw-of-redis@db")
    monkeypatch.setenv("HARMLESS", "yes")
    finished = processes.run(["env"], env={"PASSED": "by the job"})
    assert finished.ok
    assert "nexus-key" not in finished.output and "pw-of-redis" not in finished.output
    assert "HARMLESS=yes" in finished.output and "PASSED=by the job" in finished.output
    assert f"{processes.TAG_VARIABLE}=" in finished.output


# --- running, capturing, stdin -----------------------------------------------------------


def test_stdin_in_output_out_and_output_redacted() -> None:
    secrets.register_secret("s3cret-in-output")
    finished = processes.run(
        ["sh", "-c", "cat; echo 'err: s3cret-in-output' >&2; exit 3"], stdin=b"the item s3cret-in-output\n"
    )
    assert (finished.exit_code, finished.ended_by, finished.ok) == (3, "", False)
    assert finished.output == "the item ***\n"
    assert finished.last_error_lines() == "err: ***"


def test_captured_output_is_bounded() -> None:
    finished = processes.run(
        ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a; head -c 300000 /dev/zero | tr '\\0' b >&2; echo END >&2"],
        capture_limit_bytes=1000,
    )
    assert finished.output.startswith("a" * 1000) and "output cut at 1000 bytes" in finished.output
    assert finished.errors.startswith("[output cut") and finished.errors.endswith("END\n")
    assert len(finished.errors) < 1100


def test_output_to_a_log_file(tmp_path: Path) -> None:
    log_path = tmp_path / "job.log"
    with open(log_path, "ab", buffering=0) as log:
        finished = processes.run(["sh", "-c", "echo out; echo err >&2"], log=log)
    assert finished.ok and finished.output == "" and finished.errors == ""
    assert log_path.read_text() == "out\nerr\n"


def test_a_large_input_to_a_child_that_does_not_read_it_times_out() -> None:
    finished = processes.run(["sleep", "1000"], stdin=b"x" * 5_000_000, timeout_seconds=0.5, grace_seconds=0.5)
    assert (finished.ended_by, finished.exit_code) == (processes.TIMEOUT, processes.TIMEOUT_EXIT_CODE)


def test_a_program_that_cannot_start_is_one_line() -> None:
    with pytest.raises(processes.CannotStart, match="cannot start 'no-such-program-here'"):
        processes.run(["no-such-program-here"])
    with pytest.raises(processes.CannotStart, match="No such file or directory"):
        processes.run(["true"], cwd="/no/such/directory")


# --- groups, grandchildren, daemons ------------------------------------------------------


def test_a_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    script = f"sleep 1000 & echo $! > {tmp_path}/grandchild; wait"
    finished = processes.run(["sh", "-c", script], timeout_seconds=0.5, grace_seconds=1.0)
    assert finished.ended_by == processes.TIMEOUT
    wait_until(lambda: gone(read_pid(tmp_path / "grandchild")), what="the grandchild to die")


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    stop = {"now": False}
    ready = tmp_path / "ready"

    def should_stop() -> bool:
        stop["now"] = stop["now"] or ready.exists()
        return stop["now"]

    finished = processes.run(
        ["sh", "-c", f"trap '' TERM; touch {ready}; while :; do sleep 0.05; done"],
        should_stop=should_stop,
        grace_seconds=0.3,
    )
    assert finished.ended_by == processes.STOP
    assert finished.exit_code == 128 + signal.SIGKILL


def test_what_a_child_leaves_behind_dies_with_it_even_a_daemon(tmp_path: Path) -> None:
    # The daemon writes its own pid once it has left the group (setsid may fork first).
    daemon_script = f"echo $$ > {tmp_path}/daemon; exec sleep 1000"
    script = f"sleep 1000 & echo $! > {tmp_path}/background; setsid -f sh -c '{daemon_script}'; "
    script += f"while [ ! -s {tmp_path}/daemon ]; do sleep 0.01; done"
    assert processes.run(["sh", "-c", script]).ok
    background, daemon = read_pid(tmp_path / "background"), read_pid(tmp_path / "daemon")
    assert os.getsid(daemon) == daemon, "the daemon left the child's session and group"
    wait_until(lambda: gone(background) and gone(daemon), what="the background process and the daemon to die")


def test_kept_leftovers_live_until_the_job_sweeps_them(tmp_path: Path) -> None:
    tag = processes.new_tag()
    first = processes.run(["sh", "-c", f"sleep 1000 & echo $! > {tmp_path}/daemon"], tag=tag, keep_leftovers=True)
    daemon = read_pid(tmp_path / "daemon")
    second = processes.run(["sh", "-c", f"kill -0 {daemon}"], tag=tag, keep_leftovers=True)
    assert first.ok and second.ok, "the second step sees the first step's daemon"
    assert processes.sweep(processes.Child(group_id=0, tag=tag)) >= 1
    wait_until(lambda: gone(daemon), what="the daemon to die")


# --- a worker killed with SIGKILL --------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from nexus_jobs.core import processes
    where = Path(sys.argv[1])
    script = f"sleep 1000 & echo $! > {where}/grandchild; echo $$ > {where}/child; wait"
    processes.run(["sh", "-c", script], record=processes.GroupRecord(where / "children.json"))
    """
)


def test_a_killed_workers_child_dies_and_its_successor_kills_the_rest(tmp_path: Path) -> None:
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)])
    try:
        child, grandchild = read_pid(tmp_path / "child"), read_pid(tmp_path / "grandchild")
        assert (tmp_path / "children.json").exists()
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        wait_until(lambda: gone(child), what="the child to die with its worker (PR_SET_PDEATHSIG)")
        assert not gone(grandchild), "a grandchild outlives a killed worker until the successor starts"
        assert processes.GroupRecord(tmp_path / "children.json").kill_leftovers() >= 1
        wait_until(lambda: gone(grandchild), what="the successor to kill the grandchild")
        assert not (tmp_path / "children.json").exists()
    finally:
        worker.kill()
        worker.wait()


def test_a_record_that_is_unreadable_or_names_nothing_is_harmless(tmp_path: Path) -> None:
    record = processes.GroupRecord(tmp_path / "children.json")
    assert record.kill_leftovers() == 0
    (tmp_path / "children.json").write_text("[" * 100_000)
    assert record.kill_leftovers() == 0 and not (tmp_path / "children.json").exists()
    record.remember(processes.Child(group_id=2**22 + 12345, tag="no-process-has-this-tag"))
    assert record.kill_leftovers() == 0 and not (tmp_path / "children.json").exists()


# --- stop signals ------------------------------------------------------------------------


def test_stop_signals_set_flags_and_remember_the_first() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        assert (signals.requested, signals.now, signals.exit_code) == (False, False, None)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: signals.requested, what="the first signal")
        assert (signals.now, signals.name, signals.exit_code) == (False, "SIGTERM", Exit.TERMINATED)
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: signals.now, what="the second signal")
        assert signals.exit_code == Exit.TERMINATED, "the first signal decides the exit code"
    assert signal.getsignal(signal.SIGTERM) == previous


def test_sigint_first_reports_130() -> None:
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: signals.requested, what="the signal")
        assert signals.exit_code == Exit.INTERRUPTED == 130


def test_a_child_that_cannot_be_recorded_is_not_left_running(tmp_path: Path) -> None:
    record = processes.GroupRecord(tmp_path / "no-such-directory" / "children.json")
    with pytest.raises(processes.CannotStart, match="cannot record the child"):
        processes.run(["sh", "-c", f"echo $$ > {tmp_path}/pid; exec sleep 1000"], record=record)
    if (tmp_path / "pid").exists():
        pid = int((tmp_path / "pid").read_text())
        wait_until(lambda: gone(pid), what="the unrecorded child to be killed")


def test_kept_leftovers_stay_recorded_until_the_caller_forgets_them(tmp_path: Path) -> None:
    record = processes.GroupRecord(tmp_path / "children.json")
    tag = processes.new_tag()
    step = f"sleep 1000 & echo $! > {tmp_path}/daemon"
    assert processes.run(["sh", "-c", step], tag=tag, keep_leftovers=True, record=record).ok
    assert record.path.exists(), "a worker killed between two steps must leave the daemon findable"
    daemon = read_pid(tmp_path / "daemon")
    assert record.kill_leftovers() == 1
    wait_until(lambda: gone(daemon), what="the daemon to die")
