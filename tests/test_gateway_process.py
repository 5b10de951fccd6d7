"""The gateway as operators run it: a real process, stopped by a signal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.backends import EchoBackend
from tests.support import listening_port

ROOT = Path(__file__).resolve().parents[1]
EXIT_TIMEOUT_S = 20.0  # a hang guard, not a speed assertion


class GatewayProcess:
    def __init__(self, process: asyncio.subprocess.Process, port: int, output: str) -> None:
        self.process = process
        self.port = port
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.output = output  # every line it printed: up to "listening", then all on stop

    async def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        async with asyncio.timeout(EXIT_TIMEOUT_S):
            stdout, _ = await self.process.communicate()
        self.output += stdout.decode()
        assert self.process.returncode is not None
        return self.process.returncode


@asynccontextmanager
async def gateway_process(
    tmp_path: Path, backend_url: str, *args: str
) -> AsyncIterator[GatewayProcess]:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "logging": {"format": "json"},
                "gateway": {"routes": {"input": {"path": "/ws/input", "backends": [backend_url]}}},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("INPUT_HANDLER_URL", "AIVTUBER_CONFIG")}
    # Port 0: the kernel picks a free port and the gateway logs it ("listening").
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "services/gateway-python/main.py",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        seen: list[str] = []
        port = await listening_port(process.stdout, seen)
        gateway = GatewayProcess(process, port, "".join(seen))
        yield gateway
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_closes_every_connection_with_1001_on_both_sides_and_exits_0(
    tmp_path: Path, sig: int
) -> None:
    async with EchoBackend().running() as backend:
        async with gateway_process(tmp_path, backend.url) as gateway:
            clients = [await connect(gateway.ws_url + "/ws/input") for _ in range(3)]
            for ws in clients:
                await ws.send("hello")
                assert await ws.recv() == "hello"
            code = await gateway.stop(sig)
            for ws in clients:
                async with asyncio.timeout(EXIT_TIMEOUT_S):
                    try:
                        await ws.recv()
                    except ConnectionClosed:
                        pass
            backend_closes = [await backend.next_close() for _ in clients]
    assert code == 0, gateway.output
    assert "Traceback" not in gateway.output
    assert [(ws.close_code, ws.close_reason) for ws in clients] == [(1001, "going away")] * 3
    assert [(c.code, c.reason) for c in backend_closes] == [(1001, "going away")] * 3


async def test_no_secret_reaches_the_log_even_at_debug(tmp_path: Path) -> None:
    async with EchoBackend().running() as backend:
        async with gateway_process(tmp_path, backend.url, "--log-level", "debug") as gateway:
            async with connect(
                gateway.ws_url + "/ws/input?token=query-secret-1",
                additional_headers={
                    "Authorization": "Bearer header-secret-2",
                    "Cookie": "session=cookie-secret-3",
                },
            ) as ws:
                await ws.send("message-content-4")
                await ws.recv()
            await backend.next_close()
            code = await gateway.stop(signal.SIGTERM)
    assert code == 0
    lines = [json.loads(line) for line in gateway.output.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "connection_opened" in events and "connection_closed" in events
    assert sum(1 for line in lines if line["event"] == "forward") == 2
    for secret in ("query-secret-1", "header-secret-2", "cookie-secret-3", "message-content-4"):
        assert secret not in gateway.output
