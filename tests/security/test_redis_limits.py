"""Limits shared across input-handler replicas on Redis: a tenant's speaks_per_minute,
chars_per_minute and max_active_tasks hold once for the whole stack, however many input
handlers it runs (they used to be counted per process: N replicas gave N times the limit).

Two input handlers on one Redis (a redis-server of the test's own), a stand-in worker that
announces itself with a heartbeat and never takes a task (so every task stays active until
it is cancelled), frontends that speak to both handlers alternately, with the identity
headers and internal token the gateway would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from aivtuber_common.bus import RedisLink
from aivtuber_common.bus.liveness import Heartbeat
from aivtuber_common.config import LimitsSettings, RedisBusSettings, Settings
from aivtuber_common.identity import CLIENT_HEADER, GATEWAY_TOKEN_HEADER, TENANT_HEADER
from aivtuber_input import create_app as input_app
from tests.redis_support import RedisServer, redis_bus_settings
from tests.support import RunningServer, eventually, run_server, wait_until
from tests.tts_fakes import worker_health

WAIT_S = 15.0
# The gateway's identity headers are believed with the internal token.
TOKEN = "redis-limits-test-token-0123"


@contextlib.asynccontextmanager
async def replicas(
    redis_server: RedisServer, limits: LimitsSettings, count: int = 2
) -> AsyncIterator[list[RunningServer]]:
    """``count`` input handlers sharing one Redis prefix, and a live stand-in worker."""
    bus = redis_bus_settings(redis_server.url)
    link = RedisLink(bus)
    beat = Heartbeat(link, "worker", "stand-in", lambda: worker_health(name="stand-in"))
    beating = asyncio.create_task(beat.run())
    try:
        async with contextlib.AsyncExitStack() as stack:
            servers = [
                await stack.enter_async_context(
                    run_server(input_app(Settings(bus=bus, limits=limits, internal_token=TOKEN)))
                )
                for _ in range(count)
            ]
            for server in servers:
                await _wait_ready(server, bus)
            yield servers
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        await link.aclose()


async def _wait_ready(server: RunningServer, bus: RedisBusSettings) -> None:
    """Until the handler has seen the stand-in's heartbeat (its /health says ok)."""
    async with httpx.AsyncClient() as client:

        async def ready() -> bool:
            return (await client.get(server.http_url + "/health")).status_code == 200

        await wait_until(ready)


@contextlib.asynccontextmanager
async def frontend(server: RunningServer, tenant: str) -> AsyncIterator[ClientConnection]:
    headers = {CLIENT_HEADER: "10.0.0.1", TENANT_HEADER: tenant, GATEWAY_TOKEN_HEADER: TOKEN}
    async with connect(server.ws_url + "/ws/input", additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["action"] == "task_id_assigned"
        yield ws


async def ask(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    async with asyncio.timeout(WAIT_S):
        return dict(json.loads(await ws.recv()))


async def speak(ws: ClientConnection, text: str = "Hello there.") -> dict[str, Any]:
    return await ask(ws, {"type": "speak", "text": text, "voice": "sine"})


async def test_speaks_per_minute_hold_once_across_two_input_handlers(
    redis_server: RedisServer,
) -> None:
    limits = LimitsSettings(speaks_per_minute=4, max_active_tasks=100)
    async with replicas(redis_server, limits) as (one, two):
        async with frontend(one, "alice") as a1, frontend(two, "alice") as a2:
            replies = [await speak(ws) for ws in (a1, a2, a1, a2, a1, a2)]
            async with frontend(two, "bob") as b:
                bobs = await speak(b)  # another tenant: a window of its own
    actions = [reply.get("action") or reply.get("code") for reply in replies]
    assert actions == ["upload_processed"] * 4 + ["rate_limited"] * 2
    assert all(0 < reply["retry_after_ms"] <= 60_000 for reply in replies[4:])
    assert bobs.get("action") == "upload_processed", bobs


async def test_chars_per_minute_hold_once_across_two_input_handlers(
    redis_server: RedisServer,
) -> None:
    limits = LimitsSettings(chars_per_minute=100, max_active_tasks=100)
    text = "x" * 40 + "."
    async with replicas(redis_server, limits) as (one, two):
        async with frontend(one, "alice") as a1, frontend(two, "alice") as a2:
            replies = [await speak(ws, text) for ws in (a1, a2, a1)]
    actions = [reply.get("action") or reply.get("code") for reply in replies]
    assert actions == ["upload_processed", "upload_processed", "rate_limited"]
    assert "100 characters per minute" in replies[2]["message"]


async def test_active_tasks_hold_once_across_two_input_handlers_and_free_on_cancel(
    redis_server: RedisServer,
) -> None:
    limits = LimitsSettings(speaks_per_minute=100, max_active_tasks=2)
    async with replicas(redis_server, limits) as (one, two):
        async with frontend(one, "alice") as a1, frontend(two, "alice") as a2:
            first = await speak(a1)
            second = await speak(a2)
            assert first.get("action") == second.get("action") == "upload_processed"
            third = await speak(a1)
            assert third.get("code") == "rate_limited", third
            assert "2 unfinished tasks" in third["message"]
            # The task queued through the second handler ends (cancelled): its place is
            # free for the tenant on either handler once that handler has seen the end.
            cancel = await ask(a2, {"type": "cancel", "task_id": second["task_id"]})
            assert cancel.get("code") is None, cancel

            async def admitted() -> dict[str, Any] | None:
                reply = await speak(a1)
                return None if reply.get("code") == "rate_limited" else reply

            async with asyncio.timeout(WAIT_S):
                reply = await eventually(admitted, every=0.05)
            assert reply.get("action") == "upload_processed", reply
            assert (await speak(a2)).get("code") == "rate_limited"


async def test_text_appended_to_a_stream_counts_once_across_two_input_handlers(
    redis_server: RedisServer,
) -> None:
    # Three speaks a minute: the appended pieces count as characters, never as speaks.
    limits = LimitsSettings(chars_per_minute=100, speaks_per_minute=3, max_active_tasks=100)
    async with replicas(redis_server, limits) as (one, two):
        async with frontend(one, "alice") as a1, frontend(two, "alice") as a2:
            opened = await ask(a1, {"type": "speak", "text": "x" * 30, "stream": True})
            task_id = opened["task_id"]
            for _ in range(4):  # 4 x 10 characters, taken without an answer
                await a1.send(json.dumps({"type": "append", "task_id": task_id, "text": "y" * 10}))
            # Messages of a connection are handled in order: this answer follows the appends.
            unknown = await ask(a1, {"type": "end", "task_id": str(uuid.uuid4())})
            too_many_chars = await speak(a2, "z" * 40)  # 30 + 40 + 40 > 100
            fits = await speak(a2, "z" * 30)  # exactly 100
            over = await ask(a1, {"type": "append", "task_id": task_id, "text": "w"})
            third_speak = await speak(a2, ".")  # chars full: refused, but not for speaks
    assert opened.get("action") == "upload_processed", opened
    assert unknown["code"] == "task_not_found"
    assert too_many_chars["code"] == "rate_limited", too_many_chars
    assert "100 characters per minute" in too_many_chars["message"]
    assert fits.get("action") == "upload_processed", fits
    assert over["code"] == "rate_limited" and over["task_id"] == task_id
    assert "characters per minute" in third_speak["message"]
    assert "speaks per minute" not in third_speak["message"]
