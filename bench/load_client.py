"""The gateway hop's load generator, in its own process so its CPU is not the bench's.

``python -m bench.load_client`` reads one JSON command per line on stdin and answers one JSON
line on stdout, so the bench can read the proxy's CPU time and memory between the steps:

    {"op": "open", "url": "ws://...", "conns": 50}       -> {"ok": true, "opened": 50, ...}
    {"op": "rtt", "seconds": 1.0, "size": 100}           -> round trips on every open connection
    {"op": "stream", "seconds": 2.0, "size": 4096}       -> backend -> client on the first one
    {"op": "close"}                                      -> {"ok": true}
    {"op": "quit"}                                       -> exits

Any failure answers ``{"ok": false, "error": "..."}`` and the process keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect

from .procs import raise_nofile_limit
from .stats import percentile

OPEN_CONCURRENCY = 64  # handshakes in flight at once: stays under every listen backlog
OPEN_TIMEOUT_S = 30.0
OP_TIMEOUT_S = 60.0  # on top of the op's own duration


class LoadClient:
    def __init__(self) -> None:
        self.conns: list[ClientConnection] = []

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        match command.get("op"):
            case "open":
                return await self.open(command["url"], int(command["conns"]))
            case "rtt":
                return await self.rtt(float(command["seconds"]), int(command["size"]))
            case "stream":
                return await self.stream(float(command["seconds"]), int(command["size"]))
            case "close":
                await self.close()
                return {"ok": True}
            case other:
                return {"ok": False, "error": f"unknown op {other!r}"}

    async def open(self, url: str, count: int) -> dict[str, Any]:
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one() -> ClientConnection:
            async with gate:
                return await connect(
                    url,
                    compression=None,
                    ping_interval=None,
                    max_size=None,
                    open_timeout=OPEN_TIMEOUT_S,
                )

        started = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        opened = [r for r in results if isinstance(r, ClientConnection)]
        self.conns.extend(opened)
        errors = [r for r in results if not isinstance(r, ClientConnection)]
        if errors:
            return {
                "ok": False,
                "opened": len(opened),
                "error": f"{len(errors)} of {count} connections failed: {errors[0]!r}",
            }
        return {"ok": True, "opened": len(opened), "seconds": time.perf_counter() - started}

    async def rtt(self, seconds: float, size: int) -> dict[str, Any]:
        """Every connection does send-then-receive round trips for ``seconds``."""
        if not self.conns:
            return {"ok": False, "error": "no open connection"}
        payload = "r" * size
        latencies_us: list[float] = []
        deadline = time.perf_counter() + seconds
        clock = time.perf_counter_ns

        async def loop(ws: ClientConnection) -> None:
            record = latencies_us.append
            while time.perf_counter() < deadline:
                sent = clock()
                await ws.send(payload)
                reply = await ws.recv()
                record((clock() - sent) / 1000.0)
                if len(reply) != size:
                    raise RuntimeError(f"echo returned {len(reply)} bytes, sent {size}")

        started = time.perf_counter()
        await asyncio.gather(*(loop(ws) for ws in self.conns))
        elapsed = time.perf_counter() - started
        return {
            "ok": True,
            "round_trips": len(latencies_us),
            "messages": 2 * len(latencies_us),  # each round trip crosses the proxy twice
            "seconds": elapsed,
            "round_trips_per_s": len(latencies_us) / elapsed,
            "p50_us": percentile(latencies_us, 50),
            "p99_us": percentile(latencies_us, 99),
        }

    async def stream(self, seconds: float, size: int) -> dict[str, Any]:
        if not self.conns:
            return {"ok": False, "error": "no open connection"}
        ws = self.conns[0]
        received = 0
        started = time.perf_counter()
        await ws.send(f"stream {size} {seconds}")
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                received += 1
                continue
            elapsed = time.perf_counter() - started
            sent = int(message.split()[1])
            break
        if sent != received:
            return {"ok": False, "error": f"backend sent {sent} messages, {received} arrived"}
        return {
            "ok": True,
            "messages": received,
            "seconds": elapsed,
            "messages_per_s": received / elapsed,
            "mb_per_s": received * size / elapsed / 1e6,
        }

    async def close(self) -> None:
        conns, self.conns = self.conns, []
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


async def serve_stdio() -> None:
    client = LoadClient()
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "":
                if not line:
                    return  # the bench went away
                continue
            command = json.loads(line)
            if command.get("op") == "quit":
                return
            try:
                # A proxy that loses a message would leave a round trip waiting forever.
                async with asyncio.timeout(OP_TIMEOUT_S + float(command.get("seconds", 0))):
                    answer = await client.handle(command)
            except TimeoutError:
                answer = {"ok": False, "error": f"{command.get('op')} did not finish in time"}
            except Exception as exc:  # noqa: BLE001 - no caller: the answer carries it
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        await client.close()


def main() -> int:
    raise_nofile_limit()
    uvloop.run(serve_stdio())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
