"""The baseline of P1(b): a raw keep-alive transfer of the same request bodies over one
``http.client`` connection: read each file, build its body, send it, read the answer.

With ``--prebuilt`` every body is built before the clock starts and the script prints the
seconds of the transfer alone: the network ceiling, reported for information.
Run: python bench/raw_transfer.py PORT SESSIONS_DIR [--prebuilt]"""

from __future__ import annotations

import hashlib
import http.client
import json
import sys
import time
from pathlib import Path


def body(path: Path) -> bytes:
    content = path.read_bytes()
    return json.dumps(
        {
            "agentId": "bench",
            "sessionId": path.name[:36],
            "transcript": content.decode("utf-8"),
            "fileName": path.name,
            "archiveReason": "reset",
            "sha256": hashlib.sha256(content).hexdigest(),
            "bytes": len(content),
        },
        ensure_ascii=False,
    ).encode("utf-8")


def main(port: int, sessions_dir: Path, prebuilt: bool) -> None:
    paths = sorted(sessions_dir.iterdir())
    bodies = [body(path) for path in paths] if prebuilt else None
    connection = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json", "x-functions-key": "bench-key"}
    started = time.perf_counter()
    for index, path in enumerate(paths):
        connection.request("POST", "/sessions", body=bodies[index] if bodies else body(path), headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"receiver answered {response.status}")
    print(f"{time.perf_counter() - started:.6f}")


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), prebuilt="--prebuilt" in sys.argv[3:])
