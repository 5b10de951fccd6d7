"""Part of the edge scenario: one tenant's limits on the Redis bus, with 1 and 2 input handlers.

A redis-server of its own (a password set), one TTS worker (the sine voice) and N input
handler processes on it; one tenant sends ``3 x speaks_per_minute`` speaks as fast as it
can, alternating between the handlers, and the admitted ones are counted (the rest get
``rate_limited``). With the limits shared in Redis the count is ``speaks_per_minute``
whatever N is (it used to be N times that). The frontends talk to the input handlers
directly with the identity headers and the internal token the gateway would send.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from aivtuber_common.identity import CLIENT_HEADER, GATEWAY_TOKEN_HEADER, TENANT_HEADER

from .procs import BenchError, Proc, free_port, python_argv

__all__ = ["LimitsParams", "render", "run_edge_limits"]

TOKEN = "bench-internal-token-0123456789"


@dataclass(frozen=True)
class LimitsParams:
    speaks_per_minute: int = 20
    handlers: tuple[int, ...] = (1, 2)


async def _count_admitted(ports: list[int], params: LimitsParams) -> dict[str, Any]:
    headers = {TENANT_HEADER: "alpha", CLIENT_HEADER: "127.0.0.1", GATEWAY_TOKEN_HEADER: TOKEN}
    sockets: list[ClientConnection] = []
    try:
        for port in ports:
            ws = await connect(f"ws://127.0.0.1:{port}/ws/input", additional_headers=headers)
            sockets.append(ws)
            await ws.recv()  # task_id_assigned
        admitted = refused = 0
        started = time.perf_counter()
        for n in range(3 * params.speaks_per_minute):
            ws = sockets[n % len(sockets)]
            await ws.send(json.dumps({"type": "speak", "text": "Hi.", "voice": "sine"}))
            reply = json.loads(await ws.recv())
            if reply.get("action") == "upload_processed":
                admitted += 1
            elif reply.get("code") == "rate_limited":
                refused += 1
            else:
                raise BenchError(f"unexpected answer: {reply}")
        return {
            "handlers": len(ports),
            "sent": 3 * params.speaks_per_minute,
            "admitted": admitted,
            "rate_limited": refused,
            "seconds": time.perf_counter() - started,
        }
    finally:
        for ws in sockets:
            await ws.close()


def _wait_ready(proc: Proc, port: int) -> None:
    proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=60.0)


def run_edge_limits(work_dir: Path, params: LimitsParams) -> dict[str, Any]:
    """Speaks admitted of 3 x the limit, for each number of input handlers."""
    server = shutil.which("redis-server")
    if server is None:
        return {"skipped": "redis-server is not installed"}
    password = secrets.token_hex(16)
    runs = []
    for count in params.handlers:
        redis_port, worker_port = free_port(), free_port()
        handler_ports = [free_port() for _ in range(count)]
        config = work_dir / f"limits-{count}.json"
        config.write_text(
            json.dumps(
                {
                    "logging": {"level": "warning", "format": "json"},
                    "internal_token": TOKEN,
                    "bus": {"kind": "redis", "prefix": f"bench{count}"},
                    "limits": {
                        "speaks_per_minute": params.speaks_per_minute,
                        "max_active_tasks": 1000,
                    },
                    "tts_worker": {"default_voice": "sine", "voices": {"sine": {"engine": "sine"}}},
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if k != "AIVTUBER_CONFIG"}
        env["REDIS_URL"] = f"redis://:{password}@127.0.0.1:{redis_port}/0"
        argv = [server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
        redis = Proc(f"limits-redis-{count}", [*argv, "--requirepass", password], work_dir)
        procs = [redis]
        try:
            redis.start().wait_port(redis_port)
            worker = Proc(
                f"limits-worker-{count}",
                python_argv(
                    "services/tts-worker/main.py",
                    "--config",
                    str(config),
                    "--port",
                    str(worker_port),
                ),
                work_dir,
                env=env,
            )
            procs.append(worker.start())
            handlers = []
            for port in handler_ports:
                handler = Proc(
                    f"limits-input-{count}-{port}",
                    python_argv(
                        "services/input-handler-python/main.py",
                        "--config",
                        str(config),
                        "--port",
                        str(port),
                    ),
                    work_dir,
                    env=env,
                )
                procs.append(handler.start())
                handlers.append(handler)
            for handler, port in zip(handlers, handler_ports, strict=True):
                _wait_ready(handler, port)
            runs.append(asyncio.run(_count_admitted(handler_ports, params)))
        finally:
            for proc in reversed(procs):
                proc.stop()
    same = len({run["admitted"] for run in runs}) == 1
    return {
        "params": asdict(params),
        "runs": runs,
        "same_limit": same and runs[0]["admitted"] == params.speaks_per_minute,
    }


def render(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"Limits on Redis: skipped ({result['skipped']})\n"
    rows = "".join(
        f"| {run['handlers']} | {run['sent']} | {run['admitted']} | {run['rate_limited']} |\n"
        for run in result["runs"]
    )
    verdict = "the same" if result["same_limit"] else "NOT the same"
    return (
        f"Limits on Redis (speaks_per_minute {result['params']['speaks_per_minute']}, one "
        f"tenant alternating between the handlers): {verdict} with 1 and 2 handlers\n\n"
        "| input handlers | speaks sent | admitted | rate_limited |\n|---|---|---|---|\n" + rows
    )


if __name__ == "__main__":  # python -m bench.edge_limits: as JSON
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_edge_limits(Path(tmp), LimitsParams())
        print(json.dumps(outcome, indent=2))
        print(render(outcome), file=sys.stderr)
