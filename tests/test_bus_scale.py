"""The stack on the Redis bus as real processes: 2 TTS workers, 2 output handlers behind the
gateway's output route, 1 input handler, the gateway, and a redis-server of the test's own.

The voice is an ``http`` engine pointed at a remote TTS server played by this test, so a
task can be held at a chosen point with no sleeps: ``HOLD`` lines stream a first part and
wait for :meth:`RemoteTts.release` before the second part; ``WAIT`` lines make no audio at
all until then (a task a worker took but has not spoken yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from aivtuber_common.config import GatewaySettings, RedisBusSettings, RouteSettings, Settings
from aivtuber_common.token_file import with_internal_token
from aivtuber_gateway import create_app as gateway_app
from tests.frontend import Heard, ask, frontend, listen, speak
from tests.redis_support import RedisServer, redis_bus_settings, running_redis
from tests.support import RunningServer, eventually, free_port, run_server

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
TIMEOUT_S = 30.0
FRAME_BYTES = RATE * 40 // 1000 * 2  # the worker's default 40 ms frames


def tone(hz: float, seconds: float) -> bytes:
    samples = 8000 * np.sin(2 * np.pi * hz * np.arange(int(RATE * seconds)) / RATE)
    return samples.astype("<i2").tobytes()


class RemoteTts:
    FIRST = tone(220, 0.5)
    SECOND = tone(330, 0.5)

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.requests: list[str] = []
        self.app = Starlette(routes=[Route("/tts", self.tts, methods=["POST"])])

    def release(self) -> None:
        self.released.set()

    def audio_for(self, text: str) -> bytes:
        return self.FIRST + self.SECOND if "HOLD" in text else self.FIRST

    async def tts(self, request: Request) -> StreamingResponse:
        text = (await request.json())["text"]
        self.requests.append(text)

        async def stream() -> AsyncIterator[bytes]:
            if "WAIT" in text:
                await self.released.wait()
            yield self.FIRST
            if "HOLD" in text:
                await self.released.wait()
                yield self.SECOND

        return StreamingResponse(stream(), media_type="application/octet-stream")


@dataclass
class Cluster:
    tmp: Path
    redis: RedisServer
    bus: RedisBusSettings
    tts: RunningServer
    gateway: RunningServer | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.ws_url

    def http(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def config(self) -> dict[str, Any]:
        return {
            "logging": {"format": "json", "level": "info"},
            "bus": self.bus.model_dump(),
            "output_handler": {"task_wait_s": 10.0, "task_timeout_s": 20.0},
            # One test client holds five tasks at once (limits.max_active_tasks is 4).
            "limits": {"max_active_tasks": 8},
            "tts_worker": {
                "default_voice": "remote",
                "max_concurrent": 1,
                "max_queued": 4,
                "voices": {
                    "remote": {
                        "engine": "http",
                        "url": f"{self.tts.http_url}/tts",
                        "response_format": "pcm",
                        "sample_rate": RATE,
                    }
                },
            },
        }

    def start(self, name: str, script: str) -> None:
        port = self.ports.setdefault(name, free_port())
        path = self.tmp / "config.json"
        path.write_text(json.dumps(self.config()))
        log = (self.tmp / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, str(ROOT / script), "--config", str(path), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "AIVTUBER_CONFIG": ""},
        )
        log.close()

    def kill(self, name: str) -> None:
        process = self.procs[name]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=TIMEOUT_S)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    async def health(self, name: str) -> tuple[int, dict[str, Any]]:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{self.http(name)}/health", timeout=5)
        return response.status_code, response.json()

    async def wait_health(self, name: str, status: int = 200) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    code, body = await self.health(name)
                    if code == status:
                        return body
                await asyncio.sleep(0.05)

    async def wait_workers(self, count: int) -> None:
        async def seen() -> bool:
            available: int = (await self.wait_health("input"))["workers_available"]
            return available == count

        async with asyncio.timeout(TIMEOUT_S):
            await eventually(seen, every=0.05)


WORKERS = ("tts-a", "tts-b")
OUTPUTS = ("output-a", "output-b")


@contextlib.asynccontextmanager
async def cluster(tmp: Path) -> AsyncIterator[Cluster]:
    with running_redis() as redis:
        tts = RemoteTts()
        async with contextlib.AsyncExitStack() as stack:
            remote = await stack.enter_async_context(run_server(tts.app))
            stack.callback(tts.release)
            c = Cluster(tmp, redis, redis_bus_settings(redis.url), remote)
            stack.callback(_stop_all, c)
            for name in WORKERS:
                c.start(name, "services/tts-worker/main.py")
            for name in OUTPUTS:
                c.start(name, "services/output-handler-python/main.py")
            c.start("input", "services/input-handler-python/main.py")
            for name in (*WORKERS, *OUTPUTS):
                await c.wait_health(name)
            await c.wait_workers(2)
            routes = {
                "input": RouteSettings(path="/ws/input", backends=[f"ws://127.0.0.1:{c.ports['input']}"]),
                "output": RouteSettings(
                    path="/ws/output/{task_id}",
                    backends=[f"ws://127.0.0.1:{c.ports[name]}" for name in OUTPUTS],
                ),
            }  # fmt: skip
            c.gateway = await stack.enter_async_context(
                # The services are processes reading the machine's token file: so does this.
                run_server(
                    gateway_app(
                        with_internal_token(Settings(gateway=GatewaySettings(routes=routes)))
                    )
                )
            )
            c.tts_app = tts  # type: ignore[attr-defined]
            yield c


def _stop_all(c: Cluster) -> None:
    for process in c.procs.values():
        if process.poll() is None:
            process.kill()
        process.wait(timeout=TIMEOUT_S)


def remote(c: Cluster) -> RemoteTts:
    return c.tts_app  # type: ignore[attr-defined,no-any-return]


# --- tests ---------------------------------------------------------------------------------


async def test_an_output_replica_killed_mid_line_is_resumed_on_the_other_exactly_once(
    tmp_path: Path,
) -> None:
    text = "This line will HOLD while its output handler dies."
    async with cluster(tmp_path) as c, frontend(c.url) as (ws, _):
        task_id = await speak(ws, text)
        first = Heard()
        listening = asyncio.create_task(listen(c.url, task_id, first))
        await asyncio.wait_for(first.first_frame.wait(), TIMEOUT_S)
        serving = [name for name in OUTPUTS if (await c.health(name))[1]["subscribers"]]
        assert len(serving) == 1, serving
        # Wait for the first part's whole frames (the TTS holds after it), then kill.
        whole = len(RemoteTts.FIRST) // FRAME_BYTES * FRAME_BYTES
        async with asyncio.timeout(TIMEOUT_S):
            await eventually(lambda: len(first.audio) >= whole)
        c.kill(serving[0])
        await asyncio.wait_for(listening, TIMEOUT_S)
        assert first.end is None or first.end["type"] == "error", first.end
        remote(c).release()
        # The client resumes through the gateway after what it played: the other replica.
        resumed = await listen(c.url, task_id, query=f"?from_chunk={len(first.chunks)}")
        whole = await listen(c.url, task_id)
    ids = [chunk["chunk_id"] for chunk in first.chunks + resumed.chunks]
    assert ids == list(range(len(ids))), "every chunk exactly once, in order"
    assert resumed.end is not None and resumed.end["type"] == "audio_complete", resumed.end
    assert resumed.end["chunks"] == len(ids) == len(whole.chunks)
    assert first.audio + resumed.audio == whole.audio == remote(c).audio_for(text)
    assert resumed.start is not None and resumed.start["content"] == text


async def test_a_worker_killed_holding_tasks_leaves_them_to_the_other_without_two_voices(
    tmp_path: Path,
) -> None:
    held = "This one will HOLD, half spoken, when its worker dies."
    waiting = [f"Queued line {n} will WAIT for its turn." for n in range(4)]
    async with cluster(tmp_path) as c, frontend(c.url) as (ws, _):
        held_id = await speak(ws, held)
        held_heard = Heard()
        held_task = asyncio.create_task(listen(c.url, held_id, held_heard))
        await asyncio.wait_for(held_heard.first_frame.wait(), TIMEOUT_S)
        waiting_ids = [await speak(ws, line) for line in waiting]
        listeners = [asyncio.create_task(listen(c.url, task_id)) for task_id in waiting_ids]
        owners = await wait_owners(c, [held_id, *waiting_ids])
        victim = owners[held_id]
        victim_waiting = [t for t in waiting_ids if owners[t] == victim]
        assert victim_waiting, f"the held task's worker took no waiting task: {owners}"
        c.kill(victim)
        remote(c).release()
        await asyncio.wait_for(held_task, TIMEOUT_S)
        heard = await asyncio.wait_for(asyncio.gather(*listeners), TIMEOUT_S * 2)
    # The half-spoken task fails: a second worker must not speak it again.
    assert held_heard.end is not None and held_heard.end["code"] == "worker_lost", held_heard.end
    assert held_heard.audio == RemoteTts.FIRST[: len(held_heard.audio)]
    # The ones it had not spoken yet are spoken by the other worker, whole.
    for line, got in zip(waiting, heard, strict=True):
        assert got.end is not None and got.end["type"] == "audio_complete", got.end
        assert got.audio == remote(c).audio_for(line)
    survivor = next(name for name in WORKERS if name != victim)
    assert "bus_task_claimed" in c.log(survivor)


async def wait_owners(c: Cluster, task_ids: list[str]) -> dict[str, str]:
    """Which worker process holds each task, from the group's pending entries."""
    pids = {str(c.procs[name].pid): name for name in WORKERS}
    client = Redis.from_url(c.redis.url)
    tasks = c.bus.prefix + ":tasks"
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                owners: dict[str, str] = {}
                pending = await client.xpending_range(tasks, "workers", "-", "+", 100)
                for entry in pending:
                    fields = await client.xrange(tasks, entry["message_id"], entry["message_id"])
                    task_id = json.loads(fields[0][1][b"task"])["task_id"]
                    pid = entry["consumer"].decode().split("-")[-2]
                    owners[task_id] = pids[pid]
                if set(task_ids) <= set(owners):
                    return owners
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_a_redis_restart_gives_clear_errors_then_everything_recovers_by_itself(
    tmp_path: Path,
) -> None:
    text = "This line will HOLD while Redis goes away."
    async with cluster(tmp_path) as c:
        async with frontend(c.url) as (ws, _):
            task_id = await speak(ws, text)
            heard = Heard()
            listening = asyncio.create_task(listen(c.url, task_id, heard))
            await asyncio.wait_for(heard.first_frame.wait(), TIMEOUT_S)
            await c.redis.akill()
            # The subscriber is closed with a clear error, never left hanging.
            await asyncio.wait_for(listening, TIMEOUT_S)
            assert heard.end is not None and heard.end["code"] == "tts_unavailable", heard.end
            for name in ("input", *OUTPUTS):
                body = await c.wait_health(name, 503)
                assert body["bus"]["connected"] is False
            reply = await asyncio.wait_for(ask(ws, {"type": "speak", "text": "Hello?"}), TIMEOUT_S)
            assert reply["type"] == "error" and reply["code"] == "tts_unavailable", reply
            remote(c).release()
            await c.redis.astart()
            for name in ("input", *OUTPUTS):
                await c.wait_health(name)
            await c.wait_workers(2)
            after = "Back after the restart."
            heard_after = await listen(c.url, await speak(ws, after))
        assert heard_after.end is not None and heard_after.end["type"] == "audio_complete"
        assert heard_after.audio == remote(c).audio_for(after)
        for name in ("input", *OUTPUTS, *WORKERS):
            log = c.log(name)
            assert "redis_unreachable" in log and "redis_reconnected" in log, name
            # One clear line per outage, not one per request.
            assert log.count("redis_unreachable") == 1, (name, log.count("redis_unreachable"))


pytestmark = pytest.mark.timeout(180)
