"""Bad-input corpora, one file per entry point: ``<entry point>.jsonl``, one case a line.

Every case is an object with at least ``case`` (a short unique name), ``exit`` (the expected
exit code), ``message`` (a fragment the one-line error must contain; empty when the run must
be quiet) and ``check`` (the name of the "nothing lost" check the test applies after the run).
What ``input`` holds, and how it is fed to the command, is up to the test of that entry point;
JSON that cannot be written literally (a document nested 100,000 deep, bytes that are not
UTF-8) is described by a small generator spec the test expands (see each test module).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REQUIRED = ("case", "exit", "message", "check")


def cases(entry_point: str) -> list[Any]:
    """The cases of ``<entry_point>.jsonl`` as pytest params, with their names as test ids."""
    rows = []
    for number, line in enumerate((HERE / f"{entry_point}.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [key for key in REQUIRED if key not in row]
        if missing:
            raise ValueError(f"{entry_point}.jsonl line {number}: missing {', '.join(missing)}")
        rows.append(pytest.param(row, id=row["case"]))
    return rows


def deep_json(depth: int, *, inner: str = "[", outer: str = "]") -> str:
    """A JSON text nested ``depth`` deep (``[[[...]]]``), as hostile producers send it."""
    return inner * depth + outer * depth
