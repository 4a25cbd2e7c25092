"""The deployment files: systemd units pass ``systemd-analyze verify`` and carry the sandboxing
the README promises; ``crontab.example`` names every job with a valid schedule."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN_DIR

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
CONSOLE_SCRIPTS = ("nexus-session-upload", "nexus-webhook-pull", "nexus-jobs", "bsnexus-worker", "mqtt-job-worker")
SCHEDULED = ("nexus-session-upload", "nexus-webhook-pull", "nexus-jobs-run-due")
LONG_RUNNING = ("bsnexus-worker", "mqtt-job-worker")
INSTALLED_PREFIX = "/usr/local/bin/"


def unit_files() -> list[Path]:
    return sorted(UNITS.glob("*.service")) + sorted(UNITS.glob("*.timer"))


def parse(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_every_scheduled_job_has_a_service_and_a_timer() -> None:
    names = {path.name for path in unit_files()}
    for job in SCHEDULED:
        assert {f"{job}.service", f"{job}.timer"} <= names
    for worker in LONG_RUNNING:
        assert f"{worker}.service" in names


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """``verify`` insists that ExecStart= names an existing executable. The units name
    /usr/local/bin/<script> (where the README installs them); here each is pointed at the
    console script of this checkout instead, so verification passes on a fresh machine."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run bin/bootstrap --test (installs the systemd package)"
    for path in unit_files():
        text = path.read_text()
        for name in re.findall(re.escape(INSTALLED_PREFIX) + r"([\w-]+)", text):
            assert name in CONSOLE_SCRIPTS, f"{path.name}: {name} is not a console script of this package"
            assert (BIN_DIR / name).exists(), f"console script {name} is not installed in {BIN_DIR}"
        (tmp_path / path.name).write_text(text.replace(INSTALLED_PREFIX, f"{BIN_DIR}/"))
    copies = sorted(str(tmp_path / path.name) for path in unit_files())
    result = subprocess.run(
        [analyze, "verify", "--man=no", *copies],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # verify runs without a system manager; keep its own log chatter to real problems.
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_LOG_LEVEL": "warning", "LANG": "C.UTF-8"},
    )
    assert result.returncode == 0, result.stderr
    # verify only warns (exit 0) about unknown keys or unparsable values: any output is a defect.
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr + result.stdout


def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above is meaningful: a misspelt key makes verify speak."""
    timer = tmp_path / "typo.timer"
    timer.write_text(
        "[Unit]\nDescription=t\n[Timer]\nOnCalendar=hourly\nPersistant=true\n[Install]\nWantedBy=timers.target\n"
    )
    service = tmp_path / "typo.service"
    service.write_text(f"[Service]\nType=oneshot\nExecStart={BIN_DIR}/nexus-jobs status\n")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(timer)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_LOG_LEVEL": "warning"},
    )
    assert "Persistant" in result.stderr


@pytest.mark.parametrize("job", SCHEDULED)
def test_scheduled_units_are_sandboxed_oneshots(job: str) -> None:
    service = parse(UNITS / f"{job}.service")["Service"]
    assert service["Type"] == "oneshot"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "nexus-jobs" and "/var/lib/nexus-jobs" in service["ReadWritePaths"]
    assert service["EnvironmentFile"].lstrip("-").startswith("/etc/nexus-jobs/")
    assert service["ExecStart"].startswith(INSTALLED_PREFIX)
    timer = parse(UNITS / f"{job}.timer")["Timer"]
    assert timer["Persistent"] == "true" and timer["RandomizedDelaySec"] and timer["OnCalendar"]
    assert timer["Unit"] == f"{job}.service"


@pytest.mark.parametrize("worker", LONG_RUNNING)
def test_long_running_workers_restart_always(worker: str) -> None:
    unit = parse(UNITS / f"{worker}.service")
    assert unit["Service"]["Restart"] == "always"
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"
    assert unit["Service"]["NoNewPrivileges"] == "yes"
    assert unit["Service"]["ExecStart"].startswith(INSTALLED_PREFIX + worker)


@pytest.mark.parametrize("path", unit_files(), ids=lambda path: path.name)
def test_every_unit_option_is_explained_by_a_comment(path: Path) -> None:
    previous = ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if re.match(r"^[A-Za-z]+=", line):
            assert previous.startswith("#"), f"{path.name}:{number}: {line} has no comment above it"
        if line.strip():
            previous = line


def test_crontab_example_schedules_every_job() -> None:
    lines = (REPO / "crontab.example").read_text().splitlines()
    active = [line for line in lines if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    commented = [line.lstrip("# ") for line in lines if re.match(r"^#\s*[*0-9]", line)]
    seen: dict[str, str] = {}
    for line in active + commented:
        fields = line.split()
        schedule, command = fields[:5], fields[5:]
        assert all(re.fullmatch(r"[*0-9,/-]+", field) for field in schedule), line
        for word in command:
            if word in CONSOLE_SCRIPTS:
                seen[word] = " ".join(command)
                break
    assert set(seen) == set(CONSOLE_SCRIPTS), seen
    assert seen["bsnexus-worker"] == "bsnexus-worker run --duration 3300"
    assert seen["nexus-jobs"] == "nexus-jobs run-due"
    hourly = next(line for line in active if "bsnexus-worker" in line)
    assert hourly.split()[:2] == ["0", "*"]
    assert "PATH=" in "\n".join(lines) and "MAILTO=" in "\n".join(lines)
