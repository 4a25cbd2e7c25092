"""Hostile configuration (tests/corpus/config.jsonl): every case is a configuration error
(78) with a one-line message naming what to fix, at load in the job that reads it, in
``nexus-jobs check-config`` and never a crash (70) in ``nexus-jobs status``; the state
directory is left exactly as it was.

A case holds ``config`` (the config file's text, written as is: it may hold ``NaN``) or
``generate`` (``{"deep": N}``: a document nested N deep; ``{"bytes": HEX}``: raw bytes),
and optionally ``env`` (environment variables), ``envFile`` / ``envFileBytes`` (the
``.env`` beside the config) and ``also`` (a second fragment the same report must hold).
These run in the pytest process, calling each command's ``main(argv)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nexus_jobs.control import command as nexus_jobs
from nexus_jobs.core.exits import Exit
from nexus_jobs.session_upload import command as session_upload
from nexus_jobs.webhook_pull import command as webhook_pull
from tests import corpus

CASES = corpus.cases("config")
pytestmark = pytest.mark.inprocess


def _config_bytes(case: dict[str, Any]) -> bytes:
    generate = case.get("generate") or {}
    if "deep" in generate:
        depth = generate["deep"]
        return ('{"jobs": ' + corpus.deep_json(depth) + "}").encode()
    if "bytes" in generate:
        return bytes.fromhex(generate["bytes"])
    return str(case["config"]).encode("utf-8")


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    for name in list(__import__("os").environ):
        if name.startswith(("NEXUS_", "OPENCLAW_", "XDG_", "STATE_DIRECTORY", "BSNEXUS_", "MQTT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "openclaw" / "agents" / "main" / "sessions").mkdir(parents=True)
    (tmp_path / "openclaw" / "workspace").mkdir()
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(tmp_path / "openclaw"))
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    for job in ("up", "pull", "session-upload"):
        (state_dir / f"{job}.json").write_text(json.dumps({"version": 1, "runs": 2, "lastOutcome": "success"}))
    return {"config": tmp_path / "etc" / "config.json", "state": state_dir}


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("case", CASES)
def test_hostile_config_is_a_config_error_everywhere(
    case: dict[str, Any], setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = setup["config"]
    config_path.parent.mkdir()
    config_path.write_bytes(_config_bytes(case))
    if "envFile" in case:
        (config_path.parent / ".env").write_text(case["envFile"])
    if "envFileBytes" in case:
        (config_path.parent / ".env").write_bytes(bytes.fromhex(case["envFileBytes"]))
    for name, value in (case.get("env") or {}).items():
        monkeypatch.setenv(name, value)
    before = _snapshot(setup["state"])
    common = ["--config", str(config_path), "--state-dir", str(setup["state"])]
    job = webhook_pull if "webhook_pull" in str(case.get("config")) else session_upload

    for label, call in (
        ("job", lambda: job.main([*common, "--force"])),
        ("check-config", lambda: nexus_jobs.main(["check-config", *common])),
        ("job --json", lambda: job.main([*common, "--force", "--json"])),
    ):
        code = call()
        out, err = capsys.readouterr()
        assert code == case["exit"], (label, code, out, err)
        report = out + err
        assert case["message"] in report, (label, report)
        if case.get("also"):
            assert case["also"] in report, (label, report)
        assert "Traceback" not in report
        assert "internal error" not in report
        for secret in (case.get("env") or {}).values():
            assert secret not in report
        if label == "job --json":
            document = json.loads(out)
            assert (document["outcome"], document["exitCode"]) == ("config", Exit.CONFIG)
        elif label == "job":
            assert len(err.strip().splitlines()) <= 3, err

    code = nexus_jobs.main(["status", *common])
    out, err = capsys.readouterr()
    assert code in (Exit.OK, Exit.CONFIG), (code, out, err)
    assert "internal error" not in out + err
    assert case["check"] == "state-untouched"
    assert _snapshot(setup["state"]) == before
