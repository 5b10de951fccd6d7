"""Scenario ``edge``, the authentication part: what credentials cost at the gateway.

Two gateways in front of one echo backend, each its own process: one anonymous (no tenant:
the unauthenticated gateway), one with tenants (``limits.max_connections`` raised so the
quota never refuses). Each round measures, one after the other on each variant:

- connect: sequential WebSocket opens (TCP, upgrade, credential check, backend dial) and
  closes; latency percentiles and the gateway's CPU time per connection;
- per message: one connection's 100-byte round trips for a fixed time; latency and the
  gateway's CPU time per message;
- the check alone: :meth:`aivtuber_gateway.auth.Edge.resolve` on the variant's handshake
  scope, timed in this process (what authentication adds to the CPU time per connect).

Variants: ``anonymous`` (the anonymous gateway), ``bearer`` (Authorization header),
``api_key`` (query parameter), ``ticket`` (a ticket from POST /v1/tickets, fetched once per
round), in an order that rotates from round to round. Every figure is the median over
rounds; each ratio is the median over rounds of that round's variant ÷ anonymous, measured
seconds apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import connect

from aivtuber_common.config import Settings
from aivtuber_common.refusal import Refusal
from aivtuber_gateway.auth import Edge

from .procs import Proc, free_port, python_argv
from .stats import Samples, percentile

__all__ = ["EdgeAuthParams", "run_edge_auth"]

VARIANTS = ("anonymous", "bearer", "api_key", "ticket")
ROUTE_PATH = "/ws/echo"
BENCH_KEY = "bench-tenant-key-0123456789abcdef"
# Tenants configured on the authenticated gateway: the lookup must not depend on how many.
TENANTS = 1000


@dataclass(frozen=True)
class EdgeAuthParams:
    rounds: int = 5
    connects: int = 300
    rtt_seconds: float = 2.0
    text_bytes: int = 100

    @classmethod
    def quick(cls) -> EdgeAuthParams:
        return cls(rounds=4, connects=100, rtt_seconds=1.0)

    @classmethod
    def smoke(cls) -> EdgeAuthParams:
        return cls(rounds=1, connects=5, rtt_seconds=0.05)


def run_edge_auth(
    params: EdgeAuthParams, work_dir: Path, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every round; the ``auth`` part of the edge scenario's section of latest.json."""
    samples = Samples()
    with _processes(work_dir) as (anonymous, authed):
        for number in range(1, params.rounds + 1):
            # Each round starts with another variant: whatever the first measurement of a
            # round suffers (a colder client, the machine's other load) is spread evenly.
            shift = (number - 1) % len(VARIANTS)
            order = VARIANTS[shift:] + VARIANTS[:shift]
            say(f"edge auth: round {number}/{params.rounds}: {' '.join(order)}")
            ticket = _ticket(authed[1])
            for variant in order:
                proc, port = anonymous if variant == "anonymous" else authed
                url, headers = _target(variant, port, ticket)
                samples.add_all(variant, _measure(proc, url, headers, params))
                samples.add(variant, "resolve_us", _resolve_us(url, headers))
    return {
        "params": asdict(params),
        "variants": list(VARIANTS),
        "tenants": TENANTS,
        "medians": samples.medians(),
        "ratios": {v: samples.paired_ratios(v, "anonymous") for v in VARIANTS[1:]},
        "rounds": samples.rounds(),
    }


# --- internals ------------------------------------------------------------------------------


@contextlib.contextmanager
def _processes(work_dir: Path) -> Iterator[tuple[tuple[Proc, int], tuple[Proc, int]]]:
    backend_port = free_port()
    backend = Proc(
        "edge-echo", python_argv("-m", "bench.echo_backend", "--port", str(backend_port)), work_dir
    )
    started: list[Proc] = [backend]
    try:
        backend.start().wait_port(backend_port)
        gateways = []
        for name, tenants in (("anonymous", False), ("auth", True)):
            port = free_port()
            proc = _gateway_proc(work_dir, name, port, backend_port, tenants)
            started.append(proc)
            proc.start().wait_port(port, timeout_s=30.0)
            gateways.append((proc, port))
        yield gateways[0], gateways[1]
    finally:
        for proc in reversed(started):
            proc.stop()


def _gateway_proc(work_dir: Path, name: str, port: int, backend_port: int, tenants: bool) -> Proc:
    config: dict[str, Any] = {
        "logging": {"level": "warning", "format": "json"},
        "gateway": {
            "host": "127.0.0.1",
            "port": port,
            "routes": {
                "echo": {"path": ROUTE_PATH, "backends": [f"ws://127.0.0.1:{backend_port}"]}
            },
        },
        # Sequential connects from one address: the quota must never be what is measured.
        "limits": {"max_connections": 100_000},
    }
    if tenants:
        table = {f"tenant-{n}": {"key": f"key-{n:06d}-0123456789abcdef"} for n in range(TENANTS)}
        table["bench"] = {"key": BENCH_KEY}
        config["auth"] = {"tenants": table}
    path = work_dir / f"edge-gateway-{name}.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    argv = python_argv("services/gateway-python/main.py", "--config", str(path))
    return Proc(f"edge-gateway-{name}", argv, work_dir)


def _ticket(port: int) -> str:
    with httpx.Client(timeout=5.0) as http:
        answer = http.post(f"http://127.0.0.1:{port}/v1/tickets", headers={"X-Api-Key": BENCH_KEY})
        answer.raise_for_status()
        return str(answer.json()["ticket"])


def _target(variant: str, port: int, ticket: str) -> tuple[str, dict[str, str]]:
    url = f"ws://127.0.0.1:{port}{ROUTE_PATH}"
    match variant:
        case "bearer":
            return url, {"Authorization": f"Bearer {BENCH_KEY}"}
        case "api_key":
            return f"{url}?api_key={BENCH_KEY}", {}
        case "ticket":
            return f"{url}?ticket={ticket}", {}
    return url, {}


def _resolve_us(url: str, headers: dict[str, str], repeat: int = 2000) -> float:
    """Microseconds per Edge.resolve() of this handshake, on a gateway configured alike."""
    tenants = {f"tenant-{n}": {"key": f"key-{n:06d}-0123456789abcdef"} for n in range(TENANTS)}
    tenants["bench"] = {"key": BENCH_KEY}
    anonymous = "?" not in url and not headers and "ticket" not in url
    settings = Settings.model_validate({} if anonymous else {"auth": {"tenants": tenants}})
    edge = Edge(settings)
    parts = urlsplit(url)
    raw_headers = [
        (b"host", parts.netloc.encode()),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"sec-websocket-version", b"13"),
        (b"user-agent", b"Python/3.11 websockets/15.0"),
        *((name.lower().encode(), value.encode()) for name, value in headers.items()),
    ]
    base = {
        "type": "websocket",
        "path": parts.path,
        "query_string": parts.query.encode(),
        "client": ("127.0.0.1", 50000),
    }
    started = time.perf_counter()
    for _ in range(repeat):
        # resolve() strips the credential from the scope: a fresh one each time, as uvicorn.
        verdict = edge.resolve({**base, "headers": list(raw_headers)})
    elapsed = time.perf_counter() - started
    assert not isinstance(verdict, Refusal), verdict
    return elapsed * 1e6 / repeat


def _measure(
    proc: Proc, url: str, headers: dict[str, str], params: EdgeAuthParams
) -> dict[str, float | None]:
    return asyncio.run(_measure_async(proc, url, headers, params))


async def _measure_async(
    proc: Proc, url: str, headers: dict[str, str], params: EdgeAuthParams
) -> dict[str, float | None]:
    options: dict[str, Any] = {
        "additional_headers": headers,
        "compression": None,
        "ping_interval": None,
    }
    # Warm-up: first-use paths of the gateway and of this client.
    for _ in range(5):
        async with connect(url, **options) as ws:
            await ws.send("w")
            await ws.recv()
    out: dict[str, float | None] = {}
    latencies: list[float] = []
    cpu = proc.cpu_exact_seconds()
    for _ in range(params.connects):
        started = time.perf_counter_ns()
        ws = await connect(url, **options)
        latencies.append((time.perf_counter_ns() - started) / 1000.0)
        await ws.close()
    out["cpu_us_per_connect"] = (proc.cpu_exact_seconds() - cpu) * 1e6 / params.connects
    out["connect_p50_us"] = percentile(latencies, 50)
    out["connect_p99_us"] = percentile(latencies, 99)

    payload = "r" * params.text_bytes
    round_trips: list[float] = []
    async with connect(url, **options) as ws:
        cpu = proc.cpu_exact_seconds()
        deadline = time.perf_counter() + params.rtt_seconds
        while time.perf_counter() < deadline:
            sent = time.perf_counter_ns()
            await ws.send(payload)
            await ws.recv()
            round_trips.append((time.perf_counter_ns() - sent) / 1000.0)
        moved = 2 * len(round_trips)  # each round trip crosses the gateway twice
        out["cpu_us_per_msg"] = (proc.cpu_exact_seconds() - cpu) * 1e6 / max(moved, 1)
    out["rtt_p50_us"] = percentile(round_trips, 50)
    return out
