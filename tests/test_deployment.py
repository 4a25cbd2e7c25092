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
def test_long_running_workers_restart_always_but_not_on_fatal_errors(worker: str) -> None:
    unit = parse(UNITS / f"{worker}.service")
    assert unit["Service"]["Restart"] == "always"
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"
    # A refused identity (77) or bad settings (78) cannot be fixed by restarting.
    assert unit["Service"]["RestartPreventExitStatus"].split() == ["77", "78"]
    assert unit["Service"]["NoNewPrivileges"] == "yes"
    assert unit["Service"]["ExecStart"].startswith(INSTALLED_PREFIX + worker)


def test_the_bsnexus_unit_pins_its_env_file() -> None:
    service = parse(UNITS / "bsnexus-worker.service")["Service"]
    pinned = service["ExecStart"].split("--env-file", 1)[1].split()[0]
    assert pinned.startswith("/var/lib/bsnexus-worker/") and "/var/lib/bsnexus-worker" in service["ReadWritePaths"]


def test_every_service_has_an_env_file_of_its_own() -> None:
    files = [parse(path)["Service"]["EnvironmentFile"].lstrip("-") for path in sorted(UNITS.glob("*.service"))]
    assert len(set(files)) == len(files), files
    assert all(path.startswith("/etc/nexus-jobs/") and path.endswith(".env") for path in files)


def test_the_upload_never_writes_home_directories() -> None:
    service = parse(UNITS / "nexus-session-upload.service")["Service"]
    assert service["ProtectHome"] == "read-only" and service["ReadWritePaths"] == "/var/lib/nexus-jobs"


@pytest.mark.parametrize("job", SCHEDULED)
def test_timers_keep_their_period_exact(job: str) -> None:
    timer = parse(UNITS / f"{job}.timer")["Timer"]
    assert timer["FixedRandomDelay"] == "true" and timer["RandomizedDelaySec"]


# Exposure levels of `systemd-analyze security --offline=yes` (0 best, 10 worst). One-shot
# jobs stay under 5 (measured: 1.4 upload, 1.6 webhook pull and run-due); the workers run
# arbitrary tools (claude, job steps) and keep system call filters off (measured: 3.8-3.9).
EXPOSURE_LIMIT = {"nexus-session-upload": 2.0, "nexus-webhook-pull": 2.0, "nexus-jobs-run-due": 2.0}
EXPOSURE_LIMIT.update({"bsnexus-worker": 4.5, "mqtt-job-worker": 4.5})


@pytest.mark.parametrize("unit", sorted(EXPOSURE_LIMIT))
def test_units_are_hardened_per_systemd_analyze_security(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(UNITS / f"{unit}.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_LOG_LEVEL": "warning", "LANG": "C.UTF-8"},
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= EXPOSURE_LIMIT[unit], result.stdout


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


def test_the_dockerfile_builds_what_the_compose_example_runs() -> None:
    """Docker cannot run here: the Dockerfile is checked statically. Every file it copies
    exists, it installs this package, runs as the Compose example's user, in exec form."""
    text = (REPO / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert instructions[0].startswith("FROM python:3.")
    for line in instructions:
        assert line.split()[0] in {"FROM", "RUN", "WORKDIR", "COPY", "USER", "ENV", "CMD"}, line
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    assert "pip install --no-cache-dir ." in text
    assert "USER 1000:1000" in instructions and 'user: "1000:1000"' in (REPO / "README.md").read_text()
    assert instructions[-1] == 'CMD ["mqtt-job-worker", "--verbose"]'


def test_readme_reads_top_down_for_an_operator() -> None:
    from nexus_jobs.core.exits import Exit

    text = (REPO / "README.md").read_text()
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    order = ["Two commands", "Install", "From clone to scheduled jobs", "The commands", "Configuration"]
    order += ["Troubleshooting", "Where the logs go", "What was uploaded or rejected", "Re-uploading a file"]
    order += ["Upgrade", "Uninstall"]
    assert [heading for heading in headings if heading in order] == order
    assert "bin/demo" in text and "bin/test" in text and (REPO / "bin" / "demo").exists()
    table = text[text.index("## Troubleshooting") : text.index("## Where the logs go")]
    for code in Exit:
        assert f"| {int(code)} |" in table or f"{int(code)} / " in table or f"/ {int(code)} |" in table, code
    # Installing and "from clone" use the same paths as the units and crontab.
    assert "/opt/nexus-jobs" in text and "/usr/local/bin/" in text
    exit_codes = (REPO / "docs" / "exit-codes.md").read_text()
    assert all(f"| {int(code)} | `{code.word}` |" in exit_codes for code in Exit)
