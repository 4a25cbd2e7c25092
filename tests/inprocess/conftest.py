"""Running a console script's ``main(argv)`` in the test process, as its process would run:
a clean environment with a private HOME, a working directory, and what it printed."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# Variables a developer's shell may carry that would change what a command does.
_FOREIGN_PREFIXES = ("NEXUS_", "BSNEXUS_", "MQTT_", "OPENCLAW_", "WORKER_ID", "JOBS_ROOT", "STATE_DIRECTORY", "XDG_")


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


Main = Callable[[Sequence[str] | None], int]


class Runner:
    def __init__(self, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.home = home
        self._monkeypatch = monkeypatch
        self._capsys = capsys

    def setenv(self, **values: str) -> None:
        for key, value in values.items():
            self._monkeypatch.setenv(key, value)

    def __call__(self, main: Main, *argv: str) -> Ran:
        self._capsys.readouterr()  # what came before this run is not its output
        try:
            code = main(list(argv))
        except SystemExit as stop:  # argparse's --help, --version and usage errors
            code = stop.code if isinstance(stop.code, int) else 2
        out, err = self._capsys.readouterr()
        return Ran(code, out, err)


@pytest.fixture
def run_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Runner:
    """Call ``run_main(module.main, *argv)``: the command runs in a private HOME (its working
    directory too) with none of the operator's nexus-jobs variables."""
    for key in list(os.environ):
        if key.startswith(_FOREIGN_PREFIXES):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    return Runner(home, monkeypatch, capsys)
