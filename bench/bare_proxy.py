"""An optional anchor: the barest WebSocket proxy on the gateway's own stack. Its own process.

``python -m bench.bare_proxy --port P --backend ws://127.0.0.1:B`` (``./benchmark --bare``).
A raw ASGI app on uvicorn, configured exactly as the services are
(:func:`aivtuber_common.cli.uvicorn_config`: websockets-sansio, no permessage-deflate), and a
``websockets`` client toward the backend; two pumps, nothing else: no registry, metrics,
logging, limits or keepalive. ``gateway ÷ bare`` is then the cost of everything the gateway
adds to proxying (its target: a few percent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from aivtuber_common.cli import uvicorn_config

from .procs import raise_nofile_limit


def make_app(backend: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "websocket":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await receive()  # websocket.connect
        ws = await connect(
            backend + scope["path"], compression=None, ping_interval=None, max_size=None
        )
        await send({"type": "websocket.accept"})
        pump = asyncio.create_task(_backend_to_client(ws, send))
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                await ws.send(message["text"] if data is None else data)
        except ConnectionClosed:
            pass
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await ws.close()

    return app


async def _backend_to_client(ws: ClientConnection, send: Any) -> None:
    try:
        async for data in ws:
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})
    except ConnectionClosed:
        pass
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "websocket.close", "code": 1000})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="ws://host:port of the backend")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    config = uvicorn_config(make_app(args.backend), "127.0.0.1", args.port, "warning")
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
