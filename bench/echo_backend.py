"""The gateway hop's backend: echoes every message, or streams on command. Its own process.

``python -m bench.echo_backend --port P``; any path is accepted. A text message
``stream <size> <seconds>`` makes it send binary messages of ``size`` bytes as fast as the
connection takes them for ``seconds``, then the text ``done <count>``. Everything else comes
back unchanged (text as text, binary as binary).

uvloop, the websockets library, no permessage-deflate, no keepalive pings: the backend should
cost as little as possible so that the difference between the variants is the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .procs import raise_nofile_limit

STREAM_COMMAND = "stream "
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


async def handler(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            if isinstance(message, str) and message.startswith(STREAM_COMMAND):
                _, size, seconds = message.split()
                await stream(ws, int(size), float(seconds))
            else:
                await ws.send(message)


async def stream(ws: ServerConnection, size: int, seconds: float) -> None:
    payload = b"\x5a" * size
    count = 0
    deadline = time.perf_counter() + seconds
    # send() returns once the write buffer is below its high-water mark, so a slow proxy or
    # client slows this loop down instead of piling messages up in memory.
    while time.perf_counter() < deadline:
        for _ in range(16):  # read the clock less often than we send
            await ws.send(payload)
        count += 16
    await ws.send(f"done {count}")


async def serve_forever(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handler,
        host,
        port,
        compression=None,
        ping_interval=None,
        max_size=MAX_MESSAGE_BYTES,
        backlog=4096,
    ):
        await stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    uvloop.run(serve_forever(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
