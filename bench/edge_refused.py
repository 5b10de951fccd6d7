"""Part of the edge scenario: what keyless clients cost a gateway that has tenants.

:attr:`RefusedParams.conns` connections at once upgrade on ``/ws/input`` without a key
(refused with 4401) and each then sends a ``message_bytes`` binary message (the re-audit's
attack: 60 x 16 MiB took a gateway from 53 to 941 MB). The gateway runs as it ships with
one tenant (``GATEWAY_API_KEY``), its input route on an echo backend; its RSS is sampled
every 20 ms from before the attack until every attacker's connection has ended. Goal:
the peak less than 64 MB above rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .procs import Proc, free_port, python_argv

__all__ = ["RefusedParams", "render", "run_edge_refused"]

MB = 1_000_000
MIB = 1024 * 1024
GOAL_MB = 64
KEY = "bench-refused-key-0123456789"


@dataclass(frozen=True)
class RefusedParams:
    conns: int = 60
    message_bytes: int = 16 * MIB
    chunk_bytes: int = 64 * 1024

    @classmethod
    def smoke(cls) -> RefusedParams:
        return cls(conns=4, message_bytes=MIB)


@dataclass
class _Attacker:
    sent: int = 0
    answer: str = ""  # the close code the gateway sent, "reset" or "eof"
    ended_s: float = 0.0  # from its upgrade to the end of its connection


async def _attack(port: int, params: RefusedParams, out: _Attacker) -> None:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /ws/input HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await reader.readuntil(b"\r\n\r\n")
        reading = asyncio.create_task(_read_to_end(reader))
        # One masked binary frame (mask 0) declaring the whole message, then its payload.
        writer.write(struct.pack("!BBQ", 0x82, 0x80 | 127, params.message_bytes) + bytes(4))
        chunk = bytes(params.chunk_bytes)
        with contextlib.suppress(ConnectionError, OSError):
            while out.sent < params.message_bytes and not reading.done():
                writer.write(chunk)
                await writer.drain()
                out.sent += len(chunk)
        data = await reading
        out.answer = str(struct.unpack("!H", data[2:4])[0]) if data[:1] == b"\x88" else "eof"
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        out.answer = out.answer or "reset"
    finally:
        out.ended_s = time.perf_counter() - started
        writer.close()


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def _measure(gateway: Proc, port: int, params: RefusedParams) -> dict[str, Any]:
    # Warm the refusal path once, so first-use allocations are not counted.
    await _attack(port, RefusedParams(conns=1, message_bytes=MIB), _Attacker())
    await asyncio.sleep(0.5)
    rest = gateway.rss_bytes()
    peak = rest
    attackers = [_Attacker() for _ in range(params.conns)]
    started = time.perf_counter()
    attack = asyncio.gather(*(_attack(port, params, a) for a in attackers))
    while not attack.done():
        peak = max(peak, gateway.rss_bytes())
        await asyncio.sleep(0.02)
    await attack
    took = time.perf_counter() - started
    peak = max(peak, gateway.rss_bytes())
    answers: dict[str, int] = {}
    for attacker in attackers:
        answers[attacker.answer] = answers.get(attacker.answer, 0) + 1
    return {
        "rest_mb": rest / MB,
        "peak_mb": peak / MB,
        "growth_mb": (peak - rest) / MB,
        "goal_mb": GOAL_MB,
        "meets_goal": (peak - rest) / MB < GOAL_MB,
        "seconds": took,
        "sent_mb_each_max": max(a.sent for a in attackers) / MB,
        "sent_mb_total": sum(a.sent for a in attackers) / MB,
        "closed_within_s_max": max(a.ended_s for a in attackers),
        "answers": answers,
    }


def run_edge_refused(work_dir: Path, params: RefusedParams) -> dict[str, Any]:
    """The gateway's RSS at rest and at its peak under the keyless attack."""
    backend_port, port = free_port(), free_port()
    backend = Proc(
        "refused-echo",
        python_argv("-m", "bench.echo_backend", "--port", str(backend_port)),
        work_dir,
    )
    config = work_dir / "refused-gateway.json"
    config.write_text(json.dumps({"logging": {"level": "warning", "format": "json"}}))
    env = {k: v for k, v in os.environ.items() if k != "AIVTUBER_CONFIG"}
    env["INPUT_HANDLER_URL"] = f"ws://127.0.0.1:{backend_port}"
    env["GATEWAY_API_KEY"] = KEY
    argv = ["services/gateway-python/main.py", "--config", str(config)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    gateway = Proc("refused-gateway", python_argv(*argv), work_dir, env=env)
    try:
        backend.start().wait_port(backend_port)
        gateway.start().wait_http(f"http://127.0.0.1:{port}/healthz")
        result = asyncio.run(_measure(gateway, port, params))
    finally:
        gateway.stop()
        backend.stop()
    return {"params": asdict(params), **result}


def render(result: dict[str, Any]) -> str:
    p = result["params"]
    verdict = "meets" if result["meets_goal"] else "misses"
    return (
        f"Keyless clients ({p['conns']} at once, each sending {p['message_bytes'] // MIB} MiB "
        "after its 4401): gateway RSS\n\n"
        "| at rest | peak | growth | sent per client (max) | longest connection |\n"
        "|---|---|---|---|---|\n"
        f"| {result['rest_mb']:.0f} MB | {result['peak_mb']:.0f} MB "
        f"| {result['growth_mb']:.1f} MB ({verdict} < {result['goal_mb']} MB) "
        f"| {result['sent_mb_each_max']:.2f} MB | {result['closed_within_s_max']:.2f} s |\n"
    )


if __name__ == "__main__":  # python -m bench.edge_refused [--smoke]: as JSON
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        chosen = RefusedParams.smoke() if "--smoke" in sys.argv else RefusedParams()
        outcome = run_edge_refused(Path(tmp), chosen)
        print(json.dumps(outcome, indent=2))
        print(render(outcome), file=sys.stderr)
