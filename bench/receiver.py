"""A minimal keep-alive HTTP receiver for benchmarks: reads each request body, optionally
waits (as a backend across a WAN does), and answers 200 in one write with TCP_NODELAY set,
so Nagle's algorithm and delayed ACKs do not add ~40 ms to every keep-alive request.

Run: python bench/receiver.py PORT DELAY_SECONDS
"""

from __future__ import annotations

import asyncio
import socket
import sys

ANSWER = b'{"status":"ok"}'
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_seconds: float) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            remaining = length
            while remaining:
                chunk = await reader.read(min(remaining, 1 << 20))
                if not chunk:
                    return
                remaining -= len(chunk)
            if delay_seconds:
                await asyncio.sleep(delay_seconds)
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, delay_seconds: float) -> None:
    server = await asyncio.start_server(
        lambda reader, writer: serve_connection(reader, writer, delay_seconds), "127.0.0.1", port, limit=1 << 20
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
