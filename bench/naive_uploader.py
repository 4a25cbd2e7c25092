"""The baseline of P1(a): the seed's design, sequential, one new connection and one whole-file
read per transcript. Run: python bench/naive_uploader.py URL SESSIONS_DIR"""

from __future__ import annotations

import sys
from pathlib import Path

import requests


def main(url: str, sessions_dir: Path) -> None:
    for path in sorted(sessions_dir.iterdir()):
        content = path.read_bytes().decode("utf-8")
        response = requests.post(
            url + "/sessions",
            json={"agentId": "bench", "sessionId": path.name[:36], "transcript": content},
            headers={"x-functions-key": "bench-key"},
            timeout=60,
        )
        response.raise_for_status()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
