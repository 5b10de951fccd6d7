"""Part of the edge scenario: the gateway's RSS while clients try to make it hold memory.

Two attacks, each from :attr:`EdgeMemoryParams.conns` connections held open together:

- fragments: each connection upgrades on ``/ws/input`` and sends an unfinished fragmented
  message of up to ``fragment_bytes`` (the final frame never comes);
- headers: each connection sends a request head of up to ``header_bytes`` that never ends.

The gateway runs as it ships (default routes, the input route pointed at the echo backend
through ``INPUT_HANDLER_URL``); its RSS is read before and while the attackers hold their
connections. :func:`run_edge_memory` is the benchmark's entry; the attack clients are
shared with ``tests/test_gateway_bounds.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from .procs import Proc, free_port, python_argv

__all__ = [
    "AttackResult",
    "EdgeMemoryParams",
    "fragment_attack",
    "gateway_under_attack",
    "header_attack",
    "run_edge_memory",
]

MB = 1_000_000
MIB = 1024 * 1024


@dataclass(frozen=True)
class EdgeMemoryParams:
    conns: int = 30
    fragment_bytes: int = 15 * MB  # the attack: 30 x 15 MB held
    header_bytes: int = 10 * MB  # and 30 x 10 MB header blocks
    chunk_bytes: int = 64 * 1024
    settle_s: float = 1.0

    @classmethod
    def quick(cls) -> EdgeMemoryParams:
        return cls()

    @classmethod
    def smoke(cls) -> EdgeMemoryParams:
        return cls(conns=3, fragment_bytes=2 * MIB, header_bytes=64 * 1024, settle_s=0.1)


@dataclass
class AttackResult:
    """What the attackers saw: how many connections the gateway cut, how much they sent."""

    conns: int = 0
    closed_by_gateway: int = 0
    sent_bytes: int = 0
    answers: list[str] = field(default_factory=list)  # close codes or HTTP status lines


@contextlib.asynccontextmanager
async def fragment_attack(
    url: str, conns: int, total_bytes: int, chunk_bytes: int = 64 * 1024
) -> AsyncIterator[AttackResult]:
    """Hold ``conns`` connections, each with an unfinished fragmented binary message of up
    to ``total_bytes`` sent in fragments of ``chunk_bytes``; closed on exit."""
    result = AttackResult(conns=conns)
    writers: list[asyncio.StreamWriter] = []
    try:
        await asyncio.gather(
            *(_fragments(url, total_bytes, chunk_bytes, result, writers) for _ in range(conns))
        )
        yield result
    finally:
        for writer in writers:
            writer.close()


@contextlib.asynccontextmanager
async def header_attack(
    host: str, port: int, conns: int, total_bytes: int, chunk_bytes: int = 64 * 1024
) -> AsyncIterator[AttackResult]:
    """Hold ``conns`` connections, each having sent a request head of up to ``total_bytes``
    that never ends (one header line growing); closed on exit."""
    result = AttackResult(conns=conns)
    writers: list[asyncio.StreamWriter] = []
    try:
        await asyncio.gather(
            *(_header(host, port, total_bytes, chunk_bytes, result, writers) for _ in range(conns))
        )
        yield result
    finally:
        for writer in writers:
            writer.close()


async def _fragments(
    url: str,
    total_bytes: int,
    chunk_bytes: int,
    result: AttackResult,
    writers: list[asyncio.StreamWriter],
) -> None:
    uri = parse_uri(url)
    reader, writer = await asyncio.open_connection(uri.host, uri.port)
    writers.append(writer)
    protocol = ClientProtocol(uri, max_size=None)
    protocol.send_request(protocol.connect())
    writer.write(b"".join(protocol.data_to_send()))
    while protocol.state is State.CONNECTING:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the gateway closed the connection during the handshake")
        protocol.receive_data(data)
    if protocol.handshake_exc is not None:
        raise protocol.handshake_exc
    # The gateway's answer (a close frame) arrives while we write: read it on the side.
    reading = asyncio.create_task(_read_all(reader, protocol))
    chunk = os.urandom(chunk_bytes)
    sent = 0
    dropped = False
    try:
        while sent < total_bytes and protocol.state is State.OPEN and not reading.done():
            if sent == 0:
                protocol.send_binary(chunk, fin=False)
            else:
                protocol.send_continuation(chunk, fin=False)
            writer.write(b"".join(protocol.data_to_send()))
            await writer.drain()
            sent += len(chunk)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reading), 0.5)
    except (ConnectionError, OSError):
        dropped = True  # the gateway dropped the connection
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await reading
    result.sent_bytes += sent
    if protocol.close_rcvd is not None:
        result.closed_by_gateway += 1
        result.answers.append(str(protocol.close_rcvd.code))
    elif dropped or (reading.done() and not reading.cancelled()):
        result.closed_by_gateway += 1
        result.answers.append("reset" if dropped or reading.exception() else "eof")


async def _read_all(reader: asyncio.StreamReader, protocol: ClientProtocol) -> None:
    while data := await reader.read(65536):
        protocol.receive_data(data)
    protocol.receive_eof()


async def _header(
    host: str,
    port: int,
    total_bytes: int,
    chunk_bytes: int,
    result: AttackResult,
    writers: list[asyncio.StreamWriter],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writers.append(writer)
    writer.write(
        b"GET /ws/input HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nX-Padding: "
    )
    answer = asyncio.create_task(reader.readline())
    chunk = b"a" * chunk_bytes
    sent = 0
    try:
        while sent < total_bytes and not answer.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(answer), 0.5)
    except (ConnectionError, OSError):
        pass  # the gateway dropped the connection
    finally:
        answer.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await answer
    result.sent_bytes += sent
    done = answer.done() and not answer.cancelled() and answer.exception() is None
    line = answer.result() if done else b""
    if line:
        result.closed_by_gateway += 1
        result.answers.append(line.decode("latin-1").strip())


@contextlib.contextmanager
def gateway_under_attack(work_dir: Path) -> Any:
    """An echo backend and a gateway as it ships (its input route pointed at the echo
    backend); yields (gateway Proc, port). Both stopped on exit."""
    backend_port, port = free_port(), free_port()
    backend = Proc(
        "edge-echo", python_argv("-m", "bench.echo_backend", "--port", str(backend_port)), work_dir
    )
    config = work_dir / "edge-gateway.json"
    config.write_text(json.dumps({"logging": {"level": "warning", "format": "json"}}))
    env = {k: v for k, v in os.environ.items() if k != "AIVTUBER_CONFIG"}
    env["INPUT_HANDLER_URL"] = f"ws://127.0.0.1:{backend_port}"
    argv = ["services/gateway-python/main.py", "--config", str(config)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    gateway = Proc("edge-gateway", python_argv(*argv), work_dir, env=env)
    try:
        backend.start().wait_port(backend_port)
        gateway.start().wait_http(f"http://127.0.0.1:{port}/healthz")
        yield gateway, port
    finally:
        gateway.stop()
        backend.stop()


async def _measure(gateway: Proc, port: int, p: EdgeMemoryParams) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/ws/input"
    # Warm up the paths the attacks take, so that first-use allocations are not counted.
    async with fragment_attack(url, 2, 64 * 1024, p.chunk_bytes):
        pass
    async with header_attack("127.0.0.1", port, 2, 64 * 1024, p.chunk_bytes):
        pass
    await asyncio.sleep(p.settle_s)
    out: dict[str, Any] = {"baseline_mb": gateway.rss_bytes() / MB}
    started = time.perf_counter()
    async with fragment_attack(url, p.conns, p.fragment_bytes, p.chunk_bytes) as fragments:
        await asyncio.sleep(p.settle_s)
        out["fragments_mb"] = gateway.rss_bytes() / MB
    out["fragments_seconds"] = time.perf_counter() - started
    async with header_attack("127.0.0.1", port, p.conns, p.header_bytes, p.chunk_bytes) as heads:
        await asyncio.sleep(p.settle_s)
        out["headers_mb"] = gateway.rss_bytes() / MB
    out["fragments"] = asdict(fragments)
    out["headers"] = asdict(heads)
    return out


def run_edge_memory(work_dir: Path, params: EdgeMemoryParams) -> dict[str, Any]:
    """Gateway RSS (MB) at rest, under the fragment attack and under the header attack."""
    with gateway_under_attack(work_dir) as (gateway, port):
        result = asyncio.run(_measure(gateway, port, params))
    result["params"] = asdict(params)
    return result


if __name__ == "__main__":  # python -m bench.edge_memory: the quick run, as JSON
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        quick = "--smoke" not in sys.argv
        params = EdgeMemoryParams.quick() if quick else EdgeMemoryParams.smoke()
        print(json.dumps(run_edge_memory(Path(tmp), params), indent=2))
