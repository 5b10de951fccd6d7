"""The four services as real processes, started as shipped (``services/*/main.py``) from a
config file of the test's: what an attacker on the machine or the network faces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import eventually, free_port, listening_port

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0
SERVICES = {
    "output": "services/output-handler-python/main.py",
    "tts": "services/tts-worker/main.py",
    "input": "services/input-handler-python/main.py",
    "gateway": "services/gateway-python/main.py",
}
ALPHA_KEY = "alpha-key-0123456789abcdef"
BETA_KEY = "beta-key-0123456789abcdef"


@dataclass
class Stack:
    ports: dict[str, int]
    config: Path
    logs: dict[str, list[str]] = field(default_factory=dict)

    def url(self, service: str, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.ports[service]}"


def stack_config(ports: dict[str, int], **sections: Any) -> dict[str, Any]:
    """Tenants alpha and beta, a sine worker, no internal_token; ``sections`` merged in."""
    config: dict[str, Any] = {
        "logging": {"level": "info", "format": "json"},
        "auth": {"tenants": {"alpha": {"key": ALPHA_KEY}, "beta": {"key": BETA_KEY}}},
        "gateway": {
            "port": ports["gateway"],
            "routes": {
                "input": {"path": "/ws/input", "backends": [f"ws://127.0.0.1:{ports['input']}"]},
                "output": {
                    "path": "/ws/output/{task_id}",
                    "backends": [f"ws://127.0.0.1:{ports['output']}"],
                },
                "openai": {
                    "path": "/v1/{endpoint:path}",
                    "backends": [f"http://127.0.0.1:{ports['input']}"],
                    "protocol": "http",
                },
            },
        },
        "input_handler": {
            "port": ports["input"],
            "workers": [f"http://127.0.0.1:{ports['tts']}"],
            "output_handler_url": f"ws://127.0.0.1:{ports['output']}",
        },
        "output_handler": {"port": ports["output"]},
        "tts_worker": {
            "port": ports["tts"],
            "output_handler_url": f"ws://127.0.0.1:{ports['output']}",
            "default_voice": "sine",
            "voices": {"sine": {"engine": "sine", "ms_per_char": 5}},
        },
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **value}
        else:
            config[name] = value
    return config


@contextlib.asynccontextmanager
async def process_stack(tmp_path: Path, **sections: Any) -> AsyncIterator[Stack]:
    """Start output handler, worker, input handler and gateway; yield when the worker is
    ready. Every process is killed and reaped on the way out."""
    ports = {name: free_port() for name in SERVICES}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(stack_config(ports, **sections)))
    stack = Stack(ports, config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "AIVTUBER_"))}
    processes: list[asyncio.subprocess.Process] = []
    drains: list[asyncio.Task[None]] = []
    try:
        for name, script in SERVICES.items():
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                script,
                "--config",
                str(config),
                cwd=ROOT,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            processes.append(process)
            assert process.stdout is not None
            stack.logs[name] = []
            await listening_port(process.stdout, stack.logs[name])
            # Keep reading: a full pipe would block the service.
            drains.append(asyncio.create_task(_drain(process.stdout, stack.logs[name])))
        await _wait_ready(stack.url("tts", "http") + "/health")
        yield stack
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
            await process.wait()
        for drain in drains:
            drain.cancel()
        await asyncio.gather(*drains, return_exceptions=True)


async def _drain(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode(errors="replace"))


async def _wait_ready(url: str) -> None:
    async def ready() -> bool:
        return (await http.get(url)).status_code == 200

    async with httpx.AsyncClient() as http, asyncio.timeout(READY_TIMEOUT_S):
        await eventually(ready, every=0.05)
